"""The demo's page annotator: the simulator's truth submitted through Label Studio's API.

As the digits oracle (`flywheel.demo.oracle`), it is a member of the owner's
organisation with its own access token, and it submits what a person's
browser would: for every page task it has not annotated, each true
expression as a rectangle and its LaTeX, linked by one region id, in Label
Studio's percent coordinates (`flywheel.labeling.pages.region_results`).
A page the simulator did not send is skipped (a cancelled annotation), as a
person skips a page they cannot read.

`PageStudioOracle` is the product's page labeller for Label Studio
(`flywheel.labeling.page_labeler.PageStudioLabeler`) with the oracle as its
annotator (`label.labeler: flywheel.demo.page_oracle:PageStudioOracle`), as
`flywheel.demo.oracle.LabelStudioOracle` is the digits'. The truth it answers
from is what the traffic simulator saved (`save_truth`, a file per traffic phase) in
`page_truth_dir` (`<state>/ground_truth/pages/`, where `flywheel demo --plan pages` keeps it);
its labels carry the simulator's stratum and source glyphs, which the page
merge needs (real traffic records none).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flywheel.config import Params
from flywheel.data.pages import Region
from flywheel.demo.oracle import ORACLE_CONCURRENCY, ORACLE_EMAIL, oracle_token
from flywheel.labeling.page_annotations import PageLabel
from flywheel.labeling.page_labeler import PageStudioLabeler
from flywheel.labeling.pages import region_results
from flywheel.labeling.queue import Key, queued_keys, task_key
from flywheel.labeling.server import Connection
from flywheel.labeling.studio import read_tasks, sdk_client
from flywheel.storage import Location, state_url

PAGE_TRUTH_DIR = "pages"
"""The simulator's page truth: `<state dir>/ground_truth/pages/<phase>.json` (`save_truth`)."""
KNOWN_FIELDS = ("level", "writing", "noise", "glyphs")
"""What the oracle's labels carry of the simulator's record (the page merge reads them)."""


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


def page_truth_dir(params: Params) -> Path:
    """Where the demo's traffic keeps its page truth: `<state>/ground_truth/pages/`, a
    `save_truth` file per traffic phase (the folder `flywheel demo --plan pages` writes).

    Raises:
        ValueError: the state is not a local folder (the demo's truth is kept in one).
    """
    state = state_url(params.state.url)
    if not isinstance(state, Path):
        raise ValueError(f"the demo's page truth is kept in a local state folder, not {state}")
    return state / "ground_truth" / PAGE_TRUTH_DIR


def read_page_truth(params: Params) -> dict[str, dict[str, Any]]:
    """Every saved page truth file (`load_truth`), merged by request id; {} when none."""
    from flywheel.demo.pages.traffic import load_truth

    truth: dict[str, dict[str, Any]] = {}
    for path in sorted(page_truth_dir(params).glob("*.json")):
        truth |= load_truth(path)
    return truth


class PageStudioOracle(PageStudioLabeler):
    """The demo's page labeller: the product's Label Studio page labeller, the oracle annotating.

    Between publishing and reading back it submits the simulator's truth
    (`annotate_pages_as_oracle`); each label carries the page's recorded stratum
    and source glyphs (`known`), which real traffic lacks.
    """

    def __init__(self, connection: Connection | None = None) -> None:
        super().__init__(connection)
        self._truth: dict[str, dict[str, Any]] | None = None

    def truth(self, params: Params) -> dict[str, dict[str, Any]]:
        """The saved page truth, read once per labeller."""
        if self._truth is None:
            self._truth = read_page_truth(params)
        return self._truth

    def annotate(self, connection: Connection, project: int, params: Params) -> None:
        """The oracle annotates the published page tasks through the API."""
        annotate_pages_as_oracle(connection, project, params, self.truth(params))

    def known(self, params: Params, label: PageLabel) -> Mapping[str, Any]:
        """The simulator's stratum and source glyphs of the page."""
        record = self.truth(params).get(label.key[0], {})
        return {k: record[k] for k in KNOWN_FIELDS if k in record}

    def completed(
        self, params: Params, queue_dir: Location, *, gt_root: Location | None = None
    ) -> set[Key]:
        """The queued pages the oracle knows the truth of: it answers as soon as it is asked."""
        del gt_root
        return {k for k in queued_keys(queue_dir) if k[0] in self.truth(params)}


__all__ = [
    "KNOWN_FIELDS",
    "PAGE_TRUTH_DIR",
    "PageStudioOracle",
    "annotate_pages_as_oracle",
    "page_truth_dir",
    "read_page_truth",
    "truth_results",
]
