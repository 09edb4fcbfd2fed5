"""LaTeX as tokens: the recogniser's output alphabet and the canonical form of a transcript.

A transcript is read as a sequence of tokens: a command (`\\frac`, `\\sqrt`,
`\\times`), an escaped symbol (`\\{`), or one non-space character (`x`, `2`,
`^`, `{`). The recogniser predicts one token per CTC label, so
`\\frac{1}{2}` is 7 labels, not 11 characters; spaces carry no meaning in
math mode and are dropped. `detokenize` writes tokens back with a space only
where LaTeX needs one (a command followed by a letter), so
`detokenize(tokenize(s))` is the canonical spelling exact match and the
character error rate compare.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S")

LATEX_VOCABULARY: tuple[str, ...] = (
    *"0123456789",
    *"abcdefghijklmnopqrstuvwxyz",
    *"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    *"+-=<>()[]{}^_.,/|!'*:;",
    "\\frac",
    "\\sqrt",
    "\\times",
    "\\div",
    "\\cdot",
    "\\pm",
    "\\leq",
    "\\geq",
    "\\neq",
    "\\approx",
    "\\pi",
    "\\alpha",
    "\\beta",
    "\\theta",
    "\\infty",
    "\\sum",
    "\\int",
    "\\left",
    "\\right",
    "\\{",
    "\\}",
    "\\%",
)
"""The default token vocabulary: digits, Latin letters, operators and brackets, and the
commands of school maths (fractions, roots, ×, ÷, comparisons, a few Greek letters)."""


def tokenize(latex: str) -> list[str]:
    """A LaTeX string → its tokens (commands whole, spaces dropped).

    >>> tokenize(r"\\frac{1}{2} + x^{2}")
    ['\\\\frac', '{', '1', '}', '{', '2', '}', '+', 'x', '^', '{', '2', '}']
    >>> tokenize(r"8 \\times 3")
    ['8', '\\\\times', '3']
    """
    return _TOKEN.findall(latex)


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens → LaTeX, a space only after a command that a letter follows.

    >>> detokenize(["8", "\\\\times", "x"])
    '8\\\\times x'
    >>> detokenize(["\\\\sqrt", "{", "x", "}"])
    '\\\\sqrt{x}'
    """
    out: list[str] = []
    for i, token in enumerate(tokens):
        out.append(token)
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if re.fullmatch(r"\\[A-Za-z]+", token) and following[:1].isalpha():
            out.append(" ")
    return "".join(out)


def canonical(latex: str) -> str:
    """The canonical spelling of a transcript: `detokenize(tokenize(latex))`.

    >>> canonical(r"x ^ { 2 } + 3 x")
    'x^{2}+3x'
    """
    return detokenize(tokenize(latex))
