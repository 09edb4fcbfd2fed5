"""How much of the accuracy lost to drift each curation strategy wins back, for one label budget.

The set-up, on the demo's own data generator and model:

1. **Base data**: a small version of the plan (`params.yaml: data`, scaled by
   `--per-stratum`), collected from its seed; a model (`train.model`, small
   CNN) is trained on it with the platform's augmentation. Its accuracy on an
   in-distribution test set is what drift takes away.
2. **Drift**: a scenario of `params.yaml: scenarios` (default
   `handwritten_shadow_rotated`: handwritten glyphs under strong shadow and
   rotation). Per seed, a fresh unlabelled *pool* of `--pool` drifted images
   (the production log), and one fixed drifted *test* set of `--test` images.
3. **Curation**: each strategy picks `--budget` images from the pool with
   the library's own functions (`flywheel.curation`): least confidence,
   margin, entropy (each diversified over the base model's embedding with
   k-means, as `flywheel curate` does), margin without diversity (top-K),
   query-by-committee (the base model and two more seeds of it, KL to the
   consensus), and random sampling — the baseline.
4. **Retraining**: the base model is fine-tuned on base data + the picked
   images with their true labels (same epochs, learning rate and seed for
   every strategy), then measured on the drifted test set. "All pool" (every
   pool image labelled) is the ceiling.

Reported per strategy, mean ± std over `--seeds` seeds: accuracy on the
drifted test set, and the recovered share of the lost accuracy,
`(after - base on drift) / (base in-distribution - base on drift)`; and what
the labels bought: accuracy points recovered per 100 labels and per unit of
labelling cost (`params.yaml: curate.cost`, an image's annotations at the unit
prices: for classification one class choice; `--spend` sets the budget in money
instead of labels, as a curation cycle's `curate.cost.per_cycle` does).
A table (stdout, CSV, Markdown) and a PNG plot go to `--out`.

    .venv/bin/python benchmarks/active_learning.py                  # ~3 min on 2 CPU cores (167 s)
    .venv/bin/python benchmarks/active_learning.py --seeds 5 --budget 50
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from tqdm import tqdm

from flywheel.config import Params, load_params
from flywheel.curation import (
    score_committee,
    score_uncertainty,
    select_diverse,
    select_random,
    select_top,
)
from flywheel.demo.collect import collect_batch, collect_dataset
from flywheel.tasks.augment import augment_batch
from flywheel.tasks.classification import ClassificationTask

STRATEGIES: tuple[str, ...] = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "margin (top-K, no diversity)",
    "committee",
)
CEILING = "all pool (ceiling)"


@dataclass
class Split:
    """Images `(N, 1, S, S)` in [0, 1] and class indices `(N,)`."""

    x: Tensor
    y: Tensor


def load_images(folder: Path, manifest: pd.DataFrame, classes: tuple[str, ...]) -> Split:
    """Decode a manifest's PNGs once into tensors."""
    index = {c: i for i, c in enumerate(classes)}
    pixels = np.stack(
        [np.asarray(Image.open(folder / p), dtype=np.uint8) for p in manifest["path"]]
    )
    x = torch.from_numpy(pixels).float().div_(255.0).unsqueeze(1)  # (N, 1, S, S)
    y = torch.tensor([index[label] for label in manifest["label"]], dtype=torch.int64)  # (N,)
    return Split(x, y)


def train(
    model: nn.Module, data: Split, params: Params, *, epochs: int, lr: float, seed: int
) -> nn.Module:
    """Train in place with the platform's optimizer family and augmentation; returns the model."""
    cfg = params.train
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = epochs * -(-len(data.y) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.y), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            x = augment_batch(data.x[batch], cfg.augment, generator)  # (B, 1, S, S)
            logits, _ = model(x)  # (B, K), (B, D)
            loss = F.cross_entropy(logits, data.y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities `(N, K)` and embeddings `(N, D)`."""
    model.eval()
    probs, embeddings = [], []
    for start in range(0, len(x), 512):
        logits, embedding = model(x[start : start + 512])  # (B, K), (B, D)
        probs.append(torch.softmax(logits, dim=1).numpy())
        embeddings.append(embedding.numpy())
    return np.concatenate(probs).astype(np.float64), np.concatenate(embeddings).astype(np.float64)


def accuracy(model: nn.Module, data: Split) -> float:
    probs, _ = predict(model, data.x)
    return float((probs.argmax(axis=1) == data.y.numpy()).mean())


def choose(
    strategy: str,
    probs: np.ndarray,
    embeddings: np.ndarray,
    committee: np.ndarray,
    budget: int,
    seed: int,
) -> np.ndarray:
    """The pool rows a strategy picks, with the library's scoring and selection."""
    space = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    if strategy == "random":
        return select_random(len(probs), budget, seed)
    if strategy == "margin (top-K, no diversity)":
        return select_top(score_uncertainty(probs, "margin"), budget)
    if strategy == "committee":
        scores = score_committee(committee, "kl")
    else:
        scores = score_uncertainty(probs, strategy)
    return select_diverse(scores, space, budget, prefilter=10, seed=seed)


def run(args: argparse.Namespace, console: Console) -> pd.DataFrame:
    from flywheel.curation.cost import affordable, image_cost

    params = load_params(args.params)
    unit_cost = image_cost(params)
    if args.spend is not None:
        args.budget = affordable(args.pool, unit_cost, args.spend)
        console.print(
            f"labelling budget {args.spend:g} {params.curate.cost.currency} at {unit_cost:g} an "
            f"image: {args.budget} labels"
        )
    torch.set_num_threads(args.threads)
    plan = params.data.model_copy(
        update={"per_stratum": {"train": args.per_stratum, "val": 0, "test": args.per_stratum // 2}}
    )
    scenario = params.scenario(args.scenario)
    classes = plan.classes
    task = ClassificationTask(classes, plan.image_size)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="al-bench-") as tmp:
        work = Path(tmp)
        manifest = collect_dataset(plan, root=work, progress=False)
        dataset = work / plan.name
        base = load_images(dataset, manifest[manifest["split"] == "train"], classes)
        in_dist = load_images(dataset, manifest[manifest["split"] == "test"], classes)
        drift_manifest = collect_batch(plan, scenario, args.test, 10_000, work / "drift-test")
        drift_test = load_images(work / "drift-test", drift_manifest, classes)

        started = time.perf_counter()
        members = [
            train(
                task.build_model(params.train.model),
                base,
                params,
                epochs=args.base_epochs,
                lr=params.train.lr,
                seed=seed,
            )
            for seed in tqdm(range(3), desc="base model + 2 committee members", leave=False)
        ]
        model = members[0]
        base_in, base_drift = accuracy(model, in_dist), accuracy(model, drift_test)
        console.print(
            f"base model ({len(base.y)} images, {args.base_epochs} epochs, "
            f"{time.perf_counter() - started:.0f} s for 3 models): in-distribution "
            f"{base_in:.3f}, drifted ({args.scenario}) {base_drift:.3f}"
        )
        lost = base_in - base_drift

        runs = [(seed, s) for seed in range(args.seeds) for s in (*STRATEGIES, CEILING)]
        bar = tqdm(runs, desc="retrain per seed and strategy", unit="run")
        pools: dict[int, tuple[Split, np.ndarray, np.ndarray, np.ndarray]] = {}
        for seed, strategy in bar:
            if seed not in pools:
                pool_manifest = collect_batch(
                    plan, scenario, args.pool, 100 + seed, work / f"pool-{seed}"
                )
                pool = load_images(work / f"pool-{seed}", pool_manifest, classes)
                probs, embeddings = predict(model, pool.x)
                committee = np.stack([predict(m, pool.x)[0] for m in members])  # (3, N, K)
                pools[seed] = (pool, probs, embeddings, committee)
            pool, probs, embeddings, committee = pools[seed]
            bar.set_postfix_str(f"seed {seed} {strategy}")
            picked = (
                np.arange(len(pool.y))
                if strategy == CEILING
                else choose(strategy, probs, embeddings, committee, args.budget, seed)
            )
            index = torch.from_numpy(np.asarray(picked, dtype=np.int64))
            data = Split(torch.cat([base.x, pool.x[index]]), torch.cat([base.y, pool.y[index]]))
            tuned = train(
                copy.deepcopy(model),
                data,
                params,
                epochs=args.retrain_epochs,
                lr=params.train.lr / 3,
                seed=1_000 + seed,
            )
            after = accuracy(tuned, drift_test)
            rows.append(
                {
                    "seed": seed,
                    "strategy": strategy,
                    "labels": len(picked),
                    "drift_accuracy": after,
                    "in_distribution_accuracy": accuracy(tuned, in_dist),
                    "recovered": (after - base_drift) / lost if lost > 0 else float("nan"),
                    "gain_per_100_labels": 100 * (after - base_drift) / len(picked),
                    "spend": len(picked) * unit_cost,
                    "gain_per_cost": (after - base_drift) / (len(picked) * unit_cost)
                    if unit_cost > 0
                    else float("nan"),
                    "picked_accuracy_before": float(
                        (probs[picked].argmax(axis=1) == pool.y.numpy()[picked]).mean()
                    ),
                }
            )
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        base_in=base_in,
        base_drift=base_drift,
        unit_cost=unit_cost,
        currency=params.curate.cost.currency,
    )
    return frame


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std per strategy, in the order of the runs."""
    order = list(dict.fromkeys(frame["strategy"]))
    stats = frame.groupby("strategy").agg(
        labels=("labels", "first"),
        drift_mean=("drift_accuracy", "mean"),
        drift_std=("drift_accuracy", "std"),
        recovered_mean=("recovered", "mean"),
        recovered_std=("recovered", "std"),
        in_dist_mean=("in_distribution_accuracy", "mean"),
        spend=("spend", "first"),
        gain_per_100_labels=("gain_per_100_labels", "mean"),
        gain_per_cost=("gain_per_cost", "mean"),
        base_wrong_share=("picked_accuracy_before", lambda s: 1 - s.mean()),
    )
    return stats.loc[order]


def plot(stats: pd.DataFrame, base_in: float, base_drift: float, path: Path, title: str) -> Path:
    """Bars of drifted accuracy per strategy (± std), with the base model's two levels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    names = list(stats.index)
    colors = ["#999999" if n in ("random", CEILING) else "#3b75af" for n in names]
    bars = ax.bar(
        range(len(names)), stats["drift_mean"], yerr=stats["drift_std"], color=colors, capsize=4
    )
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.axhline(
        base_in, color="green", linestyle="--", label=f"base, in-distribution ({base_in:.3f})"
    )
    ax.axhline(base_drift, color="red", linestyle="--", label=f"base, drifted ({base_drift:.3f})")
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    low = min(base_drift, float((stats["drift_mean"] - stats["drift_std"].fillna(0)).min()))
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(base_in, stats["drift_mean"].max()) + 0.05))
    ax.set_ylabel("accuracy on the drifted test set")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--scenario", default="handwritten_shadow_rotated")
    parser.add_argument("--budget", type=int, default=100, help="labels per strategy")
    parser.add_argument(
        "--spend",
        type=float,
        default=None,
        help="labelling budget in money instead (curate.cost): the labels it buys",
    )
    parser.add_argument("--pool", type=int, default=800, help="unlabelled drifted images per seed")
    parser.add_argument("--test", type=int, default=600, help="drifted test images")
    parser.add_argument(
        "--per-stratum", type=int, default=50, help="base training images per stratum"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--base-epochs", type=int, default=10)
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(".flywheel/benchmarks/active_learning"))
    args = parser.parse_args()

    console = Console()
    started = time.perf_counter()
    frame = run(args, console)
    stats = summarise(frame)
    base_in, base_drift = frame.attrs["base_in"], frame.attrs["base_drift"]
    currency = frame.attrs["currency"]

    table = Table(
        title=f"active learning on {args.scenario}: budget {args.budget} of {args.pool} drifted "
        f"images, {args.seeds} seeds (mean ± std)"
    )
    for column in (
        "strategy",
        "labels",
        "drifted accuracy",
        "recovered share of lost",
        "in-distribution",
        "picked: base wrong",
        f"spend ({currency})",
        "points / 100 labels",
        f"points / {currency}",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    lines = [
        "| strategy | labels | drifted accuracy | recovered share | in-distribution "
        f"| picked: base wrong | spend ({currency}) | points / 100 labels | points / {currency} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in stats.iterrows():
        cells = [
            str(int(row["labels"])),
            f"{row['drift_mean']:.3f} ± {row['drift_std']:.3f}",
            f"{row['recovered_mean']:.2f} ± {row['recovered_std']:.2f}",
            f"{row['in_dist_mean']:.3f}",
            f"{row['base_wrong_share']:.2f}",
            f"{row['spend']:.2f}",
            f"{100 * row['gain_per_100_labels']:.2f}",
            f"{100 * row['gain_per_cost']:.2f}",
        ]
        table.add_row(str(name), *cells)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    console.print(table)
    console.print(
        f"base model: in-distribution {base_in:.3f}, drifted {base_drift:.3f} "
        f"(lost {base_in - base_drift:.3f}); a label costs {frame.attrs['unit_cost']:g} "
        f"{currency}; points = accuracy percentage points recovered on the drifted test set; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "runs.csv", index=False)
    (args.out / "table.md").write_text(
        "\n".join(
            [
                *lines,
                "",
                f"Base model: in-distribution {base_in:.3f}, drifted {base_drift:.3f}.",
            ]
        )
        + "\n"
    )
    png = plot(
        stats,
        base_in,
        base_drift,
        args.out / "active_learning.png",
        f"{args.scenario}: {args.budget} labels from {args.pool} drifted images, "
        f"{args.seeds} seeds",
    )
    console.print(f"table: {args.out / 'table.md'}; plot: {png}; runs: {args.out / 'runs.csv'}")


if __name__ == "__main__":
    main()
