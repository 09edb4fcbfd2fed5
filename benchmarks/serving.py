"""Serving throughput and latency: this service, `mlflow models serve`, the HTTP floor, the model.

One production model, measured in one run, four ways, each server with the
same number of worker processes (`--workers`, default 1):

* **flywheel**: this service (`flywheel serve`: BentoML, validation, adaptive
  batching, prediction log with images, metrics) — the service as deployed;
* **mlflow serve**: `mlflow models serve -m models:/<name>/<version> --env-manager local`
  (JSON only: it takes no image files);
* **HTTP floor**: a bare Starlette app under uvicorn that decodes the same
  payload (JSON into a numpy array, or the multipart upload into a PIL image)
  and answers a constant — no model, no validation, no logging: what HTTP and
  payload decoding alone cost on this machine;
* **in-process**: batched forward passes of the loaded model, no HTTP (the
  concurrency column is the batch size; req/s is images per second).

Payloads: one 32 × 32 grayscale test image per request, as a PNG file — the
request body itself (`image`: `/predict_image`, `Content-Type: image/png`) or a
multipart upload (`multipart`: `/predict_images`, field `images`) — or as a
JSON array `(1, 1, 32, 32)` of floats in [0, 1] (`json`: `{"images": ...}`;
`{"inputs": ...}` for MLflow, which takes no files). For every payload and
concurrency (1, 8, 32, 64) each server gets a warm-up, then at most
`--requests` requests or `--seconds` seconds, whichever ends first; the servers
take turns in rotating order, so a change of background load does not favour one.
The client (aiohttp, one process) runs on the same cores as the servers.

Printed: requests per second, p50/p99 latency, errors (non-200 answers and
failed connections; 503s counted apart), the service's mean batch size (from
its `/metrics`), and the ratios of this service to the floor (throughput and
p99) and to mlflow serve; then the goals of the serving issue at concurrency 32
and the load average (the machine is shared: read the ratios, not the
absolute numbers).

Two more commands share the set-up (`make fuzz`, `make soak`); both exit 1 when they fail:

* `fuzz`: schemathesis generates requests from the service's OpenAPI spec
  (`/docs.json`, every operation, `/admin/reload` with the token) and checks
  that none is answered with a 5xx; at least `--min-requests` (1,000) must be
  sent. Counts per operation and status come from its HAR report.
  schemathesis sends one fixed image per image media type, so `/predict_image`
  then gets valid PNGs/JPEGs of every common mode and `--corrupted-images`
  (500) corruptions of them (`image_bodies`): none may get a 5xx either.
* `soak`: `--seconds` (180) of steady closed-loop load (PNG bodies and uploads, JSON
  arrays, and a truncated PNG in every ten that must get its 400); fails on any
  other answer or when the server processes' resident memory at the end exceeds
  that right after the warm-up (the first 20 %) by `--max-growth` (10 %).

    .venv/bin/python benchmarks/serving.py                 # trains a small CNN into a temp store
    .venv/bin/python benchmarks/serving.py --tracking-uri sqlite:///$PWD/.flywheel/mlflow/mlflow.db
    .venv/bin/python benchmarks/serving.py --requests 1000 --seconds 30 --json results.json
    .venv/bin/python benchmarks/serving.py fuzz            # make fuzz
    .venv/bin/python benchmarks/serving.py soak --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
FLYWHEEL, MLFLOW, FLOOR = "flywheel", "mlflow serve", "HTTP floor"
BENTO_FLOOR, IN_PROCESS = "BentoML floor", "in-process"
SERVERS = (FLYWHEEL, MLFLOW, FLOOR, BENTO_FLOOR)
IMAGE, MULTIPART, JSON = "image", "multipart", "json"
GOAL_CONCURRENCY = 32
CONSTANT_ANSWER = b'[{"label":"0","confidence":1.0}]'

console = Console(width=None if sys.stdout.isatty() else 150)


# ------------------------------------------------------------- the floor


def build_floor_app() -> Any:
    """The HTTP floor: decode the payload as the service must, answer a constant.

    Run by uvicorn as `benchmarks.serving:build_floor_app` (`--factory`).
    """
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def predict_arrays(request: Request) -> Response:
        body = await request.json()
        np.asarray(body["images"], dtype=np.float32)  # (N, 1, S, S)
        return Response(CONSTANT_ANSWER, media_type="application/json")

    async def predict_images(request: Request) -> Response:
        async with request.form() as form:
            for upload in form.getlist("images"):
                Image.open(io.BytesIO(await upload.read())).load()  # type: ignore[union-attr]
        return Response(CONSTANT_ANSWER, media_type="application/json")

    async def predict_image(request: Request) -> Response:
        Image.open(io.BytesIO(await request.body())).load()
        return Response(CONSTANT_ANSWER, media_type="application/json")

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/predict_arrays", predict_arrays, methods=["POST"]),
            Route("/predict_images", predict_images, methods=["POST"]),
            Route("/predict_image", predict_image, methods=["POST"]),
            Route("/readyz", ready),
        ]
    )


def build_bentoml_floor() -> Any:
    """The BentoML floor: the floor's two endpoints as a bare BentoML service, no model.

    Not one of the issue's four: it shows what BentoML's own request handling
    costs (its middlewares, IO descriptors, uploads spooled to files), the
    ceiling of any service built on it. `/predict_image` is mounted as the
    service mounts its own (`bentoml.asgi_app`).
    """
    import bentoml
    from fastapi import FastAPI
    from PIL import Image
    from starlette.requests import Request
    from starlette.responses import Response

    async def predict_image(request: Request) -> Response:
        Image.open(io.BytesIO(await request.body())).load()
        return Response(CONSTANT_ANSWER, media_type="application/json")

    # FastAPI reads the types from the annotations, strings here (`from __future__`), in the
    # module's globals, where Request is not: give it the classes.
    predict_image.__annotations__.update({"request": Request, "return": Response})
    raw = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    raw.post("/predict_image")(predict_image)

    @bentoml.service(name="bentofloor")
    @bentoml.asgi_app(raw, path="/")
    class BentoFloor:
        @bentoml.api
        async def predict_arrays(self, images: np.ndarray) -> list[dict[str, Any]]:
            return Response(CONSTANT_ANSWER, media_type="application/json")  # type: ignore[return-value]

        @bentoml.api
        async def predict_images(self, images: list[Path]) -> list[dict[str, Any]]:
            for path in images:
                Image.open(path).load()
            return Response(CONSTANT_ANSWER, media_type="application/json")  # type: ignore[return-value]

    return BentoFloor


def __getattr__(name: str) -> Any:
    """`BentoFloor` on first access (PEP 562): `bentoml serve benchmarks.serving:BentoFloor`.

    Lazily, so that importing this module (the uvicorn floor and the tests do)
    does not import BentoML; kept as a module global, where BentoML looks for it.
    """
    if name != "BentoFloor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_bentoml_floor()
    return service


# ------------------------------------------------------------ measurement


@dataclass
class Cell:
    """One server, one payload, one concurrency: what the client saw."""

    server: str
    payload: str
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: Counter[str] = field(default_factory=Counter)
    mean_batch: float | None = None

    @property
    def requests(self) -> int:
        """Requests answered or failed."""
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        """Requests per second (images per second for in-process)."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def errors(self) -> int:
        """Anything but a 200."""
        return self.requests - self.statuses.get("200", 0)

    def count(self, predicate: Callable[[int], bool]) -> int:
        """Answers whose HTTP status satisfies `predicate`."""
        return sum(n for s, n in self.statuses.items() if s.isdigit() and predicate(int(s)))


@dataclass(frozen=True)
class Target:
    """How to send one payload to one server."""

    url: str
    body: bytes
    headers: dict[str, str]


async def _load(target: Target, cell: Cell, *, warmup: int, requests: int, seconds: float) -> None:
    """Send `warmup` requests, then measure until `requests` are done or `seconds` pass."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=cell.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(record: bool) -> None:
            started = time.perf_counter()
            status = await _post(session, target)
            if record:
                cell.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                cell.statuses[status] += 1

        async def worker(budget: Iterator[int], deadline: float, record: bool) -> None:
            for _ in budget:
                if time.perf_counter() >= deadline:
                    return
                await send(record)

        async def run(total: int, limit_s: float, record: bool) -> float:
            budget = iter(range(total))
            started = time.perf_counter()
            deadline = started + limit_s
            await asyncio.gather(
                *(worker(budget, deadline, record) for _ in range(cell.concurrency))
            )
            return time.perf_counter() - started

        await run(warmup, seconds, record=False)
        cell.seconds = await run(requests, seconds, record=True)


async def _post(session: Any, target: Target) -> str:
    """Send one request; the answer's status, or the name of the error that prevented one."""
    import aiohttp

    try:
        async with session.post(target.url, data=target.body, headers=target.headers) as answer:
            await answer.read()
            return str(answer.status)
    except (aiohttp.ClientError, TimeoutError) as err:
        return type(err).__name__


def _batch_stats(url: str) -> tuple[float, float]:
    """The service's `flywheel_batch_size` histogram: (sum, count)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "flywheel_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def measure(
    targets: dict[tuple[str, str], Target],
    concurrencies: Sequence[int],
    *,
    warmup: int,
    requests: int,
    seconds: float,
    flywheel_url: str,
) -> list[Cell]:
    """Every (server, payload) target at every concurrency, servers in rotating order."""
    from tqdm import tqdm

    cells = []
    payloads = sorted({payload for _, payload in targets})
    steps = [(p, c) for p in payloads for c in concurrencies]
    bar = tqdm(total=len(steps) * len(SERVERS), desc="measuring", unit="cell", file=sys.stderr)
    for turn, (payload, concurrency) in enumerate(steps):
        order = SERVERS[turn % len(SERVERS) :] + SERVERS[: turn % len(SERVERS)]
        for server in order:
            target = targets.get((server, payload))
            if target is None:
                bar.update()
                continue
            bar.set_postfix_str(f"{server}, {payload}, c={concurrency}")
            cell = Cell(server, payload, concurrency)
            before = _batch_stats(flywheel_url) if server == FLYWHEEL else None
            asyncio.run(_load(target, cell, warmup=warmup, requests=requests, seconds=seconds))
            if before is not None:
                after = _batch_stats(flywheel_url)
                images = after[0] - before[0]
                passes = after[1] - before[1]
                cell.mean_batch = images / passes if passes else None
            cells.append(cell)
            bar.update()
    bar.close()
    return cells


def measure_in_process(
    uri: str, concurrencies: Sequence[int], size: int, *, requests: int, seconds: float
) -> list[Cell]:
    """Forward passes of the loaded model on `size`² images, batch size = concurrency (no HTTP)."""
    import mlflow.pytorch
    import torch

    module = mlflow.pytorch.load_model(uri, map_location="cpu")
    cells = []
    for batch_size in concurrencies:
        cell = Cell(IN_PROCESS, JSON, batch_size)
        x = torch.rand(batch_size, 1, size, size)  # (B, 1, S, S)
        with torch.inference_mode():
            for _ in range(5):
                module(x)
            passes = max(1, requests // batch_size)
            started = time.perf_counter()
            for _ in range(passes):
                t = time.perf_counter()
                module(x)
                cell.latencies_ms.append((time.perf_counter() - t) * 1000.0)
                if time.perf_counter() - started > seconds:
                    break
            cell.seconds = time.perf_counter() - started
        cell.statuses["200"] = len(cell.latencies_ms) * batch_size  # images
        cells.append(cell)
    return cells


# ---------------------------------------------------------------- set-up


def train_model(workdir: Path, params_path: Path, epochs: int) -> tuple[str, str, str]:
    """Train the small CNN of params.yaml briefly into a temp store and promote it.

    Returns:
        The tracking URI, the registered model name and the production version.
    """
    from flywheel import registry
    from flywheel.config import load_params
    from flywheel.evaluation import evaluate_candidate
    from flywheel.modeling.training import train
    from flywheel.tracking import configure_tracking

    uri = f"sqlite:///{workdir}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    overrides = {
        "train.epochs": epochs,
        "train.model.name": "small_cnn",
        "evaluate.gates.min_accuracy": 0.0,  # a serving benchmark: any model will do
        "evaluate.gates.min_slice_accuracy": None,
    }
    params = load_params(params_path, overrides)
    dataset = params.data.dataset_dir
    if not (dataset / "manifest.csv").is_file():
        raise SystemExit(f"no dataset at {dataset}: run `flywheel data ensure` first")
    configure_tracking()
    console.print(f"training {params.train.model.name} for {epochs} epochs into {uri}")
    result = train(params, dataset, out_dir=workdir / "train", log_model=True, progress=False)
    assert result.model_uri is not None
    name = params.evaluate.registered_model
    version = registry.register(result.model_uri, name)
    outcome = evaluate_candidate(name, version, dataset, params.evaluate, progress=False)
    registry.promote(name, version, reason="serving benchmark")
    console.print(f"{name} version {version}: test accuracy {outcome.report.overall.accuracy:.3f}")
    return uri, name, version


def sample_image(params_path: Path) -> np.ndarray:
    """A test image of the dataset `(S, S)` uint8, or a synthetic one when there is none."""
    from PIL import Image

    from flywheel.config import load_params
    from flywheel.data.manifest import load_manifest

    data = load_params(params_path).data
    try:
        manifest = load_manifest(data.dataset_dir)
        row = manifest[manifest["split"] == "test"].iloc[0]
        return np.asarray(Image.open(data.dataset_dir / row["path"]).convert("L"))
    except (OSError, IndexError, ValueError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (data.image_size, data.image_size), dtype=np.uint8)


def build_targets(urls: dict[str, str], image: np.ndarray) -> dict[tuple[str, str], Target]:
    """The request of each (server, payload) for the servers in `urls`; the same bytes wherever
    the API allows (MLflow wants `inputs`, and takes no files)."""
    from PIL import Image
    from urllib3 import encode_multipart_formdata

    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    multipart, content_type = encode_multipart_formdata(
        [("images", ("digit.png", png.getvalue(), "image/png"))]
    )
    unit = np.round(image.astype(np.float64) / 255.0, 4)[None, None].tolist()  # (1, 1, S, S)
    as_json = {"Content-Type": "application/json"}
    arrays = ("/predict_arrays", json.dumps({"images": unit}).encode(), as_json)
    files = ("/predict_images", multipart, {"Content-Type": content_type})
    body = ("/predict_image", png.getvalue(), {"Content-Type": "image/png"})
    requests = {
        (server, payload): request
        for server in (FLYWHEEL, FLOOR, BENTO_FLOOR)
        for payload, request in ((JSON, arrays), (IMAGE, body), (MULTIPART, files))
    }
    requests[(MLFLOW, JSON)] = ("/invocations", json.dumps({"inputs": unit}).encode(), as_json)
    return {
        (server, payload): Target(urls[server] + route, body, headers)
        for (server, payload), (route, body, headers) in requests.items()
        if server in urls
    }


@contextmanager
def run_process(
    command: list[str], env: dict[str, str], log: Path, url: str, probe: str
) -> Iterator[str]:
    """A server subprocess (own process group) until the block ends; waits for `probe`."""
    from flywheel.demo.server import file_tail, stop_process_group, wait_until_ready

    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        output = functools.partial(file_tail, log)
        wait_until_ready(url, 180.0, process=process, output=output, path=probe)
        yield url
    finally:
        stop_process_group(process)


# ----------------------------------------------------------------- report


def print_report(cells: list[Cell], workers: int, threads: int) -> dict[str, bool]:
    """The table, the ratios, and the issue's goals at concurrency 32; returns the goals."""
    by = {(c.server, c.payload, c.concurrency): c for c in cells}
    table = Table(
        title=f"serving benchmark: {workers} worker(s) per server, torch threads {threads}"
    )
    for column in ("payload", "conc.", "server", "req/s", "p50 ms", "p99 ms", "errors (503)"):
        table.add_column(column, justify="left" if column in ("payload", "server") else "right")
    for column in ("batch", "× floor", "p99 × floor", "× BentoML floor", "× mlflow"):
        table.add_column(column, justify="right")
    cells = sorted(cells, key=lambda c: (c.server == IN_PROCESS, c.payload, c.concurrency))
    for c in cells:
        ratios = ["", "", "", ""]
        if c.server == FLYWHEEL:
            floor = by.get((FLOOR, c.payload, c.concurrency))
            bento = by.get((BENTO_FLOOR, c.payload, c.concurrency))
            mlflow = by.get((MLFLOW, c.payload, c.concurrency))  # JSON only
            if floor is not None and floor.rps:
                ratios[0] = f"{c.rps / floor.rps:.2f}"
                ratios[1] = f"{c.percentile(99) / floor.percentile(99):.2f}"
            if bento is not None and bento.rps:
                ratios[2] = f"{c.rps / bento.rps:.2f}"
            if mlflow is not None and mlflow.rps:
                ratios[3] = f"{c.rps / mlflow.rps:.2f}"
        unit = " img/s" if c.server == IN_PROCESS else ""
        table.add_row(
            c.payload if c.server != IN_PROCESS else "tensor",
            str(c.concurrency),
            c.server,
            f"{c.rps:.0f}{unit}",
            f"{c.percentile(50):.1f}",
            f"{c.percentile(99):.1f}",
            f"{c.errors} ({c.count(lambda s: s == 503)})",
            "" if c.mean_batch is None else f"{c.mean_batch:.1f}",
            *ratios,
        )
    console.print(table)

    goals: dict[str, bool] = {}
    k = GOAL_CONCURRENCY
    for payload in (JSON, IMAGE, MULTIPART):
        ours, floor = by.get((FLYWHEEL, payload, k)), by.get((FLOOR, payload, k))
        if ours is None or floor is None:
            continue
        goals[f"{payload}: ≥ 0.8 × floor throughput at c={k}"] = ours.rps >= 0.8 * floor.rps
        goals[f"{payload}: p99 ≤ 1.2 × floor p99 at c={k}"] = ours.percentile(
            99
        ) <= 1.2 * floor.percentile(99)
    ours, mlflow = by.get((FLYWHEEL, JSON, k)), by.get((MLFLOW, JSON, k))
    if ours is not None and mlflow is not None:
        goals[f"json: ≥ 1.5 × mlflow serve at c={k}"] = ours.rps >= 1.5 * mlflow.rps
    arrays = by.get((FLYWHEEL, JSON, k))
    for payload in (IMAGE, MULTIPART):
        image = by.get((FLYWHEEL, payload, k))
        if image is not None and arrays is not None:
            goals[f"{payload}: image files beat JSON arrays at c={k}"] = image.rps > arrays.rps
    ours_cells = [c for c in cells if c.server == FLYWHEEL]
    goals["no 503 at any concurrency"] = all(c.count(lambda s: s == 503) == 0 for c in ours_cells)
    goals["no error at c=32 and c=64"] = all(
        c.errors == 0 for c in ours_cells if c.concurrency in (32, 64)
    )
    for goal, met in goals.items():
        console.print(f"  {'[green]✓[/green]' if met else '[red]✗[/red]'} {goal}")
    for payload in (JSON, IMAGE, MULTIPART):
        bento, floor = by.get((BENTO_FLOOR, payload, k)), by.get((FLOOR, payload, k))
        if bento is not None and floor is not None and floor.rps:
            console.print(
                f"  ceiling: a bare BentoML service ({payload}, c={k}) reaches "
                f"{bento.rps / floor.rps:.2f} × the HTTP floor's throughput, "
                f"p99 {bento.percentile(99) / floor.percentile(99):.2f} × its p99"
            )
    return goals


# ------------------------------------------------------------------- fuzz


IMAGE_BODIES_OPERATION = "POST /predict_image (valid and corrupted image files)"


@dataclass
class FuzzResult:
    """What schemathesis sent and what came back (from its HAR report)."""

    exit_code: int
    statuses: dict[str, Counter[int]]  # operation ("POST /predict_images") -> status counts

    @property
    def requests(self) -> int:
        """Requests sent."""
        return sum(sum(c.values()) for c in self.statuses.values())

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status."""
        return sum(n for c in self.statuses.values() for s, n in c.items() if s >= 500)


def image_bodies(count: int, seed: int) -> list[tuple[str, bytes]]:
    """Bodies for `/predict_image` that schemathesis does not make, with their media types.

    schemathesis sends one fixed 1 x 1 image per image media type, so the
    decoder would otherwise meet no bad file. These are valid PNGs and JPEGs
    of every common mode and odd sizes, then `count` corruptions of them:
    truncated, bytes overwritten, a slice dropped or repeated, or garbage
    behind a PNG or JPEG signature; each sent as `image/png` or `image/jpeg`
    at random (decoding sniffs the content, not the header).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    gray = np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)  # (32, 32)
    gray[8:24, 8:24] = 255 - gray[8:24, 8:24]
    rgb = np.stack([gray, gray[::-1], gray.T], axis=-1)  # (32, 32, 3)
    sources = [
        ("PNG", Image.fromarray(gray)),
        ("PNG", Image.fromarray(rgb)),
        ("PNG", Image.fromarray(rgb).convert("RGBA")),
        ("PNG", Image.fromarray(rgb).convert("P")),
        ("PNG", Image.fromarray(gray).convert("LA")),
        ("PNG", Image.fromarray(gray).convert("1")),
        ("PNG", Image.fromarray(gray.astype(np.uint16) * 257)),  # 16-bit
        ("PNG", Image.fromarray(gray).resize((1, 1))),
        ("PNG", Image.fromarray(gray).resize((300, 7))),
        ("JPEG", Image.fromarray(gray)),
        ("JPEG", Image.fromarray(rgb)),
        ("JPEG", Image.fromarray(rgb).convert("CMYK")),
        ("JPEG", Image.fromarray(rgb).resize((640, 480))),
    ]
    valid = []
    for fmt, picture in sources:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **({"progressive": True} if fmt == "JPEG" else {}))
        valid.append(buffer.getvalue())
    types = ("image/png", "image/jpeg")
    bodies = [(types[i % 2], body) for i, body in enumerate(valid)]
    for _ in range(count):
        body = bytearray(valid[int(rng.integers(len(valid)))])
        cut = int(rng.integers(1, len(body)))
        kind = int(rng.integers(5))
        if kind == 0:  # truncated
            body = body[:cut]
        elif kind == 1:  # bytes overwritten
            where = rng.integers(0, len(body), size=int(rng.integers(1, 16)))
            for i in where:
                body[int(i)] = int(rng.integers(256))
        elif kind == 2:  # a slice dropped
            body = body[:cut] + body[cut + int(rng.integers(1, 64)) :]
        elif kind == 3:  # a slice repeated
            body = body[:cut] + body[max(0, cut - 64) : cut] + body[cut:]
        else:  # garbage behind a signature
            signature = b"\x89PNG\r\n\x1a\n" if rng.integers(2) else b"\xff\xd8\xff\xe0"
            body = bytearray(signature + rng.bytes(int(rng.integers(0, 2048))))
        bodies.append((types[int(rng.integers(2))], bytes(body)))
    return bodies


def fuzz_image_bodies(url: str, bodies: Sequence[tuple[str, bytes]]) -> Counter[int]:
    """Send each body to `/predict_image`; the answers' statuses."""
    import httpx

    statuses: Counter[int] = Counter()
    with httpx.Client(timeout=30) as client:
        for media_type, body in bodies:
            answer = client.post(
                f"{url}/predict_image", content=body, headers={"Content-Type": media_type}
            )
            statuses[answer.status_code] += 1
    return statuses


def run_fuzz(
    url: str,
    report_dir: Path,
    *,
    max_examples: int,
    seed: int,
    token: str | None = None,
    corrupted_images: int = 0,
) -> FuzzResult:
    """Fuzz every operation of the service's OpenAPI spec with schemathesis (its CLI).

    Checks `not_a_server_error` on every answer (a 5xx fails the run); every
    request and answer is kept in a HAR file, which gives the counts. With
    `token`, requests carry it, so `/admin/reload` is fuzzed past its
    authorisation too. Then `/predict_image` gets the valid and
    `corrupted_images` corrupted bodies of `image_bodies` (its own row).
    """
    har = report_dir / "fuzz.har"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    console.print(done.stdout[-4000:], markup=False, highlight=False)
    statuses: dict[str, Counter[int]] = {}
    if har.is_file():
        for entry in json.loads(har.read_text())["log"]["entries"]:
            request = entry["request"]
            route = "/" + request["url"].split("/", 3)[-1].split("?")[0]
            key = f"{request['method']} {route}"
            statuses.setdefault(key, Counter())[int(entry["response"]["status"])] += 1
    bodies = image_bodies(corrupted_images, seed)
    statuses[IMAGE_BODIES_OPERATION] = fuzz_image_bodies(url, bodies)
    return FuzzResult(done.returncode, statuses)


def print_fuzz(result: FuzzResult, minimum: int) -> bool:
    """The requests per operation and status; True when the run passed."""
    table = Table(title="schemathesis: answers per operation and status")
    table.add_column("operation")
    table.add_column("requests", justify="right")
    table.add_column("statuses", justify="left")
    probes: Counter[int] = Counter()  # the odd request per method and path (405 checks)
    for operation, counts in sorted(result.statuses.items()):
        if sum(counts.values()) < 5:
            probes.update(counts)
            continue
        detail = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        table.add_row(operation, str(sum(counts.values())), detail)
    if probes:
        detail = ", ".join(f"{s}: {n}" for s, n in sorted(probes.items()))
        table.add_row("other methods and paths", str(sum(probes.values())), detail)
    console.print(table)
    passed = result.exit_code == 0 and result.server_errors == 0 and result.requests >= minimum
    console.print(
        f"{'[green]passed[/green]' if passed else '[red]FAILED[/red]'}: {result.requests} "
        f"requests (at least {minimum} wanted), {result.server_errors} with a 5xx, "
        f"schemathesis exit status {result.exit_code}"
    )
    return passed


# ------------------------------------------------------------------- soak


@dataclass
class SoakSample:
    """One point of the soak: when, how much was answered so far, memory."""

    seconds: float
    requests: int
    errors: int
    rss_bytes: int


@dataclass
class SoakResult:
    """The whole soak: samples, latencies, unexpected answers."""

    samples: list[SoakSample]
    latencies_ms: list[float]
    unexpected: Counter[str]

    @property
    def requests(self) -> int:
        """Requests answered (or failed)."""
        return self.samples[-1].requests if self.samples else 0

    @property
    def errors(self) -> int:
        """Answers other than the one expected (200, or 400 for the deliberately bad ones)."""
        return sum(self.unexpected.values())

    def memory_growth(self, warmup_share: float = 0.2) -> float:
        """Resident memory at the end over that right after the warm-up, minus 1.

        Each side is the mean of up to three samples, so one sample taken in the
        middle of a burst of allocation does not decide it.
        """
        settled = [s for s in self.samples if s.seconds >= warmup_share * self.samples[-1].seconds]
        first = settled[:3]
        last = settled[-3:]
        start = statistics.fmean(s.rss_bytes for s in first)
        end = statistics.fmean(s.rss_bytes for s in last)
        return end / start - 1.0


def children_rss() -> int:
    """Resident memory of this process's descendants (the server and its workers), in bytes."""
    import psutil

    total = 0
    for process in psutil.Process().children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:  # a worker restarting between the listing and the read
            continue
    return total


def run_soak(
    url: str,
    image: np.ndarray,
    *,
    seconds: float,
    concurrency: int,
    sample_every: float,
    memory: Callable[[], int],
) -> SoakResult:
    """Steady closed-loop load for `seconds`: PNG bodies and uploads, JSON arrays, bad uploads.

    Every tenth request is a truncated PNG that must be refused with a 400 (the
    error path must not leak either); the others must be answered 200.
    Resident memory is sampled every `sample_every` seconds with `memory()`.
    """
    from tqdm import tqdm

    targets = build_targets({FLYWHEEL: url}, image)
    good = [targets[(FLYWHEEL, payload)] for payload in (IMAGE, MULTIPART, JSON)]
    upload = targets[(FLYWHEEL, MULTIPART)]
    truncated = Target(upload.url, upload.body[: len(upload.body) * 2 // 3], upload.headers)
    result = SoakResult([], [], Counter())
    counter = itertools.count()

    async def soak() -> None:
        import aiohttp

        started = time.monotonic()
        deadline = started + seconds
        answered = 0
        bar = tqdm(total=int(seconds), desc="soak", unit="s", file=sys.stderr)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal answered
            while time.monotonic() < deadline:
                n = next(counter)
                target, expected = (truncated, 400) if n % 10 == 9 else (good[n % 3], 200)
                sent = time.perf_counter()
                status = await _post(session, target)
                if expected == 200:
                    result.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
                if status != str(expected):
                    result.unexpected[f"{status} (expected {expected})"] += 1
                answered += 1

        async def sampler() -> None:
            while True:
                now = time.monotonic() - started
                result.samples.append(
                    SoakSample(now, answered, sum(result.unexpected.values()), memory())
                )
                bar.n = min(int(now), int(seconds))
                bar.refresh()
                if now >= seconds:
                    return
                await asyncio.sleep(min(sample_every, max(0.0, seconds - now)))

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [worker(session) for _ in range(concurrency)]
            await asyncio.gather(sampler(), *workers)
        result.samples.append(
            SoakSample(
                time.monotonic() - started, answered, sum(result.unexpected.values()), memory()
            )
        )
        bar.close()

    asyncio.run(soak())
    return result


def print_soak(result: SoakResult, max_growth: float) -> bool:
    """The samples and the verdict; True when there were no errors and memory held."""
    table = Table(title="soak: answers and resident memory of the server's processes")
    for column in ("s", "requests", "req/s", "errors", "RSS MiB"):
        table.add_column(column, justify="right")
    previous: SoakSample | None = None
    for sample in result.samples:
        rate = ""
        if previous is not None and sample.seconds - previous.seconds >= 1.0:  # not the tail
            rate = (
                f"{(sample.requests - previous.requests) / (sample.seconds - previous.seconds):.0f}"
            )
        table.add_row(
            f"{sample.seconds:.0f}",
            str(sample.requests),
            rate,
            str(sample.errors),
            f"{sample.rss_bytes / 2**20:.1f}",
        )
        previous = sample
    console.print(table)
    growth = result.memory_growth()
    latencies = np.asarray(result.latencies_ms)
    passed = result.errors == 0 and growth < max_growth
    console.print(
        f"{'[green]passed[/green]' if passed else '[red]FAILED[/red]'}: {result.requests} "
        f"requests in {result.samples[-1].seconds:.0f} s "
        f"({result.requests / result.samples[-1].seconds:.0f} req/s), "
        f"{result.errors} errors{f' {dict(result.unexpected)}' if result.unexpected else ''}, "
        f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms; "
        f"resident memory {growth:+.1%} after the warm-up (limit +{max_growth:.0%})"
    )
    return passed


# ------------------------------------------------------------------- main


def prepare_model(args: argparse.Namespace, workdir: Path) -> tuple[str, str, str]:
    """The tracking URI, model name and production version: `--tracking-uri`, or trained."""
    from flywheel.config import load_params
    from flywheel.registry import version_for_alias

    if not args.tracking_uri:
        return train_model(workdir, args.params, args.epochs)
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    name = args.model or load_params(args.params).evaluate.registered_model
    version = version_for_alias(name, "production")
    if version is None:
        raise SystemExit(f"{name!r} has no production version in {args.tracking_uri}")
    return args.tracking_uri, name, version


def write_serve_params(params: Path, workdir: Path, name: str, workers: int) -> Path:
    """params.yaml for the server: the model to serve, the workers, the log in `workdir`."""
    raw = yaml.safe_load(params.read_text()) or {}
    raw.setdefault("evaluate", {})["registered_model"] = name
    serve = raw.setdefault("serve", {})
    serve["workers"] = workers
    serve["log"] = {**serve.get("log", {}), "dir": str(workdir / "predictions")}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """`bench` (default) reports, `fuzz` and `soak` exit 1 when they fail."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument(
        "--tracking-uri", help="Use this MLflow store's production model (default: train one)."
    )
    parser.add_argument("--model", help="Registered model (default: evaluate.registered_model).")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs of the temp model.")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes per server.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp folder (logs).")
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser("bench", help="The benchmark (the default).")
    fuzz = commands.add_parser("fuzz", help="schemathesis against the OpenAPI spec; no 5xx.")
    soak = commands.add_parser("soak", help="Minutes of steady load: no errors, flat memory.")
    for command in (parser, bench):  # `serving.py --requests 100` runs the benchmark too
        command.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
        command.add_argument("--requests", type=int, default=400, help="Measured per cell.")
        command.add_argument("--seconds", type=float, default=15.0, help="Time limit per cell.")
        command.add_argument("--warmup", type=int, default=40, help="Unmeasured per cell.")
        command.add_argument("--json", type=Path, help="Also write the results here.")
    fuzz.add_argument("--max-examples", type=int, default=500, help="Per operation and phase.")
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--min-requests", type=int, default=1000)
    fuzz.add_argument(
        "--corrupted-images", type=int, default=500, help="Corrupted /predict_image bodies."
    )
    soak.add_argument("--seconds", type=float, default=180.0)
    soak.add_argument("--concurrency", type=int, default=8)
    soak.add_argument("--sample-every", type=float, default=10.0)
    soak.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args(argv)

    from flywheel.env import disable_telemetry

    disable_telemetry()
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-serving-bench-"))
    try:
        uri, name, version = prepare_model(args, workdir)
        if args.command == "fuzz":
            return 0 if fuzz_command(args, workdir, uri, name) else 1
        if args.command == "soak":
            return 0 if soak_command(args, workdir, uri, name) else 1
        bench_command(args, workdir, uri, name, version)
        return 0
    finally:
        if args.keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def fuzz_command(args: argparse.Namespace, workdir: Path, uri: str, name: str) -> bool:
    """Serve the model with an admin token, fuzz it, report."""
    from flywheel.demo.server import start_server

    token = "fuzz-admin-token"
    params = write_serve_params(args.params, workdir, name, args.workers)
    env = {"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_HOME": str(workdir / "state")}
    with start_server(
        params, env={**env, "FLYWHEEL_ADMIN_TOKEN": token}, log_path=workdir / "flywheel.log"
    ) as url:
        result = run_fuzz(
            url,
            workdir,
            max_examples=args.max_examples,
            seed=args.seed,
            token=token,
            corrupted_images=args.corrupted_images,
        )
    return print_fuzz(result, args.min_requests)


def soak_command(args: argparse.Namespace, workdir: Path, uri: str, name: str) -> bool:
    """Serve the model, hold it under steady load, watch its memory, report."""
    from flywheel.demo.server import start_server

    params = write_serve_params(args.params, workdir, name, args.workers)
    env = {"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_HOME": str(workdir / "state")}
    with start_server(params, env=env, log_path=workdir / "flywheel.log") as url:
        console.print(f"soak: {args.seconds:.0f} s at concurrency {args.concurrency} against {url}")
        result = run_soak(
            url,
            sample_image(args.params),
            seconds=args.seconds,
            concurrency=args.concurrency,
            sample_every=args.sample_every,
            memory=children_rss,
        )
    passed = print_soak(result, args.max_growth)
    console.print(f"load average (1, 5, 15 min): {_fmt(os.getloadavg())} on {os.cpu_count()} cores")
    return passed


def bench_command(
    args: argparse.Namespace, workdir: Path, uri: str, name: str, version: str
) -> None:
    """Start the three servers, measure, measure the model in-process, report."""
    import torch

    from flywheel.config import load_params
    from flywheel.demo.server import free_port, start_server

    load_before = os.getloadavg()
    image = sample_image(args.params)
    serve_params = write_serve_params(args.params, workdir, name, args.workers)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "FLYWHEEL_HOME": str(workdir / "state"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_CONFIG_OPTIONS": f"services.bentofloor.workers={args.workers}",
    }
    ports = {server: free_port() for server in (MLFLOW, FLOOR, BENTO_FLOOR)}
    commands = {
        MLFLOW: [
            *(shutil.which("mlflow", path=env["PATH"]) or "mlflow", "models", "serve"),
            *("-m", f"models:/{name}/{version}", "--env-manager", "local"),
            *("--workers", str(args.workers)),
        ],
        FLOOR: [
            *(sys.executable, "-m", "uvicorn", "--factory", "benchmarks.serving:build_floor_app"),
            *("--app-dir", str(REPO), "--workers", str(args.workers)),
            *("--no-access-log", "--log-level", "warning"),
        ],
        BENTO_FLOOR: [
            *(sys.executable, "-m", "bentoml", "serve", "benchmarks.serving:BentoFloor"),
            *("--working-dir", str(REPO)),  # workers: BENTOML_CONFIG_OPTIONS
        ],
    }
    probes = {MLFLOW: "/ping", FLOOR: "/readyz", BENTO_FLOOR: "/readyz"}
    with ExitStack() as stack:
        console.print(f"starting the servers for models:/{name}/{version} ...")
        urls = {
            FLYWHEEL: stack.enter_context(
                start_server(
                    serve_params,
                    env={"MLFLOW_TRACKING_URI": uri, "FLYWHEEL_HOME": str(workdir / "state")},
                    log_path=workdir / "flywheel.log",
                    ready_timeout_s=180.0,
                )
            )
        }
        for server, command in commands.items():
            url = f"http://127.0.0.1:{ports[server]}"
            command = [*command, "--host", "127.0.0.1", "--port", str(ports[server])]
            log = workdir / f"{server.replace(' ', '-').lower()}.log"
            urls[server] = stack.enter_context(run_process(command, env, log, url, probes[server]))
        cells = measure(
            build_targets(urls, image),
            args.concurrency,
            warmup=args.warmup,
            requests=args.requests,
            seconds=args.seconds,
            flywheel_url=urls[FLYWHEEL],
        )
    threads = load_params(serve_params).serve.torch_threads
    torch.set_num_threads(threads)  # the service's own setting: the same arithmetic
    cells += measure_in_process(
        f"models:/{name}/{version}",
        args.concurrency,
        image.shape[0],
        requests=args.requests * 4,
        seconds=args.seconds,
    )
    goals = print_report(cells, args.workers, threads)
    load_after = os.getloadavg()
    console.print(
        f"load average (1, 5, 15 min) before {_fmt(load_before)}, after {_fmt(load_after)} "
        f"on {os.cpu_count()} cores shared with other work; client and servers on the same cores"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": f"models:/{name}/{version}",
                    "workers": args.workers,
                    "torch_threads": threads,
                    "load_before": load_before,
                    "load_after": load_after,
                    "goals": goals,
                    "cells": [
                        {
                            "server": c.server,
                            "payload": c.payload,
                            "concurrency": c.concurrency,
                            "requests": c.requests,
                            "seconds": c.seconds,
                            "rps": c.rps,
                            "p50_ms": c.percentile(50),
                            "p99_ms": c.percentile(99),
                            "errors": c.errors,
                            "statuses": dict(c.statuses),
                            "mean_batch": c.mean_batch,
                        }
                        for c in cells
                    ],
                },
                indent=2,
            )
        )
        console.print(f"results: {args.json}")


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    sys.exit(main())
