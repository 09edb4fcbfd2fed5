"""The demo's page annotator: the simulator's truth submitted through Label Studio's API.

As the digits oracle (`flywheel.demo.oracle`), it is a member of the owner's
organisation with its own access token, and it submits what a person's
browser would: for every page task it has not annotated, each true
expression as a rectangle and its LaTeX, linked by one region id, in Label
Studio's percent coordinates (`flywheel.labeling.pages.region_results`).
A page the simulator did not send is skipped (a cancelled annotation), as a
person skips a page they cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flywheel.config import Params
from flywheel.data.pages import Region
from flywheel.demo.oracle import ORACLE_CONCURRENCY, ORACLE_EMAIL, oracle_token
from flywheel.labeling.pages import region_results
from flywheel.labeling.queue import task_key
from flywheel.labeling.server import Connection
from flywheel.labeling.studio import read_tasks, sdk_client


def truth_results(
    regions: list[Region], width: int, height: int, params: Params
) -> list[dict[str, Any]]:
    """The true regions of a page as one annotation's results (rectangle + text per region)."""
    return [
        item
        for r in regions
        for item in region_results(
            f"t{r.region:02d}",
            r.xyxy(),
            r.latex,
            width,
            height,
            box_name=params.label.from_name,
            to_name=params.label.to_name,
        )
    ]


def annotate_pages_as_oracle(
    connection: Connection,
    project: int,
    params: Params,
    truth: Mapping[str, Mapping[str, Any]],
    *,
    email: str = ORACLE_EMAIL,
) -> tuple[int, int]:
    """Submit the true regions of the project's page tasks the oracle has not annotated.

    Args:
        connection: the server.
        project: the page project.
        params: `label` (control names) and `data.image_size` (a task without its size).
        truth: request id → the simulator's record (`regions`: `Region`s), as
            `flywheel.demo.pages.traffic.load_truth` returns it.
        email: the oracle's account.

    Returns:
        Annotations submitted, and tasks skipped (no truth).
    """
    client = sdk_client(connection, oracle_token(connection, email))
    answers: list[tuple[int, list[dict[str, Any]] | None]] = []
    for task in read_tasks(client, project, include="id,data,annotations"):
        if task.get("annotations"):
            continue
        key, data = task_key(task), task.get("data") or {}
        record = truth.get(key[0]) if key is not None else None
        if record is None:
            answers.append((int(task["id"]), None))
            continue
        width = int(data.get("width") or params.data.image_size)
        height = int(data.get("height") or params.data.image_size)
        result = truth_results(list(record["regions"]), width, height, params)
        answers.append((int(task["id"]), result))

    def submit(answer: tuple[int, list[dict[str, Any]] | None]) -> None:
        task_id, result = answer
        client.annotations.create(
            id=task_id, result=result or [], was_cancelled=result is None, lead_time=0.0
        )

    with ThreadPoolExecutor(max_workers=ORACLE_CONCURRENCY) as pool:
        list(pool.map(submit, answers))
    skipped = sum(result is None for _, result in answers)
    return len(answers) - skipped, skipped


__all__ = ["annotate_pages_as_oracle", "truth_results"]
