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


def detect_drift(
    params: Params, *, report_out: Path, metrics_out: Path | None = None
) -> MonitorResult:
    """Compare the recent prediction log with the serving version's reference (`flywheel monitor`).

    The window is the last `monitor.window_hours` of the log under the state
    folder; the Evidently report goes to `report_out` and the snapshot into the
    workspace, `metrics_out` receives `MonitorResult.scalars()` as JSON.

    Raises:
        flywheel.monitoring.NotEnoughDataError: too few predictions to decide.
        flywheel.monitoring.ReferenceNotFoundError: the served version has no profile.
    """
    from rich.console import Console

    from flywheel.monitoring import monitor, result_table
    from flywheel.tracking import configure_tracking

    configure_tracking()
    result = monitor(params, report_path=report_out)
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


def curate_samples(params: Params, *, queue_out: Path) -> int:
    """Choose the logged samples worth labelling; write the labelling queue; return its size.

    `flywheel.curation.curate_batch` with params.yaml's `curate` settings over
    the whole prediction log (what is already queued or labelled is skipped).
    The batch goes to the labelling queue and is copied, with the labelling
    config, into `queue_out` (a folder) for the next step.
    """
    from flywheel.curation import curate_batch
    from flywheel.labeling import LABEL_CONFIG_NAME

    result = curate_batch(params, progress=False)
    queue_out.mkdir(parents=True, exist_ok=True)
    if result.queue_file is None:
        say(f"nothing to curate: every logged image is queued or labelled ({result.excluded})")
        return 0
    # The queue may be in object storage: copied by content into the step's output folder.
    for source in (result.queue_file, join(parent(result.queue_file), LABEL_CONFIG_NAME)):
        write_bytes(queue_out / name(source), read_bytes(source))
    say(
        f"queued {len(result.selected)} of {result.candidates} candidates "
        f"({result.strategy}, spread over {result.space}): batch {result.batch_id}"
    )
    return len(result.selected)


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


def update_dataset(params: Params, repo: str | Path, labels_dir: Path) -> str:
    """Merge the labels into a new dataset version (`dvc add` + push); return the version.

    Reads `labels.parquet` of the labelling step from `labels_dir` and calls
    `flywheel.labeling.merge.update_dataset`; the merged dataset passes the data
    gate or nothing is recorded. No new labels: the version stays; labels of
    which none can be merged raise `MergeError` saying why.
    """
    import pandas as pd

    from flywheel.labeling.merge import MergeError
    from flywheel.labeling.merge import update_dataset as merge_and_track

    path = labels_dir / LABELS_FILE
    labels = (
        pd.read_parquet(path)
        if path.is_file()
        else pd.DataFrame(columns=["request_id", "index", "label"])
    )
    update = merge_and_track(params, repo, labels)
    if update.merge.nothing_merged is not None:
        raise MergeError(update.merge.nothing_merged)
    added = update.merge.added_per_split()
    skipped = {reason: len(keys) for reason, keys in update.merge.skipped.items()}
    say(
        f"merged {len(update.merge.added)} of {update.merge.labels} labelled images {added}, "
        f"strata from {update.merge.strata or '-'}, skipped {skipped or '-'}; "
        f"data version {update.version}" + ("" if update.changed else " (unchanged)")
    )
    return update.version
