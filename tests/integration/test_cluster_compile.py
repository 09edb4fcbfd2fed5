"""`flywheel pipeline compile` for a real cluster: the KFP backend it needs, resources on
every step, GPU or CPU-only placement from params.yaml and flags, the image repository.

The backend check parses every compiled executor with the protos of the KFP
release the project states as its minimum, unknown fields refused, as the
backend's driver does (tests/support/kfp_backend.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flywheel import __version__
from flywheel.cli import app
from pipelines.cluster import MIN_KFP_BACKEND
from tests.support import REPO
from tests.support.kfp_backend import available_versions, spec_errors

PARAMS_FILE = REPO / "params.yaml"
PIPELINES = ("training", "flywheel")  # flywheel holds every step of `curation` and `update`


def compile_cli(out: Path, *extra: str) -> dict[str, list[dict[str, Any]]]:
    """`flywheel pipeline compile` both pipelines into `out`; their YAML documents by name."""
    args = ["pipeline", "compile", *PIPELINES, "--out", str(out), "--params", str(PARAMS_FILE)]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return {n: list(yaml.safe_load_all((out / f"{n}.yaml").read_text())) for n in PIPELINES}


def executors(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container executor of a compiled package, by executor label."""
    return {
        label: body["container"] for label, body in docs[0]["deploymentSpec"]["executors"].items()
    }


def kubernetes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every Kubernetes executor config of a compiled package, by executor label."""
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def default_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return compile_cli(tmp_path_factory.mktemp("ir"))


# ------------------------------------------------------------ the KFP backend


@pytest.mark.parametrize("name", PIPELINES)
def test_the_stated_minimum_backend_accepts_every_compiled_step(
    default_packages: dict[str, list[dict[str, Any]]], name: str
) -> None:
    assert MIN_KFP_BACKEND in available_versions()
    assert spec_errors(default_packages[name], MIN_KFP_BACKEND) == []


@pytest.mark.parametrize("name", PIPELINES)
def test_the_backend_before_the_minimum_refuses_the_spec(
    default_packages: dict[str, list[dict[str, Any]]], name: str
) -> None:
    older = [v for v in available_versions() if v < MIN_KFP_BACKEND]
    assert older, "keep the protos of the release before the minimum: the minimum is then tight"
    errors = spec_errors(default_packages[name], older[-1])
    assert errors
    assert all('no field named "optional"' in e for e in errors)  # kubeflow/pipelines#12495


def test_the_docs_state_the_minimum_backend() -> None:
    stated = MIN_KFP_BACKEND.rsplit(".0", 1)[0]  # "2.15"
    for doc in (REPO / "README.md", REPO / "infra" / "README.md"):
        assert f"KFP backend >= {stated}" in doc.read_text(), doc


# ------------------------------------------------------------ resources, placement


@pytest.mark.parametrize("name", PIPELINES)
def test_every_step_asks_for_cpu_and_memory(
    default_packages: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for label, container in executors(default_packages[name]).items():
        resources = container.get("resources", {})
        for key in ("resourceCpuRequest", "resourceMemoryRequest"):
            assert resources.get(key), f"{name}/{label}: no {key}"
        for key in ("resourceCpuLimit", "resourceMemoryLimit"):
            assert resources.get(key), f"{name}/{label}: no {key}"


def test_placement_and_resources_come_from_params(tmp_path: Path) -> None:
    packages = compile_cli(
        tmp_path,
        "--set",
        "cluster.steps={cpu: 250m, memory: 1Gi, cpu_limit: null, memory_limit: 3Gi}",
        "--set",
        "cluster.placement.node_selector={pool: cpu}",
        "--set",
        "cluster.train.gpus=2",
        "--set",
        "cluster.train.accelerator=amd.com/gpu",
        "--set",
        "cluster.train.placement.node_selector={amd.com/gpu.product: MI300X}",
        "--set",
        "cluster.train.placement.tolerations=[{key: gpu, operator: Equal, value: amd}]",
    )

    for name, docs in packages.items():
        k8s = kubernetes(docs)
        for label, container in executors(docs).items():
            resources = container["resources"]
            if label == "exec-train-model":
                assert resources["accelerator"]["resourceType"] == "amd.com/gpu"
                assert resources["accelerator"]["resourceCount"] == "2"
                assert k8s[label]["nodeSelector"]["labels"] == {"amd.com/gpu.product": "MI300X"}
                assert k8s[label]["tolerations"] == [
                    {"key": "gpu", "operator": "Equal", "value": "amd", "effect": "NoSchedule"}
                ]
                continue
            assert "accelerator" not in resources, f"{name}/{label}"
            assert resources["resourceCpuRequest"] == "250m", f"{name}/{label}"
            assert resources["resourceMemoryRequest"] == "1Gi"
            assert resources["resourceMemoryLimit"] == "3Gi"
            assert "resourceCpuLimit" not in resources  # null: no limit
            assert k8s[label]["nodeSelector"]["labels"] == {"pool": "cpu"}
            assert "tolerations" not in k8s[label]


def test_gpus_zero_trains_on_cpu_in_the_cpu_image(tmp_path: Path) -> None:
    packages = compile_cli(tmp_path, "--gpus", "0", "--image", "reg.example/flywheel:1")

    for name, docs in packages.items():
        k8s = kubernetes(docs)
        for label, container in executors(docs).items():
            assert container["image"] == "reg.example/flywheel:1", f"{name}/{label}"
            assert "accelerator" not in container["resources"], f"{name}/{label}"
            assert "nodeSelector" not in k8s[label], f"{name}/{label}"
            assert "tolerations" not in k8s[label], f"{name}/{label}"
        train = executors(docs)["exec-train-model"]["resources"]
        assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == ("4", "16Gi")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_image_repository_names_every_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.delenv("FLYWHEEL_IMAGE", raising=False)
    if how == "env":
        monkeypatch.setenv("FLYWHEEL_IMAGE_REPO", "registry.example:5000/ml")
        packages = compile_cli(tmp_path)
    else:
        packages = compile_cli(tmp_path, "--image-repo", "registry.example:5000/ml")

    image = f"registry.example:5000/ml/flywheel:{__version__}"
    for name, docs in packages.items():
        for label, container in executors(docs).items():
            expected = f"{image}-cuda" if label == "exec-train-model" else image
            assert container["image"] == expected, f"{name}/{label}"


@pytest.mark.parametrize(
    ("pair", "named"),
    [
        ("cluster.steps.memory=lots", "cluster.steps.memory"),
        ("cluster.train.gpus=-1", "cluster.train.gpus"),
        ("cluster.train.placement.tolerations=[{key: gpu, operator: Equal}]", "needs a value"),
    ],
)
def test_a_bad_cluster_setting_is_named(tmp_path: Path, pair: str, named: str) -> None:
    args = ["pipeline", "compile", "--out", str(tmp_path), "--params", str(PARAMS_FILE)]
    result = CliRunner().invoke(app, [*args, "--set", pair])

    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not list(tmp_path.iterdir())  # nothing compiled
