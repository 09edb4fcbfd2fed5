"""The curated batch as one picture: every queued image with its rank, prediction and score.

A person deciding whether the batch is worth its labelling cost looks at the
images rather than at a table of ids: the picture is written next to the
batch's queue file (`<batch id>.png`) and printed by `flywheel curate`.
"""

from __future__ import annotations

import io
import math

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
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(selected) / columns))
    fig = Figure(figsize=(1.5 * columns, 1.75 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    ordered = selected.sort_values("rank")
    for ax, row in zip(
        axes, [*ordered.itertuples(), *[None] * (len(axes) - len(ordered))], strict=True
    ):
        ax.set_axis_off()
        if row is None:
            continue
        ax.imshow(_image(row.image_path), cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"#{row.rank} {row.label} ({row.confidence:.2f})\nscore {row.score:.3f}", fontsize=7
        )
    fig.suptitle(f"{title}\n#rank predicted label (confidence), selection score", fontsize=9)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def _image(location: Location) -> np.ndarray:
    """The logged image (grey or RGB); a grey square with a cross when it cannot be read."""
    try:
        with Image.open(io.BytesIO(read_bytes(location))) as image:
            return np.asarray(image.convert("L" if image.mode in {"L", "I;16", "I"} else "RGB"))
    except (OSError, UnidentifiedImageError):
        blank = np.full((16, 16), 128, dtype=np.uint8)
        np.fill_diagonal(blank, 0)
        return blank
