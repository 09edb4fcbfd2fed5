"""The gates' verdict on a version: short tags and a description on it, the full record beside it.

What `promote` and `rollback` need is in short version tags, readable in the
MLflow UI and without importing MLflow: `flywheel.blessed` (`true`/`false`),
`flywheel.gates` (the one-line summary), `flywheel.champion` (the production
version it was judged against) and `flywheel.eval_accuracy`. The version's
description says the same for people, with the headline metrics against the
champion's (`flywheel.registry.descriptions`).

The full `Blessing` (every gate, metric and note, several kB of JSON that a
tag shows as one truncated line) is an artifact of the version's source run,
`registry/<model>/<version>/blessing.json` (`read_blessing` reads it); a refused
promotion reads it to name every failed gate with its numbers. A blessed
version becomes `staging` (`record_blessing`).
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
"""The latest `Blessing` as JSON, as registries written before the record moved to an
artifact hold it (read, never written)."""


TAG_GATES = "flywheel.gates"
"""The latest verdict in one line (`Blessing.summary`, cut to `SHORT_TAG_CHARS`)."""


TAG_CHAMPION = "flywheel.champion"
"""The production version the latest evaluation compared with (`none` for a first model)."""


SHORT_TAG_CHARS = 250
"""The longest value flywheel writes in a version tag: what the MLflow UI shows whole."""


NO_CHAMPION = "none"


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


@dataclass(frozen=True)
class Verdict:
    """The latest evaluation's verdict as the version's short tags hold it.

    Attributes:
        blessed: every gate passed.
        champion_version: the production version it was judged against (None: first model).
        summary: `Blessing.summary`, possibly cut short.
    """

    blessed: bool
    champion_version: str | None
    summary: str


def clip(text: str, limit: int = SHORT_TAG_CHARS) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer.

    >>> clip("abcdef", 4)
    'abc…'
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_path(name: str, version: str) -> str:
    """Where the full blessing of a version is, in its source run's artifacts.

    >>> record_path("flywheel-digits", "3")
    'registry/flywheel-digits/3/blessing.json'
    """
    return f"registry/{name}/{version}/blessing.json"


def _verdict_from_tags(tags: Mapping[str, str]) -> Verdict | None:
    """The verdict in a version's tags; None if it was never evaluated."""
    blessed = tags.get(TAG_BLESSED)
    if blessed is not None and TAG_CHAMPION in tags:
        champion = tags[TAG_CHAMPION]
        return Verdict(
            blessed == "true",
            None if champion == NO_CHAMPION else champion,
            tags.get(TAG_GATES, ""),
        )
    legacy = _legacy_blessing(tags)
    if legacy is None:
        return None
    return Verdict(legacy.blessed, legacy.champion_version, legacy.summary())


def _legacy_blessing(tags: Mapping[str, str]) -> Blessing | None:
    raw = tags.get(TAG_BLESSING)
    if raw is None:
        return None
    try:
        return Blessing.from_json(raw)
    except ValueError:
        return None


def read_blessing(name: str, version: str) -> Blessing | None:
    """The latest full blessing of a version, None if it was never evaluated or has no record.

    Reads the record in the source run's artifacts (`record_path`), or the JSON tag
    of a registry written before it moved there. A version registered without a
    run keeps only its verdict (`read_verdict`).

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
    """
    stored = _get_version(_client(), name, version)
    if stored.run_id and _verdict_from_tags(stored.tags) is not None:
        recorded = _load_record(stored.run_id, name, str(version))
        if recorded is not None:
            return recorded
    return _legacy_blessing(stored.tags)


def read_verdict(name: str, version: str) -> Verdict | None:
    """The latest verdict on a version from its tags, None if it was never evaluated.

    Raises:
        ModelNotFoundError, VersionNotFoundError: no such model or version.
    """
    return _verdict_from_tags(_get_version(_client(), name, version).tags)


def _load_record(run_id: str, name: str, version: str) -> Blessing | None:
    """The blessing record in a run's artifacts; None if it is missing or unreadable."""
    from mlflow.artifacts import load_text

    try:
        return Blessing.from_json(load_text(f"runs:/{run_id}/{record_path(name, version)}"))
    except Exception:  # missing, unreachable or hand-edited: the verdict tags still hold
        return None


def _save_record(run_id: str, name: str, version: str, blessing: Blessing) -> None:
    """Write the full blessing beside the version's model, in its source run."""
    from mlflow import MlflowClient

    MlflowClient().log_text(run_id, blessing.to_json(), record_path(name, version))


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
    revoke a blessing). The verdict is written as short tags, the version's
    description is rewritten to say it (with the headline metrics against the
    champion's), and the full blessing is stored in the source run
    (`record_path`), so a refused `promote` can name every failing gate later.

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
    from flywheel.registry.descriptions import version_description

    client = _client()
    stored = _get_version(client, name, version)
    if stored.run_id:
        _save_record(stored.run_id, name, version, blessing)
    with registry_lock(name, strategy=lock):
        stored = _get_version(client, name, version)
        tags = {
            TAG_GATES: clip(blessing.summary()),
            TAG_CHAMPION: blessing.champion_version or NO_CHAMPION,
        }
        if "accuracy" in blessing.metrics:
            tags[TAG_EVAL_ACCURACY] = f"{blessing.metrics['accuracy']:.6f}"
        tags[TAG_BLESSED] = str(blessing.blessed).lower()  # last: the verdict is whole once set
        client.set_model_version_tags(name, version, tags)
        client.update_model_version(
            name,
            version,
            description=version_description(
                version,
                stored.tags,
                blessing,
                run_id=stored.run_id,
                record=record_path(name, version) if stored.run_id else None,
            ),
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
