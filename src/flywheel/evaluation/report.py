"""The evaluation as one self-contained HTML page: what the KFP UI shows for the evaluation step.

Tables (per slice, every metric the task computes, with the champion's primary
metric beside the candidate's; every gate) and the per-slice bars of the
primary metric and, for a task that has one, the confusion matrix as inline
PNGs, so the page needs no external resources.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from flywheel.config import GatesConfig
    from flywheel.evaluation import EvaluationOutcome


def figure_png_base64(fig: Figure) -> str:
    """A matplotlib figure as a base64 PNG, for an `<img src="data:image/png;base64,...">`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_evaluation_html(outcome: EvaluationOutcome, gates: GatesConfig) -> str:
    """The evaluation as one self-contained HTML page (the KFP UI renders HTML artifacts).

    Verdict, per-slice table (every metric of the task, with the champion's
    primary metric beside the candidate's), every gate with value, threshold and
    detail, the notes, and the per-slice bars of the primary metric and the
    confusion matrix (when the task has one) as inline PNGs — no external resources.
    """
    from flywheel.evaluation import plot_confusion_matrix, plot_slice_metric

    report, champion, blessing = outcome.report, outcome.champion, outcome.blessing
    primary = report.label(report.primary_metric)
    title = f"{blessing.model_name or ''} version {blessing.candidate_version or '?'}".strip()
    verdict = (
        '<p class="ok">blessed: every gate passed</p>'
        if blessing.blessed
        else f'<p class="bad">not blessed; failed: {html.escape(", ".join(blessing.failed_gates))}'
        "</p>"
    )
    champ = blessing.champion_version
    slice_headers = ["slice", "images", *(report.label(m) for m in report.metric_names)]
    if champion is not None:
        slice_headers.append(f"champion v{champ} {primary}")
    slice_table = []
    for name, m in [("all", report.overall), *report.slices.items()]:
        row = [name, str(m.n), *(f"{m[metric]:.4f}" for metric in report.metric_names)]
        if champion is not None:
            known = name == "all" or name in champion.slices
            row.append(f"{champion.primary(name):.4f}" if known else "-")
        slice_table.append(row)
    gate_rows = [
        [
            g.name,
            f"{g.value:.4f}",
            f"{g.comparison} {g.threshold:.4f}",
            "pass" if g.passed else "FAIL",
            g.detail,
        ]
        for g in blessing.gates
    ]
    bars = figure_png_base64(plot_slice_metric(report, champion, gates.min_slice_accuracy))
    confusion = (
        ""
        if report.overall.confusion is None
        else '<h2>Confusion matrix</h2>\n<img alt="confusion matrix" src="data:image/png;base64,'
        f'{figure_png_base64(plot_confusion_matrix(report.overall, report.classes))}">\n'
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in blessing.notes)
    against = f"production version {champ}" if champ else "no production model (first model)"
    pair = _pair_section(outcome)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>evaluation: {html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.ok {{ color: #176f2c; font-weight: bold; }} .bad {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>Evaluation of {html.escape(title)}</h1>
<p>{html.escape(report.split)} split, {report.overall.n} images, against
{html.escape(against)}; evaluated {html.escape(blessing.evaluated_at)}.</p>
{verdict}
<h2>{html.escape(_heading(primary))} per slice</h2>
{_html_table(slice_headers, slice_table)}
<img alt="{html.escape(primary)} per slice" src="data:image/png;base64,{bars}">
<h2>Gates</h2>
{_html_table(["gate", "value", "threshold", "verdict", "detail"], gate_rows)}
<ul>{notes}</ul>
{pair}{confusion}</body></html>
"""


def _heading(label: str) -> str:
    """A metric's label opening a heading: `Accuracy`, but `mAP@0.5` and `CER` as they are.

    >>> _heading("accuracy"), _heading("mAP@0.5"), _heading("CER")
    ('Accuracy', 'mAP@0.5', 'CER')
    """
    return label[:1].upper() + label[1:] if label[1:2].islower() else label


def _rate(value: float) -> str:
    """A rate for a table: 4 decimals, `-` for a rate over nothing (NaN)."""
    return "-" if math.isnan(value) else f"{value:.4f}"


def _pair_section(outcome: EvaluationOutcome) -> str:
    """The pair end to end (a stage of a two-stage service run with its partner), or ''."""
    system = outcome.system
    if system is None:
        return ""
    champion = system.champion_pair
    headers = ["slice", "expressions", "end to end", "found (IoU ≥ 0.5)", "precision"]
    if champion is not None:
        headers.append(f"champion v{outcome.blessing.champion_version} end to end")
    rows = []
    for name, s in [("all", system.pair), *system.pair.slices.items()]:
        row = [name, str(s.support), *(_rate(v) for v in s.values().values())]
        if champion is not None:
            theirs = champion if name == "all" else champion.slices.get(name)
            row.append("-" if theirs is None else f"{theirs.end_to_end:.4f}")
        rows.append(row)
    return (
        f"<h2>The pair end to end, with {html.escape(system.partner)} version "
        f"{html.escape(system.partner_version)}</h2>\n"
        "<p>Pages in, LaTeX out: the share of true expressions found at IoU ≥ 0.5 and read "
        "exactly.</p>\n"
        f"{_html_table(headers, rows)}\n"
    )
