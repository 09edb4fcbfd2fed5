"""Anchors for the formula-page models (issue 14): each beside a reference, same pages, same epochs.

One run collects a small page dataset from the page plan (`plans/pages.yaml`,
`data.per_stratum` scaled by `--train/--val/--test`) and trains four models
on it, one after another in this process (the Ultralytics one in a child
process), each with `--threads` PyTorch threads:

* **flywheel detector**: `train.task: detection` (the YOLO-style grid detector
  of `flywheel.tasks.detection`) as the plan trains it (its `train` section
  with `tasks.detection` applied: input size, width, augmentation, epochs,
  batch size), through `flywheel.modeling.training.train`, evaluated through
  its logged pt2 model by `flywheel.evaluation.evaluate_model` as the plan's
  `evaluate` section says.
* **Ultralytics YOLO** (the anchor): a nano model built from its YAML
  (`--yolo-model`, default `yolo11n.yaml`: random weights, nothing downloaded),
  trained from scratch offline with Ultralytics' own recipe on the same train
  pages, for the same epochs, at the detector's input size and batch size
  (`benchmarks/external/ultralytics_yolo.py`, run by the interpreter of
  `.venv-ultralytics`). Its best epoch (on val) predicts the test pages and
  those detections are scored by flywheel's scorer, the one the flywheel
  detector is scored by (`flywheel.tasks.detection_metrics`, faster-coco-eval);
  Ultralytics' own validator's mAP of the test split is printed beside, and
  its recipe (optimiser, nominal batch, warm-up).
* **flywheel recogniser**: `train.task: recognition` (CRNN + CTC) as the plan
  trains it (`tasks.recognition`: crop height, learning rate, box jitter, ...)
  on the crops of the same pages' boxes (`crops.csv`), evaluated like the
  detector.
* **per-token classifier** (the trivial anchor): each train crop is cut into as
  many equal-width pieces as its transcript has tokens, and the digits
  classifier (`params.yaml: train`, its small CNN, augmentation and
  optimiser) is trained through the same `train` to name the token of a piece.
  A test crop is cut into k pieces, k read off its aspect ratio by a straight
  line fitted on the train crops (`tokens ≈ a + b · width / height`); the row
  "k = true token count" cuts it into the true number instead (an oracle, not
  a model: it shows what the split alone costs).

Reported per model: mAP@0.5 and mAP@0.5:0.95 on the test pages (detectors),
CER and exact match on the test crops (recognisers, `flywheel.tasks.
recognition_metrics`: jiwer, canonical LaTeX on both sides); trainable
parameters of the trained network; training images per second — images
(pages, crops, or pieces for the classifier) of one epoch × epochs over the
summed train phases (first batch to the last one's step, validation
excluded); and the wall time of the training call (every epoch with its
validation and checkpoints; the export of the logged model excluded). Every
number is a measurement of this run; the timings are on whatever else the
machine is doing (the load average is printed before and after).

    make .venv-ultralytics                                   # once: Ultralytics' own venv
    .venv/bin/python benchmarks/page_models.py      # the plan's epochs (12, 10): 5 min on 2 cores
    .venv/bin/python benchmarks/page_models.py --train 16 --val 4 --test 6 \\
        --epochs 30 --rec-epochs 20                 # more pages, more epochs: 23 min

Ultralytics is not in the project's environment and cannot be: it needs
torchvision, and the one torchvision built for the project's torch (0.28.0 for
torch 2.13.0) is built against CUDA torch: beside torch 2.13.0+cpu,
`import torchvision` fails with `RuntimeError: operator torchvision::nms does
not exist`, its `_C.so` failing to load: `libc10_cuda.so: cannot open shared
object file: No such file or directory`. `make .venv-ultralytics` installs it
into a venv of its own with the pins of `requirements/ultralytics.txt`
(Ultralytics, torch 2.14.1 and torchvision 0.29.1 as PyPI builds them, which
run on a CPU). Without that venv, or when its run fails, the table says why
and the other three rows are measured all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from flywheel.config import (
    DataPlan,
    Params,
    load_params,
)
from flywheel.data.pages import load_crops
from flywheel.env import disable_telemetry
from flywheel.evaluation import evaluate_model
from flywheel.modeling.checkpoints import load_checkpoint
from flywheel.modeling.training import TrainResult, train
from flywheel.tasks import TASKS, Task, get_task
from flywheel.tasks.classification import ClassificationTask
from flywheel.tasks.detection import PageDataset
from flywheel.tasks.detection_metrics import detection_metrics, object_array
from flywheel.tasks.latex_tokens import canonical, detokenize, tokenize
from flywheel.tasks.recognition_metrics import recognition_metrics

ROOT = Path(__file__).resolve().parent.parent
YOLO_RUNNER = ROOT / "benchmarks" / "external" / "ultralytics_yolo.py"
YOLO_PYTHON = ROOT / ".venv-ultralytics" / "bin" / "python"
EXPERIMENT = "bench-page-models"


# --------------------------------------------------------------------------- data


def collect(plan_path: Path, counts: dict[str, int], root: Path) -> tuple[Path, DataPlan, float]:
    """The page plan with `counts` pages per stratum and split, collected into `root`.

    Returns the dataset folder, the plan and the seconds it took.
    """
    from flywheel.demo.pages.collect import collect_pages

    overrides = {f"data.per_stratum.{split}": n for split, n in counts.items()}
    plan = load_params(plan_path, overrides).data
    started = time.perf_counter()
    collect_pages(plan, root, progress=False)
    return root / plan.name, plan, time.perf_counter() - started


# --------------------------------------------------------------------------- timing


@dataclass
class Clock:
    """`time.perf_counter` marks of one run: where each epoch's train and val phases start."""

    train_start: list[float] = field(default_factory=list)
    val_start: list[float] = field(default_factory=list)

    def train_seconds(self) -> list[float]:
        return [v - t for t, v in zip(self.train_start, self.val_start, strict=True)]


def timed_task(base: type[Task], clock: Clock) -> str:
    """A copy of task `base` that marks `clock` where the training loop's phases start; its name.

    The loop asks the task for a fresh metric accumulator exactly twice an
    epoch: before the first training batch and before validation; nothing
    else changes.
    """

    class Timed(base):
        name = f"{base.name}_timed"
        _calls = 0

        def new_metrics(self, device: torch.device | str = "cpu") -> Any:
            marks = clock.train_start if self._calls % 2 == 0 else clock.val_start
            self._calls += 1
            marks.append(time.perf_counter())
            return super().new_metrics(device)

    TASKS[Timed.name] = Timed
    return Timed.name


@contextmanager
def tracking_store(work: Path) -> Iterator[None]:
    """MLflow in a fresh SQLite store in `work` for the duration."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One model's measurements (NaN where a metric is not its kind's)."""

    model: str
    parameters: int | None = None
    train_items: int = 0  # per epoch
    item: str = "images"
    epochs: int = 0
    train_phase_seconds: float = float("nan")  # summed over epochs
    train_wall_seconds: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def images_per_second(self) -> float:
        return self.train_items * self.epochs / self.train_phase_seconds


def trained_row(model: str, result: TrainResult, clock: Clock, items: int, item: str) -> Row:
    return Row(
        model=model,
        parameters=count_parameters(result.model),
        train_items=items,
        item=item,
        epochs=result.epochs_run,
        train_phase_seconds=sum(clock.train_seconds()),
        train_wall_seconds=result.train_seconds,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def platform_train(params: Params, dataset: Path, work: Path, *, log_model: bool) -> TrainResult:
    out = Path(tempfile.mkdtemp(prefix=f"{params.train.task}-", dir=work))
    return train(params, dataset, out_dir=out, log_model=log_model, progress=False)


# --------------------------------------------------------------------------- detectors


def task_params(args: argparse.Namespace, task: str, epochs: int | None, timed: str) -> Params:
    """The plan's parameters for `task`, its `tasks.<task>` section applied, for this run.

    The run sets the pages per stratum, the seed, the experiment, the epochs
    when `epochs` is given (else the task section's), and patience = epochs so
    that every epoch runs, as Ultralytics' do; `timed` replaces the task's name.
    """
    overrides: dict[str, Any] = {
        **{f"data.per_stratum.{split}": n for split, n in page_counts(args).items()},
        "train.task": task,
        "train.experiment": EXPERIMENT,
        "train.seed": args.seed,
    }
    if epochs is not None:
        overrides["train.epochs"] = epochs
    params = load_params(args.params, overrides)
    update = {"task": timed, "patience": params.train.epochs}
    return params.model_copy(update={"train": params.train.model_copy(update=update)})


def page_counts(args: argparse.Namespace) -> dict[str, int]:
    return {"train": args.train, "val": args.val, "test": args.test}


def input_size(params: Params) -> int:
    """The side pages are scaled to (detector), or the crop height (recogniser)."""
    return params.train.model.input_size or params.data.image_size


def run_detector(pages: Path, work: Path, args: argparse.Namespace) -> tuple[Row, Params]:
    """The flywheel detector's row, and the parameters it trained with."""
    clock = Clock()
    params = task_params(args, "detection", args.epochs, timed_task(get_task("detection"), clock))
    result = platform_train(params, pages, work, log_model=True)
    assert result.model_uri is not None
    report = evaluate_model(result.model_uri, pages, params.evaluate, progress=False)
    preprocessing = get_task("detection").from_params(params).preprocessing
    items = len(PageDataset(pages, "train", preprocessing))
    row = trained_row("flywheel grid detector", result, clock, items, "pages")
    row.metrics = {k: report.overall[k] for k in ("map_50", "map_50_95")}
    return row, params


def run_ultralytics(
    pages: Path, work: Path, args: argparse.Namespace, detector: Params
) -> tuple[Row, dict[str, Any]]:
    """The Ultralytics row, or a row whose note says why there is none; and its raw result.

    Same pages, epochs, input size and batch size as the flywheel detector (`detector`).
    """
    name = f"Ultralytics YOLO ({args.yolo_model.removesuffix('.yaml')}, from scratch)"
    python = Path(args.ultralytics_python)
    if not python.is_file():
        return Row(
            name,
            note=f"not run: no interpreter at {python} (`make .venv-ultralytics` installs "
            "Ultralytics into a venv of its own; it cannot join the project's, see the docstring)",
        ), {}
    out = work / "ultralytics.json"
    log = work / "ultralytics.log"
    command = [
        str(python),
        str(YOLO_RUNNER),
        "--data",
        str(pages),
        "--work",
        str(work / "ultralytics"),
        "--out",
        str(out),
        "--model",
        args.yolo_model,
        "--epochs",
        str(detector.train.epochs),
        "--imgsz",
        str(input_size(detector)),
        "--batch",
        str(detector.train.batch_size),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        *(f"--set={pair}" for pair in args.yolo_set),
    ]
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.strip(" ^~")  # not blank, not a traceback's underline
        ]
        error = lines[-1].strip() if lines else "no output"
        tail = "\n    ".join(lines[-10:])
        return Row(
            name,
            note=f"failed (exit status {done.returncode}): {error}\n"
            f"    command: {' '.join(command)}\n    {tail}",
        ), {}
    result = json.loads(out.read_text())
    preprocessing = get_task("detection").from_params(detector).preprocessing
    dataset = PageDataset(pages, "test", preprocessing)  # boxes normalised: any size
    ids = [str(i) for i in dataset.frame["image_id"]]
    predictions = object_array(
        [np.asarray(result["predictions"][i], dtype=np.float64).reshape(-1, 5) for i in ids]
    )
    scored = detection_metrics(predictions, object_array(list(dataset.boxes)))
    row = Row(
        model=name,
        parameters=int(result["parameters"]),
        train_items=int(result["train_images"]),
        item="pages",
        epochs=int(result["epochs"]),
        train_phase_seconds=float(sum(result["train_phase_seconds"])),
        train_wall_seconds=float(result["train_wall_seconds"]),
        metrics={k: float(scored.values[k]) for k in ("map_50", "map_50_95")},
    )
    return row, result


# --------------------------------------------------------------------------- recognisers


def run_recogniser(pages: Path, work: Path, args: argparse.Namespace) -> tuple[Row, Params]:
    """The flywheel recogniser's row (it reads the page dataset's crops), and its parameters."""
    clock = Clock()
    timed = timed_task(get_task("recognition"), clock)
    params = task_params(args, "recognition", args.rec_epochs, timed)
    result = platform_train(params, pages, work, log_model=True)
    assert result.model_uri is not None
    report = evaluate_model(result.model_uri, pages, params.evaluate, progress=False)
    items = len(get_task("recognition").from_params(params).build_dataset(pages, "train"))
    row = trained_row("flywheel CRNN + CTC", result, clock, items, "crops")
    row.metrics = {k: report.overall[k] for k in ("cer", "exact_match")}
    return row, params


def pieces(image: Image.Image, k: int) -> list[Image.Image]:
    """`image` cut into `k` equal-width pieces, left to right (each at least a pixel wide)."""
    edges = [round(i * image.width / k) for i in range(k + 1)]
    return [
        image.crop((edges[i], 0, max(edges[i + 1], edges[i] + 1), image.height)) for i in range(k)
    ]


def piece_dataset(crops: pd.DataFrame, source: Path, folder: Path) -> Path:
    """A classification dataset of the train and val crops' pieces, one per token, its label."""
    rows = []
    for crop in crops[crops["split"].isin(["train", "val"])].itertuples():
        tokens = tokenize(str(crop.latex))
        with Image.open(source / str(crop.path)) as image:
            for i, (piece, token) in enumerate(
                zip(pieces(image.convert("L"), len(tokens)), tokens, strict=True)
            ):
                path = f"pieces/{crop.split}/{crop.crop_id}-{i:02d}.png"
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                piece.save(folder / path)
                rows.append(
                    {
                        "image_id": f"{crop.crop_id}-{i:02d}",
                        "path": path,
                        "label": token,
                        "split": crop.split,
                    }
                )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def run_classifier(
    plan: DataPlan, pages: Path, work: Path, args: argparse.Namespace, epochs: int
) -> tuple[Row, Row, str]:
    """The per-token classifier (`epochs` epochs): k read off the aspect ratio, and the true k."""
    crops = load_crops(pages)
    train_crops = crops[crops["split"] == "train"]
    lengths = np.array([len(tokenize(str(t))) for t in train_crops["latex"]])
    aspect = train_crops["width"].to_numpy(float) / train_crops["height"].to_numpy(float)
    slope, intercept = np.polyfit(aspect, lengths, 1)
    vocabulary = tuple(dict.fromkeys(plan.pages.vocabulary)) if plan.pages else ()
    folder = piece_dataset(crops, pages, work / "pieces")

    digits = load_params(args.digits_params)
    clock = Clock()
    params = Params(
        data=DataPlan(name="pieces", image_size=digits.data.image_size, classes=vocabulary),
        train=digits.train.model_copy(
            update={
                "task": timed_task(ClassificationTask, clock),
                "experiment": EXPERIMENT,
                "seed": args.seed,
                "epochs": epochs,
                "patience": epochs,
            }
        ),
    )
    result = platform_train(params, folder, work, log_model=False)
    model = result.model.cpu().eval()
    model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    task = ClassificationTask.from_params(params)
    items = len(task.build_dataset(folder, "train"))

    test = crops[crops["split"] == "test"].reset_index(drop=True)
    truths = [canonical(str(t)) for t in test["latex"]]
    true_k = [len(tokenize(str(t))) for t in test["latex"]]
    ratio = test["width"].to_numpy(float) / test["height"].to_numpy(float)
    fitted_k = [int(v) for v in np.clip(np.rint(intercept + slope * ratio), 1, int(lengths.max()))]

    def read(ks: list[int]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for crop, k in zip(test.itertuples(), ks, strict=True):
                with Image.open(pages / str(crop.path)) as image:
                    batch = task.preprocess(pieces(image.convert("L"), k))
                logits, _ = model(batch)
                out.append(detokenize([vocabulary[i] for i in logits.argmax(dim=1).tolist()]))
        return object_array(out)

    rows = []
    for label, ks in (
        ("k from the aspect ratio", fitted_k),
        ("k = true token count (oracle)", true_k),
    ):
        scored = recognition_metrics(read(ks), object_array(truths))
        row = trained_row(f"per-token digits classifier, {label}", result, clock, items, "pieces")
        row.metrics = {k: float(scored.values[k]) for k in ("cer", "exact_match")}
        rows.append(row)
    right = float(np.mean(np.array(fitted_k) == np.array(true_k)))
    r = float(np.corrcoef(aspect, lengths)[0, 1])
    fit = (
        f"Per-token classifier: k ≈ {intercept:.2f} + {slope:.2f} · width/height (least squares "
        f"on the {len(train_crops)} train crops, r = {r:.2f}: braces, ^ and \\frac add tokens, "
        f"not width) gives the true token count for {right:.0%} of the test crops; its train "
        f"images are the {items:,} pieces of those crops ({items / len(train_crops):.1f} a crop)"
    )
    return rows[0], rows[1], fit


# --------------------------------------------------------------------------- report


def number(value: float | int | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def tables(detectors: list[Row], recognisers: list[Row]) -> list[str]:
    def common(row: Row) -> list[str]:
        speed = row.images_per_second if row.train_items else float("nan")
        return [
            number(row.parameters),
            f"{row.train_items:,} {row.item}" if row.train_items else "—",
            str(row.epochs) if row.epochs else "—",
            number(speed, 1),
            number(row.train_wall_seconds, 1),
        ]

    head = (
        "| model | parameters | train images / epoch | epochs | train images/s | train wall (s) |"
    )
    lines: list[str] = []
    for rows, labels, keys in (
        (detectors, "mAP@0.5 | mAP@0.5:0.95", ("map_50", "map_50_95")),
        (recognisers, "CER | exact match", ("cer", "exact_match")),
    ):
        if not rows:
            continue
        lines += [*([""] if lines else []), f"{head} {labels} |", "|---|" + "---:|" * 7]
        for row in rows:
            metrics = [number(row.metrics.get(k, float("nan"))) for k in keys]
            lines.append("| " + " | ".join([row.model, *common(row), *metrics]) + " |")
    return lines


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def ultralytics_note(raw: dict[str, Any]) -> str:
    versions, test, recipe = raw["versions"], raw["ultralytics_test"], raw["recipe"]
    return (
        f"Ultralytics {versions['ultralytics']} (torch {versions['torch']}, torchvision "
        f"{versions['torchvision']}, {raw['threads']} threads, {raw['model']}); its own "
        f"validator on the test split: mAP@0.5 {test['map_50']:.3f}, mAP@0.5:0.95 "
        f"{test['map_50_95']:.3f}. Its recipe: {recipe['optimizer']}, a step of the optimiser "
        f"per {recipe['nbs']} images (nominal batch; gradients accumulated), the first "
        f"{recipe['warmup_epochs']:g} epochs a warm-up, {recipe['batches']} batches in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "plans" / "pages.yaml")
    parser.add_argument("--digits-params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--train", type=int, default=8, help="train pages per stratum")
    parser.add_argument("--val", type=int, default=2, help="val pages per stratum")
    parser.add_argument("--test", type=int, default=4, help="test pages per stratum")
    parser.add_argument(
        "--epochs", type=int, default=None, help="both detectors (default: the plan's detector's)"
    )
    parser.add_argument(
        "--rec-epochs",
        type=int,
        default=None,
        help="both recognisers (default: the plan's recogniser's)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--yolo-model", default="yolo11n.yaml")
    parser.add_argument(
        "--yolo-set",
        action="append",
        default=[],
        help="more Ultralytics train arguments, key=value",
    )
    parser.add_argument("--ultralytics-python", type=Path, default=YOLO_PYTHON)
    parser.add_argument(
        "--only", choices=("detectors", "recognisers"), default=None, help="one pair only"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / ".flywheel" / "benchmarks" / "page_models"
    )
    args = parser.parse_args()

    disable_telemetry()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loads = [load_average()]
    detectors: list[Row] = []
    recognisers: list[Row] = []
    notes: list[str] = []
    setup: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-page-models-") as tmp:
        work = Path(tmp)
        counts = {"train": args.train, "val": args.val, "test": args.test}
        pages, plan, collect_seconds = collect(args.params, counts, work / "data")
        manifest = pd.read_csv(pages / "manifest.csv")
        crops = load_crops(pages)
        print(
            f"pages per split {manifest['split'].value_counts().to_dict()}, "
            f"boxes = crops per split {crops['split'].value_counts().to_dict()}; "
            f"collected in {collect_seconds:.0f} s",
            file=sys.stderr,
        )
        with tracking_store(work):
            if args.only in (None, "detectors"):
                row, detector = run_detector(pages, work, args)
                detectors.append(row)
                setup.append(
                    f"detectors {detector.train.epochs} epochs, batch "
                    f"{detector.train.batch_size}, pages scaled to {input_size(detector)} px"
                )
                print(f"flywheel detector done: {elapsed(started)}", file=sys.stderr)
                row, raw = run_ultralytics(pages, work, args, detector)
                detectors.append(row)
                if raw:
                    notes.append(ultralytics_note(raw))
                if row.note:
                    notes.append(f"{row.model}: {row.note}")
                print(f"Ultralytics done: {elapsed(started)}", file=sys.stderr)
            if args.only in (None, "recognisers"):
                row, recogniser = run_recogniser(pages, work, args)
                recognisers.append(row)
                epochs = recogniser.train.epochs
                setup.append(
                    f"recognisers {epochs} epochs, crops {input_size(recogniser)} px high "
                    f"for the CRNN (box jitter {recogniser.train.augment.box_jitter:g})"
                )
                print(f"CRNN done: {elapsed(started)}", file=sys.stderr)
                fitted, oracle, fit = run_classifier(plan, pages, work, args, epochs)
                recognisers += [fitted, oracle]
                notes.append(fit)
    loads.append(load_average())

    counted = manifest["split"].value_counts()
    lines = [
        f"Pages: {args.train}/{args.val}/{args.test} per stratum and split "
        f"({' / '.join(f'{counted[s]} {s}' for s in ('train', 'val', 'test'))} pages, "
        f"{len(crops)} boxes) of {plan.image_size} px; {'; '.join(setup)}; "
        f"{args.threads} threads; test split scored. Load average (1, 5, 15 min) {loads[0]} "
        f"before, {loads[1]} after; {elapsed(started)} in all.",
        "",
        *tables(detectors, recognisers),
        "",
        *(f"* {note}" for note in notes),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)


if __name__ == "__main__":
    main()
