"""The demo's formula pages: a page plan's dataset drawn from bundled sources, from a seed.

Modules:
    expressions: LaTeX expressions by content level, and their structure.
    printed: typesetting with matplotlib's mathtext and bundled math fonts.
    handwriting: scikit-learn's handwritten digits plus stroke-drawn symbols, per writer.
    page: laying expressions out on a page, noise, tight boxes.
    collect: `collect_pages`, the page plan's `data.generator`.
"""

from flywheel.demo.pages.collect import collect_pages

__all__ = ["collect_pages"]
