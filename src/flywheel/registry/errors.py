"""What registry operations raise: `RegistryError` and its kinds, each saying why and what to do."""

from __future__ import annotations

from collections.abc import Sequence


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; the message says why and what to do."""


class ModelNotFoundError(RegistryError):
    """No registered model of that name."""


class VersionNotFoundError(RegistryError):
    """The registered model has no such version."""


class AliasNotFoundError(RegistryError):
    """The alias an operation needs (e.g. `previous` for a rollback) is not set."""


class PromotionRefusedError(RegistryError):
    """The version may not reach production: it is not blessed.

    Attributes:
        failed_gates: names of the gates that failed (empty if never evaluated).
    """

    def __init__(self, message: str, failed_gates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failed_gates: tuple[str, ...] = tuple(failed_gates)


class StaleBlessingError(PromotionRefusedError):
    """The version was blessed against a champion that is no longer in production."""


class RegistryLockTimeout(RegistryError):
    """Another process held the registry lock for longer than the timeout."""


class ConcurrentModificationError(RegistryError):
    """The aliases changed under a transition (someone bypassed the registry lock)."""


class TransitionOvertakenError(PromotionRefusedError):
    """Another transition moved `production` while this one waited for the registry lock.

    Going on would undo it; the operator decided on a registry that is no longer
    there. Forcing (`--force`) goes on anyway.

    Attributes:
        overtaken_by: the id of the transition that came first (the model's log has it).
    """

    def __init__(self, message: str, overtaken_by: str) -> None:
        super().__init__(message)
        self.overtaken_by = overtaken_by
