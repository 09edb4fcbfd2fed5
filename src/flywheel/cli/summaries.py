"""What the CLI prints after a pipeline run: the training run read back, the MLflow UI command.

`flywheel pipeline run training` and `flywheel demo` show what a finished
training-pipeline run did (the version it registered, the gates' verdict, where
production stands now, the test metric per slice) from the run's outputs and the
registry; the printing itself stays in the commands.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.workflows import RegisteredCandidate, SliceRow, pair_rows, slice_rows


@dataclass(frozen=True)
class TrainingRunSummary:
    """What a finished training-pipeline run did, for people (`flywheel demo`, `pipeline run`).

    Attributes:
        model_name: the registered model.
        version: the candidate version the run registered (or reused from the cache).
        run_id: its MLflow training run.
        data_version: the data it was trained on.
        blessed: the gates' verdict.
        failed_gates: the gates that failed (empty when blessed).
        champion_version: the production version it was judged against (None: first model).
        production: the version in production after the run.
        aliases: the aliases the candidate version holds after the run.
        slices: the task's primary test metric overall and per slice (with the champion's).
        pair: a stage of a two-stage service: the pair's end-to-end score with the
            partner in production, overall and per slice (with the champion's pair);
            empty otherwise.
        partner_version: the partner's version the pair ran with.
    """

    model_name: str
    version: str
    run_id: str
    data_version: str
    blessed: bool
    failed_gates: tuple[str, ...]
    champion_version: str | None
    production: str | None
    aliases: tuple[str, ...]
    slices: list[SliceRow]
    pair: list[SliceRow] = field(default_factory=list)
    partner_version: str | None = None

    @property
    def promoted(self) -> bool:
        """The candidate is what production serves now."""
        return self.blessed and self.production == self.version


def summarize_training_run(
    model: Mapping[str, Any], scalars: Mapping[str, float], blessed: bool
) -> TrainingRunSummary:
    """Read back what a training run did: its outputs, and the registry as it is now.

    Args:
        model: the Model artifact's metadata (`RegisteredCandidate.metadata`).
        scalars: the evaluation Metrics artifact's metadata (`evaluation_scalars`).
        blessed: the evaluation step's verdict.
    """
    from flywheel.registry import list_versions, read_blessing, version_for_alias
    from flywheel.tracking import configure_tracking

    configure_tracking()
    candidate = RegisteredCandidate.from_metadata(model)
    blessing = read_blessing(candidate.name, candidate.version)
    aliases = next(
        (v.aliases for v in list_versions(candidate.name) if v.version == candidate.version), ()
    )
    return TrainingRunSummary(
        model_name=candidate.name,
        version=candidate.version,
        run_id=candidate.run_id,
        data_version=candidate.data_version,
        blessed=blessed,
        failed_gates=tuple(blessing.failed_gates) if blessing is not None else (),
        champion_version=blessing.champion_version if blessing is not None else None,
        production=version_for_alias(candidate.name, "production"),
        aliases=tuple(aliases),
        slices=slice_rows(scalars),
        pair=pair_rows(scalars),
        partner_version=(
            str(int(scalars["pair_partner_version"])) if "pair_partner_version" in scalars else None
        ),
    )


def mlflow_training_url(base: str) -> str:
    """The MLflow UI's experiments in its "Model training" view, not its GenAI one.

    MLflow 3's UI opens on GenAI screens (traces, judges) unless the
    `workflowType` query parameter (or the browser's last choice) says otherwise;
    the UI keeps the parameter while one navigates.

    >>> mlflow_training_url("http://127.0.0.1:5000/")
    'http://127.0.0.1:5000/#/experiments?workflowType=machine_learning'
    """
    return f"{base.rstrip('/')}/#/experiments?workflowType=machine_learning"


def mlflow_ui_command(tracking_uri: str, *, port: int = 5000) -> str:
    """The command that opens the MLflow UI on a local store (one worker: 2 cores are plenty).

    >>> mlflow_ui_command("sqlite:////p/.flywheel/mlflow/mlflow.db").split()[1:4]
    ['ui', '--backend-store-uri', 'sqlite:////p/.flywheel/mlflow/mlflow.db']
    """
    mlflow = Path(sys.executable).parent / "mlflow"
    with contextlib.suppress(ValueError):
        mlflow = mlflow.relative_to(Path.cwd())
    return (
        f"{mlflow} ui --backend-store-uri {tracking_uri} --workers 1 --host 127.0.0.1 --port {port}"
    )


def html_path(artifact: str | Path) -> Path:
    """A path a browser opens as a page: `artifact` if it ends in `.html`, else an HTML copy.

    The KFP local runner names an HTML artifact after its output (`report`,
    `data_docs`), without an extension, and a browser shows such a file as its
    source; the copy beside it, `<name>.html`, is what the CLI prints.
    """
    artifact = Path(artifact)
    if artifact.suffix.lower() in (".html", ".htm") or not artifact.is_file():
        return artifact
    page = artifact.with_name(f"{artifact.name}.html")
    shutil.copyfile(artifact, page)
    return page


def evaluation_pictures(model_name: str, version: str) -> dict[str, Path]:
    """The evaluation pictures of a registered version, as files a person can open.

    The reliability diagram and the worst mistakes are artifacts of the
    version's training run (`flywheel.evaluation.candidate.log_pictures`); where
    that run's artifacts are files on this machine (the embedded store), their
    paths, by what each shows. Empty where they are elsewhere (a tracking
    server's store: the MLflow UI shows them) or were not drawn (a task without
    class probabilities, a model with no mistakes to show).
    """
    from urllib.parse import unquote, urlparse

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from flywheel.evaluation.candidate import ARTIFACT_DIR
    from flywheel.evaluation.pictures import MISTAKES_PNG, RELIABILITY_PNG

    client = MlflowClient()
    try:
        run_id = client.get_model_version(model_name, version).run_id
        location = urlparse(client.get_run(run_id).info.artifact_uri if run_id else "")
    except MlflowException:
        return {}
    if not location.path or location.scheme not in ("", "file"):
        return {}
    folder = Path(unquote(location.path)) / ARTIFACT_DIR
    pictures = {"reliability": folder / RELIABILITY_PNG, "worst mistakes": folder / MISTAKES_PNG}
    return {what: path for what, path in pictures.items() if path.is_file()}
