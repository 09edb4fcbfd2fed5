"""DistributedDataParallel on CPU: `torchrun --nproc_per_node=2` with the gloo backend.

Both ranks run the library's `train()` exactly as a cluster job would; each
writes the weights it ends with, and the test checks that the ranks agree, that
only rank 0 logged (one MLflow run) and checkpointed, and that the validation
metrics, computed on two shards and summed, are those of the whole split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from flywheel.config import ModelConfig, Params, TrainConfig
from flywheel.demo.collect import collect_dataset
from flywheel.modeling.checkpoints import CHECKPOINT_DIR, LAST_CHECKPOINT, load_checkpoint
from flywheel.tasks.classification import ClassificationTask
from tests.support.plans import tiny_plan

pytestmark = pytest.mark.slow

PLAN = tiny_plan(6, 3, 1, seed=5, classes=("0", "1", "2"))
PARAMS = Params(
    data=PLAN,
    train=TrainConfig(
        experiment="test-ddp",
        seed=3,
        epochs=1,
        batch_size=16,
        model=ModelConfig(width=4, stages=2, embedding_dim=8),
    ),
)

_RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    from flywheel.config import Params
    from flywheel.modeling.training import train

    params_json, dataset, out_dir = sys.argv[1:4]
    result = train(Params.model_validate_json(Path(params_json).read_text()), Path(dataset),
                   out_dir=Path(out_dir), log_model=False, progress=False)
    rank = os.environ["RANK"]
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"run_id": result.run_id, "device": result.device, "history": result.history}))
    """
)


def test_two_cpu_processes_train_the_same_model(tmp_path: Path) -> None:
    collect_dataset(PLAN, tmp_path / "data", progress=False)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    script, params_json, out = tmp_path / "rank.py", tmp_path / "params.json", tmp_path / "out"
    script.write_text(_RANK_SCRIPT)
    params_json.write_text(PARAMS.model_dump_json())

    _torchrun(script, params_json, tmp_path / "data" / PLAN.name, out, store)

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks disagree on the weights"
    checkpoint = load_checkpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT)
    assert all(torch.equal(checkpoint["model"][k], rank0[k]) for k in rank0)
    assert checkpoint["world_size"] == 2
    assert len(checkpoint["rng"]) == 2

    info0, info1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert info1["run_id"] is None
    assert info0["device"] == "cpu x2"
    assert _without_timing(info0["history"]) == _without_timing(info1["history"])
    # The sharded validation, summed over ranks, equals one process scoring the whole split.
    task = ClassificationTask.from_params(PARAMS)
    model = task.build_model(PARAMS.train.model).eval()
    model.load_state_dict(rank0)
    val = task.build_dataset(tmp_path / "data" / PLAN.name, "val")
    with torch.no_grad():
        whole = task.metrics(model(torch.stack([x for x, _ in val])), val.targets)
    assert info0["history"][0]["val_accuracy"] == pytest.approx(whole["accuracy"])
    assert info0["history"][0]["val_loss"] == pytest.approx(whole["loss"], rel=1e-5)

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("test-ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [info0["run_id"]]
    assert runs[0].data.tags["flywheel.device"] == "cpu x2"
    assert runs[0].info.status == "FINISHED"


def _torchrun(script: Path, params_json: Path, dataset: Path, out: Path, store: str) -> None:
    """`torchrun --nproc_per_node=2 script params.json dataset out`, one thread a rank; ok."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(params_json),
            str(dataset),
            str(out),
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


@pytest.mark.parametrize(
    ("task", "monitor"), [("detection", "val_loss"), ("recognition", "val_cer")]
)
def test_the_page_tasks_train_the_same_model_on_two_processes(
    tmp_path: Path, task: str, monitor: str
) -> None:
    """The detector and the recogniser go through the same loop: sharded, in step, one run."""
    from tests.support.page_fixtures import write_crops, write_pages

    pages = tmp_path / "pages"
    write_pages(pages, {"train": 8, "val": 4}, size=64, font_size=10)
    write_crops(pages)
    params = Params(
        data=tiny_plan(6, 3, 1, seed=5).model_copy(update={"image_size": 64}),
        train=TrainConfig(
            task=task,
            experiment=f"test-ddp-{task}",
            seed=3,
            epochs=1,
            batch_size=8,
            monitor=monitor,
            model=ModelConfig(
                width=4, stages=2, embedding_dim=8, input_size=16 if task == "recognition" else None
            ),
        ),
    )
    script, params_json, out = tmp_path / "rank.py", tmp_path / "params.json", tmp_path / "out"
    script.write_text(_RANK_SCRIPT)
    params_json.write_text(params.model_dump_json())
    _torchrun(script, params_json, pages, out, f"sqlite:///{tmp_path}/mlflow.db")

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differ, f"ranks disagree on {differ}"
    info0, info1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert info0["device"] == "cpu x2"
    assert info1["run_id"] is None  # rank 0 alone logs
    assert _without_timing(info0["history"]) == _without_timing(info1["history"])
    assert monitor in info0["history"][0]
