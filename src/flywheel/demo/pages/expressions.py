"""Expressions by content level, as canonical LaTeX, and their structure for drawing by hand.

Levels follow a workbook's progression: **elementary** is arithmetic on whole
numbers (`12+7=19`, `8\\times3`, `56\\div7=8`), **middle** brings variables,
powers and brackets (`x^{2}+3x`, `(a+b)^{2}`, `2x+5=11`), **high** brings
fractions and roots (`\\frac{1}{2}`, `\\sqrt{x}`, `\\frac{x+1}{3}`). Transcripts
are canonical: no spaces, every superscript braced, so one expression has one
transcript and exact match is a fair metric.

`parse` turns a transcript into the small tree the handwriting renderer lays
out (symbols, superscripts, fractions, roots); it accepts exactly what the
generators write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flywheel.data.pages import tokenize
from flywheel.demo.render import CollectError

LEVELS: tuple[str, ...] = ("elementary", "middle", "high")
"""Content levels the collector can write."""

VARIABLES: tuple[str, ...] = ("x", "y", "a", "b", "n")


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _var(rng: np.random.Generator) -> str:
    return VARIABLES[int(rng.integers(len(VARIABLES)))]


def _coef(rng: np.random.Generator) -> str:
    """A coefficient in front of a variable: empty (1) or 2..9."""
    c = _int(rng, 1, 9)
    return "" if c == 1 else str(c)


def _elementary(rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        a, b = _int(rng, 1, 49), _int(rng, 1, 49)
        return f"{a}+{b}={a + b}"
    if kind == 1:
        a, b = sorted((_int(rng, 1, 60), _int(rng, 1, 60)), reverse=True)
        return f"{a}-{b}={a - b}"
    if kind == 2:
        a, b = _int(rng, 2, 9), _int(rng, 2, 9)
        return f"{a}\\times{b}" if rng.random() < 0.5 else f"{a}\\times{b}={a * b}"
    if kind == 3:
        b, c = _int(rng, 2, 9), _int(rng, 2, 9)
        return f"{b * c}\\div{b}={c}"
    a, b, c = _int(rng, 1, 20), _int(rng, 1, 20), _int(rng, 1, 9)
    return f"{a}+{b}-{c}"


def _middle(rng: np.random.Generator) -> str:
    v, w = _var(rng), _var(rng)
    kind = int(rng.integers(6))
    if kind == 0:
        return f"{v}^{{{_int(rng, 2, 3)}}}+{_coef(rng)}{v}"
    if kind == 1:
        w = w if w != v else ("b" if v == "a" else "a")
        return f"({v}{'+' if rng.random() < 0.5 else '-'}{w})^{{2}}"
    if kind == 2:
        a, x, b = _int(rng, 2, 9), _int(rng, 1, 9), _int(rng, 1, 20)
        return f"{a}{v}+{b}={a * x + b}"
    if kind == 3:
        return f"{_int(rng, 2, 9)}({v}-{_int(rng, 1, 9)})"
    if kind == 4:
        k = _int(rng, 2, 9)
        return f"{v}^{{2}}-{k * k}"
    return f"y={_coef(rng)}x+{_int(rng, 1, 9)}"


def _high(rng: np.random.Generator) -> str:
    v = _var(rng)
    kind = int(rng.integers(6))
    if kind == 0:
        a = _int(rng, 1, 8)
        return f"\\frac{{{a}}}{{{_int(rng, a + 1, 9)}}}"
    if kind == 1:
        return f"\\sqrt{{{v}}}"
    if kind == 2:
        return (
            f"\\frac{{{_int(rng, 1, 9)}}}{{{_int(rng, 2, 9)}}}+"
            f"\\frac{{{_int(rng, 1, 9)}}}{{{_int(rng, 2, 9)}}}"
        )
    if kind == 3:
        return f"\\sqrt{{{v}^{{2}}+{_int(rng, 1, 9)}}}"
    if kind == 4:
        return f"\\frac{{{v}+{_int(rng, 1, 9)}}}{{{_int(rng, 2, 9)}}}"
    r = _int(rng, 2, 12)
    return f"\\sqrt{{{r * r}}}={r}"


GENERATORS: dict[str, Callable[[np.random.Generator], str]] = {
    "elementary": _elementary,
    "middle": _middle,
    "high": _high,
}


def expression(level: str, rng: np.random.Generator) -> str:
    """One canonical LaTeX expression of the content level.

    Raises:
        CollectError: the level is not one the collector writes.
    """
    try:
        return GENERATORS[level](rng)
    except KeyError:
        raise CollectError(
            f"unknown content level {level!r}; the collector writes {LEVELS}"
        ) from None


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Sym:
    """One drawn symbol: a digit, a letter or an operator token."""

    token: str


@dataclass(frozen=True)
class Sup:
    """A superscript: raised and smaller, after the symbol it belongs to."""

    body: tuple[Node, ...]


@dataclass(frozen=True)
class Frac:
    """A fraction: numerator over a bar over denominator."""

    num: tuple[Node, ...]
    den: tuple[Node, ...]


@dataclass(frozen=True)
class Sqrt:
    """A square root: the radical sign and a bar over its body."""

    body: tuple[Node, ...]


Node = Sym | Sup | Frac | Sqrt


def parse(latex: str) -> tuple[Node, ...]:
    """The expression's structure, for drawing it by hand.

    >>> parse(r"\\frac{1}{x^{2}}")
    (Frac(num=(Sym(token='1'),), den=(Sym(token='x'), Sup(body=(Sym(token='2'),)))),)

    Raises:
        CollectError: the transcript is not in the generators' grammar.
    """
    tokens = tokenize(latex)
    nodes, end = _sequence(tokens, 0, latex)
    if end != len(tokens):
        raise CollectError(f"{latex!r}: unexpected {tokens[end]!r} at token {end}")
    return nodes


def _group(tokens: list[str], i: int, latex: str) -> tuple[tuple[Node, ...], int]:
    if i >= len(tokens) or tokens[i] != "{":
        raise CollectError(f"{latex!r}: expected '{{' at token {i}")
    body, i = _sequence(tokens, i + 1, latex)
    if i >= len(tokens) or tokens[i] != "}":
        raise CollectError(f"{latex!r}: unclosed group")
    return body, i + 1


def _sequence(tokens: list[str], i: int, latex: str) -> tuple[tuple[Node, ...], int]:
    out: list[Node] = []
    while i < len(tokens) and tokens[i] != "}":
        token = tokens[i]
        if token == "\\frac":
            num, i = _group(tokens, i + 1, latex)
            den, i = _group(tokens, i, latex)
            out.append(Frac(num, den))
        elif token == "\\sqrt":
            body, i = _group(tokens, i + 1, latex)
            out.append(Sqrt(body))
        elif token == "^":
            body, i = _group(tokens, i + 1, latex)
            out.append(Sup(body))
        elif token == "{":
            raise CollectError(f"{latex!r}: bare group at token {i}")
        else:
            out.append(Sym(token))
            i += 1
    return tuple(out), i
