"""params.yaml loads into typed, validated config; bad files fail with the key's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.config import ConfigError, Params, load_needed_params, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_load() -> None:
    params = load_params(REPO / "params.yaml")

    assert params.data.classes == tuple(str(d) for d in range(10))
    assert params.data.strata.names()[0] == "handwritten/clean"
    assert set(params.data.per_stratum) == {"train", "val", "test"}
    assert "in_distribution" in params.scenarios


def test_repository_params_place_training_on_one_gpu_and_size_every_step() -> None:
    cluster = load_params(REPO / "params.yaml").cluster

    assert (cluster.train.gpus, cluster.train.accelerator) == (1, "nvidia.com/gpu")
    assert cluster.train.placement.node_selector == {"nvidia.com/gpu.present": "true"}
    assert (cluster.steps.cpu, cluster.steps.memory, cluster.steps.memory_limit) == (
        "500m",
        "2Gi",
        "4Gi",
    )
    assert cluster == Params().cluster  # the file states the defaults it documents


def test_repository_params_state_the_served_low_information_threshold() -> None:
    assert load_params(REPO / "params.yaml").serve.min_dynamic_range == 0.02
    assert Params().serve.min_dynamic_range == 0.02  # the file states the default


def test_overrides_replace_single_values() -> None:
    params = load_params(REPO / "params.yaml", {"data.seed": 7, "data.per_stratum.train": 3})

    assert params.data.seed == 7
    assert params.data.per_stratum["train"] == 3


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("data: {image_size: tiny}", "image_size"),
        ("data: {imagesize: 32}", "imagesize"),
        ("data: {per_stratum: {train: 1, val: 1}}", "missing"),
        ("data: {source_shares: {train: 0.5, val: 0.2, test: 0.2, production: 0.2}}", "sum to 1"),
        ("scenarios: {x: {mix: {handwritten/fog: 1.0}}}", "unknown strata"),
        ("scenarios: {x: {severity: {fog: 2.0}}}", "unknown noise"),
        ("[1, 2]", "mapping"),
        ("data: {seed: [", "not valid YAML"),
        ("cluster: {steps: {memory: 2 GB}}", "not a Kubernetes quantity"),
        ("cluster: {train: {gpus: -1}}", "cluster.train.gpus"),
        (
            "cluster: {train: {placement: {tolerations: [{key: g, operator: Equal}]}}}",
            "needs a value",
        ),
        ("cluster: {placement: {tolerations: [{key: g, value: x}]}}", "takes none"),
        ("cluster: {train: {accelerator: ''}}", "cluster.train.accelerator"),
        ("trian: {epochs: 3}", "unknown key 'trian': did you mean 'train'"),
        ("train: {epoks: 3}", "unknown key 'train.epoks': did you mean 'train.epochs'"),
        ("scenarios: {x: {mixx: plan}}", "did you mean 'scenarios.x.mix'"),
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("{}", "empty"),
        ("serve: {min_dynamic_range: 1.0}", "serve.min_dynamic_range"),
        ("serve: {min_dynamic_range: -0.01}", "serve.min_dynamic_range"),
    ],
)
def test_bad_params_name_the_problem(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml_text)

    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_a_misspelt_set_is_an_error_with_the_nearest_name() -> None:
    """`--set trian.epochs=3` must not start a full default training."""
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_params(REPO / "params.yaml", {"trian.epochs": 3})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_unknown_scenario_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="in_distribution"):
        Params().scenario("fog")


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(ValueError, match="frozen"):
        params.data.seed = 3  # type: ignore[misc]


REGISTRY = ("data", "evaluate")
GOOD = "data:\n  name: mine\n  classes: ['a', 'b']\nevaluate:\n  batch_size: 8\n"


@pytest.mark.parametrize(
    ("broken", "section", "why"),
    [
        ("train:\n  epochs: [1\n  lr: 0.1\n", "train", "not valid YAML, line 8 column 5"),
        ("train: {epochs: 1\n", "train", "not valid YAML, line 7 column 1"),
        ("train:\n  epochs: -1\n", "train", "train.epochs: Input should be greater"),
        ("train:\n  epoks: 3\n", "train", "train.epoks: Extra inputs are not permitted"),
        ("trian:\n  epochs: 3\n", "trian", "unknown section 'trian'; did you mean 'train'?"),
        ("scenarios: {x: {mix: {handwritten/fog: 1.0}}}\n", "scenarios", "unknown strata"),
    ],
)
def test_a_broken_section_a_command_does_not_use_is_set_aside(
    tmp_path: Path, broken: str, section: str, why: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(GOOD + broken)

    loaded = load_needed_params(path, REGISTRY)

    assert list(loaded.ignored) == [section]
    assert why in loaded.ignored[section]
    assert loaded.params.evaluate.registered_model == "flywheel-mine"  # from the file's data
    assert loaded.params.evaluate.batch_size == 8
    assert loaded.params.data.classes == ("a", "b")
    assert loaded.params.train == Params().train  # the broken section's defaults stand in
    with pytest.raises(ConfigError):  # a command that uses every section still fails
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("name: mine", "name: [mine"), "not valid YAML"),  # the needed data
        (GOOD + "evaluate2: [\n", "not valid YAML"),  # a piece that is no known section
        (GOOD.replace("batch_size: 8", "batch_size: -8"), "evaluate.batch_size"),
        (GOOD.replace("batch_size", "batchsize"), "did you mean 'evaluate.batch_size'"),
        ("data: {name: x}\n- 1\n", "not valid YAML"),
        ("", "empty"),
    ],
)
def test_a_broken_section_a_command_uses_fails_as_before(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_needed_params(path, REGISTRY)


def test_valid_params_load_the_same_for_a_command_that_needs_some_sections() -> None:
    loaded = load_needed_params(REPO / "params.yaml", REGISTRY, {"data.seed": 7})

    assert loaded.ignored == {}
    assert loaded.params == load_params(REPO / "params.yaml", {"data.seed": 7})
