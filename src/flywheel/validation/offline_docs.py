"""Data Docs that work offline: the CDN assets GX links, served from the site itself.

Great Expectations 1.x writes every Data Docs page with `<link>`/`<script>`
tags that point at CDNs (bootstrap, jQuery, popper, bootstrap-table, the
datepicker, vega, font-awesome) and a logo image on GX's S3 bucket (its URL
carries the context's id). Offline (an air-gapped cluster, a laptop on a
train) the index table, which bootstrap-table builds in the browser, stays
empty, the validation pages are unstyled text and the pass/fail icons (a
font-awesome font) vanish, so a failure looks like a pass. GX offers no setting
for asset locations (its templates hard-code the URLs and its custom views
cannot override a built-in template), so after GX writes a page this module
rewrites it: the exact asset versions GX references are vendored in
`data_docs_assets/` (from the npm registry, with their licences), copied into
the site's `static/vendor/` and linked by relative paths. Links (`<a href>`)
to GX's documentation stay as they are: a click, not a request.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import lxml.html

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).with_name("data_docs_assets")
"""The vendored files, one folder per npm package: `<package>@<version>/<path in the package>`."""

VENDOR_DIR = Path("static") / "vendor"
"""Where the vendored files go inside a Data Docs site."""

VENDORED: dict[str, str] = {
    # CDN URL (scheme, host and path; a query is ignored) -> file under ASSETS_DIR
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap@4.3.1/dist/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap@4.3.1/dist/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": (
        "bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": (
        "bootstrap-table@1.19.0/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": (
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": (
        "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": (
        "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": (
        "forevolve-bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free@6.6.0/css/all.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js@1.12.9/dist/umd/popper.min.js"
    ),
    # jsDelivr serves the newest release of the major version: these were the
    # newest when vendored (npm view vega@5 version).
    "https://cdn.jsdelivr.net/npm/vega@5": "vega@5.33.1/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite@5.23.0/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed@6.29.0/build/vega-embed.min.js",
}

GX_IMAGES_HOST = "great-expectations-web-assets.s3.us-east-2.amazonaws.com"
"""GX's bucket of logos; the site's own `static/images/` holds the same pictures."""

GX_IMAGE_STANDINS: dict[str, str] = {"full_logo_dark.png": "logo-long.png"}
"""Images on GX's bucket that the site lacks, and the local picture shown instead."""

# the attributes that make the browser fetch something, per element
_FETCHED: tuple[tuple[str, str], ...] = (("link", "href"), ("script", "src"), ("img", "src"))


def install_assets(site_dir: Path) -> None:
    """Copy the vendored files into `site_dir/static/vendor/` (those missing or changed)."""
    for source in ASSETS_DIR.rglob("*"):
        if not source.is_file():
            continue
        target = site_dir / VENDOR_DIR / source.relative_to(ASSETS_DIR)
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def local_url(url: str, page: Path, site_dir: Path) -> str | None:
    """The relative URL, from `page`, of the local copy of `url`; None if there is none.

    `url` is a CDN asset in `VENDORED` or a picture on GX's bucket; anything
    else (a relative URL, an unknown host) has no local copy.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    if parts.netloc == GX_IMAGES_HOST:
        name = Path(parts.path).name
        local = site_dir / "static" / "images" / GX_IMAGE_STANDINS.get(name, name)
    else:
        vendored = VENDORED.get(f"https://{parts.netloc}{parts.path}")
        if vendored is None:
            return None
        local = site_dir / VENDOR_DIR / vendored
    return Path(os.path.relpath(local, page.parent)).as_posix()


def rewrite_page(html: str, page: Path, site_dir: Path) -> str:
    """The page's HTML with every CDN asset it fetches replaced by its local copy.

    Subresource-integrity and CORS attributes go with the CDN URL: a page opened
    from `file:` has an opaque origin, and a `crossorigin` script from another
    file is refused. An external asset with no local copy is logged and kept, so
    the page loses nothing it had.
    """
    doc = lxml.html.document_fromstring(html)
    for tag, attribute in _FETCHED:
        for element in doc.iter(tag):
            url = element.get(attribute)
            if not url:
                continue
            if not urlsplit(url).scheme and not urlsplit(url).netloc:
                element.set(attribute, _repair_static_url(url, page, site_dir))
                continue
            local = local_url(url, page, site_dir)
            if local is None:
                log.warning(
                    "%s: <%s %s=%r> still loads from the network: flywheel vendors no copy "
                    "of it (the GX templates changed?); offline, that part of the page is missing",
                    page,
                    tag,
                    attribute,
                    url,
                )
                continue
            element.set(attribute, local)
            for cdn_only in ("integrity", "crossorigin"):
                element.attrib.pop(cdn_only, None)
    for style in doc.iter("style"):
        if style.text and f"//{GX_IMAGES_HOST}/" in style.text:
            style.text = _rewrite_css_urls(style.text, page, site_dir)
    return lxml.html.tostring(doc, doctype="<!DOCTYPE html>", encoding="unicode", method="html")


def _repair_static_url(url: str, page: Path, site_dir: Path) -> str:
    """A relative URL into the site's `static/` that misses its file, pointed at the file.

    GX links the favicon of a validation page one folder too high
    (`../../../static/images/favicon.ico` from four folders down); every other
    relative URL comes back as it was.
    """
    path = urlsplit(url).path
    if "static/" not in path or (page.parent / path).exists():
        return url
    local = site_dir / "static" / path.split("static/", 1)[1]
    return Path(os.path.relpath(local, page.parent)).as_posix() if local.is_file() else url


def _rewrite_css_urls(css: str, page: Path, site_dir: Path) -> str:
    """The style text with `url('https://<GX bucket>/…')` pointing at the site's own images."""
    pieces = css.split("url(")
    for i, piece in enumerate(pieces[1:], start=1):
        inside, sep, rest = piece.partition(")")
        local = local_url(inside.strip().strip("'\""), page, site_dir) if sep else None
        if local is not None:
            pieces[i] = f"'{local}'{sep}{rest}"
    return "url(".join(pieces)


def make_pages_offline(site_dir: Path, pages: Iterable[Path]) -> None:
    """Install the vendored assets in the site and rewrite its `pages` to use them."""
    install_assets(site_dir)
    for page in pages:
        html = page.read_text(encoding="utf-8")
        offline = rewrite_page(html, page, site_dir)
        if offline != html:
            tmp = page.with_name(page.name + ".offline-tmp")
            tmp.write_text(offline, encoding="utf-8")
            tmp.replace(page)  # a reader never sees half a page


def make_site_offline(site_dir: Path, *, since: float | None = None) -> list[Path]:
    """Make the Data Docs site at `site_dir` work offline; return the pages rewritten.

    Args:
        site_dir: the site's folder (where `index.html` is).
        since: only pages written at or after this time (`time.time()`): those
            GX has just built; None rewrites every page.
    """
    pages = [
        page
        for page in sorted(site_dir.rglob("*.html"))
        if since is None or page.stat().st_mtime >= since
    ]
    make_pages_offline(site_dir, pages)
    return pages


def standalone_page(page: Path) -> str:
    """One offline page of a site as a single self-contained HTML document.

    For where the page travels alone (the pipeline's Data Docs artifact, which the
    KFP UI shows in a frame): the local stylesheets and scripts it loads are
    inlined, and the fonts, pictures and icons they use become `data:` URLs.
    Links to the site's other pages stay as they are (they lead nowhere alone).
    """
    doc = lxml.html.document_fromstring(page.read_text(encoding="utf-8"))
    for element in list(doc.iter("link", "script", "img")):
        attribute = "href" if element.tag == "link" else "src"
        url = element.get(attribute)
        if not url or urlsplit(url).scheme or urlsplit(url).netloc:
            continue
        source = (page.parent / urlsplit(url).path).resolve()
        if not source.is_file():
            continue
        rel = (element.get("rel") or "").lower()
        if element.tag == "link" and "stylesheet" in rel:
            style = lxml.html.Element("style")
            style.text = _inline_css_urls(source.read_text(encoding="utf-8"), source.parent)
            element.getparent().replace(element, style)
        elif element.tag == "script" and _inlinable(text := source.read_text(encoding="utf-8")):
            del element.attrib["src"]
            element.text = text
        else:  # a picture, an icon, a script that cannot sit inside <script>
            element.set(attribute, _data_url(source))
    for style in doc.iter("style"):
        if style.text and "url(" in style.text:
            style.text = _inline_css_urls(style.text, page.parent)
    return lxml.html.tostring(doc, doctype="<!DOCTYPE html>", encoding="unicode", method="html")


_MEDIA_TYPES = {
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".png": "image/png",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".js": "text/javascript",
    ".css": "text/css",
}


def _data_url(path: Path) -> str:
    media_type = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _inlinable(script: str) -> bool:
    """Whether script text can sit inside `<script>`: nothing that ends or escapes the element."""
    lowered = script.lower()
    return "</script" not in lowered and "<!--" not in lowered


def _inline_css_urls(css: str, base: Path) -> str:
    """The style text with each relative `url(...)` to an existing file made a `data:` URL.

    A font-face lists fallbacks (`.woff2`, then `.ttf`): a missing fallback file
    stays a relative URL, which a browser only fetches if the first one fails.
    """
    pieces = css.split("url(")
    for i, piece in enumerate(pieces[1:], start=1):
        inside, sep, rest = piece.partition(")")
        url = inside.strip().strip("'\"")
        parts = urlsplit(url)
        if not sep or parts.scheme or parts.netloc or not parts.path:
            continue
        source = (base / parts.path).resolve()
        if source.is_file():
            pieces[i] = f"'{_data_url(source)}'{sep}{rest}"
    return "url(".join(pieces)
