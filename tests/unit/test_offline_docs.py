"""Offline Data Docs: the vendored assets are the ones GX links, and pages are rewritten to them."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import great_expectations
import lxml.html
import pytest

from flywheel.validation.offline_docs import (
    ASSETS_DIR,
    GX_IMAGES_HOST,
    VENDOR_DIR,
    VENDORED,
    install_assets,
    local_url,
    make_site_offline,
    rewrite_page,
)

GX_VIEW = Path(great_expectations.__file__).parent / "render" / "view"


def _fetched_urls(html: str) -> list[tuple[str, str | None]]:
    """(URL, integrity) of every absolute URL a link, script or img element fetches."""
    doc = lxml.html.document_fromstring(html)
    found = []
    for tag, attribute in (("link", "href"), ("script", "src"), ("img", "src")):
        for element in doc.iter(tag):
            url = element.get(attribute) or ""
            if url.startswith(("http://", "https://", "//")):
                found.append((url, element.get("integrity")))
    return found


GX_TEMPLATE_URLS = sorted(
    {
        pair
        for template in sorted((GX_VIEW / "templates").glob("*.j2"))
        for pair in _fetched_urls(f"<html>{template.read_text()}</html>")
    }
)


def test_the_installed_gx_templates_fetch_cdn_assets() -> None:
    """The premise: if GX stops linking CDNs, this module and its assets can go."""
    assert len(GX_TEMPLATE_URLS) >= 10


@pytest.mark.parametrize(("url", "integrity"), GX_TEMPLATE_URLS)
def test_every_asset_gx_links_has_a_vendored_copy(
    url: str, integrity: str | None, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    local = local_url(url, site / "index.html", site)

    assert local is not None, f"{url}: no vendored copy; add it to VENDORED"
    assert local.startswith("static/vendor/")
    vendored = ASSETS_DIR / local.removeprefix("static/vendor/")
    assert vendored.is_file()
    if integrity:  # the very bytes the CDN serves
        algorithm, _, digest = integrity.partition("-")
        ours = base64.b64encode(hashlib.new(algorithm, vendored.read_bytes()).digest()).decode()
        assert ours == digest


def test_every_picture_gx_styles_fetch_has_a_local_copy(tmp_path: Path) -> None:
    css = (GX_VIEW / "static" / "styles" / "data_docs_default_styles.css").read_text()
    urls = [part.split(")")[0].strip("'\" ") for part in css.split("url(")[1:] if "//" in part[:12]]

    assert urls  # the dark theme's logo, on GX's bucket
    for url in urls:
        assert local_url(url, tmp_path / "index.html", tmp_path) == "static/images/logo-long.png"


def test_every_vendored_package_carries_its_licence() -> None:
    packages = {Path(path).parts[0] for path in VENDORED.values()}

    assert packages == {p.name for p in ASSETS_DIR.iterdir() if p.is_dir()}
    for package in packages:
        assert list((ASSETS_DIR / package).glob("LICENSE*")), f"{package}: no LICENSE"


def test_font_awesome_finds_its_fonts_next_to_its_stylesheet() -> None:
    css = ASSETS_DIR / "fontawesome-free@6.6.0" / "css" / "all.min.css"
    woff2 = [part.split(")")[0] for part in css.read_text().split("url(")[1:] if ".woff2" in part]

    assert len(woff2) >= 3
    for url in woff2:
        assert (css.parent / url).resolve().is_file(), url


PAGE = f"""<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<script src="https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js"
  integrity="sha384-ApNbgh9B+Y1QKtv3Rn7W3mgPxhU9K/ScQsAP7hUibX39j7fakFPskvXusvfa0b4Q"
  crossorigin="anonymous"></script>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<script src="https://example.org/unknown.js"></script>
<link rel="shortcut icon" href="../../../static/images/favicon.ico">
<style>.navbar-brand a {{
  background: url('https://{GX_IMAGES_HOST}/full_logo_dark.png') 0 0;
}}</style>
</head><body>
<img src="https://{GX_IMAGES_HOST}/logo-long.png?d=20260101T000000Z&amp;dataContextId=abc">
<a href="https://greatexpectations.io">GX</a>
<p>row ids: val-1 &lt;b&gt;</p>
</body></html>
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    for name in ("favicon.ico", "logo-long.png"):
        (site / "static" / "images").mkdir(parents=True, exist_ok=True)
        (site / "static" / "images" / name).write_bytes(b"picture")
    return site


def test_a_nested_page_loads_local_copies_by_relative_paths(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    page = site / "validations" / "suite" / "run" / "time" / "page.html"

    with caplog.at_level(logging.WARNING):
        html = rewrite_page(PAGE, page, site)

    doc = lxml.html.document_fromstring(html)
    up = "../../../../"
    assert [e.get("href") for e in doc.iter("link")] == [
        f"{up}static/vendor/bootstrap@4.3.1/dist/css/bootstrap.min.css",
        f"{up}static/images/favicon.ico",  # GX's link is one folder short
    ]
    scripts = [e for e in doc.iter("script")]
    assert [e.get("src") for e in scripts] == [
        f"{up}static/vendor/popper.js@1.12.9/dist/umd/popper.min.js",
        f"{up}static/vendor/vega@5.33.1/build/vega.min.js",
        "https://example.org/unknown.js",  # no copy: kept, and said
    ]
    assert scripts[0].get("integrity") is None
    assert scripts[0].get("crossorigin") is None
    assert [e.get("src") for e in doc.iter("img")] == [f"{up}static/images/logo-long.png"]
    assert f"url('{up}static/images/logo-long.png')" in html  # the dark theme's logo
    assert "https://greatexpectations.io" in html  # a link, not a request
    assert "val-1 &lt;b&gt;" in html
    assert "example.org/unknown.js" in caplog.text
    assert rewrite_page(html, page, site) == html  # a second pass changes nothing


def test_a_site_gets_the_assets_and_only_recent_pages_are_rewritten(site: Path) -> None:
    old, new = site / "old.html", site / "index.html"
    old.write_text(PAGE)
    new.write_text(PAGE)
    old_time = new.stat().st_mtime - 3600
    os.utime(old, (old_time, old_time))

    rewritten = make_site_offline(site, since=new.stat().st_mtime - 1)

    assert rewritten == [new]
    assert "bootstrapcdn" in old.read_text()
    assert "bootstrapcdn" not in new.read_text()
    for vendored in VENDORED.values():
        assert (site / VENDOR_DIR / vendored).is_file()


def test_installing_twice_copies_nothing_new(site: Path) -> None:
    install_assets(site)
    target = site / VENDOR_DIR / VENDORED["https://code.jquery.com/jquery-3.7.1.min.js"]
    before = target.stat().st_mtime_ns

    install_assets(site)

    assert target.stat().st_mtime_ns == before
