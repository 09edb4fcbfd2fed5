"""What the CLI prints after a run: report paths a browser opens as pages."""

from __future__ import annotations

from pathlib import Path

from flywheel.cli.summaries import html_path


def test_an_artifact_without_extension_gets_an_html_copy_beside_it(tmp_path: Path) -> None:
    artifact = tmp_path / "evaluate" / "report"  # how the KFP local runner names it
    artifact.parent.mkdir()
    artifact.write_text("<html><body>report</body></html>")

    page = html_path(str(artifact))

    assert page == tmp_path / "evaluate" / "report.html"
    assert page.read_text() == artifact.read_text()
    assert html_path(artifact) == page  # again: the same copy, refreshed


def test_an_html_path_or_a_missing_file_comes_back_as_it_is(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text("<html></html>")

    assert html_path(page) == page
    assert html_path(tmp_path / "gone") == tmp_path / "gone"
    assert not (tmp_path / "gone.html").exists()
