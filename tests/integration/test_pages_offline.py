"""The HTML pages flywheel writes, rendered offline in headless Chromium: nothing from the network.

Each page is loaded in a real Chromium over the DevTools protocol
(`tests.support.browser`) with every host but the loopback unresolvable, as on
an air-gapped cluster, and fails the test when it requests anything beyond
127.0.0.1/localhost/file:, is blank, or is unstyled (its body keeps the
browser's default font). Data Docs must also list their validations in the
index (a table bootstrap-table builds in the browser) and tell a failed
expectation from a passed one (font-awesome icons, a font of their own).
Screenshots go to `$FLYWHEEL_SCREENSHOTS` or a pytest temp folder, printed.
The servers' pages (Swagger, the MLflow and Evidently UIs) are in
`test_pages_offline_servers.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import GatesConfig, Params, ValidationConfig
from flywheel.data.manifest import load_manifest, save_manifest
from flywheel.validation import ValidationReport, validate_dataset
from flywheel.validation.offline_docs import standalone_page
from tests.support import browser as browser_support
from tests.support.browser import Browser, assert_offline_and_drawn, save_screenshot
from tests.support.plans import collect_plan, tiny_plan

pytestmark = pytest.mark.slow

PLAN = tiny_plan(3, 3, 3, classes=("0", "1", "2"))
PARAMS = Params(data=PLAN, validation=ValidationConfig(failed_rows_shown=5))

browser, default_font, shots = (
    browser_support.browser,
    browser_support.default_font,
    browser_support.shots,
)


# --------------------------------------------------------------------- Data Docs


@pytest.fixture(scope="module")
def data_docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ValidationReport, ...]:
    """A passing validation, then a failing one (an unknown label), in one GX context.

    The failing one's first failure names the image with the bad label.
    """
    root = tmp_path_factory.mktemp("docs")
    dataset = collect_plan(PLAN, root / "data")

    def validate() -> ValidationReport:
        return validate_dataset(
            dataset, PARAMS, context_dir=root / "gx", progress=False, check_files=False
        )

    passed = validate()
    manifest = load_manifest(dataset)
    manifest.loc[manifest.index[0], "label"] = "9"
    save_manifest(manifest, dataset)
    failed = validate()
    assert passed.success
    assert not failed.success
    return passed, failed


def _site_index(report: ValidationReport) -> Path:
    assert report.data_docs is not None
    return next(p / "index.html" for p in report.data_docs.parents if (p / "index.html").is_file())


def test_the_data_docs_index_lists_both_validations_offline(
    browser: Browser,
    default_font: str,
    data_docs: tuple[ValidationReport, ...],
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = browser.open(_site_index(data_docs[-1]).as_uri())

    assert_offline_and_drawn(page, default_font)
    rows = page.evaluate(
        "[...document.querySelectorAll('#Validation-Results table tbody tr')]"
        ".map(r => [r.querySelector('.fas').className, r.innerText])"
    )
    assert len(rows) == 2, rows  # built by bootstrap-table, in the browser
    assert {icon.split()[1] for icon, _ in rows} == {"fa-check-circle", "fa-times"}
    assert all("tiny_contract" in text for _, text in rows)
    collapse = page.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse")
    assert collapse == "collapse"  # bootstrap's .table
    save_screenshot(page, shots, "data-docs-index", capsys)
    page.close()


ICON = """(selector => {
  const icon = document.querySelector(selector);
  const glyph = getComputedStyle(icon, '::before');
  const box = icon.getBoundingClientRect();
  return {content: glyph.content, font: glyph.fontFamily, color: getComputedStyle(icon).color,
          width: box.width, height: box.height};
})"""


@pytest.mark.parametrize("variant", ["light", "dark", "standalone"])
def test_a_failing_validation_page_tells_failure_from_success_offline(
    variant: str,
    browser: Browser,
    default_font: str,
    data_docs: tuple[ValidationReport, ...],
    tmp_path: Path,
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In the site, light and dark; and alone, as the pipeline's artifact (`standalone_page`)."""
    failed = data_docs[-1]
    assert failed.data_docs is not None
    url = failed.data_docs.as_uri()
    if variant == "standalone":  # away from the site, as the KFP UI shows it
        alone = tmp_path / "data_docs.html"
        alone.write_text(standalone_page(failed.data_docs), encoding="utf-8")
        url = alone.as_uri()

    page = browser.open(url, dark=variant == "dark")

    assert_offline_and_drawn(page, default_font)
    passed = page.evaluate(f"{ICON}('td .fa-check-circle')")
    failure = page.evaluate(f"{ICON}('td .fa-times')")
    loaded = page.evaluate(
        "[...document.fonts].filter(f => f.status === 'loaded').map(f => f.family + ' ' + f.weight)"
    )
    assert any("Font Awesome 6 Free" in face and "900" in face for face in loaded), loaded
    for icon in (passed, failure):
        assert "Font Awesome" in icon["font"]
        assert icon["width"] > 5
        assert icon["height"] > 5
    assert passed["content"] != failure["content"]  # a tick and a cross
    assert passed["color"] != failure["color"]  # green and red
    offender = str(failed.failures[0].offenders[0].key)  # the image with the bad label
    assert offender in page.evaluate("document.body.innerText")
    page.evaluate("document.querySelector('td .fa-times').scrollIntoView({block: 'center'})")
    save_screenshot(page, shots, f"data-docs-failure-{variant}", capsys)
    page.close()


# -------------------------------------------------------- evaluation and drift


def test_the_evaluation_report_renders_offline(
    browser: Browser,
    default_font: str,
    tmp_path: Path,
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flywheel.evaluation import EvaluationOutcome, check_gates
    from flywheel.evaluation.report import render_evaluation_html
    from tests.support.evaluation import classification_report

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"style": ["handwritten", "printed"] * 30, "image_id": [f"img-{i}" for i in range(60)]}
    )
    labels = rng.integers(0, 3, len(frame))
    probs = rng.dirichlet(np.ones(3), len(frame))  # (N, K)
    report = classification_report(
        probs, labels, frame, ("0", "1", "2"), slice_columns=("style",), n_bins=10
    )
    gates = GatesConfig(min_accuracy=0.5)
    blessing = check_gates(
        report, None, gates, champion_version=None, model_name="m", candidate_version="1"
    )
    html = tmp_path / "evaluation.html"
    html.write_text(render_evaluation_html(EvaluationOutcome(blessing, report, None), gates))

    page = browser.open(html.as_uri())

    assert_offline_and_drawn(page, default_font)
    images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert images == [True, True]  # the per-slice bars and the confusion matrix
    save_screenshot(page, shots, "evaluation-report", capsys)
    page.close()


def test_a_drift_report_renders_offline(
    browser: Browser,
    default_font: str,
    tmp_path: Path,
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flywheel.config import MonitorConfig
    from flywheel.monitoring.drift import Window, run_drift_report
    from flywheel.monitoring.features import FEATURE_COLUMNS

    def window(seed: int, shift: float) -> Window:
        rng = np.random.default_rng(seed)
        rows = pd.DataFrame({c: rng.normal(0.0, 1.0, 300) for c in FEATURE_COLUMNS})
        rows["brightness"] += shift
        rows["prediction"] = rng.choice(["0", "1", "2"], 300)
        rows["confidence"] = rng.beta(8, 2, 300)
        rows["model_version"] = 1.0
        return Window(rows, rng.normal(0.0, 1.0, (300, 8)).astype(np.float32))  # (N, 8)

    snapshot, check = run_drift_report(
        window(1, 1.0), window(0, 0.0), MonitorConfig(embedding_components=3)
    )
    assert check.features["brightness"].drifted
    html = tmp_path / "drift.html"
    html.write_text(snapshot.get_html_str(as_iframe=False))  # as flywheel monitor writes it

    page = browser.open(html.as_uri(), quiet_s=1.5)

    assert_offline_and_drawn(page, default_font)
    assert "brightness" in page.evaluate("document.body.innerText")
    plots = page.evaluate("document.querySelectorAll('.js-plotly-plot, svg.main-svg').length")
    assert plots > 0  # plotly drew its charts
    save_screenshot(page, shots, "drift-report", capsys)
    page.close()
