"""The Evidently UI over a workspace in object storage, reloading it on a timer.

`evidently ui --workspace s3://...` (Evidently 0.7.23) reads the workspace
through fsspec, but only once: it learns of new projects and snapshots from
inotify events (`watchdog`), which exist only for a local folder, and only
for writes made on the same node. On a cluster the monitor CronJob writes its
snapshots into the bucket from another pod, so that UI would show the
snapshots of the hour it started, forever.

This entry point serves the same Evidently app (`evidently.ui.service.app`,
the one `evidently ui` builds) with the automatic refresh off and a thread
that re-lists the workspace every `--reload-s` seconds, adding the projects
and snapshots written since (`refresh`: incremental, so a request never sees
a half-loaded workspace). A local folder gets the stock `evidently ui`
(`flywheel.monitoring.dashboards.evidently_ui_command`).

    python -m flywheel.monitoring.evidently_ui --workspace s3://bucket/state/evidently \\
        --host 0.0.0.0 --port 8000 --reload-s 60
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evidently.ui.service.storage.local.base import LocalState

logger = logging.getLogger(__name__)

DEFAULT_RELOAD_S = 60.0


def refresh(state: LocalState) -> int:
    """Add the projects and snapshots written to the workspace since the last look.

    Returns:
        How many snapshots were added.
    """
    from evidently.ui.service.storage.common import NO_USER
    from evidently.ui.service.storage.local.base import load_project

    location = state.location
    location.invalidate_cache("")
    before = sum(len(s) for s in state.snapshots.values())
    for entry in location.listdir(""):
        if not location.isdir(entry):
            continue
        project = load_project(location, entry)
        if project is None or project.id in state.projects:
            continue
        state.snapshots.setdefault(project.id, {})
        state.projects[project.id] = project.bind(state.project_manager, NO_USER.id)
    for project_id in list(state.projects):
        state.reload_snapshots(project_id)  # only snapshot files not loaded yet
    return sum(len(s) for s in state.snapshots.values()) - before


def _reload_forever(state: LocalState, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            added = refresh(state)
        except Exception as err:  # the UI keeps serving what it has; the next tick retries
            logger.warning("evidently workspace: reload failed: %s", err)
            continue
        if added:
            logger.info("evidently workspace: %d new snapshots", added)


def build_app(workspace: str, host: str, port: int, reload_s: float) -> tuple[Any, threading.Event]:
    """The Evidently UI app over `workspace`, and the event that stops its reload thread."""
    from evidently.ui.service.app import create_app, get_config
    from evidently.ui.service.components.storage import LocalStorageComponent
    from evidently.ui.service.storage.common import NoopAuthManager
    from evidently.ui.service.storage.local import create_local_project_manager
    from evidently.ui.service.storage.local.base import LocalState

    config = get_config(host=host, port=port, workspace=workspace)
    state = LocalState.load(workspace, None)
    manager = create_local_project_manager(
        workspace, autorefresh=False, auth=NoopAuthManager(), state=state
    )

    class _SharedState(LocalStorageComponent):
        """The stock local storage, but one project manager whose state the thread refreshes."""

        def project_manager_provider(self) -> Any:
            async def project_manager_factory() -> Any:
                return manager

            return project_manager_factory

    config.storage = _SharedState(path=workspace, autorefresh=False)
    stop = threading.Event()
    threading.Thread(
        target=_reload_forever, args=(state, reload_s, stop), name="evidently-reload", daemon=True
    ).start()
    return create_app(config), stop


def main(argv: list[str] | None = None) -> None:
    """Serve the Evidently UI over a workspace URL until interrupted."""
    import uvicorn

    from flywheel.env import disable_telemetry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, help="folder or URL (s3://bucket/prefix)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reload-s", type=float, default=DEFAULT_RELOAD_S)
    args = parser.parse_args(argv)
    if args.reload_s <= 0:
        parser.error(f"--reload-s must be > 0, got {args.reload_s}")
    disable_telemetry()
    logging.basicConfig(level=logging.INFO)
    app, stop = build_app(args.workspace, args.host, args.port, args.reload_s)
    try:
        uvicorn.run(app, host=args.host, port=args.port)
    finally:
        stop.set()


if __name__ == "__main__":  # pragma: no cover - the process entry point, run by the tests
    main()
