"""The real serving process writes its prediction log into object storage, per registered model.

`flywheel serve` (BentoML, in a subprocess, as `tests.support.serving` starts
it) gets what a serving pod gets: `FLYWHEEL_STATE_URL` on a bucket of an
S3-compatible server (moto on 127.0.0.1) and the `AWS_*` environment, and no
`serve.log.dir`. Its log lands in `<state URL>/predictions/model=<name>/` as
whole Parquet objects and PNGs, and nothing is written to a local folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from flywheel.demo.server import start_server
from flywheel.monitoring.prediction_log import read_predictions
from flywheel.storage import read_bytes
from tests.support import serving as serving_support
from tests.support.object_store import ObjectStore, object_store
from tests.support.serving import MODEL, digit_images, server_environment, write_params

pytestmark = pytest.mark.slow
env = serving_support.env
__all__ = ["env", "object_store"]  # fixtures, found by pytest under their names


def test_the_serving_process_writes_its_log_into_the_bucket(
    env: dict[str, str],
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = object_store.prefix("serving")
    root = f"{state}/predictions/model={MODEL}"
    params = write_params(tmp_path, MODEL, log={"flush_every": 1, "flush_interval_s": 0.2})
    pod_env = server_environment(env, **object_store.env, FLYWHEEL_STATE_URL=state)
    images = digit_images(5)
    with start_server(params, env=pod_env, cwd=tmp_path, log_path=tmp_path / "server.log") as url:
        for start in (0, 2):  # two requests: 2 and 3 images
            answer = httpx.post(
                f"{url}/predict_arrays",
                json={"images": images[start : start + 2 + start // 2].tolist()},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30
        while sum(k.endswith(".png") for k in object_store.keys(root)) < 5:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.2)

    keys = object_store.keys(root)
    parts = [k for k in keys if "/part-" in k]
    assert parts
    assert all(k.endswith(".parquet") for k in parts), parts  # whole objects, never appended
    object_store.apply(monkeypatch)
    log = read_predictions(root)
    assert len(log) == 5
    assert set(log["model_name"]) == {MODEL}
    assert set(log["model_version"]) == {"1"}
    for path in log["image_path"]:
        assert path.startswith(f"{root}/date=")
        assert read_bytes(path).startswith(b"\x89PNG")
    assert not (tmp_path / "predictions").exists()
    assert not list(tmp_path.rglob("part-*"))  # nothing logged locally
