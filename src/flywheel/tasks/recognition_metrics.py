"""Recognition's evaluation metrics: predicted transcripts against the true ones.

`exact_match` is the share of crops transcribed exactly (after both sides are
put in canonical token spelling, `flywheel.tasks.latex_tokens.canonical`);
`cer`, the character error rate, is the edit distance (substitutions,
deletions, insertions) summed over the crops, divided by the characters of
the true transcripts, from jiwer (a maintained library built on RapidFuzz's
Levenshtein code). Summing before dividing makes it a corpus-level rate, so a
slice of long formulas is not outweighed by a few short ones, and the
training metrics (`character_errors` per batch, summed) give the same number
as evaluation on the same crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flywheel.tasks.base import MetricsError, SplitMetrics


def character_errors(truths: Sequence[str], predictions: Sequence[str]) -> tuple[int, int]:
    """The character edits turning each prediction into its truth, summed, and the true characters.

    Crops with an empty truth add nothing (jiwer refuses an empty reference;
    validation keeps them out of the data).

    >>> character_errors(["x^{2}", "12"], ["x^{3}", "123"])
    (2, 7)
    """
    import jiwer

    pairs = [(t, p) for t, p in zip(truths, predictions, strict=True) if t]
    if not pairs:
        return 0, 0
    out = jiwer.process_characters([t for t, _ in pairs], [p for _, p in pairs])
    edits = out.substitutions + out.deletions + out.insertions
    return int(edits), int(out.hits + out.substitutions + out.deletions)


def recognition_metrics(predictions: np.ndarray, targets: np.ndarray) -> SplitMetrics:
    """Exact-match rate and CER of predicted transcripts against true ones (both canonical).

    Args:
        predictions: `(N,)` predicted transcripts.
        targets: `(N,)` true transcripts.

    Raises:
        MetricsError: lengths differ, nothing to score, or an entry that is not a string.
    """
    if len(predictions) != len(targets):
        raise MetricsError(f"{len(predictions)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise MetricsError("nothing to evaluate: no crops")
    for i, (predicted, true) in enumerate(zip(predictions, targets, strict=True)):
        if not isinstance(predicted, str) or not isinstance(true, str):
            raise MetricsError(f"row {i}: expected transcripts, got {predicted!r} and {true!r}")
    truths, guesses = [str(t) for t in targets], [str(p) for p in predictions]
    exact = sum(t == p for t, p in zip(truths, guesses, strict=True))
    edits, characters = character_errors(truths, guesses)
    n = len(targets)
    return SplitMetrics(
        n=n,
        values={
            "cer": edits / characters if characters else float("nan"),
            "exact_match": exact / n,
        },
        readings={
            "cer": f"{edits} edits in {characters} characters",
            "exact_match": f"{exact}/{n} exact",
        },
    )
