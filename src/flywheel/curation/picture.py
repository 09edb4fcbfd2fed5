"""The curated batch as one picture: every queued image with its rank, prediction and score.

A person deciding whether the batch is worth its labelling cost looks at the
images rather than at a table of ids: the picture is written next to the
batch's queue file (`<batch id>.png`) and printed by `flywheel curate`.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from flywheel.storage import Location, read_bytes

COLUMNS = 8


def batch_picture(selected: pd.DataFrame, *, title: str, columns: int = COLUMNS) -> bytes:
    """A PNG grid of the batch, in rank order: "#rank label (confidence)" and the score per image.

    Args:
        selected: the batch (`CurationResult.selected`: `image_path`, `rank`,
            `label`, `confidence`, `score`).
        title: the picture's title (the batch id, strategy and cost).
        columns: images per row.
    """
    fig, cells = _grid(selected, columns, (1.5, 1.75))
    for ax, row in cells:
        ax.imshow(_image(row.image_path), cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"#{row.rank} {row.label} ({row.confidence:.2f})\nscore {row.score:.3f}", fontsize=7
        )
    fig.suptitle(f"{title}\n#rank predicted label (confidence), selection score", fontsize=9)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def page_batch_picture(
    selected: pd.DataFrame, regions: pd.DataFrame, *, title: str, columns: int = 4
) -> bytes:
    """A PNG grid of a page batch, in rank order: each page with its boxes, scores and texts.

    Args:
        selected: the batch (`PageCuration.selected`: `request_id`, `image_path`,
            `rank`, `score`, `u_det`, `u_rec`, `price`).
        regions: the page log's regions (`box`, `score`, `latex`, `confidence`).
        title: the picture's title (the batch id and cost).
        columns: pages per row.
    """
    from matplotlib.patches import Rectangle

    fig, cells = _grid(selected, columns, (3.2, 3.6))
    grouped = {rid: rows for rid, rows in regions.groupby("request_id", sort=False)}
    for ax, page in cells:
        ax.imshow(_image(page.image_path), cmap="gray", vmin=0, vmax=255)
        for r in grouped.get(page.request_id, regions.iloc[:0]).itertuples():
            x0, y0, x1, y1 = (int(v) for v in r.box)
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#e8590c", lw=1)
            )
            ax.text(
                x0, y0, f"{r.score:.2f} {r.latex} ({r.confidence:.2f})", fontsize=5,
                color="#e8590c", va="bottom",
            )  # fmt: skip
        ax.set_title(
            f"#{page.rank} score {page.score:.3f} (det {page.u_det:.2f}, rec {page.u_rec:.2f})"
            f"\n{page.price:.2f}: {page.request_id}",
            fontsize=7,
        )
    fig.suptitle(
        f"{title}\n#rank page score (detection, recognition uncertainty), price; "
        "each box: detection score, LaTeX (recognition confidence)",
        fontsize=9,
    )
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def _grid(
    selected: pd.DataFrame, columns: int, cell: tuple[float, float]
) -> tuple[Any, list[tuple[Any, Any]]]:
    """A figure of `columns` cells a row (inches `cell` each) and each filled cell's axes with
    its row of `selected`, in rank order; the empty cells are blank."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(selected) / columns))
    fig = Figure(figsize=(cell[0] * columns, cell[1] * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    ordered = list(selected.sort_values("rank").itertuples())
    return fig, list(zip(axes, ordered, strict=False))


def _image(location: Location) -> np.ndarray:
    """The logged image (grey or RGB); a grey square with a cross when it cannot be read."""
    try:
        with Image.open(io.BytesIO(read_bytes(location))) as image:
            return np.asarray(image.convert("L" if image.mode in {"L", "I;16", "I"} else "RGB"))
    except (OSError, UnidentifiedImageError):
        blank = np.full((16, 16), 128, dtype=np.uint8)
        np.fill_diagonal(blank, 0)
        return blank
