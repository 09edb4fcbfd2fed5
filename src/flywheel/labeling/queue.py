"""The labelling queue: its folders, and the batches of Label Studio tasks curation writes there.

A batch is `<label dir>/queue/<batch-id>.json` (a file, or an object under the
state URL), a list of Label Studio tasks whose `data.request_id` and
`data.index` key each one to its logged prediction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flywheel.config import LabelConfig
from flywheel.data.ground_truth import LABELLER_ORIGINS, read_ground_truth
from flywheel.storage import (
    Location,
    as_location,
    glob,
    is_file,
    join,
    name,
    read_bytes,
    state_url,
    write_bytes,
)

QUEUE_DIR = "queue"
EXPORTS_DIR = "exports"
LABEL_CONFIG_NAME = "label_config.xml"

Key = tuple[str, int]


class QueueError(ValueError):
    """A labelling-queue batch that is missing or unreadable."""


def labeling_dir(cfg: LabelConfig, state: Location | None = None) -> Location:
    """`label.dir`, or `<state>/labeling`: holds `queue/`, `exports/`, `label_config.xml`.

    Args:
        cfg: the `label` section.
        state: the state folder or URL (default `flywheel.storage.state_url()`;
            pass `state_url(params.state.url)` where the params are at hand).
    """
    if cfg.dir is not None:
        return cfg.dir
    return join(state if state is not None else state_url(), "labeling")


def queue_dir(cfg: LabelConfig, state: Location | None = None) -> Location:
    """Where curation writes the batches Label Studio imports."""
    return join(labeling_dir(cfg, state), QUEUE_DIR)


def exports_dir(cfg: LabelConfig, state: Location | None = None) -> Location:
    """Where Label Studio exports are saved: people's, and the demo oracle's."""
    return join(labeling_dir(cfg, state), EXPORTS_DIR)


def write_json_atomic(path: Location, value: Any) -> Location:
    """Write JSON to a file or object whole or not at all (`flywheel.storage.write_bytes`)."""
    text = json.dumps(value, indent=1, allow_nan=False) + "\n"
    return write_bytes(as_location(path), text.encode("utf-8"))


def read_json(path: Location, error: type[ValueError], *, missing: str = "no such file") -> Any:
    """The parsed JSON of a file; a missing or unreadable file raises `error` naming it.

    Args:
        path: the file.
        error: the exception to raise (`QueueError`, `LabelImportError`).
        missing: what a missing file is called in the message.
    """
    try:
        return json.loads(read_bytes(as_location(path)).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not a JSON file: {err}") from None


def task_key(task: Mapping[str, Any]) -> Key | None:
    """`(request_id, index)` of a task's `data`, None when either is missing or malformed."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        return None
    request_id, index = data.get("request_id"), data.get("index")
    if not isinstance(request_id, str) or not request_id:
        return None
    if isinstance(index, bool) or not isinstance(index, int | str):
        return None
    try:
        return request_id, int(index)
    except ValueError:
        return None


def read_batch(path: Location) -> list[dict[str, Any]]:
    """The tasks of one queue batch.

    Raises:
        QueueError: the file is missing, not JSON, or not a list of tasks with keys.
    """
    tasks = read_json(path, QueueError, missing="no such queue batch")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise QueueError(f"{path}: a queue batch is a JSON list of Label Studio tasks")
    for position, task in enumerate(tasks):
        if task_key(task) is None:
            raise QueueError(f"{path}: task {position} has no data.request_id / data.index")
    return tasks


def queue_batches(folder: Location, batch: str | None = None) -> list[Location]:
    """The batch files of a queue folder (or URL), oldest first; with `batch`, only that one.

    Raises:
        QueueError: `batch` names no file in the folder.
    """
    folder = as_location(folder)
    if batch is not None:
        path = join(folder, batch if batch.endswith(".json") else f"{batch}.json")
        if not is_file(path):
            known = [name(p).removesuffix(".json") for p in glob(folder, "*.json")]
            raise QueueError(f"no queue batch {batch!r} in {folder}; batches: {known or 'none'}")
        return [path]
    return glob(folder, "*.json")


def queued_keys(folder: Location) -> set[Key]:
    """Every `(request_id, index)` already in a queue batch of `folder`."""
    keys: set[Key] = set()
    for path in queue_batches(folder):
        keys.update(k for k in map(task_key, read_batch(path)) if k is not None)
    return keys


def labelled_keys(gt_root: Location | None = None) -> set[Key]:
    """Every `(request_id, index)` a labeller (person or oracle) has labelled."""
    labels = read_ground_truth(gt_root, origins=LABELLER_ORIGINS)
    return {(str(r), int(i)) for r, i in zip(labels["request_id"], labels["index"], strict=True)}


def logged_keys(log_root: Location) -> set[Key]:
    """Every `(request_id, index)` in the prediction log (its key columns only are read)."""
    from flywheel.monitoring.prediction_log import read_table

    table = read_table(log_root, columns=["request_id", "index"])
    return set(
        zip(
            map(str, table["request_id"].to_pylist()),
            map(int, table["index"].to_pylist()),
            strict=True,
        )
    )


def served_keys(queue: Location, log_root: Location) -> set[Key]:
    """The keys a label may name: those of the queue's batches and of the prediction log.

    A label for any other request is for an image this service never served
    (another project's export, a typo): `flywheel label import` refuses it.

    Args:
        queue: the labelling-queue folder (`queue_dir(params.label, state)`).
        log_root: the prediction log (`flywheel.monitoring.prediction_log.predictions_dir`).
    """
    return queued_keys(queue) | logged_keys(log_root)
