"""A PNG of a formula-page task in Label Studio: the page, the pair's regions and their LaTeX.

Like `screenshot_label_studio.py` (whose headless-Chromium driver it uses):
starts Label Studio in a temporary folder, creates the page project from
`plans/pages.yaml` (formula rectangles, a transcription per region, the page
guide), publishes one production page drawn from the plan's production pool,
pre-annotated the way the page pair would answer it (one box off, one text
misread), signs in through the login form and saves the labelling view.

    make screenshot-label-studio-pages    # → docs/label-studio-page-task.png

Without Chromium or Label Studio it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from screenshot_label_studio import DevTools, shoot_task  # beside this script, on its sys.path

from flywheel.config import load_params
from flywheel.demo.pages.traffic import production_pages
from flywheel.env import disable_telemetry
from flywheel.labeling.page_studio import publish_pages
from flywheel.labeling.pages import PagePrediction, PredictedRegion, page_task
from flywheel.labeling.server import LabelStudioError, find_executable, start_label_studio
from flywheel.labeling.studio import read_tasks, sdk_client
from flywheel.monitoring.dashboards import find_chromium, free_port

REPO = Path(__file__).parents[1]


def main() -> int:
    """Start Label Studio, publish one pre-annotated page, screenshot its labelling view."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/label-studio-page-task.png"))
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the page shows")
    args = parser.parse_args()
    disable_telemetry()
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium: `make chromium` installs Debian's chromium")
        return 0
    try:
        find_executable(REPO)
    except LabelStudioError as err:
        print(err)
        return 0
    plan = load_params(REPO / "plans" / "pages.yaml")
    with tempfile.TemporaryDirectory(prefix="flywheel-ls-pages-") as tmp:
        root = Path(tmp)
        studio = plan.label.studio.model_copy(
            update={"document_root": root, "guide": REPO / plan.label.studio.guide}
        )
        params = plan.model_copy(update={"label": plan.label.model_copy(update={"studio": studio})})
        page = next(p for p in production_pages(params.data, 12, seed=3) if len(p.regions) >= 4)
        path = root / "predictions" / "pages" / f"{page.request_id}.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(page.png)
        size = params.data.image_size
        regions = []
        for k, r in enumerate(page.regions):  # as the pair answers: one box off, one text misread
            dx = 6 if k == 1 else 0
            latex = r.latex.replace("2", "7", 1) if k == 2 else r.latex
            box = (r.x + dx, r.y, min(r.x + r.w + dx, size), r.y + r.h)
            regions.append(PredictedRegion(box, 0.9 - 0.1 * k, latex, 0.8))
        prediction = PagePrediction(
            page.request_id, 0, size, size, tuple(regions), "4", "9", image_path=str(path)
        )
        server = start_label_studio(
            params.label.studio,
            data_dir=root / "ls-data",
            port=free_port(),
            executable=find_executable(REPO),
            connection_file=root / "connection.json",
        )
        browser = None
        try:
            connection = server.connection
            project, _ = publish_pages(connection, params, [page_task(prediction)])
            (task,) = [int(t["id"]) for t in read_tasks(sdk_client(connection), project)]
            browser = DevTools(chromium, root / "profile", 1500, 950)
            shoot_task(browser, connection, project, task, args.out, args.settle)
        finally:
            if browser is not None:
                browser.close()
            server.stop()
    print(f"task {task} of project {project}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
