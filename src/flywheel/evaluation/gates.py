"""The blessing gates: a candidate's report (and its champion's) against `evaluate.gates`.

`check_gates` returns the verdict as a `flywheel.registry.Blessing`, each gate
named so it is looked up by name, never by position. It reads only the generic
report: the task's primary metric (and `macro_f1`/`ece` where the task computes
them), so a second task is gated by the same `evaluate.gates` of params.yaml.
"""

from __future__ import annotations

from flywheel.config import GatesConfig
from flywheel.evaluation.errors import EvaluationError
from flywheel.evaluation.metrics import EvaluationReport
from flywheel.registry import Blessing, GateResult, utc_now

EPSILON = 1e-9
"""Slack in gate comparisons, so that 0.8 computed as 4/5 passes a 0.8 threshold."""


def _gate(name: str, value: float, threshold: float, comparison: str, detail: str) -> GateResult:
    passed = value >= threshold - EPSILON if comparison == ">=" else value <= threshold + EPSILON
    return GateResult(
        name,
        float(value),
        float(threshold),
        ">=" if comparison == ">=" else "<=",
        bool(passed),
        detail,
    )


def check_gates(
    candidate: EvaluationReport,
    champion: EvaluationReport | None,
    gates: GatesConfig,
    *,
    champion_version: str | None = None,
    model_name: str | None = None,
    candidate_version: str | None = None,
    evaluated_at: str | None = None,
    holdout: EvaluationReport | None = None,
    champion_holdout: EvaluationReport | None = None,
) -> Blessing:
    """Apply the gates of `params.yaml` to a candidate (and its champion) and return the verdict.

    The accuracy-type gates judge the task's primary metric (`Task.primary_metric`,
    `accuracy` for classification) in its direction: a floor on a metric that is
    maximised, a ceiling on one that is minimised (an error such as CER), and a
    regression or a gain is always measured towards "better".

    Absolute gates: `min_accuracy`, optional `min_macro_f1`, `max_ece` and
    `min_slice_accuracy[<slice>]`. With a champion (the `production` model
    evaluated on the same images) also `slice_regression[<slice>]` (primary
    metric lost on the slice, at most `max_slice_regression`) and
    `beats_champion` (gained overall, at least `min_improvement`). Slices with
    fewer than `min_slice_support` images are reported but not gated (a note
    says so). `min_macro_f1` and `max_ece` judge the metrics of those names; set
    for a task that does not compute them, they are an error, not a pass.

    With the production holdout (`holdout`, `champion_holdout`: both models on
    the dataset's `holdout` split, labelled production traffic that no model
    trained on) and a champion, `holdout_regression` caps the primary metric
    lost on it (`max_slice_regression`), and `beats_champion` is met by the
    better of the two gains, frozen test or holdout: after drift a retrained
    model must be able to win on the traffic it was retrained for while holding
    the test split. A holdout below `min_slice_support` images is reported, not
    gated.

    Args:
        candidate: the candidate's report.
        champion: the champion's report on the same data, None for a first model.
        gates: thresholds.
        champion_version: the champion's registry version (recorded).
        model_name: the registered model (recorded).
        candidate_version: the candidate's version (recorded).
        evaluated_at: UTC ISO time (default: now).
        holdout: the candidate's report on the holdout split (None: no holdout).
        champion_holdout: the champion's report on the same holdout.

    Raises:
        EvaluationError: a gate is configured on a metric the task does not
            compute; the champion was evaluated on other images, split, classes
            or task.
    """
    primary, ov = candidate.primary_metric, candidate.overall
    floor = ">=" if candidate.primary_direction == "max" else "<="
    results = [
        _gate("min_accuracy", ov[primary], gates.min_accuracy, floor, ov.readings.get(primary, ""))
    ]
    for gate, metric, comparison in (("min_macro_f1", "macro_f1", ">="), ("max_ece", "ece", "<=")):
        threshold = getattr(gates, gate)
        if threshold is None:
            continue
        if metric not in ov.values:
            raise EvaluationError(
                f"gate evaluate.gates.{gate} judges {metric!r}, which task {candidate.task!r} "
                f"does not compute (it computes {list(candidate.metric_names)}); set it to null"
            )
        results.append(_gate(gate, ov[metric], threshold, comparison, ov.readings.get(metric, "")))
    notes: list[str] = []
    gated = {}
    for name, m in candidate.slices.items():
        if m.n >= gates.min_slice_support:
            gated[name] = m
        else:
            notes.append(
                f"slice {name}: {m.n} images < min_slice_support "
                f"{gates.min_slice_support}, not gated"
            )
    if gates.min_slice_accuracy is not None:
        for name, m in gated.items():
            results.append(
                _gate(
                    f"min_slice_accuracy[{name}]",
                    m[primary],
                    gates.min_slice_accuracy,
                    floor,
                    f"{m.n} images",
                )
            )
    metrics = {**ov.values, "images": float(ov.n)}
    holdout_gain: float | None = None
    if holdout is not None:
        metrics[f"holdout_{primary}"] = holdout.primary()
        metrics["holdout_images"] = float(holdout.overall.n)
        if champion_holdout is not None:
            _check_comparable(holdout, champion_holdout)
            metrics[f"champion_holdout_{primary}"] = champion_holdout.primary()
        if holdout.overall.n < gates.min_slice_support:
            notes.append(
                f"holdout: {holdout.overall.n} images < min_slice_support "
                f"{gates.min_slice_support}, not gated"
            )
        elif champion is not None and champion_holdout is not None:
            ours_h, theirs_h = holdout.primary(), champion_holdout.primary()
            holdout_gain = candidate.gain(ours_h, theirs_h)
            if gates.max_slice_regression is not None:
                results.append(
                    _gate(
                        "holdout_regression",
                        -holdout_gain,
                        gates.max_slice_regression,
                        "<=",
                        f"candidate {ours_h:.4f} vs champion {theirs_h:.4f} "
                        f"on {holdout.overall.n} production holdout images",
                    )
                )
    if champion is None:
        notes.append("no production model: absolute gates only")
    else:
        _check_comparable(candidate, champion)
        ours, theirs = ov[primary], champion.primary()
        metrics[f"champion_{primary}"] = theirs
        if gates.max_slice_regression is not None:
            for name, m in gated.items():
                ours_s, theirs_s = m[primary], champion.primary(name)
                results.append(
                    _gate(
                        f"slice_regression[{name}]",
                        -candidate.gain(ours_s, theirs_s),
                        gates.max_slice_regression,
                        "<=",
                        f"candidate {ours_s:.4f} vs champion {theirs_s:.4f} on {m.n} images",
                    )
                )
        test_gain = candidate.gain(ours, theirs)
        detail = (
            f"candidate {ours:.4f} vs champion {theirs:.4f} (version {champion_version or '?'})"
        )
        if holdout_gain is not None:
            detail = f"test: {detail}; holdout: {holdout_gain:+.4f}; the better gain counts"
        results.append(
            _gate(
                "beats_champion",
                max(test_gain, holdout_gain) if holdout_gain is not None else test_gain,
                gates.min_improvement,
                ">=",
                detail,
            )
        )
    return Blessing(
        candidate_uri=candidate.model_uri,
        champion_version=champion_version if champion is not None else None,
        gates=tuple(results),
        split=candidate.split,
        evaluated_at=evaluated_at or utc_now(),
        model_name=model_name,
        candidate_version=candidate_version,
        metrics=metrics,
        dataset=dict(candidate.dataset),
        notes=tuple(notes),
    )


def _check_comparable(candidate: EvaluationReport, champion: EvaluationReport) -> None:
    """A champion comparison is only meaningful on the same images, split, classes and task."""
    ours, theirs = candidate.dataset.get("fingerprint"), champion.dataset.get("fingerprint")
    problems = []
    if ours != theirs:
        problems.append(f"data fingerprint {ours} vs {theirs}")
    if candidate.split != champion.split:
        problems.append(f"split {candidate.split!r} vs {champion.split!r}")
    if candidate.classes != champion.classes:
        problems.append(f"classes {list(candidate.classes)} vs {list(champion.classes)}")
    if (candidate.task, candidate.primary_metric) != (champion.task, champion.primary_metric):
        problems.append(
            f"task {candidate.task!r} ({candidate.primary_metric}) vs "
            f"{champion.task!r} ({champion.primary_metric})"
        )
    if set(candidate.slices) != set(champion.slices):
        problems.append("different slices")
    if problems:
        raise EvaluationError(
            f"candidate {candidate.model_uri} and champion {champion.model_uri} were not "
            f"evaluated on the same data: {'; '.join(problems)}"
        )
