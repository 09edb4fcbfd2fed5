"""What the platform's training loop costs over a bare PyTorch loop doing the same work.

Four sides train the same model (params.yaml's `train.model`) on the same
dataset (`data/<name>` of params.yaml, its train and val splits) with the same
batch size, optimizer, cosine schedule, augmentation, seeds and epochs, in one
process with the same `torch.set_num_threads`, interleaved in rotating order
(A B C D, B C D A, ...) after one warm-up round that is not counted:

* **platform**: `flywheel.modeling.training.train` as `flywheel train` runs it — MLflow
  logging to a SQLite store in a temp folder (run, params, lineage tags,
  per-epoch metrics, curves PNG, history), atomic fsynced checkpoints every
  epoch (last, and best when it improves), the tqdm bar, validation every
  epoch, deterministic algorithms, train metrics (confusion matrix), early
  stopping, and the pt2 `log_model` export at the end. The export is timed
  separately and left out of both ratios.
* **platform, deterministic: false**: the same with `train.deterministic` off,
  to show what PyTorch's deterministic mode costs (it also fills every newly
  allocated tensor before use).
* **bare, in memory**: the reference. A hand-written loop over the images
  decoded once into tensors (what one writes for a dataset this small): plain
  forward, loss, backward, step, a running loss and accuracy, validation every
  epoch. Nothing else.
* **bare, decode each epoch**: the same loop reading the task's dataset
  objects, which decode each PNG on every access — the platform's input
  pipeline before `flywheel.modeling.loaders.DecodedOnce`; shows what that cost.

A side's progress bars go to stderr: `2>/dev/null` keeps only the table.

The bare loops replicate the platform's RNG streams (weight init, shuffling,
augmentation, dropout, the val loader's seed draw), so every side ends with
bit-identical weights: the last column proves they did the same arithmetic.

Two ratios per side, against *bare, in memory* (1.000 = no overhead), each
the median of per-round ratios (a round's runs follow one another within
seconds, under the same background load) and, as a cross-check on a busy
shared machine, the ratio of the best (fastest) epoch or run of each side:

* **step ratio**: train-phase time per epoch (first batch to train metrics
  computed; validation excluded), i.e. the inverse of train images per second
  — the steady-state cost of the training step.
* **run ratio**: wall time of a whole run (data set-up, model build, every
  epoch with validation, checkpoints, logging, curves; `log_model` excluded)
  — what a user waits for. Process start-up and imports are outside both
  (same process; the warm-up round pays them).

    .venv/bin/python benchmarks/training_overhead.py                 # 4 epochs, 3 repeats
    .venv/bin/python benchmarks/training_overhead.py --epochs 8 --repeats 5 --threads 2

**On a busy machine** (`--busy N`): the platform side alone, in fresh
processes, idle and beside N CPU-bound busy loops (bounded, killed after each
run), with OpenMP's wait policy as PyTorch leaves it (unset: threads spin
before they sleep) and as the platform's entry points set it (`PASSIVE`,
`flywheel.env.CPU_SHARING`). The ratio busy/idle of the train-phase epoch
time is compared with N + 1, what a fair share of the cores would give:

    .venv/bin/python benchmarks/training_overhead.py --busy 4 --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from flywheel.config import Params, load_params
from flywheel.env import disable_telemetry
from flywheel.modeling.reproducibility import seed_everything
from flywheel.modeling.training import train
from flywheel.tasks import TASKS
from flywheel.tasks.augment import augment_batch
from flywheel.tasks.classification import ClassificationMetrics, ClassificationTask

PLATFORM, PLATFORM_NONDET = "platform", "platform, deterministic: false"
BARE_MEMORY, BARE_DECODE = "bare, in memory", "bare, decode each epoch"
SIDES = (PLATFORM, PLATFORM_NONDET, BARE_MEMORY, BARE_DECODE)
TIMED_TASK = "classification_timed"


@dataclass
class Clock:
    """Phase marks of one run (`time.perf_counter`) per epoch: train start, val start, end."""

    train_start: list[float] = field(default_factory=list)
    val_start: list[float] = field(default_factory=list)
    epoch_end: list[float] = field(default_factory=list)

    def train_seconds(self) -> list[float]:
        return [v - t for t, v in zip(self.train_start, self.val_start, strict=True)]

    def epoch_seconds(self) -> list[float]:
        return [e - t for t, e in zip(self.train_start, self.epoch_end, strict=True)]


@dataclass
class RunTiming:
    """One run of one side."""

    side: str
    clock: Clock
    wall_seconds: float  # whole run, log_model excluded
    train_images: int  # per epoch
    weights: dict[str, Tensor]
    val_accuracy: float
    log_model_seconds: float | None = None


def timed_task(clock: Clock) -> type[ClassificationTask]:
    """The classification task, marking the clock where the platform's epoch phases begin.

    The training loop asks the task for a fresh metric accumulator exactly twice
    an epoch: before the first training batch and before validation. Nothing
    else changes, so the platform runs its real code path.
    """

    class TimedClassificationTask(ClassificationTask):
        name = TIMED_TASK
        _calls = 0

        def new_metrics(self, device: torch.device | str = "cpu") -> ClassificationMetrics:
            marks = clock.train_start if self._calls % 2 == 0 else clock.val_start
            self._calls += 1
            marks.append(time.perf_counter())
            return super().new_metrics(device)

    return TimedClassificationTask


# --------------------------------------------------------------------------- the sides


def run_platform(params: Params, dataset_dir: Path, work: Path, side: str) -> RunTiming:
    """`flywheel.modeling.training.train` with everything on, as `flywheel train` runs it.

    `PLATFORM_NONDET` turns `train.deterministic` off (PyTorch's deterministic
    mode, which also fills every new tensor's memory before use).
    """
    clock = Clock()
    TASKS[TIMED_TASK] = timed_task(clock)
    update = {"task": TIMED_TASK, "deterministic": side != PLATFORM_NONDET}
    timed = params.model_copy(update={"train": params.train.model_copy(update=update)})
    out = Path(tempfile.mkdtemp(prefix="platform-", dir=work))
    started = time.perf_counter()
    result = train(
        timed,
        dataset_dir,
        out_dir=out,
        on_epoch_end=lambda epoch, row: clock.epoch_end.append(time.perf_counter()),
        log_model=True,
        progress=True,
    )
    wall = time.perf_counter() - started
    log_seconds = result.log_model_seconds or 0.0
    return RunTiming(
        side=side,
        clock=clock,
        wall_seconds=wall - log_seconds,
        train_images=len(
            ClassificationTask.from_params(params).build_dataset(dataset_dir, "train")
        ),
        weights={k: v.detach().clone() for k, v in result.model.state_dict().items()},
        val_accuracy=result.history[-1]["val_accuracy"],
        log_model_seconds=log_seconds,
    )


def decode_split(task: ClassificationTask, dataset_dir: Path, split: str) -> TensorDataset:
    """A split decoded once into memory: images `(N, 1, H, W)`, labels `(N,)`."""
    images = task.build_dataset(dataset_dir, split)
    pixels = torch.stack([images[i][0] for i in range(len(images))])  # (N, 1, H, W)
    return TensorDataset(pixels, images.targets)


def run_bare(params: Params, dataset_dir: Path, side: str) -> RunTiming:
    """A plain loop: forward, loss, backward, step; running loss/accuracy; validate each epoch.

    Seeds and the order of RNG draws follow `flywheel.modeling.training` (model init after
    seeding, dropout seed, a shuffle and an augmentation generator, the val
    loader's base-seed draw), so the final weights equal the platform's.
    """
    cfg = params.train
    clock = Clock()
    started = time.perf_counter()
    task = ClassificationTask.from_params(params)
    train_set: Dataset[Any]
    val_set: Dataset[Any]
    if side == BARE_MEMORY:
        train_set = decode_split(task, dataset_dir, "train")
        val_set = decode_split(task, dataset_dir, "val")
    else:
        train_set = task.build_dataset(dataset_dir, "train")
        val_set = task.build_dataset(dataset_dir, "val")
    seed_everything(cfg.seed)
    model = task.build_model(cfg.model)
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    augment = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=shuffle)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    val_accuracy = float("nan")
    for _ in range(cfg.epochs):
        clock.train_start.append(time.perf_counter())
        model.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.int64), 0
        for inputs, targets in train_loader:  # (B, 1, H, W), (B,)
            inputs = augment_batch(inputs, cfg.augment, augment)
            logits, _ = model(inputs)  # (B, K)
            loss = F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(targets)
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            seen += len(targets)
        train_loss, train_accuracy = float(loss_sum) / seen, int(correct) / seen  # noqa: F841
        clock.val_start.append(time.perf_counter())
        val_accuracy = evaluate_bare(model, val_loader)
        scheduler.step()
        clock.epoch_end.append(time.perf_counter())
    return RunTiming(
        side=side,
        clock=clock,
        wall_seconds=time.perf_counter() - started,
        train_images=len(train_set),  # type: ignore[arg-type]
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        val_accuracy=val_accuracy,
    )


@torch.no_grad()
def evaluate_bare(model: nn.Module, loader: DataLoader[Any]) -> float:
    """Validation accuracy."""
    model.eval()
    correct, seen = 0, 0
    for inputs, targets in loader:
        logits, _ = model(inputs)  # (B, K)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(targets)
    return correct / seen


# --------------------------------------------------------------------------- the harness


@contextmanager
def tracking_store(work: Path) -> Iterator[str]:
    """Point MLflow at a fresh SQLite store in `work` for the duration."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def run_side(side: str, params: Params, dataset_dir: Path, work: Path) -> RunTiming:
    if side in (PLATFORM, PLATFORM_NONDET):
        return run_platform(params, dataset_dir, work, side)
    return run_bare(params, dataset_dir, side)


def benchmark(
    params: Params, dataset_dir: Path, repeats: int, work: Path, console: Console
) -> dict[str, list[RunTiming]]:
    """Warm-up round (1 epoch each, not counted), then `repeats` rounds in rotating order."""
    warm = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1})})
    for side in SIDES:
        run_side(side, warm, dataset_dir, work)
    runs: dict[str, list[RunTiming]] = {side: [] for side in SIDES}
    for r in range(repeats):
        order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
        for side in order:
            timing = run_side(side, params, dataset_dir, work)
            runs[side].append(timing)
            console.log(
                f"round {r + 1}/{repeats} {side}: {timing.wall_seconds:.2f} s, "
                f"train phase {sum(timing.clock.train_seconds()):.2f} s, "
                f"load average {os.getloadavg()[0]:.2f}"
            )
    return runs


def train_images_per_second(runs: list[RunTiming]) -> float:
    """Median over every epoch of every repeat of train images / train-phase seconds."""
    return statistics.median(
        run.train_images / s for run in runs for s in run.clock.train_seconds()
    )


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def report(
    runs: dict[str, list[RunTiming]],
    params: Params,
    repeats: int,
    load: tuple[float, float],
) -> Table:
    """One row per side: throughput, per-epoch split, whole run, ratios, weight identity.

    Ratios are paired: each round's runs follow one another within seconds, so
    each round gives one ratio under the same background load, and the table
    shows the median over rounds. The "best" ratios compare the fastest epoch
    (run) of each side: noise from other jobs only ever adds time, so minima are
    the robust estimate when the machine is shared and busy.
    """
    baseline = runs[BARE_MEMORY]
    reference = runs[PLATFORM][0].weights
    cfg = params.train
    table = Table(
        title=(
            f"training overhead: {cfg.model.name} (width {cfg.model.width}), batch "
            f"{cfg.batch_size}, {baseline[0].train_images} train images, {cfg.epochs} epochs × "
            f"{repeats} repeats, {torch.get_num_threads()} torch threads"
        ),
        caption=(
            f"load average {load[0]:.2f} before, {load[1]:.2f} after (2 cores shared). "
            "Ratios against 'bare, in memory' (1.000 = no overhead): step = train-phase "
            "images/s, run = whole-run wall time without log_model; median of per-round "
            "ratios, and best epoch/run. Medians over epochs × repeats: train img/s, "
            "s/epoch split into train phase | validation + bookkeeping (checkpoints, MLflow)."
        ),
    )
    for column in (
        "side",
        "train img/s",
        "step ratio",
        "step ratio (best)",
        "train s/epoch",
        "val+rest s/epoch",
        "run s",
        "run ratio",
        "run ratio (best)",
        "log_model s",
        "same weights",
    ):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in SIDES:
        side_runs = runs[side]
        # Same images per epoch on every side: the time ratio is the inverse img/s ratio.
        step_ratios = [
            statistics.median(r.clock.train_seconds()) / statistics.median(b.clock.train_seconds())
            for r, b in zip(side_runs, baseline, strict=True)
        ]
        run_ratios = [
            r.wall_seconds / b.wall_seconds for r, b in zip(side_runs, baseline, strict=True)
        ]
        best_step = min(s for r in side_runs for s in r.clock.train_seconds()) / min(
            s for b in baseline for s in b.clock.train_seconds()
        )
        best_run = min(r.wall_seconds for r in side_runs) / min(b.wall_seconds for b in baseline)
        train_s = statistics.median(s for r in side_runs for s in r.clock.train_seconds())
        epoch_s = statistics.median(s for r in side_runs for s in r.clock.epoch_seconds())
        log_seconds = [r.log_model_seconds for r in side_runs if r.log_model_seconds is not None]
        identical = all(same_weights(r.weights, reference) for r in side_runs)
        table.add_row(
            side,
            f"{train_images_per_second(side_runs):,.0f}",
            f"{statistics.median(step_ratios):.3f}",
            f"{best_step:.3f}",
            f"{train_s:.3f}",
            f"{epoch_s - train_s:.3f}",
            f"{statistics.median(r.wall_seconds for r in side_runs):.2f}",
            f"{statistics.median(run_ratios):.3f}",
            f"{best_run:.3f}",
            f"{statistics.median(log_seconds):.2f}" if log_seconds else "-",
            "yes" if identical else "[red]NO[/red]",
        )
    return table


# ------------------------------------------------------------------ on a busy machine

WAIT_POLICIES = {"unset (PyTorch's default)": None, "PASSIVE (the platform's)": "PASSIVE"}
BUSY_LOOP = "while True: pass"


def probe(params: Params, dataset_dir: Path, work: Path) -> list[float]:
    """One platform run after a 1-epoch warm-up: its train-phase seconds per epoch."""
    warm = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1})})
    run_platform(warm, dataset_dir, work, PLATFORM)
    return run_platform(params, dataset_dir, work, PLATFORM).clock.train_seconds()


def probe_in_child(args: argparse.Namespace, policy: str | None, busy: int) -> float:
    """Median train-phase s/epoch of `probe` in a fresh process with `policy`, beside `busy` loops.

    A fresh process because OpenMP reads its wait policy once, when torch loads.
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--probe", "--params", str(args.params)]
    command += ["--epochs", str(args.epochs), "--threads", str(args.threads)]
    if args.dataset is not None:
        command += ["--dataset", str(args.dataset)]
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    return statistics.median(json.loads(out.stdout.splitlines()[-1]))


def busy_report(args: argparse.Namespace, console: Console) -> Table:
    """Idle and busy epoch times per wait policy, rounds interleaved; ratios against N + 1."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for r in range(args.repeats):
        for name, policy in WAIT_POLICIES.items():
            for busy in (0, args.busy):
                value = probe_in_child(args, policy, busy)
                seconds.setdefault((name, busy), []).append(value)
                console.log(
                    f"round {r + 1}/{args.repeats} {name}, {busy} busy: {value:.2f} s/epoch"
                )
    table = Table(
        title=(
            f"training beside {args.busy} busy loops on {os.cpu_count()} cores: train-phase "
            f"s/epoch, {args.threads} torch threads, median of {args.repeats} runs"
        ),
        caption=f"fair share: busy/idle at most N + 1 = {args.busy + 1}",
    )
    for column in ("OpenMP wait policy", "idle s/epoch", "busy s/epoch", "busy/idle", "vs N+1"):
        table.add_column(column, justify="left" if column.startswith("OpenMP") else "right")
    for name in WAIT_POLICIES:
        idle = statistics.median(seconds[(name, 0)])
        busy = statistics.median(seconds[(name, args.busy)])
        table.add_row(
            name,
            f"{idle:.2f}",
            f"{busy:.2f}",
            f"{busy / idle:.1f}",
            f"{busy / idle / (args.busy + 1):.2f}×",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dataset", type=Path, default=None, help="default: data/<name>")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--busy", type=int, default=0, help="the busy-machine case beside N busy loops (1-16)"
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # a --busy child
    args = parser.parse_args(argv)
    if args.busy:
        if not 1 <= args.busy <= 16:
            parser.error("--busy takes 1 to 16 busy loops")
        console = Console(width=max(Console().width, 120))
        console.print(busy_report(args, console))
        return

    disable_telemetry()
    torch.set_num_threads(args.threads)  # one process: identical for every side
    params = load_params(args.params)
    params = params.model_copy(
        update={"train": params.train.model_copy(update={"epochs": args.epochs, "device": "cpu"})}
    )
    dataset_dir = args.dataset or params.data.dataset_dir
    console = Console(width=max(Console().width, 150))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="flywheel-overhead-") as tmp, tracking_store(Path(tmp)):
        if args.probe:
            print(json.dumps(probe(params, dataset_dir, Path(tmp))))
            return
        runs = benchmark(params, dataset_dir, args.repeats, Path(tmp), console)
    console.print(report(runs, params, args.repeats, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
