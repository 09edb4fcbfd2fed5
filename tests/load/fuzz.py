"""Fuzz the service: schemathesis against its OpenAPI spec, then bodies it would not make.

schemathesis generates requests from the service's OpenAPI spec (`/docs.json`,
every operation, `/admin/reload` with the token) and checks that none is
answered with a 5xx; at least `--min-requests` (1,000) must be sent. Counts per
operation and status come from its HAR report. The spec says only that
`/predict_arrays` takes "an array of numbers", so a hook (`tests.load.fuzz_hooks`)
mixes bodies that pass validation, in the served model's input shape
(`tests.load.fuzz_bodies`), into the ones it generates: the fuzz reaches the
model, not just the shape check. Then, each in a row of its own:

* `/predict_image`: valid PNGs/JPEGs of every common mode and
  `--corrupted-images` (500) corruptions of them (`image_bodies`; schemathesis
  sends one fixed image per media type): no 5xx;
* `/predict_arrays`: `--valid-arrays` (200) bodies in every layout, scale and
  edge value the model takes: every one must be served (200);
* `/predict_images`: the multipart edge cases (boundaries over 256 characters,
  over 1,000 parts, truncated streams, header floods; `multipart_edge_cases`):
  every one must be refused with a 4xx (a client that half-closed may get a
  closed connection instead).

The run is bounded: `--max-examples` per operation and phase, and
`--time-limit` seconds for schemathesis. Exits 1 when the run fails.

    .venv/bin/python -m tests.load.fuzz                 # make fuzz
    .venv/bin/python -m tests.load.fuzz --tracking-uri sqlite:///$PWD/.flywheel/mlflow/mlflow.db
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from flywheel.config import load_params
from flywheel.demo.sandbox import SandboxError, add_sandbox_arguments, open_sandbox
from flywheel.serving_api import (
    AUTHORIZATION_HEADER,
    CONTENT_TYPE_HEADER,
    IMAGE_MEDIA_TYPES,
    OPENAPI_PATH,
    PREDICT_ARRAYS_PATH,
    PREDICT_IMAGE_PATH,
    PREDICT_IMAGES_PATH,
    bearer,
)
from tests.load.fuzz_bodies import (
    ARRAY_INPUT_ENV,
    ArrayInput,
    multipart_edge_cases,
    served_input,
    valid_array_bodies,
)
from tests.load.raw_http import CLOSED, send_raw, status_of

REPO = Path(__file__).resolve().parents[2]
IMAGE_BODIES_OPERATION = f"POST {PREDICT_IMAGE_PATH} (valid and corrupted image files)"
VALID_ARRAYS_OPERATION = f"POST {PREDICT_ARRAYS_PATH} (valid arrays, edge values)"
MULTIPART_EDGES_OPERATION = f"POST {PREDICT_IMAGES_PATH} (multipart edge cases)"
HOOKS_MODULE = "tests.load.fuzz_hooks"
ADMIN_TOKEN = "fuzz-admin-token"
EDGE_CASE_WAIT_S = 120.0
"""How long an edge case waits for its answer (a stream left open waits `serve.body_timeout_s`)."""

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class FuzzResult:
    """What schemathesis sent and what came back (from its HAR report)."""

    exit_code: int
    statuses: dict[str, Counter[int]]  # operation ("POST /predict_images") -> status counts
    failures: list[str] = field(default_factory=list)
    """Answers that broke an expectation of their row (a valid body not served, an edge
    case not refused), or a schemathesis run over its time limit."""

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
    types = IMAGE_MEDIA_TYPES
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
                f"{url}{PREDICT_IMAGE_PATH}",
                content=body,
                headers={CONTENT_TYPE_HEADER: media_type},
            )
            statuses[answer.status_code] += 1
    return statuses


def fuzz_valid_arrays(
    url: str, bodies: Sequence[dict[str, object]]
) -> tuple[Counter[int], list[str]]:
    """Send each body to `/predict_arrays`; the statuses, and what each refused body got."""
    import httpx

    statuses: Counter[int] = Counter()
    failures = []
    with httpx.Client(timeout=60) as client:
        for i, body in enumerate(bodies):
            answer = client.post(f"{url}{PREDICT_ARRAYS_PATH}", json=body)
            statuses[answer.status_code] += 1
            if answer.status_code != 200:
                shape = np.asarray(body["images"]).shape
                failures.append(
                    f"valid array body {i} (shape {shape}, scale {body.get('scale', 'left out')})"
                    f" answered {answer.status_code}: {answer.text[:200]}"
                )
    return statuses, failures


def fuzz_multipart_edges(url: str, max_parts: int) -> tuple[Counter[int], list[str]]:
    """Send every `multipart_edge_cases` request (four at a time: a stream left open waits
    for the server's body timeout); the statuses, and the cases that were not refused."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(buffer, format="PNG")
    cases = multipart_edge_cases(buffer.getvalue(), max_parts)

    def send(case: tuple[str, bytes, bool]) -> int:
        _, request, shut = case
        return status_of(send_raw(url, request, wait_s=EDGE_CASE_WAIT_S, shut=shut))

    with ThreadPoolExecutor(4) as pool:
        answered = list(pool.map(send, cases))
    statuses: Counter[int] = Counter(answered)
    failures = [
        f"multipart edge case {name!r} answered "
        f"{'nothing (closed)' if status == CLOSED else status}, not a 4xx"
        for (name, _, shut), status in zip(cases, answered, strict=True)
        if not (400 <= status < 500 or (shut and status == CLOSED))
    ]
    return statuses, failures


def run_fuzz(
    url: str,
    report_dir: Path,
    *,
    max_examples: int,
    seed: int,
    token: str | None = None,
    corrupted_images: int = 0,
    arrays: ArrayInput | None = None,
    valid_arrays: int = 0,
    multipart_edges: bool = False,
    time_limit_s: float = 1800.0,
) -> FuzzResult:
    """Fuzz every operation of the service's OpenAPI spec with schemathesis (its CLI).

    Checks `not_a_server_error` on every answer (a 5xx fails the run); every
    request and answer is kept in a HAR file, which gives the counts. With
    `token`, requests carry it, so `/admin/reload` is fuzzed past its
    authorisation too. With `arrays` (the served model's input), the hook
    `tests.load.fuzz_hooks` mixes valid bodies into schemathesis's `/predict_arrays`
    ones. Then, each in its own row: `/predict_image` gets the valid
    and `corrupted_images` corrupted bodies of `image_bodies`; with `arrays`,
    `/predict_arrays` gets `valid_arrays` valid bodies, each of which must be
    served; with `multipart_edges`, `/predict_images` gets every multipart edge
    case, each of which must be refused (`FuzzResult.failures`).

    Args:
        time_limit_s: schemathesis is stopped after this long (a failure).
    """
    har = report_dir / "fuzz.har"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}{OPENAPI_PATH}",
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
        command += ["--header", f"{AUTHORIZATION_HEADER}: {bearer(token)}"]
    env = dict(os.environ)
    if arrays is not None:
        path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env |= {"SCHEMATHESIS_HOOKS": HOOKS_MODULE, ARRAY_INPUT_ENV: arrays.to_env()}
        env["PYTHONPATH"] = path
    failures = []
    try:
        done = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=time_limit_s,
        )
        exit_code, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as err:
        exit_code, output = 124, str(err.stdout or "")
        failures.append(f"schemathesis did not finish within {time_limit_s:g} s")
    console.print(output[-4000:], markup=False, highlight=False)
    statuses: dict[str, Counter[int]] = {}
    if har.is_file():
        for entry in json.loads(har.read_text())["log"]["entries"]:
            request = entry["request"]
            route = "/" + request["url"].split("/", 3)[-1].split("?")[0]
            key = f"{request['method']} {route}"
            statuses.setdefault(key, Counter())[int(entry["response"]["status"])] += 1
    bodies = image_bodies(corrupted_images, seed)
    statuses[IMAGE_BODIES_OPERATION] = fuzz_image_bodies(url, bodies)
    if arrays is not None and valid_arrays:
        counts, refused = fuzz_valid_arrays(url, valid_array_bodies(arrays, valid_arrays, seed))
        statuses[VALID_ARRAYS_OPERATION] = counts
        failures += refused
    if multipart_edges:
        max_parts = arrays.max_images if arrays is not None else 64
        counts, accepted = fuzz_multipart_edges(url, max_parts)
        statuses[MULTIPART_EDGES_OPERATION] = counts
        failures += accepted
    return FuzzResult(exit_code, statuses, failures)


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
    passed = (
        result.exit_code == 0
        and result.server_errors == 0
        and result.requests >= minimum
        and not result.failures
    )
    for failure in result.failures:
        console.print(f"[red]unexpected[/red]: {failure}", highlight=False)
    console.print(
        f"{'[green]passed[/green]' if passed else '[red]FAILED[/red]'}: {result.requests} "
        f"requests (at least {minimum} wanted), {result.server_errors} with a 5xx, "
        f"{len(result.failures)} unexpected answers, schemathesis exit status {result.exit_code}"
    )
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a model with an admin token, fuzz it, report; 1 when the run failed."""
    from flywheel.demo.server import start_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sandbox_arguments(parser, REPO / "params.yaml")
    parser.add_argument("--max-examples", type=int, default=500, help="Per operation and phase.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-requests", type=int, default=1000)
    parser.add_argument(
        "--corrupted-images", type=int, default=500, help="Corrupted /predict_image bodies."
    )
    parser.add_argument(
        "--valid-arrays", type=int, default=200, help="Valid /predict_arrays bodies."
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="Seconds schemathesis may run."
    )
    args = parser.parse_args(argv)
    try:
        with open_sandbox(args, "flywheel-serving-fuzz-", say=console.print) as box:
            params = box.serve_params(args.params, args.workers)
            env = box.server_env(admin_token=ADMIN_TOKEN)
            os.environ["MLFLOW_TRACKING_URI"] = box.tracking_uri  # the model's input, below
            max_images = load_params(params).serve.max_images_per_request
            arrays = served_input(box.model_name, box.version, max_images)
            with start_server(params, env=env, log_path=box.workdir / "flywheel.log") as url:
                result = run_fuzz(
                    url,
                    box.workdir,
                    max_examples=args.max_examples,
                    seed=args.seed,
                    token=ADMIN_TOKEN,
                    corrupted_images=args.corrupted_images,
                    arrays=arrays,
                    valid_arrays=args.valid_arrays,
                    multipart_edges=True,
                    time_limit_s=args.time_limit,
                )
    except SandboxError as err:
        raise SystemExit(str(err)) from None
    return 0 if print_fuzz(result, args.min_requests) else 1


if __name__ == "__main__":
    sys.exit(main())
