"""Serving memory: the server's peak resident memory under the worst requests its limits accept.

One server (`flywheel serve`, params.yaml's `serve` section, the sandbox's
model) gets, one kind after another, the largest requests that the limits of
params.yaml still accept (`serve.max_image_pixels` per image,
`serve.max_request_pixels` per request, `serve.max_images_per_request`,
`serve.max_request_bytes` per body; `serving.decoding`):

* `png-body`: one image of the most pixels allowed, RGBA PNG, as the body of `/predict_image`;
* `png-upload`, `png16-upload`, `jpeg-upload`, `cmyk-upload`: as many images of the most
  pixels as one request may hold, uploaded to `/predict_images`: RGBA PNG, 16-bit grey
  PNG, RGB JPEG and CMYK JPEG (4 bytes per decoded pixel);
* `many-upload`: `max_images_per_request` images sharing `max_request_pixels`;
* `json`: `max_images_per_request` arrays of the model's input size as 17-digit
  floats, padded with whitespace to just under `max_request_bytes`;
* `png-upload ×C`: the `png-upload` request from `--concurrency` clients at once (each
  request is decoded one image at a time, but concurrent requests decode in parallel).

Every request is sent `--repeat` times and must be answered 200 (a refusal
means the request was not the worst accepted one: the run fails). Resident
memory is the sum over the server's process tree (psutil), sampled every
`--sample-ms` while the requests run; also reported: the sum of each process's
own high-water mark (`VmHWM`, reset before each kind), an upper bound that no
sampling can miss. Printed: the limits, idle RSS (after one small request),
peak per kind, and the peak's share of the serving pod's memory limit
(`infra/k8s/base/serving.yaml`: 2 Gi); fails when a peak exceeds
`--max-share` (0.75) of it.

    .venv/bin/python benchmarks/serving_memory.py             # trains a small CNN into a temp store
    .venv/bin/python benchmarks/serving_memory.py --concurrency 8 --json memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from flywheel.demo.sandbox import Sandbox, SandboxError, add_sandbox_arguments, open_sandbox
from flywheel.serving_api import (
    CONTENT_TYPE_HEADER,
    IMAGES_FIELD,
    JPEG_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    PNG_MEDIA_TYPE,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGE_PATH,
    PREDICT_IMAGES_PATH,
)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "infra" / "k8s" / "base" / "serving.yaml"
DEPLOYMENT = "flywheel-serving"
MIB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass(frozen=True)
class Limits:
    """The request limits of params.yaml's `serve` section that bound a request's memory."""

    image_pixels: int
    request_pixels: int
    images: int
    body_bytes: int
    input_size: int  # the model's input side (JSON arrays must have it)


@dataclass(frozen=True)
class Probe:
    """One kind of worst request: where it goes, its body, its headers, what it holds."""

    kind: str
    path: str
    body: bytes
    headers: dict[str, str]
    holds: str  # for the table: images × pixels, bytes


@dataclass
class Peak:
    """What one kind cost: the server's resident memory, sampled and high-water."""

    kind: str
    holds: str
    body_bytes: int
    statuses: list[int]
    sampled: int
    high_water: int
    seconds: float


# ---------------------------------------------------------------- the limits


def pod_memory_limit(manifest: Path = MANIFEST) -> int:
    """The serving Deployment's container memory limit in bytes (`resources.limits.memory`).

    Raises:
        ValueError: the manifest has no such Deployment or limit.
    """
    for document in yaml.safe_load_all(manifest.read_text()):
        if document and document.get("kind") == "Deployment":
            if document["metadata"]["name"] != DEPLOYMENT:
                continue
            for container in document["spec"]["template"]["spec"]["containers"]:
                memory = container.get("resources", {}).get("limits", {}).get("memory")
                if memory:
                    return parse_quantity(str(memory))
    raise ValueError(f"{manifest}: no memory limit on Deployment {DEPLOYMENT!r}")


def parse_quantity(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes.

    >>> parse_quantity("2Gi"), parse_quantity("512Mi"), parse_quantity("1G")
    (2147483648, 536870912, 1000000000)
    """
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    units |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def read_limits(params: Path, input_size: int) -> Limits:
    """The `serve` limits of `params` (defaults where unset)."""
    from flywheel.config import load_params

    serve = load_params(params).serve
    return Limits(
        serve.max_image_pixels,
        serve.max_request_pixels,
        serve.max_images_per_request,
        serve.max_request_bytes,
        input_size,
    )


# ---------------------------------------------------------------- the requests


def largest_square(pixels: int) -> int:
    """The side of the largest square image with at most `pixels` pixels.

    >>> largest_square(4194304), largest_square(262143)
    (2048, 511)
    """
    side = int(pixels**0.5)
    while side * side > pixels:
        side -= 1
    return side


def _image(side: int, channels: int, seed: int, dtype: type = np.uint8) -> np.ndarray:
    """A test card `(S, S)` or `(S, S, C)`: gradients, a block and a patch of noise.

    Smooth enough that four images of the most pixels fit one request's body
    limit as PNG, not blank (the noise patch differs with `seed`).
    """
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, side, dtype=np.float64)
    card = (ramp[None, :] + ramp[:, None]) / 2  # (S, S)
    card[side // 4 : side // 2, side // 4 : side // 2] = top
    patch = min(64, side)
    card[:patch, :patch] = rng.integers(0, top, size=(patch, patch), endpoint=True)
    pixels = card.astype(dtype)
    return pixels if channels == 1 else np.repeat(pixels[..., None], channels, axis=2)


def encode(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    """`pixels` as a PNG or JPEG file (in `mode`, e.g. CMYK for a 4-channel JPEG)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _multipart(files: Sequence[bytes], suffix: str, media_type: str) -> tuple[bytes, str]:
    from urllib3 import encode_multipart_formdata

    fields = [(IMAGES_FIELD, (f"image-{i}.{suffix}", f, media_type)) for i, f in enumerate(files)]
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type


def worst_requests(limits: Limits) -> list[Probe]:
    """The largest requests the limits accept, one per kind (module doc)."""
    side = largest_square(limits.image_pixels)
    per_request = max(1, min(limits.images, limits.request_pixels // (side * side)))
    many = limits.images
    many_side = largest_square(limits.request_pixels // many)
    probes = [
        Probe(
            "png-body",
            PREDICT_IMAGE_PATH,
            encode(_image(side, 4, 0), "PNG"),
            {CONTENT_TYPE_HEADER: PNG_MEDIA_TYPE},
            f"1 × {side}² RGBA",
        )
    ]
    uploads = [
        (
            "png-upload",
            "RGBA PNG",
            "png",
            PNG_MEDIA_TYPE,
            lambda i: encode(_image(side, 4, i), "PNG"),
        ),
        (
            "png16-upload",
            "16-bit grey PNG",
            "png",
            PNG_MEDIA_TYPE,
            lambda i: encode(_image(side, 1, i, np.uint16), "PNG"),
        ),
        (
            "jpeg-upload",
            "RGB JPEG",
            "jpg",
            JPEG_MEDIA_TYPE,
            lambda i: encode(_image(side, 3, i), "JPEG"),
        ),
        (
            "cmyk-upload",
            "CMYK JPEG",
            "jpg",
            JPEG_MEDIA_TYPE,
            lambda i: encode(_image(side, 3, i), "JPEG", mode="CMYK"),
        ),
    ]
    for kind, what, suffix, media_type, make in uploads:
        body, content_type = _multipart([make(i) for i in range(per_request)], suffix, media_type)
        holds = f"{per_request} × {side}² {what}"
        probes.append(
            Probe(kind, PREDICT_IMAGES_PATH, body, {CONTENT_TYPE_HEADER: content_type}, holds)
        )
    files = [encode(_image(many_side, 4, i), "PNG") for i in range(many)]
    body, content_type = _multipart(files, "png", PNG_MEDIA_TYPE)
    probes.append(
        Probe(
            "many-upload",
            PREDICT_IMAGES_PATH,
            body,
            {CONTENT_TYPE_HEADER: content_type},
            f"{many} × {many_side}² RGBA PNG",
        )
    )
    probes.append(_json_probe(limits))
    return probes


def _json_probe(limits: Limits) -> Probe:
    """`max_images_per_request` arrays of 17-digit floats, padded to just under the body limit."""
    rng = np.random.default_rng(0)
    size = limits.input_size
    values = iter(f"{v:.17f}" for v in rng.random(limits.images * size * size))

    def row() -> str:
        return "[" + ",".join(next(values) for _ in range(size)) + "]"

    images = ["[[" + ",".join(row() for _ in range(size)) + "]]" for _ in range(limits.images)]
    text = f'{{"{IMAGES_FIELD}":[' + ",".join(images) + "]}"  # (N, 1, S, S)
    padding = max(0, limits.body_bytes - len(text) - 1024)  # whitespace: still valid JSON
    body = (text[:-1] + " " * padding + "}").encode()
    holds = f"{limits.images} × 1 × {size}² floats, {len(body) / MIB:.1f} MiB"
    return Probe("json", PREDICT_ARRAYS_PATH, body, {CONTENT_TYPE_HEADER: JSON_MEDIA_TYPE}, holds)


# ---------------------------------------------------------------- measuring


def server_processes(root: int) -> list[Any]:
    """The server's processes: every descendant of `root` (this process: the server is its
    only child, `flywheel serve`, with BentoML's processes under it)."""
    import psutil

    return list(psutil.Process(root).children(recursive=True))


def tree_rss(root: int) -> int:
    """Resident memory of the server's process tree, in bytes."""
    import psutil

    total = 0
    for process in server_processes(root):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:  # a worker restarting between the listing and the read
            continue
    return total


def reset_high_water(root: int) -> None:
    """Reset each server process's peak RSS (`VmHWM`): write 5 to /proc/<pid>/clear_refs."""
    for process in server_processes(root):
        try:
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        except FileNotFoundError:  # gone since the listing
            continue


def high_water(root: int) -> int:
    """The sum of each server process's peak RSS since `reset_high_water`, in bytes."""
    total = 0
    for process in server_processes(root):
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024  # kB
    return total


@contextmanager
def sampling(root: int, every_s: float) -> Iterator[list[int]]:
    """Sample `tree_rss` every `every_s` in a thread while the block runs; yields the samples."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(tree_rss(root))
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(tree_rss(root))


def measure(
    url: str, root: int, probe: Probe, *, repeat: int, concurrency: int, every_s: float
) -> Peak:
    """Send `probe` `repeat` times from `concurrency` clients; the server's peak memory."""
    import httpx

    reset_high_water(root)
    statuses: list[int] = []
    started = time.perf_counter()
    with httpx.Client(timeout=300) as client, sampling(root, every_s) as samples:

        def send(_: int) -> int:
            return client.post(
                url + probe.path, content=probe.body, headers=probe.headers
            ).status_code

        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(send, range(repeat * concurrency)))
    kind = probe.kind if concurrency == 1 else f"{probe.kind} ×{concurrency}"
    return Peak(
        kind,
        probe.holds,
        len(probe.body),
        statuses,
        max(samples),
        high_water(root),
        time.perf_counter() - started,
    )


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server, send the worst requests, report; 1 when a peak is over the line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sandbox_arguments(parser, REPO / "params.yaml")
    parser.add_argument("--repeat", type=int, default=3, help="Requests of each kind.")
    parser.add_argument("--concurrency", type=int, default=4, help="Clients of the last row.")
    parser.add_argument("--sample-ms", type=float, default=5.0, help="RSS sampling period.")
    parser.add_argument("--max-share", type=float, default=0.75, help="Of the pod limit.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    try:
        with open_sandbox(args, "flywheel-serving-memory-", say=console.print) as box:
            return bench(args, box)
    except SandboxError as err:
        raise SystemExit(str(err)) from None


def bench(args: argparse.Namespace, box: Sandbox) -> int:
    """Measure idle and peak memory per kind; print the table; 0 when every peak is in bounds."""
    import httpx

    from flywheel.config import load_params
    from flywheel.demo.payloads import IMAGE, api_requests
    from flywheel.demo.sandbox import sample_image
    from flywheel.demo.server import start_server

    load_before = os.getloadavg()
    params = box.serve_params(args.params, args.workers)
    limits = read_limits(params, load_params(params).data.image_size)
    pod_limit = pod_memory_limit()
    probes = worst_requests(limits)
    small = api_requests(sample_image(args.params))[IMAGE]
    every_s = args.sample_ms / 1000
    with start_server(
        params, env=box.server_env(), log_path=box.workdir / "server.log", ready_timeout_s=180.0
    ) as url:
        root = os.getpid()
        for _ in range(3):  # one small request of each path warms the server up
            httpx.post(url + small.target, content=small.body, headers=small.headers, timeout=60)
        time.sleep(1.0)
        idle = tree_rss(root)
        peaks = [
            measure(url, root, p, repeat=args.repeat, concurrency=1, every_s=every_s)
            for p in probes
        ]
        upload = next(p for p in probes if p.kind == "png-upload")
        peaks.append(
            measure(
                url, root, upload, repeat=args.repeat, concurrency=args.concurrency, every_s=every_s
            )
        )
        time.sleep(1.0)
        after = tree_rss(root)
    ok = report(limits, pod_limit, idle, after, peaks, args.max_share)
    load_after = os.getloadavg()
    console.print(
        f"load average (1, 5, 15 min) before {_fmt(load_before)}, after {_fmt(load_after)} "
        f"on {os.cpu_count()} cores; workers {args.workers}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "limits": limits.__dict__,
                    "pod_limit_bytes": pod_limit,
                    "idle_rss_bytes": idle,
                    "rss_after_bytes": after,
                    "peaks": [p.__dict__ for p in peaks],
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


def report(
    limits: Limits,
    pod_limit: int,
    idle: int,
    after: int,
    peaks: list[Peak],
    max_share: float,
) -> bool:
    """The limits, the table of peaks and the verdict; True when every request was answered
    200 and every peak is under `max_share` of the pod's limit."""
    console.print(
        f"limits (params.yaml serve): {limits.image_pixels} pixels per image, "
        f"{limits.request_pixels} per request, {limits.images} images, "
        f"{limits.body_bytes / MIB:.0f} MiB per body; pod memory limit "
        f"{pod_limit / MIB:.0f} MiB ({MANIFEST.relative_to(REPO)})"
    )
    table = Table(title=f"server RSS (all processes): idle {idle / MIB:.0f} MiB")
    for column in ("kind", "request", "body MiB", "answers", "peak MiB", "HWM MiB"):
        table.add_column(column, justify="left" if column in ("kind", "request") else "right")
    for column in ("+ idle MiB", "peak / limit", "HWM / limit"):
        table.add_column(column, justify="right")
    ok = True
    for p in peaks:
        answers = ", ".join(f"{n} × {s}" for s, n in sorted(Counter(p.statuses).items()))
        ok &= set(p.statuses) == {200} and max(p.sampled, p.high_water) <= max_share * pod_limit
        table.add_row(
            p.kind,
            p.holds,
            f"{p.body_bytes / MIB:.1f}",
            answers,
            f"{p.sampled / MIB:.0f}",
            f"{p.high_water / MIB:.0f}",
            f"{(p.sampled - idle) / MIB:+.0f}",
            f"{p.sampled / pod_limit:.0%}",
            f"{p.high_water / pod_limit:.0%}",
        )
    console.print(table)
    console.print(f"RSS after the run, settled: {after / MIB:.0f} MiB (idle {idle / MIB:.0f} MiB)")
    verdict = (
        f"every peak ≤ {max_share:.0%} of the pod's {pod_limit / MIB:.0f} MiB, all answered 200"
    )
    console.print(f"  {'[green]✓[/green]' if ok else '[red]✗[/red]'} {verdict}")
    return ok


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    sys.exit(main())
