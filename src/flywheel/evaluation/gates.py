"""The blessing gates: a candidate's report (and its champion's) against `evaluate.gates`.

`check_gates` returns the verdict as a `flywheel.registry.Blessing`, each gate
named so it is looked up by name, never by position.
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

    Absolute gates: `min_accuracy`, optional `min_macro_f1`, `max_ece` and
    `min_slice_accuracy[<slice>]`. With a champion (the `production` model
    evaluated on the same images) also `slice_regression[<slice>]` (accuracy
    lost on the slice, at most `max_slice_regression`) and `beats_champion`
    (accuracy gained overall, at least `min_improvement`). Slices with fewer
    than `min_slice_support` images are reported but not gated (a note says so).

    With the production holdout (`holdout`, `champion_holdout`: both models on
    the dataset's `holdout` split, labelled production traffic that no model
    trained on) and a champion, `holdout_regression` caps the accuracy lost on
    it (`max_slice_regression`), and `beats_champion` is met by the better of
    the two gains, frozen test or holdout: after drift a retrained model must
    be able to win on the traffic it was retrained for while holding the test
    split. A holdout below `min_slice_support` images is reported, not gated.

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
        EvaluationError: the champion was evaluated on other images, split or classes.
    """
    ov = candidate.overall
    results = [
        _gate(
            "min_accuracy",
            ov.accuracy,
            gates.min_accuracy,
            ">=",
            f"{round(ov.accuracy * ov.n)}/{ov.n} correct",
        ),
    ]
    if gates.min_macro_f1 is not None:
        results.append(_gate("min_macro_f1", ov.macro_f1, gates.min_macro_f1, ">=", ""))
    if gates.max_ece is not None:
        results.append(
            _gate("max_ece", ov.ece, gates.max_ece, "<=", f"{candidate.calibration_bins} bins")
        )
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
                    m.accuracy,
                    gates.min_slice_accuracy,
                    ">=",
                    f"{m.n} images",
                )
            )
    metrics = {
        "accuracy": ov.accuracy,
        "macro_f1": ov.macro_f1,
        "ece": ov.ece,
        "images": float(ov.n),
    }
    holdout_gain: float | None = None
    if holdout is not None:
        metrics["holdout_accuracy"] = holdout.overall.accuracy
        metrics["holdout_images"] = float(holdout.overall.n)
        if champion_holdout is not None:
            _check_comparable(holdout, champion_holdout)
            metrics["champion_holdout_accuracy"] = champion_holdout.overall.accuracy
        if holdout.overall.n < gates.min_slice_support:
            notes.append(
                f"holdout: {holdout.overall.n} images < min_slice_support "
                f"{gates.min_slice_support}, not gated"
            )
        elif champion is not None and champion_holdout is not None:
            ours_h, theirs_h = holdout.overall.accuracy, champion_holdout.overall.accuracy
            holdout_gain = ours_h - theirs_h
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
        cov = champion.overall
        metrics["champion_accuracy"] = cov.accuracy
        if gates.max_slice_regression is not None:
            for name, m in gated.items():
                theirs = champion.slices[name]
                results.append(
                    _gate(
                        f"slice_regression[{name}]",
                        theirs.accuracy - m.accuracy,
                        gates.max_slice_regression,
                        "<=",
                        f"candidate {m.accuracy:.4f} vs champion {theirs.accuracy:.4f} "
                        f"on {m.n} images",
                    )
                )
        test_gain = ov.accuracy - cov.accuracy
        detail = (
            f"candidate {ov.accuracy:.4f} vs champion {cov.accuracy:.4f} "
            f"(version {champion_version or '?'})"
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
    """A champion comparison is only meaningful on the same images, split and classes."""
    ours, theirs = candidate.dataset.get("fingerprint"), champion.dataset.get("fingerprint")
    problems = []
    if ours != theirs:
        problems.append(f"data fingerprint {ours} vs {theirs}")
    if candidate.split != champion.split:
        problems.append(f"split {candidate.split!r} vs {champion.split!r}")
    if candidate.classes != champion.classes:
        problems.append(f"classes {list(candidate.classes)} vs {list(champion.classes)}")
    if set(candidate.slices) != set(champion.slices):
        problems.append("different slices")
    if problems:
        raise EvaluationError(
            f"candidate {candidate.model_uri} and champion {champion.model_uri} were not "
            f"evaluated on the same data: {'; '.join(problems)}"
        )
