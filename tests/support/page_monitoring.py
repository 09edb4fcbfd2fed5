"""Test support for page monitoring and curation: a tiny trained pair and a real page log.

`page_pair` collects a small page dataset with the real collector
(`flywheel.demo.pages.collect_pages`: printed, clean pages of two levels),
trains a tiny detector and recogniser on it with `train_and_register` (what
`flywheel train` runs: the run, the reference profile on the run, the
registered version) and returns their versions. `log_pages` answers
production pages (`flywheel.demo.pages.traffic.production_pages`) with the
pair loaded from the registry, as the page service answers them (its record is
built from the same task calls: `PagePipeline.page_boxes`/`crops`, the summary
features of each stage's input, `Task.decode`), and writes them with the real
`PageLogger`. `drifted_plan` is the plan with its writing and noise shifted
(handwriting, shadows, highlighter, rotation): the traffic monitoring must flag.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from flywheel.config import (
    AugmentConfig,
    DataPlan,
    EvaluateConfig,
    ModelConfig,
    PagePlan,
    PageStrata,
    Params,
    TrainConfig,
)
from flywheel.storage import Location

DETECTOR = "pages-monitor-detector"
RECOGNIZER = "pages-monitor-recognizer"
PAGE_SIZE = 128


@dataclass(frozen=True)
class PagePair:
    """The pair's registered versions and the dataset they learned from."""

    dataset: Path
    plan: DataPlan
    detector_version: str
    recognizer_version: str


def page_plan(*, train: int = 30, val: int = 12) -> DataPlan:
    """Printed, clean pages of two levels at `PAGE_SIZE` pixels: `train`/`val` pages per stratum."""
    return DataPlan(
        root=Path("data-pages"),
        name="pages",
        seed=11,
        image_size=PAGE_SIZE,
        per_stratum={"train": train, "val": val, "test": 1},
        generator="flywheel.demo.pages:collect_pages",
        pages=PagePlan(
            strata=PageStrata(
                level=("elementary", "middle"), writing=("printed",), noise=("clean",)
            ),
            expressions=(2, 3),
        ),
    )


def drifted_plan(plan: DataPlan) -> DataPlan:
    """The plan with its writing and noise shifted: handwriting, shadows, highlighter, rotation."""
    assert plan.pages is not None
    strata = PageStrata(
        level=plan.pages.strata.level,
        writing=("handwritten",),
        noise=("shadow", "highlighter", "rotated"),
    )
    return plan.model_copy(update={"pages": plan.pages.model_copy(update={"strata": strata})})


def stage_params(plan: DataPlan, task: str, *, epochs: int) -> Params:
    """A shrunk model of `task` on the plan, registered as `DETECTOR` or `RECOGNIZER`."""
    detection = task == "detection"
    return Params(
        data=plan,
        train=TrainConfig(
            task=task,
            experiment=f"page-monitor-{task}",
            seed=3,
            epochs=epochs,
            batch_size=8,
            lr=3e-3 if detection else 1e-2,
            weight_decay=0.0,
            scheduler="none",
            monitor="val_loss" if detection else "val_cer",
            patience=epochs,
            model=ModelConfig(
                input_size=64 if detection else 16, width=8, stages=3, embedding_dim=16, dropout=0.0
            ),
            augment=AugmentConfig(enabled=False),
        ),
        evaluate=EvaluateConfig(registered_model=DETECTOR if detection else RECOGNIZER),
    )


def page_pair(root: Path, *, epochs: tuple[int, int] = (8, 8)) -> PagePair:
    """Collect the plan's pages under `root`, train and register the pair (tracking must be set)."""
    from flywheel.demo.pages import collect_pages
    from flywheel.workflows.training import train_and_register

    plan = page_plan().model_copy(update={"root": root / "data-pages"})
    collect_pages(plan, progress=False)
    dataset = plan.root / plan.name
    versions = []
    for task, n in zip(("detection", "recognition"), epochs, strict=True):
        trained = train_and_register(
            stage_params(plan, task, epochs=n),
            dataset,
            out_dir=root / "runs" / task,
            data_version="",
            reason="page monitoring test",
        )
        assert trained.candidate is not None
        versions.append(trained.candidate.version)
    return PagePair(dataset, plan, versions[0], versions[1])


def log_pages(
    pair: PagePair,
    plan: DataPlan,
    log_root: Location,
    *,
    count: int,
    seed: int,
    start: datetime,
    prefix: str,
    detector: str = DETECTOR,
    recognizer: str = RECOGNIZER,
) -> list[str]:
    """Answer `count` production pages of `plan` with the pair; log them one second apart.

    Args:
        detector, recognizer: the pair's registered models (default the test models).

    Returns:
        The request ids, in order.
    """
    from flywheel import registry
    from flywheel.demo.pages.traffic import production_pages
    from flywheel.evaluation.pair import load_pair_model
    from flywheel.monitoring.features import FEATURE_COLUMNS, summary_features
    from flywheel.monitoring.page_log import PageLogger, PageRecord, RegionRecord
    from flywheel.tasks.page_pipeline import PagePipeline

    pipeline = PagePipeline(
        load_pair_model(registry.model_uri(detector, pair.detector_version), "detection"),
        load_pair_model(registry.model_uri(recognizer, pair.recognizer_version), "recognition"),
    )
    detection, recognition = pipeline.detection_task, pipeline.recognition_task
    logger = PageLogger(log_root, flush_every=1, flush_interval_s=0.05)
    logger.start()
    ids = []
    try:
        for n, page in enumerate(production_pages(plan, count, seed=seed, prefix=prefix)):
            with Image.open(io.BytesIO(page.png)) as opened:
                image = opened.convert("L")
            inputs = detection.preprocess([image])  # (1, 1, S, S)
            cells, embedding = detection.split_output(pipeline.detector.run(inputs))
            features = summary_features(detection.pixels(inputs)).to_numpy()[0]  # (F,)
            boxes = pipeline.page_boxes(cells[0], image.width, image.height)
            crops = pipeline.crops(image, boxes)
            regions = []
            if crops:
                crop_inputs = recognition.preprocess(crops)  # (N, 1, H, W)
                read = recognition.decode(pipeline.recognizer.run(crop_inputs))
                crop_features = summary_features(recognition.pixels(crop_inputs)).to_numpy()
                stored = recognition.stored_images(crop_inputs)
                regions = [
                    RegionRecord(
                        index=i,
                        box=box,
                        score=score,
                        latex=str(read.labels[i]),
                        confidence=float(read.confidence[i]),
                        crop_features=dict(zip(FEATURE_COLUMNS, crop_features[i], strict=True)),
                        embedding=read.embedding[i].astype(float).tolist(),
                        crop=stored[i],
                    )
                    for i, (box, score) in enumerate(boxes)
                ]
            scores = cells[0, :, 0]
            logger.log(
                PageRecord(
                    request_id=page.request_id,
                    time=start + timedelta(seconds=n),
                    detector_name=detector,
                    detector_version=pair.detector_version,
                    recognizer_name=recognizer,
                    recognizer_version=pair.recognizer_version,
                    width=image.width,
                    height=image.height,
                    detector_confidence=float(np.maximum(scores, 1.0 - scores).min()),
                    page_features=dict(zip(FEATURE_COLUMNS, features, strict=True)),
                    detector_embedding=embedding[0].astype(float).tolist(),
                    regions=regions,
                    image=np.asarray(image),
                )
            )
            ids.append(page.request_id)
    finally:
        logger.close()
    return ids


def monitor_params(
    tmp: Path, state: Location | None = None, plan: DataPlan | None = None, **monitor: object
) -> Params:
    """The two-stage page plan naming the test models, its state under `tmp` (or at `state`).

    `plan`: the data the pair learned from (`PagePair.plan`), where monitoring finds the
    pages it profiles the crop stage's reference on (`flywheel.monitoring.page_reference`);
    default `page_plan()` under a relative root that is not there.
    """
    from flywheel.config import parse_params

    plan = plan if plan is not None else page_plan()
    raw = {
        "data": plan.model_dump(mode="json"),
        "train": {"task": "detection"},
        "tasks": {
            "detection": {"evaluate": {"registered_model": DETECTOR}},
            "recognition": {"evaluate": {"registered_model": RECOGNIZER}},
        },
        "state": {"url": str(state if state is not None else tmp / "state")},
        "monitor": {"min_window_size": 20, **monitor},
    }
    return parse_params(raw)
