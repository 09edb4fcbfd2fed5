"""A new data version from labelled production traffic: real DVC, real GX, real prediction log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import HOLDOUT_SPLIT, DataPlan, Params, Scenario, Strata
from flywheel.data.ground_truth import write_ground_truth
from flywheel.data.manifest import load_manifest, manifest_path, sha256_file
from flywheel.data.versioning import data_version, ensure_dataset, is_clean
from flywheel.labeling.merge import MergeError, production_image_id, update_dataset
from flywheel.monitoring.prediction_log import read_predictions
from tests.support.labeling import serve_collected_batch, write_prediction_log
from tests.support.project import make_git_dvc_repo

pytestmark = pytest.mark.slow  # DVC and GX: a few seconds each

PLAN = DataPlan(
    seed=11,
    classes=("0", "1", "2", "3"),
    image_size=16,
    strata=Strata(style=("handwritten", "printed"), noise=("clean", "shadow")),
    per_stratum={"train": 8, "val": 4, "test": 4},
    generator="flywheel.demo.collect:collect_dataset",  # params.yaml's: the first version
)
DRIFT = Scenario(mix={"handwritten/shadow": 0.8, "printed/clean": 0.2}, severity={"shadow": 1.5})


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, Path, Path]:
    """A git + DVC repo with the first data version, and 30 served, truth-recorded images."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    repo = make_git_dvc_repo(tmp_path / "repo", remote=tmp_path / "remote")
    ensure_dataset(PLAN, repo)
    params = Params(data=PLAN, serve={"log": {"dir": tmp_path / "log"}})  # type: ignore[arg-type]
    serve_collected_batch(
        PLAN,
        30,
        tmp_path / "log",
        tmp_path / "state" / "ground_truth",
        seed=3,
        scenario=DRIFT,
        work_dir=tmp_path,
    )
    return params, repo, tmp_path


def _label(truth_rows: pd.DataFrame, tmp_path: Path) -> None:
    """The oracle's labels for these rows, as `flywheel label oracle` records them."""
    labels = truth_rows[["request_id", "index", "label"]].assign(origin="oracle")
    write_ground_truth(labels, tmp_path / "state" / "ground_truth")


def _truth(tmp_path: Path) -> pd.DataFrame:
    from flywheel.data.ground_truth import read_ground_truth

    return read_ground_truth(tmp_path / "state" / "ground_truth", origins=["simulator"])


def test_a_merge_records_a_new_version_and_keeps_test_frozen(
    setup: tuple[Params, Path, Path],
) -> None:
    params, repo, tmp_path = setup
    dataset = repo / "data" / PLAN.name
    first = data_version(repo, PLAN)
    before = load_manifest(dataset)
    truth = _truth(tmp_path)
    _label(truth.iloc[:20], tmp_path)

    update = update_dataset(params, repo, push=False)

    assert update.version_before == first
    assert update.changed
    assert update.version == data_version(repo, PLAN) != first
    assert is_clean(repo, PLAN)
    merged = load_manifest(dataset)
    added = merged[merged["source"] == "production"].set_index("image_id")
    assert len(added) == 20 == len(update.merge.added)
    expected = (
        truth.iloc[:20]
        .assign(
            image_id=[
                production_image_id(r, i)
                for r, i in truth.iloc[:20][["request_id", "index"]].values
            ]
        )
        .set_index("image_id")
    )
    for column in ("label", "style", "noise", "group"):
        assert added[column].to_dict() == expected.loc[added.index, column].to_dict()
    assert set(added["split"]) <= {"train", "val", HOLDOUT_SPLIT}
    assert added.groupby("group")["split"].nunique().max() == 1  # a glyph stays in one split
    for row in added.itertuples():
        assert row.path.startswith(f"images/production/{row.label}/")
        assert sha256_file(dataset / row.path) == row.sha256
    # The frozen split is untouched, row for row.
    pd.testing.assert_frame_equal(
        merged[merged["split"] == "test"].reset_index(drop=True),
        before[before["split"] == "test"].reset_index(drop=True),
    )
    report = update.merge.report
    assert report is not None
    assert report.success, report.failures
    assert (
        sum(row.get(HOLDOUT_SPLIT, 0) for row in report.counts.values())
        == (added["split"] == HOLDOUT_SPLIT).sum()
    )

    # Merging the same labels again adds nothing: same bytes, same version.
    manifest_bytes = manifest_path(dataset).read_bytes()
    again = update_dataset(params, repo, push=False)
    assert not again.changed
    assert again.version == update.version
    assert again.merge.added.empty
    assert len(again.merge.skipped["in_dataset"]) == 20
    assert manifest_path(dataset).read_bytes() == manifest_bytes

    # More labels later: only the new ones join, another version.
    _label(truth.iloc[20:25], tmp_path)
    third = update_dataset(params, repo, push=False)
    assert len(third.merge.added) == 5
    assert third.version not in {first, update.version}


def test_a_merge_that_fails_the_gate_is_undone(setup: tuple[Params, Path, Path]) -> None:
    params, repo, tmp_path = setup
    dataset = repo / "data" / PLAN.name
    manifest_bytes = manifest_path(dataset).read_bytes()
    test_group = load_manifest(dataset).query("split == 'test'")["group"].iloc[0]
    leaked = _truth(tmp_path).iloc[:3].assign(request_id=lambda f: "leak-" + f["request_id"])
    # The simulator claims these images show a glyph of the frozen test split: leakage.
    write_ground_truth(leaked.assign(group=test_group), tmp_path / "state" / "ground_truth")
    _label(leaked, tmp_path)
    logged = read_predictions(tmp_path / "log").query("index == 0").set_index("request_id")
    images = np.stack(
        [
            np.asarray(Image.open(logged.loc[r.removeprefix("leak-"), "image_path"]))
            for r in leaked["request_id"]
        ]
    )  # (3, S, S): the same pictures, one pixel changed, logged under the new keys
    images[:, 0, 0] ^= 1
    write_prediction_log(
        tmp_path / "log",
        images,
        np.full((3, 4), 0.25),
        PLAN.classes,
        request_ids=leaked["request_id"].tolist(),
    )

    with pytest.raises(
        MergeError,
        match=r"the merge was undone: no source glyph \(group\).*leakage.*production-leak-",
    ):
        update_dataset(params, repo, push=False)

    assert manifest_path(dataset).read_bytes() == manifest_bytes
    assert not (dataset / "images" / "production").exists()
    assert is_clean(repo, PLAN)


def test_data_merge_cli(setup: tuple[Params, Path, Path]) -> None:
    params, repo, tmp_path = setup
    _label(_truth(tmp_path).iloc[:10], tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    first = data_version(repo, PLAN)

    result = CliRunner().invoke(
        app, ["data", "merge", "--repo", str(repo), "--no-push", "--params", str(params_file)]
    )

    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "10 labelled images: 10 merged" in output
    assert f"(was {first})" in output
    assert data_version(repo, PLAN) in output
    # The merged labels are settled: their queued tasks are no longer outstanding.
    from flywheel.labeling.sync import merged_dir, settled_keys

    settled = settled_keys(merged_dir(params.label, tmp_path / "state"))
    assert settled == set(zip(_truth(tmp_path)["request_id"].iloc[:10], [0] * 10, strict=True))


def test_the_pipeline_steps_curate_label_and_version(setup: tuple[Params, Path, Path]) -> None:
    """What the curate, label and update-dataset components call, chained as the pipeline does."""
    from flywheel import workflows

    params, repo, tmp_path = setup
    params = params.model_copy(
        update={
            "curate": params.curate.model_copy(update={"budget": 8}),
            "label": params.label.model_copy(
                update={
                    "dir": tmp_path / "labeling",
                    "labeler": "flywheel.demo.oracle:OracleLabeler",
                }
            ),
        }
    )
    first = data_version(repo, PLAN)

    queued = workflows.curate_samples(params, queue_out=tmp_path / "artifacts" / "queue")
    labelled = workflows.label_samples(
        params, tmp_path / "artifacts" / "queue", labels_out=tmp_path / "artifacts" / "labels"
    )
    version = workflows.update_dataset(params, repo, tmp_path / "artifacts" / "labels")

    assert (queued, labelled) == (8, 8)
    assert (tmp_path / "artifacts" / "queue" / "label_config.xml").is_file()
    assert version == data_version(repo, PLAN) != first
    merged = load_manifest(repo / "data" / PLAN.name)
    assert (merged["source"] == "production").sum() == 8
    # Nothing new to curate from the same log after the rest is queued: the version holds.
    params = params.model_copy(update={"curate": params.curate.model_copy(update={"budget": 50})})
    assert workflows.curate_samples(params, queue_out=tmp_path / "artifacts" / "q2") == 22
    assert workflows.curate_samples(params, queue_out=tmp_path / "artifacts" / "q3") == 0
    assert (
        workflows.label_samples(
            params, tmp_path / "artifacts" / "q3", labels_out=tmp_path / "artifacts" / "l3"
        )
        == 0
    )
    assert workflows.update_dataset(params, repo, tmp_path / "artifacts" / "l3") == version


def test_late_annotations_of_an_earlier_batch_are_merged_by_a_later_update(
    setup: tuple[Params, Path, Path],
) -> None:
    """Asynchronous labelling with people (saved Label Studio exports): the update run below
    `label.sync.min_completed` waits; annotations of the first batch that arrive after a second
    batch was sent are merged by the next update run, and merged tasks are no longer outstanding."""
    from flywheel import workflows
    from flywheel.demo.oracle import answer_tasks, simulator_truth
    from flywheel.labeling import queue_batches, read_batch
    from flywheel.labeling.sync import Completion

    params, repo, tmp_path = setup
    params = params.model_copy(
        update={
            "curate": params.curate.model_copy(update={"budget": 6}),
            "label": params.label.model_copy(
                update={
                    "dir": tmp_path / "labeling",
                    "labeler": "label-studio-export",
                    "sync": params.label.sync.model_copy(update={"min_completed": 3}),
                }
            ),
        }
    )
    truth = simulator_truth(tmp_path / "state" / "ground_truth")
    exports = tmp_path / "labeling" / "exports"
    exports.mkdir(parents=True)
    artifacts = tmp_path / "artifacts"

    def annotate(name: str, tasks: list[dict[str, object]]) -> None:
        """People label these tasks in Label Studio and save its JSON export."""
        export, answered = answer_tasks(
            tasks, truth, from_name="label", to_name="image", answered_at="2026-12-07T10:00:00"
        )
        assert answered == len(tasks)
        (exports / f"{name}.json").write_text(json.dumps(export))

    def sent(queue: Path) -> list[dict[str, object]]:
        (batch,) = queue_batches(queue)
        return read_batch(batch)

    first = data_version(repo, PLAN)
    assert workflows.curate_samples(params, queue_out=artifacts / "q1") == 6
    assert workflows.send_batch(params, artifacts / "q1") == 6  # the curation run ends here
    batch_1 = sent(artifacts / "q1")
    annotate("monday", batch_1[:2])

    waiting = workflows.collect_labels(params, labels_out=artifacts / "l1")
    assert waiting == Completion(batches=1, outstanding=6, completed=2, needed=3)
    assert not waiting.ready  # the update run ends: nothing merged, no training

    assert workflows.curate_samples(params, queue_out=artifacts / "q2") == 6
    batch_2 = sent(artifacts / "q2")
    annotate("tuesday", [*batch_1[2:4], batch_2[0]])  # late annotations of the first batch
    assert workflows.count_completed(params) == Completion(2, 12, 5, 3)

    ready = workflows.collect_labels(params, labels_out=artifacts / "l2")
    assert ready.ready
    version = workflows.update_dataset(params, repo, artifacts / "l2")

    assert version == data_version(repo, PLAN) != first
    merged = load_manifest(repo / "data" / PLAN.name)
    production = merged[merged["source"] == "production"]
    expected = {production_image_id(t["data"]["request_id"], 0) for t in batch_1[:4]}  # type: ignore[index]
    assert expected < set(production["image_id"])
    assert len(production) == 5
    # Merged tasks are settled: only the unlabelled ones of both batches are outstanding.
    assert workflows.count_completed(params) == Completion(2, 7, 0, 3)
