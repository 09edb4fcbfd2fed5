"""Stage 10: the labelling queue, labels in Label Studio's JSON formats, the merge into the data.

The queue is a folder of batches, `<label dir>/queue/<batch-id>.json`, each a
list of Label Studio *tasks* ready for its import: `data.image` is a URL Label
Studio can serve (local-files storage by default), `data.request_id` and
`data.index` key the task to its logged prediction, and the model's answer
rides along as a *prediction* (a pre-annotation a labeller confirms or fixes).
`label_config_xml` is the matching labelling interface: one single-choice
control over the plan's classes.

Labels come back as a Label Studio export as Label Studio writes it (JSON,
JSON_MIN or the pre-1.0 `completions`; any Choices control; several
annotators resolved by `label.annotators`: `exports`), checked whole before
anything is appended to the ground-truth store (`flywheel.data.ground_truth`)
by `import_labels`; a label for a request never served is refused.

Who labels is configuration: a `Labeler` (`labeler_for(params.label)`) labels
the queued batches for the pipeline's label step. The product's is
`LabelStudioExportLabeler` (the exports people saved); the demo configures its
oracle (`flywheel.demo.oracle`), which answers from the traffic simulator's
truth through a Label Studio export.

Labelled production images then join the dataset as a new data version
(`merge`: GX-gated, `dvc add`); where nobody recorded an image's stratum,
`merge.strata` declares one (`strata`).

Labelling is asynchronous (`sync`): a batch stays outstanding from the run that
sent it until a merge took its tasks; `Labeler.completed` says which of its
tasks are complete, and `label.sync.min_completed` of them start an update.

Modules: `base` (the `Labeler` interface), `queue` (folders and batches),
`exports` (Label Studio's export formats, annotator votes), `label_studio`
(the labelling config, the import, the export labeller), `studio` (the Label
Studio labeller), `sync` (outstanding batches, the threshold), `strata`, `merge`.
"""

from flywheel.labeling.base import (
    BUILTIN_LABELERS,
    LABEL_COLUMNS,
    Labeler,
    LabelerError,
    LabelingResult,
    labeler_for,
    no_labels,
)
from flywheel.labeling.label_studio import (
    LabelImport,
    LabelImportError,
    LabelStudioExportLabeler,
    ParsedExport,
    choice_result,
    import_labels,
    label_config_xml,
    parse_export,
    read_export,
    read_labels,
    record_labels,
)
from flywheel.labeling.queue import (
    EXPORTS_DIR,
    LABEL_CONFIG_NAME,
    QUEUE_DIR,
    Key,
    QueueError,
    exports_dir,
    labeling_dir,
    labelled_keys,
    queue_batches,
    queue_dir,
    queued_keys,
    read_batch,
    served_keys,
    task_key,
    write_json_atomic,
)

__all__ = [
    "BUILTIN_LABELERS",
    "EXPORTS_DIR",
    "LABEL_COLUMNS",
    "LABEL_CONFIG_NAME",
    "QUEUE_DIR",
    "Key",
    "LabelImport",
    "LabelImportError",
    "LabelStudioExportLabeler",
    "Labeler",
    "LabelerError",
    "LabelingResult",
    "ParsedExport",
    "QueueError",
    "choice_result",
    "exports_dir",
    "import_labels",
    "label_config_xml",
    "labeler_for",
    "labeling_dir",
    "labelled_keys",
    "no_labels",
    "parse_export",
    "queue_batches",
    "queue_dir",
    "queued_keys",
    "read_batch",
    "read_export",
    "read_labels",
    "record_labels",
    "served_keys",
    "task_key",
    "write_json_atomic",
]
