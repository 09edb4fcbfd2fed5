"""The retraining loop in front of training: detect drift → curate → label → update the dataset.

The `flywheel` pipeline runs these steps, then the training workflow
(`flywheel.workflows.training`) on the new data version: `detect_drift`
(Evidently against the serving version's reference profile), `curate_samples`
(active learning), `label_samples` (the configured labeller)
and `update_dataset` (merge, data gate, `dvc add`).

Each dispatches on the plan: a page plan (`data.is_pages`, the formula-page
service's two models) is monitored per stage (`flywheel.monitoring.pages`:
the decision says which stages drifted, `drifted_stages`), curated per page
(`flywheel.curation.pages`), labelled by its page labeller
(`flywheel.labeling.page_labeler`) and merged into a new `data-pages` version
(`flywheel.labeling.page_merge`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.config import Params
from flywheel.storage import join, name, parent, read_bytes, write_bytes
from flywheel.workflows.output import say, write_json

if TYPE_CHECKING:
    from flywheel.monitoring import MonitorResult
    from flywheel.monitoring.pages import PageMonitorResult
    from flywheel.monitoring.workspace import MonitoredWindow


def detect_drift(
    params: Params, *, report_out: Path, metrics_out: Path | None = None
) -> MonitorResult | MonitoredWindow | PageMonitorResult:
    """Compare the recent prediction log with the serving version's reference (`flywheel monitor`).

    The window is the last `monitor.window_hours` of the log under the state
    folder; the Evidently report goes to `report_out` (and under
    `monitor.reports_dir`) and the snapshot into the workspace, `metrics_out`
    receives `MonitorResult.scalars()` as JSON.

    A window the workspace already holds (a rerun with no new traffic) is not
    checked again: its report is copied to `report_out`, and the verdict
    recorded then is returned (`MonitoredWindow`, with `drift` and `scalars()`),
    so a retried pipeline goes on as the first run decided.

    A page plan's page log is checked per stage (`detect_page_drift`).

    Raises:
        flywheel.monitoring.NotEnoughDataError: too few predictions to decide.
        flywheel.monitoring.ReferenceNotFoundError: the served version has no profile.
    """
    from rich.console import Console

    from flywheel.monitoring import AlreadyMonitoredError, monitor, result_table
    from flywheel.tracking import configure_tracking

    configure_tracking()
    if params.data.is_pages:
        return detect_page_drift(params, report_out=report_out, metrics_out=metrics_out)
    try:
        result = monitor(params, report_path=report_out)
    except AlreadyMonitoredError as done:
        say(str(done))
        if done.window.report:
            write_bytes(report_out, read_bytes(done.window.report))
        if metrics_out is not None:
            write_json(metrics_out, done.window.scalars())
        return done.window
    Console(file=sys.stdout, width=120, color_system=None).print(result_table(result))
    if metrics_out is not None:
        write_json(metrics_out, result.scalars())
    reasons = f" ({', '.join(result.check.reasons)})" if result.drift else ""
    say(
        f"{result.model_name} version {result.model_version}, {result.window_size} predictions: "
        f"{'DRIFT' + reasons if result.drift else 'no drift'}"
    )
    return result


def detect_page_drift(
    params: Params, *, report_out: Path, metrics_out: Path | None = None
) -> PageMonitorResult:
    """Check the page log's window per stage (`flywheel.monitoring.pages.monitor_pages`).

    Each stage (the detector's pages, the recogniser's crops) is checked against
    the reference of the version that served it; a window a stage checked before
    keeps its recorded verdict. `report_out` gets one page holding each stage's
    report; `metrics_out` the flat numbers (`PageMonitorResult.scalars`).

    Raises:
        flywheel.monitoring.NotEnoughDataError: the window holds no page.
        flywheel.monitoring.reference.MonitoringError: no stage could be checked.
    """
    import html

    from flywheel.monitoring.pages import describe, monitor_pages
    from flywheel.tracking import configure_tracking

    configure_tracking()
    result = monitor_pages(params)
    lines = describe(result)
    for line in lines:
        say(line)
    sections = []
    for stage in drifted_stages(result, every=True):
        checked = result.results.get(stage)
        path = checked.report_path if checked is not None else None
        if path is None and stage in result.already:
            path = result.already[stage].report
        body = read_bytes(path).decode("utf-8") if path else "<p>no report</p>"
        sections.append(
            f"<h2>{html.escape(stage)}</h2>"
            f'<iframe style="width:100%;height:900px" srcdoc="{html.escape(body)}"></iframe>'
        )
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    write_bytes(
        report_out,
        f"<!doctype html><title>page drift</title><ul>{summary}</ul>{''.join(sections)}".encode(),
    )
    if metrics_out is not None:
        write_json(metrics_out, result.scalars())
    stages = drifted_stages(result)
    say(f"page service: {'DRIFT in ' + ', '.join(stages) if stages else 'no drift'}")
    return result


def drifted_stages(result: PageMonitorResult, *, every: bool = False) -> list[str]:
    """The stages of a page check that drifted (with `every`: that were checked), in order.

    A window checked before counts with its recorded verdict.
    """
    from flywheel.monitoring.pages import STAGES

    def drifted(stage: str) -> bool:
        if stage in result.results:
            return result.results[stage].drift
        return stage in result.already and result.already[stage].drift

    return [
        s for s in STAGES if (s in result.results or s in result.already) and (every or drifted(s))
    ]


LABELS_FILE = "labels.parquet"
"""The labels one labelling step hands to the next (in its `labels` output folder)."""


def curate_samples(params: Params, *, queue_out: Path, metrics_out: Path | None = None) -> int:
    """Choose the logged samples worth labelling; write the labelling queue; return its size.

    `flywheel.curation.curate_batch` with params.yaml's `curate` settings over
    the whole prediction log (what is already queued or labelled is skipped),
    within the cycle's labelling budget (`curate.cost`). The batch goes to the
    labelling queue and is copied, with the labelling config, into `queue_out`
    (a folder) for the next step; `metrics_out` receives its spend as JSON
    (`CurationResult.cost_scalars`: images, unit cost, spend, cap).
    """
    from flywheel.curation import curate_batch
    from flywheel.labeling import LABEL_CONFIG_NAME

    if params.data.is_pages:
        return curate_page_batch(params, queue_out=queue_out, metrics_out=metrics_out)
    result = curate_batch(params, progress=False)
    queue_out.mkdir(parents=True, exist_ok=True)
    if metrics_out is not None:
        write_json(metrics_out, result.cost_scalars())
    if result.queue_file is None:
        if result.image_budget == 0:
            say(
                f"nothing to curate: the cycle's {result.spend_limit:g} {result.currency} "
                f"buys no image at {result.unit_cost:g} {result.currency} each"
            )
            return 0
        say(f"nothing to curate: every logged image is queued or labelled ({result.excluded})")
        return 0
    # The queue may be in object storage: copied by content into the step's output folder.
    for source in (result.queue_file, join(parent(result.queue_file), LABEL_CONFIG_NAME)):
        write_bytes(queue_out / name(source), read_bytes(source))
    say(
        f"queued {len(result.selected)} of {result.candidates} candidates "
        f"({result.strategy}, spread over {result.space}): batch {result.batch_id}; "
        f"labelling cost {result.spend:.2f} {result.currency} "
        f"({result.unit_cost:g} per image{_cap(result.spend_limit, result.currency)})"
    )
    return len(result.selected)


def curate_page_batch(params: Params, *, queue_out: Path, metrics_out: Path | None = None) -> int:
    """Choose the logged pages worth labelling (`flywheel.curation.pages.curate_pages`).

    The batch of page tasks goes to the page queue (`<label dir>/page-queue/`)
    and is copied into `queue_out`; `metrics_out` receives its spend (pages,
    boxes, spend, cap). Returns how many pages were queued.

    Raises:
        flywheel.curation.CurationError: the page log holds no page.
    """
    from flywheel.curation.pages import curate_pages

    result = curate_pages(params)
    queue_out.mkdir(parents=True, exist_ok=True)
    if metrics_out is not None:
        write_json(
            metrics_out,
            {
                "images": float(len(result.selected)),
                "boxes": float(result.boxes),
                "spend": float(result.spend),
                **({} if result.spend_limit is None else {"spend_limit": result.spend_limit}),
            },
        )
    if result.queue_file is None:
        say(
            f"nothing to curate: of {result.candidates} candidate pages the budget bought none "
            f"({result.excluded} queued or labelled already)"
        )
        return 0
    write_bytes(queue_out / name(result.queue_file), read_bytes(result.queue_file))
    say(
        f"queued {len(result.selected)} of {result.candidates} candidate pages "
        f"(spread over {result.space}): batch {result.batch_id}; labelling cost "
        f"{result.spend:.2f} {result.currency} for {result.boxes} boxes"
        f"{_cap(result.spend_limit, result.currency)}"
    )
    return len(result.selected)


def _cap(limit: float | None, currency: str) -> str:
    """The cycle's spend cap for a message.

    >>> _cap(None, "USD"), _cap(8.0, "USD")
    ('', ', cap 8.00 USD')
    """
    return "" if limit is None else f", cap {limit:.2f} {currency}"


def label_samples(params: Params, queue_dir: Path, *, labels_out: Path) -> int:
    """Label the queue with the configured labeller; write the labels; return how many.

    `label.labeler` (`flywheel.labeling.labeler_for`) labels the batches in
    `queue_dir`: the Label Studio exports people saved, or the demo's oracle.
    The Label Studio exports used and `labels.parquet` (the labels recorded) go
    to `labels_out`.
    """
    from flywheel.labeling.page_labeler import labeler_of

    labels_out.mkdir(parents=True, exist_ok=True)
    result = labeler_of(params).label(params, queue_dir, export_dir=labels_out)
    result.labels.to_parquet(labels_out / LABELS_FILE, index=False)
    say(result.summary)
    return len(result.labels)


def update_dataset(
    params: Params, repo: str | Path, labels_dir: Path, *, data_version: str = ""
) -> str:
    """Merge the labels into a new dataset version (`dvc add` + push); return the version.

    Reads `labels.parquet` of the labelling step from `labels_dir` and calls
    `flywheel.labeling.merge.update_dataset` on the data at `data_version`: the
    repository's folder when its `data.dvc` records that version (`data.dvc`
    then records the new one), else a workspace materialised from the DVC
    remote by hash (a pod: no repository, no git). The merged dataset passes
    the data gate or nothing is recorded; the new version is pushed and
    recorded as the latest next to the remote (`flywheel/latest.json`). No new
    labels: the version stays; labels of which none can be merged raise
    `MergeError` saying why. The labels taken are recorded as settled
    (`flywheel.labeling.sync`): their batches are no longer outstanding.

    Args:
        params: the configuration.
        repo: the repository root holding `data.dvc`; '' for none.
        labels_dir: the labelling step's folder.
        data_version: the version to merge into; '' for what the repository
            records (without one: the latest recorded next to the remote).

    Raises:
        flywheel.data.versioning.DataVersionError: the version cannot be
            materialised, or the new one did not reach the remote.
        flywheel.labeling.merge.MergeError: the merged dataset fails the data gate.
    """
    import tempfile

    import pandas as pd

    if params.data.is_pages:
        return update_page_data(params, repo, labels_dir, data_version=data_version)
    from flywheel.data.remote import check_version, find_remote
    from flywheel.data.transaction import unpushed
    from flywheel.data.versioning import DataVersionError
    from flywheel.labeling.merge import MergeError
    from flywheel.labeling.merge import update_dataset as merge_and_track
    from flywheel.workflows.datasets import data_at_version

    path = labels_dir / LABELS_FILE
    labels = (
        pd.read_parquet(path)
        if path.is_file()
        else pd.DataFrame(columns=["request_id", "index", "label"])
    )
    with tempfile.TemporaryDirectory(prefix="flywheel-merge-") as scratch:
        data = data_at_version(params, data_version, repo, Path(scratch) / "workspace")
        update = merge_and_track(params, data.repo, labels)
        if update.merge.nothing_merged is not None:
            raise MergeError(update.merge.nothing_merged)
        if unpushed(data.repo) is not None:
            raise DataVersionError(
                f"data version {update.version} was merged into {data.repo}, but its push "
                "failed (the warning above says why), so data.dvc does not record it and "
                "training cannot take it: `flywheel data push` there pushes and records it"
            )
        if data.provenance == "materialised" and update.changed:
            check_version(data.repo, update.version, find_remote(data.repo))  # else it is lost
    if not labels.empty:  # merged or skipped for good: no longer outstanding
        from flywheel.workflows.label_sync import settle_labels

        settle_labels(params, labels, update.version)
    added = update.merge.added_per_split()
    skipped = {reason: len(keys) for reason, keys in update.merge.skipped.items()}
    say(
        f"merged {len(update.merge.added)} of {update.merge.labels} labelled images {added}, "
        f"strata from {update.merge.strata or '-'}, skipped {skipped or '-'}; "
        f"data version {update.version}" + ("" if update.changed else " (unchanged)")
    )
    return update.version


def update_page_data(
    params: Params, repo: str | Path, labels_dir: Path, *, data_version: str = ""
) -> str:
    """Merge page labels into a new version of the page dataset; return the version.

    The page plan's `update_dataset`: `labels.parquet` holds a page labels table
    (`flywheel.labeling.page_labeler.page_labels_frame`), merged by
    `flywheel.labeling.page_merge.update_page_dataset` into the data at
    `data_version` (the repository's `data-pages` folder, or a workspace
    materialised from the remote), gated by the page data gate, `dvc add`ed,
    pushed and recorded as the latest. The pages taken (merged, or skipped for
    good) are recorded as settled (`<label dir>/page-merged/`), so a later run
    does not merge them again. The service's stages then swap themselves when
    training moves `@production`.

    Raises:
        flywheel.data.versioning.DataVersionError: the version cannot be
            materialised, or the new one did not reach the remote.
        flywheel.labeling.merge.MergeError: the merged pages fail the page data
            gate, or none of the labels could be merged (each reason counted).
    """
    import tempfile

    import pandas as pd

    from flywheel.data.remote import check_version, find_remote
    from flywheel.data.transaction import unpushed
    from flywheel.data.versioning import DataVersionError
    from flywheel.labeling.merge import MergeError
    from flywheel.labeling.page_labeler import page_labels_from_frame
    from flywheel.labeling.page_merge import PAGE_SKIP_REASONS, update_page_dataset
    from flywheel.monitoring.pages import page_log_root
    from flywheel.workflows.datasets import data_at_version
    from flywheel.workflows.label_sync import settle_labels

    path = labels_dir / LABELS_FILE
    frame = pd.read_parquet(path) if path.is_file() else None
    labels = page_labels_from_frame(frame) if frame is not None else []
    with tempfile.TemporaryDirectory(prefix="flywheel-merge-") as scratch:
        data = data_at_version(params, data_version, repo, Path(scratch) / "workspace")
        update = update_page_dataset(params, labels, data.repo, log_root=page_log_root(params))
        skipped = {reason: len(keys) for reason, keys in update.merge.skipped.items()}
        if labels and update.merge.added.empty and set(skipped) - {"in_dataset", "duplicate"}:
            raise MergeError(
                f"none of {len(labels)} labelled pages could be merged: "
                + "; ".join(f"{n} {PAGE_SKIP_REASONS[r]}" for r, n in skipped.items())
            )
        if unpushed(data.repo) is not None:
            raise DataVersionError(
                f"page data version {update.version} was merged into {data.repo}, but its push "
                "failed (the warning above says why): `flywheel data push --params <plan>` "
                "there pushes and records it"
            )
        if data.provenance == "materialised" and update.changed:
            check_version(data.repo, update.version, find_remote(data.repo))  # else it is lost
    if frame is not None and not frame.empty:  # merged or skipped for good: settled
        settle_labels(params, frame, update.version)
    say(
        f"merged {len(update.merge.added)} of {len(labels)} labelled pages "
        f"{update.merge.added_per_split() if not update.merge.added.empty else {}} "
        f"({len(update.merge.regions)} regions), skipped {skipped or '-'}; "
        + (
            f"strata {update.merge.strata} (merge.strata {params.merge.strata}); "
            if set(update.merge.strata) - {"recorded"}
            else ""
        )
        + f"data version {update.version}"
        + ("" if update.changed else " (unchanged)")
    )
    return update.version
