"""The gates' verdict on a version: `Blessing` records, stored on the version itself.

The blessing lives in the version's tags (`flywheel.blessed`,
`flywheel.blessing`), so `promote` can refuse an unblessed version, naming the
gates that failed, by reading the registry alone. A blessed version becomes
`staging` (`record_blessing`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flywheel.registry.errors import RegistryError
from flywheel.registry.history import (
    Transition,
    _record,
    _take_alias,
    resolve_user,
    utc_now,
)
from flywheel.registry.lock import LockStrategy, registry_lock
from flywheel.registry.store import (
    ALIAS_STAGING,
    _aliases_of,
    _client,
    _get_aliases,
    _get_version,
    role_of,
)

TAG_BLESSED = "flywheel.blessed"
"""'true' or 'false': the verdict of the latest evaluation."""


TAG_BLESSING = "flywheel.blessing"
"""The latest `Blessing`, as JSON."""


TAG_EVAL_ACCURACY = "flywheel.eval_accuracy"
"""Overall accuracy of the latest evaluation (on the split named in the blessing)."""


@dataclass(frozen=True)
class GateResult:
    """One gate of the blessing: a measured value against a threshold.

    Attributes:
        name: unique within a blessing, e.g. `min_accuracy`,
            `slice_regression[style=handwritten]`; look gates up by it.
        value: the measured value.
        threshold: the bound the value must meet.
        comparison: `>=` (value must be at least the threshold) or `<=`.
        passed: the verdict.
        detail: the numbers behind the value, for people.
    """

    name: str
    value: float
    threshold: float
    comparison: Literal[">=", "<="]
    passed: bool
    detail: str = ""

    @property
    def verdict(self) -> str:
        """`pass` or `fail`."""
        return "pass" if self.passed else "fail"

    def summary(self) -> str:
        """One line: `name: fail (0.7812 >= 0.8000)`.

        >>> GateResult("min_accuracy", 0.75, 0.8, ">=", False).summary()
        'min_accuracy: fail (0.7500 >= 0.8000)'
        """
        bound = f"{self.value:.4f} {self.comparison} {self.threshold:.4f}"
        return f"{self.name}: {self.verdict} ({bound})"


@dataclass(frozen=True)
class Blessing:
    """The verdict of the evaluation gates on one candidate, as stored on the model version.

    Attributes:
        candidate_uri: the model that was evaluated.
        champion_version: the `production` version it was compared with, None for
            a first model (absolute gates only).
        gates: every gate's result; `blessed` is true when all passed.
        split: the dataset split evaluated.
        evaluated_at: UTC ISO time of the evaluation.
        model_name: the registered model, when the candidate is a registered version.
        candidate_version: that version.
        metrics: headline numbers (candidate accuracy, macro-F1, ECE, images; the
            champion's accuracy on the same data).
        dataset: which data: folder, number of images, content fingerprint.
        notes: what was not gated and why (e.g. slices with too few images).
    """

    candidate_uri: str
    champion_version: str | None
    gates: tuple[GateResult, ...]
    split: str
    evaluated_at: str
    model_name: str | None = None
    candidate_version: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [g.name for g in self.gates]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"gate names must be unique, repeated: {duplicated}")
        if not self.gates:
            raise ValueError("a blessing needs at least one gate")

    @property
    def blessed(self) -> bool:
        """True when every gate passed."""
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[str]:
        """Names of the gates that failed, in evaluation order."""
        return [g.name for g in self.gates if not g.passed]

    def gate(self, name: str) -> GateResult:
        """The gate called `name`.

        Raises:
            KeyError: no such gate (the message lists the gates there are).
        """
        for gate in self.gates:
            if gate.name == name:
                return gate
        raise KeyError(f"no gate {name!r}; gates: {[g.name for g in self.gates]}")

    def summary(self) -> str:
        """One line for tags and logs: `blessed: 7/7 gates passed` or the failures by name."""
        passed = sum(g.passed for g in self.gates)
        head = f"{passed}/{len(self.gates)} gates passed"
        if self.blessed:
            return f"blessed: {head}"
        return f"not blessed: {head}; failed: " + "; ".join(
            g.summary() for g in self.gates if not g.passed
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (includes the derived `blessed` and `failed_gates` for readers)."""
        out = asdict(self)
        out["metrics"] = dict(self.metrics)
        out["dataset"] = dict(self.dataset)
        out["blessed"] = self.blessed
        out["failed_gates"] = self.failed_gates
        return out

    def to_json(self) -> str:
        """Compact JSON (`from_json` reads it back)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Blessing:
        """Read `to_dict`'s output; derived keys are recomputed, not trusted.

        Raises:
            ValueError: a key is missing or has the wrong shape.
        """
        try:
            return cls(
                candidate_uri=str(raw["candidate_uri"]),
                champion_version=None
                if raw["champion_version"] is None
                else str(raw["champion_version"]),
                gates=tuple(GateResult(**g) for g in raw["gates"]),
                split=str(raw["split"]),
                evaluated_at=str(raw["evaluated_at"]),
                model_name=raw.get("model_name"),
                candidate_version=raw.get("candidate_version"),
                metrics={str(k): float(v) for k, v in raw.get("metrics", {}).items()},
                dataset=dict(raw.get("dataset", {})),
                notes=tuple(raw.get("notes", ())),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a blessing record: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        """Parse `to_json`'s output.

        Raises:
            ValueError: not JSON, or not a blessing record.
        """
        return cls.from_dict(json.loads(text))


def read_blessing(name: str, version: str) -> Blessing | None:
    """The latest blessing recorded on a version, None if it was never evaluated.

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
    """
    return _blessing_from_tags(_get_version(_client(), name, version).tags)


def _blessing_from_tags(tags: Mapping[str, str]) -> Blessing | None:
    raw = tags.get(TAG_BLESSING)
    if raw is None:
        return None
    try:
        return Blessing.from_json(raw)
    except ValueError:
        return None


def record_blessing(
    name: str,
    version: str,
    blessing: Blessing,
    *,
    who: str | None = None,
    lock: LockStrategy = "auto",
) -> Transition:
    """Store the gates' verdict on a version; a blessed version becomes `staging`.

    An unblessed version loses `staging` if it held it (a re-evaluation can
    revoke a blessing). The blessing is stored in full (`flywheel.blessing`),
    so `promote` can name the failing gates later.

    Returns:
        The transition recorded on the version.

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
        RegistryError: the blessing names another model or version.
    """
    by = resolve_user(who)
    version = str(version)
    if (blessing.model_name, blessing.candidate_version) not in ((None, None), (name, version)):
        raise RegistryError(
            f"the blessing is for {blessing.model_name!r} version {blessing.candidate_version}, "
            f"not {name!r} version {version}"
        )
    client = _client()
    with registry_lock(name, strategy=lock):
        _get_version(client, name, version)
        client.set_model_version_tag(name, version, TAG_BLESSING, blessing.to_json())
        client.set_model_version_tag(name, version, TAG_BLESSED, str(blessing.blessed).lower())
        if "accuracy" in blessing.metrics:
            client.set_model_version_tag(
                name, version, TAG_EVAL_ACCURACY, f"{blessing.metrics['accuracy']:.6f}"
            )
        aliases = _get_aliases(client, name)
        before = _aliases_of(aliases, version)
        at = utc_now()
        champion = blessing.champion_version or "none (first model)"
        if blessing.blessed:
            _take_alias(
                client,
                name,
                ALIAS_STAGING,
                version,
                aliases,
                at=at,
                by=by,
                reason=f"version {version} is the new staging version",
            )
            after = sorted({*before, ALIAS_STAGING})
            transition = Transition(
                at,
                "bless",
                role_of(before),
                role_of(after),
                by,
                f"gates passed against champion {champion}",
                blessing.summary(),
            )
        else:
            if aliases.get(ALIAS_STAGING) == version:
                client.delete_registered_model_alias(name, ALIAS_STAGING)
            after = [a for a in before if a != ALIAS_STAGING]
            transition = Transition(
                at,
                "reject",
                role_of(before),
                role_of(after),
                by,
                f"gates failed against champion {champion}",
                blessing.summary(),
            )
        _record(client, name, version, transition)
    return transition
