"""The data gate: validate a dataset against the data contract derived from the plan.

The contract is not written per dataset: `build_suite` derives a Great
Expectations suite from the data plan (`params.yaml: data`) and the gate's
thresholds (`params.yaml: validation`). What GX cannot see in the manifest
alone is computed here first, vectorised, as extra columns that the suite then
checks row by row, so every failure names the offending rows by `image_id`:

* `stratum` — `style/noise`; counted per split against the plan's minimum.
* `sha256_splits`, `group_splits` — the splits holding any row with the same
  content hash / source glyph (`"train+test"` is leakage).
* `file_status` — the result of opening each image file: `ok` or why not.

`validate_dataset` runs the suite through a Checkpoint in a file-backed GX
context, which also writes Data Docs (HTML naming the bad rows), and returns a
plain `ValidationReport`; `print_report` renders it for a person.

Modules:
    gate: `validate_dataset`, the gate itself.
    files: opening, decoding and hashing the image files (`check_image_files`).
    columns: the derived columns above (`add_derived_columns`).
    suite: the contract as a GX suite (`build_suite`); `expectations` holds
        the two custom expectations it uses.
    context: the GX context, its checkpoint and the Data Docs.
    report: `ValidationReport` and `print_report`.
"""

from flywheel.data.manifest import ManifestError
from flywheel.validation.columns import (
    DERIVED_COLUMNS,
    add_derived_columns,
    count_by_stratum,
    splits_sharing,
)
from flywheel.validation.context import ValidationSetupError
from flywheel.validation.files import FILE_OK, FilePlan, check_file, check_image_files
from flywheel.validation.gate import validate_dataset
from flywheel.validation.report import Failure, Offender, ValidationReport, print_report
from flywheel.validation.suite import build_suite, class_share_bounds

__all__ = [
    "DERIVED_COLUMNS",
    "FILE_OK",
    "Failure",
    "FilePlan",
    "ManifestError",
    "Offender",
    "ValidationReport",
    "ValidationSetupError",
    "add_derived_columns",
    "build_suite",
    "check_file",
    "check_image_files",
    "class_share_bounds",
    "count_by_stratum",
    "print_report",
    "splits_sharing",
    "validate_dataset",
]
