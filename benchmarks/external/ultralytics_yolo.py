"""Ultralytics YOLO on a flywheel page dataset, offline: the detector anchor of `page_models.py`.

Run by `benchmarks/page_models.py` with the interpreter of `.venv-ultralytics`
(`make .venv-ultralytics`), never the project's: Ultralytics needs
torchvision, and no torchvision wheel loads beside the project's CPU build of
torch (see page_models.py). Imports only the standard library and what that
venv holds; nothing from flywheel.

It writes the page dataset as Ultralytics wants it, in `--work`:
`images/<split>/<image_id>.png` and `labels/<split>/<image_id>.txt`, links to
the dataset's pages and YOLO label files, and a `data.yaml`; builds the model
from its YAML (random weights, nothing downloaded), trains it on the train
split (validating on val each epoch, keeping the best epoch by Ultralytics'
fitness), then predicts the test pages with the best weights. One JSON object
goes to `--out`: versions, threads, parameter count, train images, the
train-phase seconds of each epoch (`on_train_epoch_start` to
`on_train_epoch_end`: batches only), the wall time of `model.train`,
Ultralytics' own mAP of the test split, and every test detection as
normalised corners and a score, for page_models.py to score with flywheel's
own COCO scorer.

Offline: `YOLO_OFFLINE=1` (no online checks), `YOLO_CONFIG_DIR` in `--work`
(its settings file), `settings.sync` off, `plots=False` (plots fetch a font),
`pretrained=False` and `amp=False` (the AMP check fetches weights; CPU anyway).

    .venv-ultralytics/bin/python benchmarks/external/ultralytics_yolo.py \\
        --data data-pages/pages --work /tmp/yolo --out /tmp/yolo/result.json --epochs 10
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def yolo_dataset(pages: Path, root: Path) -> tuple[Path, dict[str, list[tuple[str, Path]]]]:
    """Ultralytics' layout of the page dataset in `root`: its `data.yaml` and each split's pages.

    Pages and labels are symbolic links to the page dataset's files.
    """
    with (pages / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    per_split: dict[str, list[tuple[str, Path]]] = {split: [] for split in SPLITS}
    for row in rows:
        split, image_id = row["split"], row["image_id"]
        source = (pages / row["path"]).resolve()
        image = root / "images" / split / f"{image_id}{source.suffix}"
        label = root / "labels" / split / f"{image_id}.txt"
        for link, target in ((image, source), (label, (pages / "labels" / f"{image_id}.txt"))):
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target.resolve())
        per_split[split].append((image_id, image))
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\ntest: images/test\n"
        "names:\n  0: formula\n"
    )
    return data, per_split


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a flywheel page dataset folder")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="yolo11n.yaml")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conf", type=float, default=0.001, help="test predictions' floor")
    parser.add_argument(
        "--set", action="append", default=[], help="more train arguments, key=value (YAML)"
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(args.work / "config")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ultralytics sets 1 unless it is set

    import torch
    import torchvision
    import ultralytics
    import ultralytics.utils.torch_utils as torch_utils
    import yaml
    from ultralytics import YOLO, settings

    # select_device sets torch's threads to min(8, cores - 1): 1 on 2 cores.
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)
    settings.update({"sync": False})

    data, per_split = yolo_dataset(args.data, args.work / "dataset")
    model = YOLO(args.model)
    marks: dict[str, list[float]] = {"start": [], "end": []}
    model.add_callback("on_train_epoch_start", lambda _: marks["start"].append(time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda _: marks["end"].append(time.perf_counter()))
    extra: dict[str, Any] = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        extra[key.strip()] = yaml.safe_load(value)
    started = time.perf_counter()
    model.train(
        data=str(data),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=args.workers,
        seed=args.seed,
        plots=False,
        pretrained=False,
        amp=False,
        project=str(args.work),
        name="train",
        exist_ok=True,
        verbose=False,
        **extra,
    )
    train_wall = time.perf_counter() - started
    threads = torch.get_num_threads()
    trainer = model.trainer
    parameters = sum(p.numel() for p in trainer.model.parameters())
    train_images = len(trainer.train_loader.dataset)
    optimizer = trainer.optimizer
    first = optimizer.param_groups[0]
    recipe = {
        "optimizer": f"{type(optimizer).__name__}(lr={first.get('initial_lr', first['lr']):.4g})",
        "nbs": int(trainer.args.nbs),
        "warmup_epochs": float(min(trainer.args.warmup_epochs, max(trainer.epochs - 1, 0))),
        "batches": len(trainer.train_loader) * len(marks["end"]),
    }

    best = YOLO(str(trainer.best))  # the best epoch on val (Ultralytics' fitness)
    metrics = best.val(
        data=str(data),
        split="test",
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        plots=False,
        verbose=False,
    )
    predictions: dict[str, list[list[float]]] = {}
    started = time.perf_counter()
    for image_id, path in per_split["test"]:
        (result,) = best.predict(
            str(path),
            imgsz=args.imgsz,
            conf=args.conf,
            max_det=100,
            device="cpu",
            verbose=False,
        )
        boxes = result.boxes
        corners = boxes.xyxyn.cpu().numpy().tolist()
        scores = boxes.conf.cpu().numpy().tolist()
        predictions[image_id] = [[*c, s] for c, s in zip(corners, scores, strict=True)]
    predict_seconds = time.perf_counter() - started
    out = {
        "versions": {
            "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": sys.version.split()[0],
        },
        "model": args.model,
        "threads": threads,
        "parameters": parameters,
        "train_images": train_images,
        "epochs": len(marks["end"]),
        "train_phase_seconds": [e - s for s, e in zip(marks["start"], marks["end"], strict=True)],
        "train_wall_seconds": train_wall,
        "recipe": recipe,
        "ultralytics_test": {
            "map_50": float(metrics.box.map50),
            "map_50_95": float(metrics.box.map),
        },
        "predict_seconds": predict_seconds,
        "predictions": predictions,
    }
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
