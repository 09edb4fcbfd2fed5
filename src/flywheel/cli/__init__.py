"""The `flywheel` command line: the composition root.

Each command loads `params.yaml`, calls one library function and prints what a
person needs to see. Heavy libraries are imported inside the commands so that
`flywheel --help` stays fast. One module per command group:

- `project`: `flywheel init` (a plan from your own ImageFolder tree)
- `data`: `flywheel data collect|import|version|ensure|track|merge`
- `training`: validate, train, tune, evaluate
- `registry`: promote, rollback, models
- `serving`: serve, simulate
- `loop`: curate, monitor, reference, ui, `label import|oracle`
- `pipeline`: `flywheel pipeline run|compile|submit`
- `demo`: demo and the closed-loop driver's glue

Every command but `init` runs at the project root, found by walking up from
the current folder (`project_root`). `root` assembles them into `app`;
`composition` is where the CLI reaches the `serving` and `pipelines` folders
beside the library.
"""

from flywheel.cli.root import app, main

__all__ = ["app", "main"]
