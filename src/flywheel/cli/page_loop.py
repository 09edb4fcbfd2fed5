"""`flywheel monitor` and `flywheel curate` of a page plan (`--params plans/pages.yaml`).

The page service's two stages are monitored from its page log, one report and
snapshot per stage (`flywheel.monitoring.pages`), and its pages are curated by
the pair's uncertainty within the labelling budget (`flywheel.curation.pages`).
`flywheel.cli.loop` hands a page plan over to these; `monitor --trigger` decides
on both stages' verdicts (`flywheel.workflows.trigger.decide_pages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from flywheel.cli.console import console, err_console, exit_on, print_table

if TYPE_CHECKING:
    from flywheel.cli.trigger import Target
    from flywheel.config import Params


def curate_page_batch(
    p: Params,
    params: Path,
    budget: int | None,
    since: str | None,
    until: str | None,
    log_dir: Path | None,
) -> None:
    """`flywheel curate` of a page plan (`flywheel.curation.pages`): the batch, its spend."""
    from flywheel.curation import parse_since
    from flywheel.curation.pages import curate_pages
    from flywheel.monitoring.pages import page_log_root

    result = curate_pages(
        p,
        budget=budget,
        since=parse_since(since) if since else None,
        until=parse_since(until) if until else None,
        log_root=log_dir or page_log_root(p, params.resolve().parent),
    )
    if result.selected.empty:
        console.print(
            f"nothing to curate: {result.candidates} logged pages with a stored image, none "
            f"affordable or all queued/labelled already ({result.excluded} are)"
        )
        return
    selected = result.selected
    console.print(
        f"queued [bold]{len(selected)}[/bold] of {result.candidates} pages "
        f"(score: noisy-OR of detection and recognition uncertainty, spread over "
        f"{result.space})"
    )
    table = Table(title=f"batch {result.batch_id}")
    for column in ("rank", "page", "regions", "detection", "recognition", "score", "price"):
        table.add_column(column, justify="left" if column == "page" else "right")
    for row in selected.itertuples():
        table.add_row(
            str(row.rank),
            str(row.request_id),
            str(row.n_regions),
            f"{row.u_det:.3f}",
            f"{row.u_rec:.3f}",
            f"{row.score:.3f}",
            f"{row.price:.2f}",
        )
    print_table(table)
    cap = "" if result.spend_limit is None else f" of {result.spend_limit:.2f} allowed"
    console.print(
        f"labelling cost: [bold]{result.spend:.2f} {result.currency}[/bold]{cap} "
        f"({result.boxes} boxes + {result.boxes} transcriptions)"
    )
    console.print(f"queue: {result.queue_file}", soft_wrap=True)
    console.print(f"the batch as a picture: {result.picture_file}", soft_wrap=True)


def monitor_page_plan(
    p: Params,
    params: Path,
    *,
    since: str | None,
    until: str | None,
    last: int | None,
    save: bool,
    force: bool,
    json_out: bool,
    where: Target | None = None,
    pairs: Sequence[str] = (),
) -> NoReturn:
    """`flywheel monitor` of a page plan: each stage of its page log, a report each.

    With `where` (`--trigger`), the guard decides on both stages' verdicts
    (`flywheel.workflows.trigger.decide_pages`) and a fired trigger submits the
    curation pipeline there; the decision is recorded and the command exits 0
    on any verdict. A window every stage checked before decides nothing again.
    """
    import json
    from dataclasses import asdict

    from flywheel.cli.trigger import trigger as run_trigger
    from flywheel.config import ConfigError
    from flywheel.curation import CurationError
    from flywheel.monitoring import MonitoringError, parse_time, result_table
    from flywheel.monitoring.monitor import EXIT_ERROR
    from flywheel.monitoring.pages import describe, monitor_pages, page_log_root
    from flywheel.registry import RegistryError
    from flywheel.workflows.trigger import TriggerError

    errors = (MonitoringError, ConfigError, RegistryError, ValueError)
    status = err_console.status("monitoring: an Evidently report per stage of the page service")
    with exit_on(*errors, code=EXIT_ERROR), status:
        result = monitor_pages(
            p,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            last=last,
            log_dir=page_log_root(p, params.resolve().parent),
            save=save,
            force=force,
        )
    decision = None
    if where is not None and not result.results:
        err_console.print(
            "every stage's window was checked before (its verdict decided then): no trigger "
            "decision; --force checks it again",
            soft_wrap=True,
        )
    elif where is not None:
        with exit_on(TriggerError, CurationError, MonitoringError, OSError, code=EXIT_ERROR):
            decision = run_trigger(p, params, list(pairs), result, where, json_out=json_out)
    if json_out:
        document = result.to_dict()
        if decision is not None:
            document["trigger"] = asdict(decision)
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        for stage_result in result.results.values():
            print_table(result_table(stage_result))
            for note in stage_result.check.notes:
                console.print(f"note: {escape(note)}")
        for line in describe(result):
            console.print(escape(line), soft_wrap=True)
    raise typer.Exit(0 if where is not None else result.exit_code)
