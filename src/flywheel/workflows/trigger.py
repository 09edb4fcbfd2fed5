"""The guard between a drift verdict and a retraining run, and the history of its decisions.

A drift verdict is cheap; the run it triggers is not: curation spends the
labelling budget, people label for days, training takes a GPU. So a drift
submits the curation pipeline only when every rule of `monitor.trigger` allows:

* **minimum window**: the window holds at least `min_window_size` predictions
  (a verdict on little traffic is too little evidence to pay for labels;
  low-information ones, left out of the drift check, do not count);
* **cooldown**: at least `cooldown_hours` since the last fired trigger (the run
  it started has not yet changed the model: the next hours drift too);
* **daily cap**: fewer than `max_runs_per_day` fired in the 24 hours before;
* **budget**: the labelling budget left (`budget` less the spend the curated
  batches recorded in the last `budget_days`, `flywheel.curation.cost`) buys at
  least one image; the run's curation may then spend at most what is left.

A page plan (`flywheel.monitoring.pages`: a detector and a recogniser, each
checked on its own rows) decides the same way on both stages at once
(`decide_pages`): drift in either stage counts, the minimum window applies per
stage (pages for the detector, crops for the recogniser, each stage's
`monitor.trigger.min_window_size`: a stage that drifted on too small a window
fires nothing, another stage's drift on enough rows still does), and the budget
rule prices a page as the plan's fewest expressions per page cost to label.
A stage's window that was checked before counts with nothing: its verdict was
decided on then.

Every monitor run under `--trigger` records one `Decision` (fired, held back
and every reason why, or none when there was no drift) in the state store,
`<state URL>/monitoring/triggers/<time>.json`, one whole object each: a laptop's
folder and a cluster's bucket keep the same history, and the guard reads it
back for the cooldown and the cap. `guard` is a pure function of that history,
so a simulated week of monitor runs is a list of timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from flywheel.config import Params, TriggerConfig
from flywheel.storage import Location, glob, join, read_bytes, state_url, write_bytes

if TYPE_CHECKING:
    from flywheel.monitoring import MonitorResult
    from flywheel.monitoring.pages import PageMonitorResult

Action = Literal["fired", "held", "none", "failed"]
"""fired: a run was submitted; held: drift, but a rule said no; none: no drift;
failed: the guard allowed it and the submission failed (does not count as fired)."""


class TriggerError(RuntimeError):
    """A decision record cannot be read."""


@dataclass(frozen=True)
class Verdict:
    """What the guard decided and why.

    Attributes:
        action: fired, held or none.
        reasons: why (every rule that held it back; for fired, the drift's signals).
        budget_left: the labelling budget left before this run (None: no budget set).
        spend_limit: what the triggered run's curation may spend (None: its own cap).
    """

    action: Action
    reasons: tuple[str, ...]
    budget_left: float | None = None
    spend_limit: float | None = None


@dataclass(frozen=True)
class Decision:
    """One monitor run's decision, as recorded in the state store.

    Attributes:
        time: when the guard decided (UTC, ISO).
        action: fired, held, none or failed.
        reasons: why.
        drift: the verdict.
        drift_signals: the signals that decided drift.
        model_name: the registered model watched.
        model_version: the version whose traffic was checked.
        window_start: the window's first prediction (ISO).
        window_end: its last (ISO).
        window_size: predictions in the window (the low-information ones left out).
        budget_left: labelling budget left before this run (None: no budget set).
        spend_limit: what the triggered run may spend on labels (None: curate.cost.per_cycle).
        run_id: the submitted run (fired only).
        run_url: where the KFP UI shows it.
        namespace: the namespace it runs in.
        stages: a page plan's stages, each a `StageWindow` as a dict (empty for one model).
    """

    time: str
    action: Action
    reasons: list[str]
    drift: bool
    drift_signals: list[str] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    window_start: str = ""
    window_end: str = ""
    window_size: int = 0
    budget_left: float | None = None
    spend_limit: float | None = None
    run_id: str | None = None
    run_url: str | None = None
    namespace: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def when(self) -> datetime:
        """`time` as a datetime (UTC)."""
        return datetime.fromisoformat(self.time).astimezone(UTC)

    def summary(self) -> str:
        """One line for the Job's log: the action, why, and the window."""
        verdict = "DRIFT" if self.drift else "no drift"
        run = f": run {self.run_id}" if self.run_id else ""
        if self.stages:
            per_stage = "; ".join(StageWindow(**s).describe() for s in self.stages)
            return (
                f"trigger {self.action.upper()}{run} ({'; '.join(self.reasons)}) — {verdict}, "
                f"window {self.window_start} → {self.window_end}, {self.window_size} pages: "
                f"{per_stage}"
            )
        return (
            f"trigger {self.action.upper()}{run} ({'; '.join(self.reasons)}) — {verdict}, "
            f"{self.model_name} v{self.model_version}, window {self.window_start} → "
            f"{self.window_end}, {self.window_size} predictions"
        )


def guard(
    config: TriggerConfig,
    *,
    now: datetime,
    drift: bool,
    window_size: int,
    history: Sequence[Decision],
    spent: float = 0.0,
    image_cost: float = 0.0,
    signals: Sequence[str] = (),
    too_small: Sequence[str] | None = None,
) -> Verdict:
    """Decide whether a drift verdict submits a run: every rule is checked, each refusal named.

    Args:
        config: `monitor.trigger`.
        now: the decision's time (UTC).
        drift: the monitor's verdict.
        window_size: predictions in the window behind it.
        history: earlier decisions (any order; later than `now` are ignored).
        spent: labelling spend recorded in the last `config.budget_days`.
        image_cost: what one image's labels cost (`flywheel.curation.cost.image_cost`).
        signals: the signals that decided drift (for the reason of a fired trigger).
        too_small: the minimum window's refusals where the caller checked its windows
            itself (a page plan, per stage: `decide_pages`); None: `window_size` against
            `config.min_window_size`.
    """
    left = None if config.budget is None else round(config.budget - spent, 9)
    if not drift:
        return Verdict("none", ("no drift",), left)
    reasons: list[str] = []
    if too_small is not None:
        reasons.extend(too_small)
    elif window_size < config.min_window_size:
        reasons.append(
            f"window of {window_size} predictions < min_window_size {config.min_window_size}"
        )
    fired = sorted(d.when for d in history if d.action == "fired" and d.when <= now)
    if fired and now - fired[-1] < timedelta(hours=config.cooldown_hours):
        hours = (now - fired[-1]).total_seconds() / 3600
        reasons.append(
            f"cooldown: last fired {hours:.1f} h ago < cooldown_hours {config.cooldown_hours:g}"
        )
    today = [t for t in fired if now - t < timedelta(hours=24)]
    if len(today) >= config.max_runs_per_day:
        reasons.append(
            f"daily cap: {len(today)} fired in the last 24 h >= max_runs_per_day "
            f"{config.max_runs_per_day}"
        )
    if left is not None and (left <= 0 or (image_cost > 0 and left < image_cost)):
        reasons.append(
            f"budget: {max(left, 0.0):.2f} left of {config.budget:g} per "
            f"{config.budget_days:g} days buys no image at {image_cost:g}"
        )
    if reasons:
        return Verdict("held", tuple(reasons), left)
    why = f"drift ({', '.join(signals)})" if signals else "drift"
    return Verdict("fired", (why,), left, spend_limit=left)


# ------------------------------------------------------------------ the record


def triggers_dir(state: Location) -> Location:
    """Where decisions are recorded: `<state URL>/monitoring/triggers`."""
    return join(state, "monitoring", "triggers")


def record_decision(state: Location, decision: Decision) -> Location:
    """Write one decision into the state store (a whole object, named by its time)."""
    stamp = decision.when.strftime("%Y%m%dT%H%M%S%fZ")
    return write_bytes(
        join(triggers_dir(state), f"{stamp}-{decision.action}.json"),
        (json.dumps(asdict(decision), indent=2) + "\n").encode("utf-8"),
    )


def read_decisions(state: Location, since: datetime | None = None) -> list[Decision]:
    """The recorded decisions, oldest first (from `since` on, when given).

    Raises:
        TriggerError: a record is not a decision.
    """
    decisions = []
    for location in glob(triggers_dir(state), "*.json"):
        try:
            decision = Decision(**json.loads(read_bytes(location)))
        except (TypeError, ValueError) as err:
            raise TriggerError(f"{location}: not a trigger decision: {err}") from None
        if since is None or decision.when >= since:
            decisions.append(decision)
    return sorted(decisions, key=lambda d: d.when)


def decide(params: Params, result: MonitorResult, *, now: datetime | None = None) -> Decision:
    """The guard's decision on one monitor result, against the history in the state store.

    Reads the decisions of the last `max(cooldown, 24 h)` and the labelling
    spend of the last `budget_days`; the caller submits a run when the action
    is `fired`, then records the decision (`record_decision`).

    Raises:
        TriggerError: a decision record cannot be read.
        flywheel.curation.CurationError: a spend record cannot be read, or an
            image's labels have no price.
    """
    from flywheel.curation.cost import image_cost, read_spend, spent_since

    config = params.monitor.trigger
    now = (now or datetime.now(UTC)).astimezone(UTC)
    state = state_url(params.state.url)
    lookback = timedelta(hours=max(config.cooldown_hours, 24.0))
    history = read_decisions(state, since=now - lookback)
    spent = 0.0
    if config.budget is not None and result.drift:
        spent = spent_since(read_spend(state), now - timedelta(days=config.budget_days))
    verdict = guard(
        config,
        now=now,
        drift=result.drift,
        window_size=result.window_size,
        history=history,
        spent=spent,
        image_cost=image_cost(params) if result.drift else 0.0,
        signals=result.check.reasons,
    )
    limit, cap = verdict.spend_limit, params.curate.cost.per_cycle
    if limit is not None and cap is not None and cap <= limit:
        limit = None  # the cycle's own cap is within what is left
    return Decision(
        time=now.isoformat(),
        action=verdict.action,
        reasons=list(verdict.reasons),
        drift=result.drift,
        drift_signals=list(result.check.reasons),
        model_name=result.model_name,
        model_version=result.model_version,
        window_start=result.window_start.isoformat(),
        window_end=result.window_end.isoformat(),
        window_size=result.window_size,
        budget_left=verdict.budget_left,
        spend_limit=limit,
    )


@dataclass(frozen=True)
class StageWindow:
    """One stage of a page plan in a trigger decision: its model, its verdict, its window.

    Attributes:
        stage: `detection` or `recognition` (`flywheel.monitoring.pages.STAGES`).
        model_name: the stage's registered model.
        model_version: the version whose rows were checked ("" when not checked).
        drift: the stage's verdict (a window checked before: the verdict recorded then).
        signals: the signals that decided it.
        window_size: the rows checked (pages for the detector, crops for the recogniser).
        min_window_size: the stage's `monitor.trigger.min_window_size`.
        rows: what a row is (`pages`, `crops`).
        status: `checked`, `already` (checked before: does not count) or `skipped`.
        note: why a stage was skipped.
    """

    stage: str
    model_name: str
    model_version: str = ""
    drift: bool = False
    signals: list[str] = field(default_factory=list)
    window_size: int = 0
    min_window_size: int = 0
    rows: str = "rows"
    status: Literal["checked", "already", "skipped"] = "checked"
    note: str = ""

    @property
    def counts(self) -> bool:
        """Whether the stage's drift is evidence for this decision (checked now, enough rows)."""
        return self.status == "checked" and self.drift and self.window_size >= self.min_window_size

    def describe(self) -> str:
        """`detection pages-det v3: DRIFT (features), 60 pages`."""
        if self.status == "skipped":
            return f"{self.stage} {self.model_name}: not checked"
        verdict = (
            (f"DRIFT ({', '.join(self.signals)})" if self.signals else "DRIFT")
            if self.drift
            else "no drift"
        )
        before = " (checked before)" if self.status == "already" else ""
        return (
            f"{self.stage} {self.model_name} v{self.model_version}: {verdict}{before}, "
            f"{self.window_size} {self.rows}"
        )


def page_stage_windows(params: Params, result: PageMonitorResult) -> list[StageWindow]:
    """Each stage of a page monitor result as the trigger weighs it (`StageWindow`)."""
    from flywheel.monitoring.pages import PAGE_STAGE, STAGES, stage_params

    plans = stage_params(params)
    windows = []
    for stage in STAGES:
        plan = plans[stage]
        window = StageWindow(
            stage,
            plan.evaluate.registered_model,
            min_window_size=plan.monitor.trigger.min_window_size,
            rows="pages" if stage == PAGE_STAGE else "crops",
        )
        if stage in result.results:
            checked = result.results[stage]
            window = replace(
                window,
                model_version=checked.model_version,
                drift=checked.drift,
                signals=list(checked.check.reasons),
                window_size=checked.window_size,
            )
        elif stage in result.already:
            done = result.already[stage]
            window = replace(
                window,
                model_version=done.metadata.get("model_version", ""),
                drift=done.drift,
                signals=[r for r in done.metadata.get("reasons", "").split(",") if r],
                status="already",
            )
        else:
            window = replace(
                window, status="skipped", note=result.skipped.get(stage, "not asked for")
            )
        windows.append(window)
    return windows


def decide_pages(
    params: Params, result: PageMonitorResult, *, now: datetime | None = None
) -> Decision:
    """The guard's decision on a page plan's monitor result (both stages), against the history.

    Drift is drift in a stage checked now on at least its minimum window; a stage
    that drifted on fewer rows holds the trigger back (and says so) unless another
    stage's drift counts. Cooldown, daily cap and budget are the plan's
    `monitor.trigger`; a page is priced at the plan's fewest expressions per page
    (`data.pages.expressions`), a box and a transcription each.

    Raises:
        TriggerError: a decision record cannot be read.
        flywheel.monitoring.MonitoringError: not a page plan.
        flywheel.curation.CurationError: a spend record cannot be read, or
            `curate.cost.prices` lacks the box or transcription price (drift only).
    """
    from flywheel.curation.cost import read_spend, spent_since
    from flywheel.curation.strategies import CurationError
    from flywheel.labeling.pages import page_cost

    config = params.monitor.trigger
    now = (now or datetime.now(UTC)).astimezone(UTC)
    state = state_url(params.state.url)
    stages = page_stage_windows(params, result)
    fresh = [s for s in stages if s.status == "checked"]
    drifted = [s for s in fresh if s.drift]
    drift = bool(drifted)
    too_small = (
        []
        if any(s.counts for s in drifted)
        else [
            f"{s.stage}: window of {s.window_size} {s.rows} < min_window_size {s.min_window_size}"
            for s in drifted
        ]
    )
    history = read_decisions(state, since=now - timedelta(hours=max(config.cooldown_hours, 24.0)))
    spent, cost = 0.0, 0.0
    if drift:
        if config.budget is not None:
            spent = spent_since(read_spend(state), now - timedelta(days=config.budget_days))
        pages = params.data.pages
        try:
            cost = page_cost([pages.expressions[0] if pages is not None else 1], params).spend
        except KeyError as err:
            raise CurationError(str(err.args[0])) from None
    signals = [f"{s.stage}: {signal}" for s in drifted for signal in s.signals]
    verdict = guard(
        config,
        now=now,
        drift=drift,
        window_size=result.pages,
        history=history,
        spent=spent,
        image_cost=cost,
        signals=signals,
        too_small=too_small,
    )
    limit, cap = verdict.spend_limit, params.curate.cost.per_cycle
    if limit is not None and cap is not None and cap <= limit:
        limit = None  # the cycle's own cap is within what is left
    starts = [r.window_start for r in result.results.values()]
    ends = [r.window_end for r in result.results.values()]
    return Decision(
        time=now.isoformat(),
        action=verdict.action,
        reasons=list(verdict.reasons),
        drift=drift,
        drift_signals=signals,
        model_name=" + ".join(s.model_name for s in stages),
        model_version=" + ".join(s.model_version or "?" for s in stages),
        window_start=min(starts).isoformat() if starts else "",
        window_end=max(ends).isoformat() if ends else "",
        window_size=result.pages,
        budget_left=verdict.budget_left,
        spend_limit=limit,
        stages=[asdict(s) for s in stages],
    )


def fired(decision: Decision, run_id: str, run_url: str, namespace: str) -> Decision:
    """The decision with the run it submitted."""
    return replace(decision, run_id=run_id, run_url=run_url, namespace=namespace or None)


def failed(decision: Decision, error: str) -> Decision:
    """The decision of a run the guard allowed but whose submission failed."""
    return replace(decision, action="failed", reasons=[*decision.reasons, f"submission: {error}"])
