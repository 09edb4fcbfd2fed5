"""The model registry (MLflow): stages as aliases, blessings and transitions as version tags.

A registered model's versions move through four aliases (never MLflow's
deprecated stages):

* `candidate` — the latest registered version (`register`);
* `staging` — the latest version the evaluation gates blessed (`record_blessing`);
* `production` — what serving loads (`promote`, `rollback`);
* `previous` — the version `production` pointed at before the last change, kept
  for a one-command `rollback`.

Every transition is written on each version it touches: the latest one as
`flywheel.transition.*` tags (when, action, from, to, who, why, gates) and all
of them, compactly, as a JSON list in `flywheel.history`. The blessing itself
is stored on the version (`flywheel.blessed`, `flywheel.blessing`), so
`promote` can refuse an unblessed version by reading the registry alone, with
the names of the gates that failed.

Rollback semantics: `rollback` *swaps* `production` and `previous`. `previous`
always means "the version production held before the last change", so a
rollback is undone by a second rollback and no version ever drops out of the
two aliases by rolling back. A rolled-back version stays blessed: promoting it
again later is allowed (and is what the second rollback does).

A blessing is tied to the champion it was judged against: `promote` refuses a
blessing whose champion is no longer `production` (`StaleBlessingError`) —
the candidate must be evaluated again against the model it would replace.

Concurrency: MLflow sets aliases one request at a time, so each
read-modify-write of the aliases runs under `registry_lock`:

* a local store (SQLite file, file store) uses an OS file lock next to the
  database (`filelock`; released by the OS if the process dies);
* a tracking server uses a registered model named `<name>.promotion-lock` as a
  mutex: creating a registered model is atomic in MLflow's database (a name is
  unique), so exactly one process succeeds; the others wait. The lock records its
  owner and an expiry; a waiter breaks an expired lock (a crashed holder) by
  renaming it away — also atomic, so only one waiter breaks a given lock.
  After writing, every transition reads the aliases back and raises
  `ConcurrentModificationError` if they are not what it wrote (someone changed
  them without the lock, e.g. by hand in the MLflow UI).

The registry is MLflow's configured one (`flywheel.tracking.configure_tracking`
or `MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import getpass
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import filelock
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flywheel.tracking import LINEAGE_TAGS, TAG_DATA_VERSION, TAG_GIT_COMMIT, local_store_dir

ALIAS_CANDIDATE = "candidate"
ALIAS_STAGING = "staging"
ALIAS_PRODUCTION = "production"
ALIAS_PREVIOUS = "previous"
ROLES: tuple[str, ...] = (ALIAS_PRODUCTION, ALIAS_STAGING, ALIAS_CANDIDATE, ALIAS_PREVIOUS)
"""The aliases flywheel manages, most important first (a version's `role` is the first it holds)."""
NO_ROLE = "none"

TAG_BLESSED = "flywheel.blessed"
"""'true' or 'false': the verdict of the latest evaluation."""
TAG_BLESSING = "flywheel.blessing"
"""The latest `Blessing`, as JSON."""
TAG_EVAL_ACCURACY = "flywheel.eval_accuracy"
"""Overall accuracy of the latest evaluation (on the split named in the blessing)."""
TAG_HISTORY = "flywheel.history"
"""Every transition of the version, a compact JSON list (oldest first)."""
TAG_TRANSITION = "flywheel.transition"
"""Prefix of the latest transition's tags: `.at .action .from .to .by .reason .gates`."""
HISTORY_LIMIT = 200
"""Transitions kept in `flywheel.history` per version (the oldest are dropped)."""
USER_ENV = "FLYWHEEL_USER"

LockStrategy = Literal["auto", "file", "registry"]
LOCK_SUFFIX = ".promotion-lock"
"""A `registry` lock of model NAME is a registered model named NAME + this."""
LOCK_FILE_NAME = ".flywheel-registry.lock"
"""A `file` lock lives in the local store's folder under this name."""

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


# ------------------------------------------------------------------- errors


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


# ------------------------------------------------------------- the records


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


@dataclass(frozen=True)
class Transition:
    """One change of a version's aliases, as recorded in its history.

    Attributes:
        at: UTC ISO time.
        action: register | bless | reject | supersede | promote | demote | retire | rollback.
        from_role: the alias the version held before (`none` if none of `ROLES`).
        to_role: the alias it holds after.
        by: who asked for it.
        reason: why.
        gates: blessing summary at the time (empty if not applicable).
    """

    at: str
    action: str
    from_role: str
    to_role: str
    by: str
    reason: str
    gates: str = ""

    def compact(self) -> dict[str, str]:
        """Short keys for the history tag."""
        return {
            "at": self.at,
            "action": self.action,
            "from": self.from_role,
            "to": self.to_role,
            "by": self.by,
            "reason": self.reason,
            "gates": self.gates,
        }

    @classmethod
    def from_compact(cls, raw: Mapping[str, str]) -> Transition:
        """Read one `compact()` entry."""
        return cls(
            at=raw.get("at", ""),
            action=raw.get("action", ""),
            from_role=raw.get("from", NO_ROLE),
            to_role=raw.get("to", NO_ROLE),
            by=raw.get("by", ""),
            reason=raw.get("reason", ""),
            gates=raw.get("gates", ""),
        )


@dataclass(frozen=True)
class AliasChange:
    """What `promote` or `rollback` did.

    Attributes:
        model_name: the registered model.
        production: the version in production afterwards.
        previous: the version kept as `previous` afterwards (None if none).
        changed: False when nothing had to change (the version already was production).
        transition: the record written on the version now in production.
    """

    model_name: str
    production: str
    previous: str | None
    changed: bool
    transition: Transition | None = None


@dataclass(frozen=True)
class VersionSummary:
    """One version for listings (`flywheel models`).

    Attributes:
        version: the version number.
        aliases: the aliases pointing at it.
        created_at: UTC ISO time of registration.
        run_id: the training run (None if registered from a path).
        source: where its files live.
        blessed: the latest verdict (None: never evaluated).
        eval_accuracy: overall accuracy of the latest evaluation.
        git_commit: lineage: the code.
        data_version: lineage: the DVC data version.
        last_transition: the latest recorded transition.
        lineage: all lineage tags present.
    """

    version: str
    aliases: tuple[str, ...]
    created_at: str
    run_id: str | None
    source: str
    blessed: bool | None
    eval_accuracy: float | None
    git_commit: str | None
    data_version: str | None
    last_transition: Transition | None
    lineage: Mapping[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ helpers


def resolve_user(who: str | None = None) -> str:
    """Who is acting: `who`, else `FLYWHEEL_USER`, else the login name, else `unknown`."""
    if who:
        return who
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (`2026-11-23T09:30:00+00:00`)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def role_of(aliases: Sequence[str]) -> str:
    """The most important flywheel alias among `aliases`, or `none`.

    >>> role_of(["candidate", "staging"])
    'staging'
    >>> role_of(["champion"])
    'none'
    """
    return next((r for r in ROLES if r in aliases), NO_ROLE)


def _client() -> MlflowClient:
    return MlflowClient()


def _error_code(err: MlflowException) -> str:
    return str(getattr(err, "error_code", ""))


def _get_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias → version of a registered model."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if _error_code(err) == _NOT_FOUND:
            raise ModelNotFoundError(
                f"no registered model {name!r} in the registry {_registry_uri()}; "
                "register a trained model first (`flywheel evaluate --run-id RUN`)"
            ) from None
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, or a clear error naming the versions that exist."""
    if not str(version).isdigit():
        raise VersionNotFoundError(f"{version!r} is not a version number of model {name!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if _error_code(err) != _NOT_FOUND:
            raise
        _get_aliases(client, name)  # a missing model gets its own, clearer error
        known = sorted(
            (str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int
        )
        raise VersionNotFoundError(
            f"model {name!r} has no version {version!r}; versions: {known or 'none'}"
        ) from None


def _registry_uri() -> str:
    import mlflow

    return mlflow.get_registry_uri()


def _read_history(tags: Mapping[str, str]) -> list[Transition]:
    raw = tags.get(TAG_HISTORY)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        return []  # hand-edited; the next transition starts a fresh list
    return [Transition.from_compact(e) for e in entries if isinstance(e, dict)]


def _record(client: MlflowClient, name: str, version: str, transition: Transition) -> None:
    """Write `transition` as the version's latest-transition tags and append it to its history."""
    current = _get_version(client, name, version)
    history = [t.compact() for t in _read_history(current.tags)]
    history = [*history, transition.compact()][-HISTORY_LIMIT:]
    tags = {
        f"{TAG_TRANSITION}.at": transition.at,
        f"{TAG_TRANSITION}.action": transition.action,
        f"{TAG_TRANSITION}.from": transition.from_role,
        f"{TAG_TRANSITION}.to": transition.to_role,
        f"{TAG_TRANSITION}.by": transition.by,
        f"{TAG_TRANSITION}.reason": transition.reason,
        f"{TAG_TRANSITION}.gates": transition.gates,
        TAG_HISTORY: json.dumps(history, separators=(",", ":")),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _aliases_of(aliases: Mapping[str, str], version: str) -> list[str]:
    return [a for a, v in aliases.items() if v == version]


def _record_alias_lost(
    client: MlflowClient,
    name: str,
    version: str,
    aliases: Mapping[str, str],
    alias: str,
    transition: Transition,
) -> None:
    """Record on `version` that it lost `alias` (its roles before and after filled in)."""
    before = _aliases_of(aliases, version)
    after = [a for a in before if a != alias]
    _record(
        client,
        name,
        version,
        replace(transition, from_role=role_of(before), to_role=role_of(after)),
    )


def _verify_aliases(client: MlflowClient, name: str, expected: Mapping[str, str]) -> None:
    """Compare-after-write: the aliases must read back as written."""
    actual = _get_aliases(client, name)
    wrong = {a: actual.get(a) for a, v in expected.items() if actual.get(a) != v}
    if wrong:
        raise ConcurrentModificationError(
            f"model {name!r}: aliases changed during the transition: expected {dict(expected)}, "
            f"found {wrong}; someone changed them without the registry lock — inspect "
            "`flywheel models` and repeat the operation"
        )


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


def read_history(name: str, version: str) -> list[Transition]:
    """Every recorded transition of a version, oldest first."""
    return _read_history(_get_version(_client(), name, version).tags)


def get_version(name: str, version: str) -> ModelVersion:
    """A registered version (run id, source, tags).

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
    """
    return _get_version(_client(), name, str(version))


def run_lineage(run_id: str) -> dict[str, str]:
    """The lineage tags (`flywheel.tracking.LINEAGE_TAGS`) a training run carries."""
    tags = _client().get_run(run_id).data.tags
    return {key: tags[key] for key in LINEAGE_TAGS if key in tags}


def version_for_alias(name: str, alias: str) -> str | None:
    """The version an alias points at, None if the alias (or the model) does not exist."""
    try:
        return _get_aliases(_client(), name).get(alias)
    except ModelNotFoundError:
        return None


# -------------------------------------------------------------------- locks


@contextmanager
def registry_lock(
    name: str,
    *,
    strategy: LockStrategy = "auto",
    timeout: float = 60.0,
    ttl: float = 300.0,
) -> Iterator[None]:
    """Serialize alias read-modify-writes of a registered model across processes and machines.

    Args:
        name: the registered model.
        strategy: `file` (an OS lock next to a local store), `registry` (a lock
            model in the registry itself; works against a tracking server), or
            `auto`: `file` for a local store, `registry` otherwise.
        timeout: seconds to wait for the lock.
        ttl: seconds after which a `registry` lock is considered abandoned and
            may be broken (a transition takes well under a second).

    Raises:
        RegistryLockTimeout: not acquired within `timeout`.
        RegistryError: `file` asked for a store that is not local.
    """
    uri = _registry_uri()
    store = local_store_dir(uri)
    if strategy == "auto":
        strategy = "file" if store is not None else "registry"
    if strategy == "file":
        if store is None:
            raise RegistryError(f"a file lock needs a local store; the registry is {uri}")
        store.mkdir(parents=True, exist_ok=True)
        path = store / LOCK_FILE_NAME
        lock = filelock.FileLock(path)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise RegistryLockTimeout(
                f"registry lock {path} still held after {timeout:.0f}s by another process"
            ) from None
        try:
            yield
        finally:
            lock.release()
    else:
        mutex = _RegistryMutex(_client(), name, ttl=ttl)
        mutex.acquire(timeout)
        try:
            yield
        finally:
            mutex.release()


class _RegistryMutex:
    """A mutex held as a registered model `<name>.promotion-lock` (creation is atomic).

    The owner and expiry live in the lock model's description (a column of its
    row, so they travel with a rename).
    """

    def __init__(self, client: MlflowClient, name: str, *, ttl: float) -> None:
        self.client = client
        self.lock_name = f"{name}{LOCK_SUFFIX}"
        self.ttl = ttl
        self.owner = (
            f"{resolve_user()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        )

    def _describe(self) -> str:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl})

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                self.client.create_registered_model(
                    self.lock_name,
                    description=self._describe(),
                    tags={"flywheel.lock": "promotion lock; delete only if no promotion runs"},
                )
                return
            except MlflowException as err:
                # "exists" is the expected refusal; "does not exist" too: MLflow's
                # SQL store looks the clashing model up after the failed insert,
                # and the holder may have released it in between.
                if _error_code(err) not in (*_EXISTS, _NOT_FOUND):
                    raise
            holder = self._break_if_abandoned()
            if time.monotonic() > deadline:
                raise RegistryLockTimeout(
                    f"registry lock {self.lock_name!r} still held after {timeout:.0f}s "
                    f"(holder: {holder or 'unknown'})"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def _holder(self, lock_name: str) -> dict[str, Any] | None:
        try:
            model = self.client.get_registered_model(lock_name)
        except MlflowException as err:
            if _error_code(err) == _NOT_FOUND:
                return None
            raise
        try:
            info = json.loads(model.description or "")
        except json.JSONDecodeError:
            info = None
        return info if isinstance(info, dict) else {"owner": "?", "expires": 0.0}

    def _break_if_abandoned(self) -> str | None:
        """Remove the lock if its holder's lease has expired; returns the holder's name."""
        holder = self._holder(self.lock_name)
        if holder is None or float(holder.get("expires", 0.0)) > time.time():
            return None if holder is None else str(holder.get("owner"))
        # Rename first: only one waiter can rename a given lock model away.
        grave = f"{self.lock_name}.abandoned-{uuid.uuid4().hex[:12]}"
        try:
            self.client.rename_registered_model(self.lock_name, grave)
        except MlflowException as err:
            if _error_code(err) in (_NOT_FOUND, *_EXISTS):
                return None  # another waiter broke it first
            raise
        moved = self._holder(grave)
        if moved is not None and moved.get("owner") != holder.get("owner"):
            # It was a fresh lock taken after the abandoned one went: give it back.
            self.client.rename_registered_model(grave, self.lock_name)
            return str(moved.get("owner"))
        self.client.delete_registered_model(grave)
        return None

    def release(self) -> None:
        holder = self._holder(self.lock_name)
        if holder is not None and holder.get("owner") == self.owner:
            self.client.delete_registered_model(self.lock_name)


# --------------------------------------------------------------- operations


def register(
    model_uri: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    reason: str = "registered after training",
    who: str | None = None,
    lock: LockStrategy = "auto",
) -> str:
    """Register a logged model as a new version and point `candidate` at it.

    `candidate` only moves forward: if a concurrent registration created a
    later version and took the alias first, it keeps it.

    Args:
        model_uri: the logged model, e.g. `runs:/<run id>/model` or `models:/<model id>`.
        name: the registered model (created if missing).
        tags: version tags, typically the training run's lineage tags
            (`flywheel.tracking.lineage_tags`).
        reason: why, for the history.
        who: who, for the history (default: `resolve_user()`).
        lock: the `registry_lock` strategy.

    Returns:
        The new version number.
    """
    import mlflow

    by = resolve_user(who)
    registered = mlflow.register_model(
        model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()}
    )
    version = str(registered.version)
    client = _client()
    with registry_lock(name, strategy=lock):
        aliases = _get_aliases(client, name)
        replaced = aliases.get(ALIAS_CANDIDATE)
        at = utc_now()
        if replaced is not None and int(replaced) > int(version):
            # A concurrent registration got a later version and already took the alias.
            _record(
                client,
                name,
                version,
                Transition(
                    at,
                    "register",
                    NO_ROLE,
                    NO_ROLE,
                    by,
                    f"{reason} ({model_uri}); version {replaced} is the newer candidate",
                ),
            )
            return version
        client.set_registered_model_alias(name, ALIAS_CANDIDATE, version)
        _verify_aliases(client, name, {ALIAS_CANDIDATE: version})
        _record(
            client,
            name,
            version,
            Transition(at, "register", NO_ROLE, ALIAS_CANDIDATE, by, f"{reason} ({model_uri})"),
        )
        if replaced is not None and replaced != version:
            _record_alias_lost(
                client,
                name,
                replaced,
                aliases,
                ALIAS_CANDIDATE,
                Transition(at, "supersede", "", "", by, f"version {version} is the new candidate"),
            )
    return version


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
            replaced = aliases.get(ALIAS_STAGING)
            client.set_registered_model_alias(name, ALIAS_STAGING, version)
            _verify_aliases(client, name, {ALIAS_STAGING: version})
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
            if replaced is not None and replaced != version:
                _record_alias_lost(
                    client,
                    name,
                    replaced,
                    aliases,
                    ALIAS_STAGING,
                    Transition(
                        at, "supersede", "", "", by, f"version {version} is the new staging version"
                    ),
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


def promote(
    name: str,
    version: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
) -> AliasChange:
    """Move `production` to a blessed version; the replaced version becomes `previous`.

    Idempotent: promoting the version already in production changes nothing.

    Args:
        name: the registered model.
        version: the version to serve.
        reason: why (recorded).
        who: who (recorded; default `resolve_user()`).
        lock: the `registry_lock` strategy.
        lock_timeout: seconds to wait for a concurrent transition.

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
        PromotionRefusedError: never evaluated, or not blessed (`failed_gates` names the gates).
        StaleBlessingError: blessed against a champion that is no longer production.
        RegistryLockTimeout: another transition held the lock too long.
        ConcurrentModificationError: the aliases changed under us without the lock.
    """
    if not reason.strip():
        raise RegistryError("a promotion needs a reason (it is recorded on the version)")
    by = resolve_user(who)
    version = str(version)
    client = _client()
    with registry_lock(name, strategy=lock, timeout=lock_timeout):
        candidate = _get_version(client, name, version)
        aliases = _get_aliases(client, name)
        current = aliases.get(ALIAS_PRODUCTION)
        if current == version:
            return AliasChange(name, version, aliases.get(ALIAS_PREVIOUS), changed=False)
        blessing = _promotable_blessing(name, version, candidate.tags, current)
        old_previous = aliases.get(ALIAS_PREVIOUS)
        # previous first: a crash in between leaves both aliases on the old
        # production version, never a version that fell out of both.
        if current is not None:
            client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
        client.set_registered_model_alias(name, ALIAS_PRODUCTION, version)
        expected = {ALIAS_PRODUCTION: version}
        if current is not None:
            expected[ALIAS_PREVIOUS] = current
        _verify_aliases(client, name, expected)

        at = utc_now()
        before = _aliases_of(aliases, version)
        transition = Transition(
            at,
            "promote",
            role_of(before),
            ALIAS_PRODUCTION,
            by,
            f"{reason} (replaces {current or 'nothing'})",
            blessing.summary(),
        )
        _record(client, name, version, transition)
        if current is not None:
            _record(
                client,
                name,
                current,
                Transition(
                    at,
                    "demote",
                    ALIAS_PRODUCTION,
                    ALIAS_PREVIOUS,
                    by,
                    f"{reason} (replaced by {version})",
                ),
            )
        if old_previous is not None and old_previous not in (version, current):
            _record_alias_lost(
                client,
                name,
                old_previous,
                aliases,
                ALIAS_PREVIOUS,
                Transition(at, "retire", "", "", by, f"{current} is the new previous version"),
            )
    return AliasChange(name, version, current, changed=True, transition=transition)


def _promotable_blessing(
    name: str, version: str, tags: Mapping[str, str], current: str | None
) -> Blessing:
    """The version's blessing if it allows replacing `current` in production; raises otherwise."""
    blessing = _blessing_from_tags(tags)
    if blessing is None:
        raise PromotionRefusedError(
            f"model {name!r} version {version} was never evaluated: run `flywheel evaluate "
            f"--version {version}` first; only a blessed version can reach production"
        )
    if not blessing.blessed:
        failed = [g for g in blessing.gates if not g.passed]
        lines = "\n".join(
            f"  - {g.summary()}" + (f": {g.detail}" if g.detail else "") for g in failed
        )
        raise PromotionRefusedError(
            f"model {name!r} version {version} is not blessed; failed gates "
            f"({len(failed)} of {len(blessing.gates)}):\n{lines}",
            failed_gates=[g.name for g in failed],
        )
    if blessing.champion_version != current:
        raise StaleBlessingError(
            f"model {name!r} version {version} was blessed against champion "
            f"{blessing.champion_version or 'none (first model)'}, but production is now "
            f"{current or 'unset'}: evaluate it again against the current production model",
        )
    return blessing


def rollback(
    name: str,
    *,
    reason: str,
    who: str | None = None,
    lock: LockStrategy = "auto",
    lock_timeout: float = 60.0,
) -> AliasChange:
    """Swap `production` and `previous`: serve the version production replaced.

    The rolled-back version becomes `previous`, so a second rollback undoes the
    first (see the module docstring).

    Raises:
        ModelNotFoundError: no such model.
        AliasNotFoundError: no `production` or no `previous` version.
        PromotionRefusedError: `previous` is not blessed (set by hand?).
        RegistryLockTimeout, ConcurrentModificationError: as for `promote`.
    """
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (it is recorded on the versions)")
    by = resolve_user(who)
    client = _client()
    with registry_lock(name, strategy=lock, timeout=lock_timeout):
        aliases = _get_aliases(client, name)
        current = aliases.get(ALIAS_PRODUCTION)
        if current is None:
            raise AliasNotFoundError(
                f"model {name!r} has no 'production' version: nothing to roll back"
            )
        target = aliases.get(ALIAS_PREVIOUS)
        if target is None:
            raise AliasNotFoundError(
                f"model {name!r} has no 'previous' version to roll back to (production is "
                f"version {current}); promote a blessed version instead"
            )
        blessing = _blessing_from_tags(_get_version(client, name, target).tags)
        if blessing is None or not blessing.blessed:
            raise PromotionRefusedError(
                f"model {name!r}: previous version {target} is not blessed "
                f"({blessing.summary() if blessing else 'never evaluated'}); refusing to serve it",
                failed_gates=blessing.failed_gates if blessing else (),
            )
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
        client.set_registered_model_alias(name, ALIAS_PRODUCTION, target)
        _verify_aliases(client, name, {ALIAS_PRODUCTION: target, ALIAS_PREVIOUS: current})
        at = utc_now()
        transition = Transition(
            at,
            "rollback",
            ALIAS_PREVIOUS,
            ALIAS_PRODUCTION,
            by,
            f"{reason} (rolled back from {current})",
            blessing.summary(),
        )
        _record(client, name, target, transition)
        _record(
            client,
            name,
            current,
            Transition(
                at,
                "rollback",
                ALIAS_PRODUCTION,
                ALIAS_PREVIOUS,
                by,
                f"{reason} (production back to {target})",
            ),
        )
    return AliasChange(name, target, current, changed=True, transition=transition)


def list_versions(name: str) -> list[VersionSummary]:
    """Every version of a registered model, newest first, with aliases, verdict and lineage.

    Raises:
        ModelNotFoundError: no such model.
    """
    client = _client()
    aliases = _get_aliases(client, name)
    versions: list[ModelVersion] = []
    page_token: str | None = None
    while True:
        page = client.search_model_versions(
            f"name = '{name}'", max_results=1000, page_token=page_token
        )
        versions.extend(page)
        page_token = page.token
        if not page_token:
            break
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags or {})
        blessed_tag = tags.get(TAG_BLESSED)
        accuracy = tags.get(TAG_EVAL_ACCURACY)
        history = _read_history(tags)
        out.append(
            VersionSummary(
                version=str(mv.version),
                aliases=tuple(a for a in ROLES if aliases.get(a) == str(mv.version))
                + tuple(
                    sorted(a for a, v in aliases.items() if v == str(mv.version) and a not in ROLES)
                ),
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                run_id=mv.run_id or None,
                source=str(mv.source),
                blessed=None if blessed_tag is None else blessed_tag == "true",
                eval_accuracy=None if accuracy is None else float(accuracy),
                git_commit=tags.get(TAG_GIT_COMMIT),
                data_version=tags.get(TAG_DATA_VERSION),
                last_transition=history[-1] if history else None,
                lineage={k: tags[k] for k in LINEAGE_TAGS if k in tags},
            )
        )
    return out


def model_uri(name: str, version: str) -> str:
    """The URI MLflow loads a registered version from.

    >>> model_uri("digits", "3")
    'models:/digits/3'
    """
    return f"models:/{name}/{version}"


def lock_path_for(uri: str) -> Path | None:
    """Where the `file` lock of a local store lives, None for a server.

    >>> lock_path_for("sqlite:////tmp/x/mlflow.db")
    PosixPath('/tmp/x/.flywheel-registry.lock')
    """
    store = local_store_dir(uri)
    return None if store is None else store / LOCK_FILE_NAME
