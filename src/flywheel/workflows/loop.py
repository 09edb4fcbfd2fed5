"""The retraining loop in front of training: detect drift → curate → label → update the dataset.

The `flywheel` pipeline runs these steps, then the training workflow
(`flywheel.workflows.training`) on the new data version: `detect_drift`
(Evidently against the serving version's reference profile), `curate_samples`
(active learning), `label_samples` (the configured labeller)
and `update_dataset` (merge, data gate, `dvc add`).
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
    from flywheel.monitoring.workspace import MonitoredWindow


def detect_drift(
    params: Params, *, report_out: Path, metrics_out: Path | None = None
) -> MonitorResult | MonitoredWindow:
    """Compare the recent prediction log with the serving version's reference (`flywheel monitor`).

    The window is the last `monitor.window_hours` of the log under the state
    folder; the Evidently report goes to `report_out` (and under
    `monitor.reports_dir`) and the snapshot into the workspace, `metrics_out`
    receives `MonitorResult.scalars()` as JSON.

    A window the workspace already holds (a rerun with no new traffic) is not
    checked again: its report is copied to `report_out`, and the verdict
    recorded then is returned (`MonitoredWindow`, with `drift` and `scalars()`),
    so a retried pipeline goes on as the first run decided.

    Raises:
        flywheel.monitoring.NotEnoughDataError: too few predictions to decide.
        flywheel.monitoring.ReferenceNotFoundError: the served version has no profile.
    """
    from rich.console import Console

    from flywheel.monitoring import AlreadyMonitoredError, monitor, result_table
    from flywheel.tracking import configure_tracking

    configure_tracking()
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
    from flywheel.labeling import labeler_for

    labels_out.mkdir(parents=True, exist_ok=True)
    result = labeler_for(params.label).label(params, queue_dir, export_dir=labels_out)
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
