"""A hand-drawn page dataset in the formula-page layout (flywheel.data.pages), for the task tests.

`write_pages` writes a page dataset folder: `manifest.csv` (one row per page:
image_id, path, split, sha256, level, writing, noise, width, height, n_boxes),
`annotations.json` (COCO, one category `formula`, each image's `name`, a
`latex`, `region` and `crop_id` per box, so `flywheel.data.pages` reads it)
and YOLO label files `labels/<image_id>.txt`. Each page holds a few formulas, each the
LaTeX source drawn as text with Pillow's built-in font, at random places
that do not overlap. `write_crops` cuts the true boxes into the folder's
`crops.csv` and `crops/`, as the collector does. Both are
deterministic from a seed. The real collector is the page plan's; this is
only enough data for tests to learn from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from flywheel.config import AugmentConfig, DataPlan, ModelConfig, Params, TrainConfig
from flywheel.data.pages import crop_id, crop_regions

EXPRESSIONS: tuple[str, ...] = (
    "12+7=19",
    "8\\times3",
    "x^{2}+3x",
    "(a+b)^{2}",
    "\\frac{1}{2}",
    "\\sqrt{x}",
)
LEVELS = ("elementary", "middle", "high")


@dataclass(frozen=True)
class Page:
    """One drawn page: its manifest row and its boxes `[x, y, w, h]` with their LaTeX."""

    row: dict[str, object]
    boxes: list[tuple[list[int], str]]


def _draw_page(
    rng: np.random.Generator, size: int, boxes_per_page: int, font: ImageFont.ImageFont
) -> tuple[Image.Image, list[tuple[list[int], str]]]:
    image = Image.new("L", (size, size), color=int(rng.integers(215, 250)))
    draw = ImageDraw.Draw(image)
    placed: list[tuple[list[int], str]] = []
    for _ in range(50 * boxes_per_page):
        if len(placed) == boxes_per_page:
            break
        latex = EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))]
        left, top, right, bottom = draw.textbbox((0, 0), latex, font=font)
        w, h = right - left + 6, bottom - top + 6
        x, y = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
        if any(
            x < bx + bw + 4 and bx < x + w + 4 and y < by + bh + 4 and by < y + h + 4
            for (bx, by, bw, bh), _ in placed
        ):
            continue
        draw.text((x + 3 - left, y + 3 - top), latex, fill=int(rng.integers(0, 60)), font=font)
        placed.append(([x, y, w, h], latex))
    return image, placed


def write_pages(
    root: Path,
    splits: dict[str, int],
    *,
    size: int = 128,
    boxes_per_page: int = 2,
    font_size: int = 12,
    seed: int = 0,
) -> list[Page]:
    """Draw pages into `root` in the page dataset layout; the pages, in order.

    Args:
        root: the dataset folder (created).
        splits: pages per split, e.g. `{"train": 16, "val": 4, "test": 4}`.
        size: page side in pixels.
        boxes_per_page: formulas per page.
        font_size: of Pillow's built-in font.
        seed: everything is drawn from it.
    """
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=font_size)
    (root / "pages").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    pages: list[Page] = []
    coco: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "formula"}],
    }
    for split, count in splits.items():
        for _ in range(count):
            index = len(pages)
            image_id = f"page-{index:04d}"
            image, boxes = _draw_page(rng, size, boxes_per_page, font)
            rel = f"pages/{image_id}.png"
            image.save(root / rel)
            yolo = [
                f"0 {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}"
                for (x, y, w, h), _ in boxes
            ]
            (root / "labels" / f"{image_id}.txt").write_text("\n".join(yolo) + "\n")
            coco["images"].append(
                {"id": index + 1, "file_name": rel, "name": image_id, "width": size, "height": size}
            )
            for region, (box, latex) in enumerate(boxes):
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": index + 1,
                        "bbox": box,
                        "area": box[2] * box[3],
                        "category_id": 1,
                        "iscrowd": 0,
                        "latex": latex,
                        "region": region,
                        "crop_id": crop_id(image_id, region),
                    }
                )
            row = {
                "image_id": image_id,
                "path": rel,
                "split": split,
                "sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest(),
                "level": LEVELS[index % len(LEVELS)],
                "writing": "printed",
                "noise": "clean" if index % 2 == 0 else "shadow",
                "width": size,
                "height": size,
                "n_boxes": len(boxes),
            }
            pages.append(Page(row, boxes))
    pd.DataFrame([p.row for p in pages]).to_csv(root / "manifest.csv", index=False)
    (root / "annotations.json").write_text(json.dumps(coco))
    return pages


def write_crops(pages_root: Path, padding: int = 2) -> Path:
    """Cut every true box of the pages drawn into `pages_root` into its `crops.csv` and `crops/`.

    The collector's own cutter (`flywheel.data.pages.crop_regions`): the
    recogniser reads the page dataset folder, so that folder is returned.
    """
    crop_regions(pages_root, padding)
    return pages_root


def tiny_task_params(
    task: str,
    image_size: int,
    *,
    epochs: int,
    lr: float,
    monitor: str,
    augment: AugmentConfig,
    experiment: str,
) -> Params:
    """`Params` that train a shrunk detector or recogniser on these pages in seconds."""
    return Params(
        data=DataPlan(image_size=image_size),
        train=TrainConfig(
            task=task,
            experiment=experiment,
            seed=3,
            epochs=epochs,
            batch_size=4,
            lr=lr,
            weight_decay=0.0,
            scheduler="none",
            monitor=monitor,
            patience=epochs,
            model=ModelConfig(width=8, stages=3, embedding_dim=16, dropout=0.0),
            augment=augment,
        ),
    )
