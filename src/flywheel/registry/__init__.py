"""The model registry (MLflow): stages as aliases, blessings and transitions as version tags.

A registered model's versions move through four aliases (never MLflow's
deprecated stages):

* `candidate` — the latest registered version (`register`);
* `staging` — the latest version the evaluation gates blessed (`record_blessing`);
* `production` — what serving loads (`promote`, `rollback`);
* `previous` — the version `production` pointed at before the last change, kept
  for a one-command `rollback`.

A version holds one stage alias: the version that becomes `production` gives
up `staging` and `candidate` in the same crash-safe transition.

Every transition is written on each version it touches: the latest one as a
line in the `flywheel.transition` tag (action, from, to, who, when, why) and
all of them, compactly, as a JSON list in `flywheel.history`. The verdict of
the gates is in short version tags (`flywheel.blessed`, `flywheel.gates`,
`flywheel.champion`, `flywheel.eval_accuracy`), so `promote` can refuse an
unblessed version by reading the registry alone; the full blessing is an
artifact of the version's run, read to name every failed gate. The registered
model and each version carry a description for people (what the model is; a
version's data, headline metrics and verdict against the champion).

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
  unique), so exactly one process succeeds; the others wait. The lock records
  its holder (user, host, PID, since) and a lease of seconds that a background
  thread renews while the holder runs; a waiter breaks it at once when the
  holder ran on its host and its PID is gone, otherwise when the lease has
  expired — by renaming it away, atomic too, so only one waiter breaks a given
  lock. `flywheel registry unlock --reason` breaks any lock, recorded.
  After writing, every transition reads the aliases back and raises
  `ConcurrentModificationError` if they are not what it wrote (someone changed
  them without the lock, e.g. by hand in the MLflow UI).

Crashes: a promote or rollback writes its whole plan (who, why, from, to, the
aliases and records) on the registered model before its first write
(`journal`); whoever takes the lock next finishes a plan whose writer died, so
`kill -9` at any point leaves a registry that the next command puts right, with
every transition in the history. A transition that waited for the lock while
another one moved `production` refuses to undo it (`TransitionOvertakenError`)
unless forced.

The registry is MLflow's configured one (`flywheel.tracking.configure_tracking`
or `MLFLOW_TRACKING_URI`), reached through `access`: MLflow's REST API for a
tracking server, MLflow's own tables (SQLAlchemy Core) for a database store,
MLflow's client for anything else, so that `flywheel rollback` does not import
MLflow (2-3 s) during an incident.

The parts: `access` (how the registry is reached), `versions` (register, look
up, list), `blessing` (the gates' verdict on a version), `aliases` (promote,
rollback), `descriptions` (what the model's and versions' pages say), `history`
(the recorded transitions), `journal` (crash-safe
transitions: intent, replay, the model's log), `lock` (the registry lock,
`unlock`, `recover`), `holder` (who holds it, alive or not), `faults` (the
crash tests' kill points), `store` (registry reads with clear errors), `errors`.
"""

from __future__ import annotations

from flywheel.registry.aliases import AliasChange, promote, rollback
from flywheel.registry.blessing import (
    TAG_BLESSED,
    TAG_BLESSING,
    TAG_CHAMPION,
    TAG_EVAL_ACCURACY,
    TAG_GATES,
    Blessing,
    GateResult,
    Verdict,
    read_blessing,
    read_verdict,
    record_blessing,
    record_path,
)
from flywheel.registry.errors import (
    AliasNotFoundError,
    ConcurrentModificationError,
    ModelNotFoundError,
    PromotionRefusedError,
    RegistryError,
    RegistryLockTimeout,
    StaleBlessingError,
    TransitionOvertakenError,
    VersionNotFoundError,
)
from flywheel.registry.history import (
    HISTORY_LIMIT,
    TAG_HISTORY,
    TAG_TRANSITION,
    USER_ENV,
    Transition,
    read_history,
    resolve_user,
    utc_now,
)
from flywheel.registry.journal import (
    TAG_LOG,
    TAG_PENDING,
    Intent,
    LogEntry,
    pending_intent,
    read_log,
)
from flywheel.registry.lock import (
    LEASE_S,
    LOCK_FILE_NAME,
    LOCK_SUFFIX,
    LockHolder,
    LockStrategy,
    Unlocked,
    lock_path_for,
    recover,
    registry_lock,
    unlock,
)
from flywheel.registry.store import (
    ALIAS_CANDIDATE,
    ALIAS_PREVIOUS,
    ALIAS_PRODUCTION,
    ALIAS_STAGING,
    NO_ROLE,
    ROLES,
    role_of,
)
from flywheel.registry.versions import (
    VersionSummary,
    artifact_problem,
    get_version,
    list_versions,
    model_uri,
    register,
    run_lineage,
    version_for_alias,
)

__all__ = [
    "ALIAS_CANDIDATE",
    "ALIAS_PREVIOUS",
    "ALIAS_PRODUCTION",
    "ALIAS_STAGING",
    "HISTORY_LIMIT",
    "LEASE_S",
    "LOCK_FILE_NAME",
    "LOCK_SUFFIX",
    "NO_ROLE",
    "ROLES",
    "TAG_BLESSED",
    "TAG_BLESSING",
    "TAG_CHAMPION",
    "TAG_EVAL_ACCURACY",
    "TAG_GATES",
    "TAG_HISTORY",
    "TAG_LOG",
    "TAG_PENDING",
    "TAG_TRANSITION",
    "USER_ENV",
    "AliasChange",
    "AliasNotFoundError",
    "Blessing",
    "ConcurrentModificationError",
    "GateResult",
    "Intent",
    "LockHolder",
    "LockStrategy",
    "LogEntry",
    "ModelNotFoundError",
    "PromotionRefusedError",
    "RegistryError",
    "RegistryLockTimeout",
    "StaleBlessingError",
    "Transition",
    "TransitionOvertakenError",
    "Unlocked",
    "Verdict",
    "VersionNotFoundError",
    "VersionSummary",
    "artifact_problem",
    "get_version",
    "list_versions",
    "lock_path_for",
    "model_uri",
    "pending_intent",
    "promote",
    "read_blessing",
    "read_history",
    "read_log",
    "read_verdict",
    "record_blessing",
    "record_path",
    "recover",
    "register",
    "registry_lock",
    "resolve_user",
    "role_of",
    "rollback",
    "run_lineage",
    "unlock",
    "utc_now",
    "version_for_alias",
]
