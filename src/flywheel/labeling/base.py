"""The `Labeler` interface: who labels the queued batches, chosen by `label.labeler`.

Labelling is the step a person does. The pipeline's label step asks the
configured labeller for the labels of the batches curation queued;
`labeler_for` resolves `label.labeler` to one:

* a built-in short name (`BUILTIN_LABELERS`): `label-studio`, a running Label
  Studio server through its API (`flywheel.labeling.studio`), or
  `label-studio-export`, the Label Studio export import
  (`flywheel.labeling.label_studio`);
* a dotted path `package.module:Class` to a `Labeler` subclass, imported with
  the standard library (`pkgutil.resolve_name`): the demo configures its
  oracle this way (`flywheel.demo.oracle:OracleLabeler`), so product code
  never imports the demo.
"""

from __future__ import annotations

import inspect
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from flywheel.config import LabelConfig, Params
    from flywheel.labeling.queue import Key
    from flywheel.storage import Location

LABEL_COLUMNS: tuple[str, ...] = (
    "request_id",
    "index",
    "label",
    "task_id",
    "batch_id",
    "image_path",
    "annotated_at",
)
"""Columns of a labels table (`parse_export`, `LabelingResult.labels`): one row per task."""

BUILTIN_LABELERS: dict[str, str] = {
    "label-studio-export": "flywheel.labeling.label_studio:LabelStudioExportLabeler",
    "label-studio": "flywheel.labeling.studio:LabelStudioLabeler",
}
"""`label.labeler` short names of the product's labellers, and the classes they name."""


class LabelerError(ValueError):
    """`label.labeler` names no usable labeller."""


@dataclass(frozen=True)
class LabelingResult:
    """What a labeller did with the queued batches.

    Attributes:
        labels: the labels of queued tasks (`LABEL_COLUMNS`), as recorded in the
            ground-truth store.
        summary: one line for the step's log, e.g. how many tasks were answered.
        exports: the Label Studio exports the labels came from.
    """

    labels: pd.DataFrame
    summary: str
    exports: tuple[Location, ...] = field(default=())


class Labeler(ABC):
    """Labels the tasks of the queued batches and records the labels in the ground-truth store."""

    @abstractmethod
    def label(
        self,
        params: Params,
        queue_dir: Path,
        *,
        export_dir: Path,
        gt_root: Location | None = None,
    ) -> LabelingResult:
        """Label the batches in `queue_dir`.

        Args:
            params: `data.classes` and `label` are used.
            queue_dir: the folder of queue batches (Label Studio task files).
            export_dir: where the Label Studio exports the labels came from are kept
                (the label step's output folder).
            gt_root: the ground-truth folder (default `<state dir>/ground_truth`).
        """

    def send(self, params: Params, queue_dir: Path) -> str:
        """Put the batches in `queue_dir` before the annotators; one line saying what was done.

        Labelling is asynchronous: the curation pipeline ends here, and a later
        update run reads back what people completed (`label`, `completed`).
        By default nothing is sent: the batches wait in the queue folder, where
        people import them into Label Studio and save its exports into the
        exports folder.
        """
        from flywheel.labeling.queue import queued_keys

        return f"{len(queued_keys(queue_dir))} tasks wait in the queue folder for the annotators"

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The keys of the queued tasks whose annotation is complete, read without recording.

        What `flywheel label sync` counts against `label.sync.min_completed`. By
        default the tasks whose label the ground-truth store holds (recorded by
        an earlier read-back or `flywheel label import`); a labeller that can see
        annotations not read back yet adds those.

        Args:
            params: the configuration.
            queue_dir: a folder (or URL) of queue batches.
            gt_root: the ground-truth folder (default `<state dir>/ground_truth`).
        """
        from flywheel.data.ground_truth import ground_truth_dir
        from flywheel.labeling.queue import labelled_keys, queued_keys
        from flywheel.storage import state_url

        root = gt_root if gt_root is not None else ground_truth_dir(state_url(params.state.url))
        return queued_keys(queue_dir) & labelled_keys(root)


def no_labels() -> pd.DataFrame:
    """An empty labels table (`LABEL_COLUMNS`)."""
    return pd.DataFrame(columns=list(LABEL_COLUMNS))


def labeler_for(cfg: LabelConfig) -> Labeler:
    """The labeller `label.labeler` names: a built-in short name or `package.module:Class`.

    >>> from flywheel.config import LabelConfig
    >>> type(labeler_for(LabelConfig(labeler="label-studio-export"))).__name__
    'LabelStudioExportLabeler'

    Raises:
        LabelerError: the name is neither a built-in nor an importable `Labeler` subclass.
    """
    labeler: Labeler = make_labeler(
        cfg.labeler,
        BUILTIN_LABELERS,
        Labeler,
        unknown=f"expected one of {sorted(BUILTIN_LABELERS)} or a class path "
        "`package.module:Class`",
        not_one="is not a concrete subclass of flywheel.labeling.Labeler",
    )
    return labeler


def make_labeler(
    name: str,
    short_names: Mapping[str, str],
    base: type[Any],
    *,
    unknown: str,
    not_one: str,
) -> Any:
    """The labeller `name` names: a short name of `short_names` or `package.module:Class`,
    a concrete subclass of `base` (a class), made with no arguments.

    Raises:
        LabelerError: `label.labeler {name}: ` then `unknown` (neither a short name nor a
            class path), why the import failed, or `{target} ` then `not_one` (not a
            concrete subclass of `base`).
    """
    target = short_names.get(name, name)
    if target == name and ":" not in name:
        raise LabelerError(f"label.labeler {name!r}: {unknown}")
    try:
        found = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as err:
        raise LabelerError(f"label.labeler {name!r}: cannot import {target}: {err}") from err
    if not isinstance(found, type) or not issubclass(found, base) or inspect.isabstract(found):
        raise LabelerError(f"label.labeler {name!r}: {target} {not_one}")
    return found()
