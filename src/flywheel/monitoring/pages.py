"""Monitoring of the page service: each stage against the reference of the version that served it.

The page service runs two models in a row, and each swaps on its own, so every
line of the page log (`flywheel.monitoring.page_log`) names both versions.
`monitor_pages` reads a window of that log and checks each stage with the
digits' drift check (`flywheel.monitoring.monitor.check_window`: Evidently
tests, an HTML report with the verdict in its header, a snapshot in the
project of the stage's registered model, its dashboard):

* **page stage** (the detector, one row per page, `PAGE_STAGE`): the summary
  features of the detector's input, its page embedding (PCA components),
  `prediction` = the regions the page was answered with (as a count, `"3"`:
  the distribution of regions per page), `confidence` = the detector's least
  certain grid cell (`detector_confidence`), and the mean detection score of
  the page's regions (`detection_score`, an `ExtraColumn` that counts towards
  the confidence signal; NaN on a page without a region);
* **crop stage** (the recogniser, one row per region, `CROP_STAGE`): the
  summary features of its input crop, its crop embedding (PCA components),
  `prediction` = the transcript's length in tokens (a transcript itself is
  nearly unique: its distribution says nothing), `confidence` = the
  probability of the greedy CTC path.

The reference of a stage is the profile of the version that served the
window's latest page: the detector's, its training pages through the exported
model (`flywheel.monitoring.reference`); the recogniser's, the crops the
window's detector version cuts from those pages, read by the recogniser
version (`flywheel.monitoring.page_reference`: made once per pair of versions
where the page dataset is, kept in the state store). Its own profile, of crops
around the true boxes, is used only where that cannot be had (a warning says
so): served crops are cut around the detector's boxes, and against true-box
crops in-distribution traffic of an undertrained detector reads as drift.
Rows served by other versions are counted and left out. A window one stage
already checked is named and not checked again (its `MonitoredWindow`); the
other stage is still checked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.config import Params
from flywheel.monitoring.drift import (
    CONFIDENCE,
    MODEL_VERSION,
    PREDICTION,
    ExtraColumn,
    Window,
    window_from_reference,
)
from flywheel.monitoring.features import FEATURE_COLUMNS
from flywheel.monitoring.monitor import (
    EXIT_DRIFT,
    EXIT_NO_DRIFT,
    AlreadyMonitoredError,
    MonitorResult,
    NotEnoughDataError,
    check_window,
    workspace_dir,
)
from flywheel.monitoring.reference import MonitoringError, ReferenceNotFoundError, load_reference
from flywheel.monitoring.workspace import MonitoredWindow
from flywheel.storage import Location

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from evidently.ui.workspace import Workspace

PAGE_STAGE = "detection"
CROP_STAGE = "recognition"
STAGES: tuple[str, ...] = (PAGE_STAGE, CROP_STAGE)
"""The stages, named by their tasks (`train.task`: a plan's `tasks` section each)."""
DETECTION_SCORE = "detection_score"
"""The page stage's own column: its regions' mean detection score (the detector's profile
column `flywheel.tasks.detection.DETECTION_SCORE_COLUMN`, named here so that monitoring
imports no torch)."""
REGIONS = "regions"
"""The detector profile's regions per page (`flywheel.tasks.detection.REGIONS_COLUMN`)."""
LABELS: dict[str, dict[str, str]] = {
    PAGE_STAGE: {
        PREDICTION: "regions per page",
        CONFIDENCE: "detector confidence",
        DETECTION_SCORE: "detection score",
    },
    CROP_STAGE: {PREDICTION: "transcript length (tokens)", CONFIDENCE: "recognition confidence"},
}
"""How reports, dashboards and tables name each stage's prediction and confidence."""


def stage_params(params: Params) -> dict[str, Params]:
    """The page plan read once per stage (`train.task` set: its section, its registered model).

    Raises:
        MonitoringError: not a page plan, or a plan without both tasks.
    """
    from flywheel.config import parse_params

    missing = [t for t in STAGES if t not in params.tasks]
    if params.data.pages is None or missing:
        raise MonitoringError(
            f"plan {params.data.name!r} is not a two-stage page plan (data.pages and the tasks "
            f"{list(STAGES)}; missing: {missing or ['data.pages']}): monitor it with the digits "
            "params, or pass --params plans/pages.yaml"
        )
    raw = params.model_dump(mode="json")
    return {task: parse_params(raw, {"train.task": task}) for task in STAGES}


def page_log_root(params: Params, base: Path | None = None) -> Location:
    """Where the page service of this plan writes its log (`page_log.page_predictions_dir`):
    a local folder, or a URL under an object-store state URL.

    Raises:
        MonitoringError: not a page plan.
    """
    from flywheel.monitoring.page_log import page_predictions_dir

    stages = stage_params(params)
    detector, recognizer = (stages[t].evaluate.registered_model for t in STAGES)
    return page_predictions_dir(stages[PAGE_STAGE], detector, recognizer, base)


def token_count(latex: str) -> str:
    """A transcript's length in vocabulary tokens, as the crop stage's `prediction`.

    >>> token_count("\\\\frac{1}{2}"), token_count("")
    ('7', '0')
    """
    from flywheel.data.pages import tokenize

    return str(len(tokenize(latex)))


def _features(mappings: pd.Series) -> pd.DataFrame:
    """A column of logged feature dicts → one float column per summary feature."""
    frame = pd.DataFrame(mappings.tolist(), columns=list(FEATURE_COLUMNS))
    if frame.isna().any().any():
        raise MonitoringError(
            f"logged summary features lack some of {list(FEATURE_COLUMNS)} (another log?)"
        )
    return frame.astype(np.float64)


def page_window(pages: pd.DataFrame, scores: pd.Series) -> Window:
    """The page stage's rows of logged pages (`read_pages`'s pages), one per page.

    Args:
        pages: the pages, all of one detector version.
        scores: each page's mean detection score by `request_id` (pages without
            a region are missing: NaN).
    """
    rows = _features(pages["page_features"])
    rows[PREDICTION] = pages["n_regions"].astype(int).astype(str).to_numpy()
    rows[CONFIDENCE] = pages["detector_confidence"].astype(np.float64).to_numpy()
    rows[MODEL_VERSION] = pd.to_numeric(pages["detector_version"], errors="coerce").to_numpy()
    rows[DETECTION_SCORE] = pages["request_id"].map(scores).astype(np.float64).to_numpy()
    return Window(rows, pages["detector_embedding"].reset_index(drop=True))


def crop_window(regions: pd.DataFrame, versions: pd.Series) -> Window:
    """The crop stage's rows of logged regions (`read_pages`'s regions), one per crop.

    Args:
        regions: the regions, all read by one recogniser version.
        versions: the recogniser version of each region's page, aligned with `regions`.
    """
    rows = _features(regions["crop_features"])
    rows[PREDICTION] = [token_count(str(text)) for text in regions["latex"]]
    rows[CONFIDENCE] = regions["confidence"].astype(np.float64).to_numpy()
    rows[MODEL_VERSION] = pd.to_numeric(versions, errors="coerce").to_numpy()
    return Window(rows, regions["embedding"].reset_index(drop=True))


def stage_reference(
    stage: str, profile: pd.DataFrame, splits: Sequence[str], version: int
) -> Window:
    """A stage's reference rows from its version's profile, in the terms of its window.

    Raises:
        MonitoringError: the profile has no rows in `splits`, or is not a profile of
            the stage's task (a detector's lacks `regions` per page).
    """
    window = window_from_reference(profile, splits, version)
    chosen = profile[profile["split"].isin(list(splits))].reset_index(drop=True)
    rows = window.rows.copy()
    if stage == PAGE_STAGE:
        missing = [c for c in (REGIONS, DETECTION_SCORE) if c not in chosen]
        if missing:
            raise MonitoringError(
                f"the detector's reference profile lacks {missing}: it predates the page "
                "monitoring; compute it again with `flywheel reference`"
            )
        rows[PREDICTION] = chosen[REGIONS].astype(int).astype(str).to_numpy()
        rows[DETECTION_SCORE] = chosen[DETECTION_SCORE].astype(np.float64).to_numpy()
    else:
        rows[PREDICTION] = [token_count(str(text)) for text in chosen["prediction"]]
    return Window(rows, window.embeddings)


@dataclass(frozen=True)
class PageMonitorResult:
    """One check of the page log: a result per stage checked, and why any other was not.

    Attributes:
        results: per stage checked (`PAGE_STAGE`, `CROP_STAGE`), its `MonitorResult`.
        already: per stage whose window the workspace held already, that window.
        skipped: per stage that could not be checked, why (and what to do).
        pages: pages in the window read.
    """

    results: dict[str, MonitorResult] = field(default_factory=dict)
    already: dict[str, MonitoredWindow] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pages: int = 0

    @property
    def drift(self) -> bool:
        """Drift in either stage (a window checked before counts with its recorded verdict)."""
        return any(r.drift for r in self.results.values()) or any(
            w.drift for w in self.already.values()
        )

    @property
    def exit_code(self) -> int:
        """The command's exit status: 1 when either stage drifted, else 0."""
        return EXIT_DRIFT if self.drift else EXIT_NO_DRIFT

    def scalars(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact: `drift`, then `<stage>.<name>` per stage."""
        values = {"drift": float(self.drift), "pages": float(self.pages)}
        for stage, result in self.results.items():
            values |= {f"{stage}.{k}": v for k, v in result.scalars().items()}
        for stage, window in self.already.items():
            values |= {f"{stage}.{k}": v for k, v in window.scalars().items()}
        return values

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for `flywheel monitor --json`."""
        return {
            "drift": self.drift,
            "exit_code": self.exit_code,
            "pages": self.pages,
            "stages": {s: r.to_dict() for s, r in self.results.items()},
            "already_monitored": {
                s: {**w.metadata, "drift": w.drift, "snapshot_id": w.snapshot_id}
                for s, w in self.already.items()
            },
            "skipped": dict(self.skipped),
        }


def _version_rows(versions: pd.Series, chosen: str | None) -> tuple[np.ndarray, str]:
    """Rows of one version: `chosen`, else the latest row's (rows are time-ordered)."""
    as_text = versions.astype(str)
    version = str(chosen) if chosen is not None else str(as_text.iloc[-1])
    return (as_text == version).to_numpy(), version


def monitor_pages(
    params: Params,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    last: int | None = None,
    log_dir: Location | None = None,
    save: bool = True,
    now: datetime | None = None,
    force: bool = False,
    stages: Sequence[str] = STAGES,
) -> PageMonitorResult:
    """Check a window of the page log, each stage against its serving version's reference.

    Args:
        params: the page plan (its `tasks` name both registered models; `monitor` of
            each stage's section).
        since: window start (inclusive); default `monitor.since`, else
            `now - monitor.window_hours`, unless `last` is given.
        until: window end (exclusive); default now.
        last: only the most recent `last` pages of the window.
        log_dir: the page log (default `page_log_root(params)`).
        save: write the reports and add the snapshots to the Evidently workspace.
        now: the current time (tests).
        force: check again a window a stage already checked.
        stages: the stages to check.

    Raises:
        NotEnoughDataError: the window holds no page.
        MonitoringError: no stage could be checked (each reason named), or not a page plan.
        ConfigError: a configured drift test is not an Evidently stattest.
    """
    plans = stage_params(params)
    config = plans[PAGE_STAGE].monitor
    now = now or datetime.now(UTC)
    if since is None and last is None:
        since = config.since or now - timedelta(hours=config.window_hours)
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
    root = log_dir if log_dir is not None else page_log_root(params)
    from flywheel.monitoring.page_log import read_pages
    from flywheel.registry import RegistryError

    try:
        pages, regions = read_pages(root, since, until)
    except OSError as err:
        raise MonitoringError(f"cannot read the page log {root}: {err}") from err
    if last is not None:
        pages = pages.iloc[-last:].reset_index(drop=True)
        regions = regions[regions["request_id"].isin(pages["request_id"])].reset_index(drop=True)
    if pages.empty:
        raise NotEnoughDataError(
            f"no pages in the page log {root} between {_when(since, 'the start')} and "
            f"{_when(until, 'now')}{f' (last {last})' if last else ''}: send pages to the page "
            "service (flywheel serve --params plans/pages.yaml), or widen --since/--last"
        )
    location = workspace_dir(plans[PAGE_STAGE])
    workspace = _open(location) if save else None
    out = PageMonitorResult(pages=len(pages))
    for stage in stages:
        try:
            result = _check_stage(
                stage, plans, pages, regions, save=save, force=force, workspace=workspace
            )
        except AlreadyMonitoredError as done:
            out.already[stage] = done.window
        except (NotEnoughDataError, ReferenceNotFoundError, RegistryError) as err:
            out.skipped[stage] = str(err)
        else:
            out.results[stage] = result
    if not out.results and not out.already:
        raise MonitoringError(
            "no stage of the page service could be checked: "
            + "; ".join(f"{stage}: {why}" for stage, why in out.skipped.items())
        )
    return out


def _open(location: Any) -> Workspace:
    from flywheel.monitoring.workspace import open_workspace
    from flywheel.storage import reported

    try:
        with reported(location):
            return open_workspace(location)  # parses every snapshot: once for both stages
    except OSError as err:
        raise MonitoringError(f"cannot read the Evidently workspace: {err}") from err


def _check_stage(
    stage: str,
    plans: dict[str, Params],
    pages: pd.DataFrame,
    regions: pd.DataFrame,
    *,
    save: bool,
    force: bool,
    workspace: Workspace | None,
) -> MonitorResult:
    """One stage's window, its reference and its check (`check_window`)."""
    params = plans[stage]
    config = params.monitor
    name = params.evaluate.registered_model
    if stage == PAGE_STAGE:
        mine, version = _version_rows(pages["detector_version"], None)
        rows = pages[mine].reset_index(drop=True)
        scores = regions.groupby("request_id")["score"].mean()
        current = page_window(rows, scores)
        times, what = rows["time"], "pages"
    else:
        versions = regions["request_id"].map(pages.set_index("request_id")["recognizer_version"])
        if regions.empty:
            raise NotEnoughDataError("the window's pages hold no region: no crop was read")
        mine, version = _version_rows(versions, None)
        rows = regions[mine].reset_index(drop=True)
        current = crop_window(rows, versions[mine].reset_index(drop=True))
        times, what = rows["time"], "crops"
    others = int((~mine).sum())
    if len(current) < config.min_window_size:
        raise NotEnoughDataError(
            f"the window holds {len(current)} {what} of {name} version {version}; "
            f"monitor.min_window_size is {config.min_window_size}: wait for more pages or "
            "widen --since/--last"
        )
    profile = None
    if stage == CROP_STAGE:
        detector = (
            plans[PAGE_STAGE].evaluate.registered_model,
            str(rows["request_id"].map(pages.set_index("request_id")["detector_version"]).iloc[-1]),
        )
        profile = _detected_crops(params, (name, version), detector)
    if profile is None:
        try:
            profile = load_reference(name, version)
        except ReferenceNotFoundError as err:
            raise ReferenceNotFoundError(
                f"{err}; for the page plan: `flywheel reference --params <plan> --set "
                f"train.task={stage} --version {version}`"
            ) from None
    reference = stage_reference(stage, profile, config.reference_splits, int(version))
    # A detector that found no box on any page of one side has no score to compare
    # (Evidently refuses an empty column): the signal is left out, not the stage.
    scored = stage == PAGE_STAGE and all(
        w.rows[DETECTION_SCORE].notna().any() for w in (current, reference)
    )
    extra = (
        [ExtraColumn(DETECTION_SCORE, config.confidence, "confidence", "detection score")]
        if scored
        else []
    )
    start = pd.Timestamp(times.iloc[0]).to_pydatetime()
    end = pd.Timestamp(times.iloc[-1]).to_pydatetime()
    return check_window(
        params,
        name,
        version,
        current,
        reference,
        start,
        end,
        other_versions=others,
        save=save,
        force=force,
        extra=extra,
        labels=LABELS[stage],
        workspace=workspace,
    )


def _detected_crops(
    params: Params, recognizer: tuple[str, str], detector: tuple[str, str]
) -> pd.DataFrame | None:
    """The crop stage's reference for the serving pair (`page_reference`); None, with a
    warning, where it cannot be had (the recogniser's own profile is used then)."""
    from flywheel.monitoring.page_reference import detected_crop_reference
    from flywheel.registry import RegistryError
    from flywheel.storage import state_url

    try:
        return detected_crop_reference(
            state_url(params.state.url),
            recognizer,
            detector,
            params.data.dataset_dir,
            splits=params.monitor.reference_splits,
        )
    except (ReferenceNotFoundError, RegistryError, OSError) as err:
        logger.warning(
            "crop stage: compared with the recogniser's profile of true-box crops, which "
            "reads as drift where the detector's boxes differ: %s",
            err,
        )
        return None


def _when(moment: datetime | None, default: str) -> str:
    return default if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def describe(result: PageMonitorResult) -> list[str]:
    """Lines for people: per stage its verdict, or the window it already checked, or why not."""
    lines = []
    for stage in STAGES:
        if stage in result.results:
            r = result.results[stage]
            why = f" ({', '.join(r.check.reasons)})" if r.check.reasons else ""
            lines.append(
                f"{stage}: {r.model_name} version {r.model_version}: "
                f"{'DRIFT' + why if r.drift else 'no drift'}; report {r.report_path}"
            )
        elif stage in result.already:
            lines.append(f"{stage}: {result.already[stage].describe()} (already monitored)")
        elif stage in result.skipped:
            lines.append(f"{stage}: not checked: {result.skipped[stage]}")
    return lines


__all__ = [
    "CROP_STAGE",
    "DETECTION_SCORE",
    "LABELS",
    "PAGE_STAGE",
    "STAGES",
    "PageMonitorResult",
    "crop_window",
    "describe",
    "monitor_pages",
    "page_log_root",
    "page_window",
    "stage_params",
    "stage_reference",
    "token_count",
]
