"""The file-backed GX context the gate runs in: its checkpoint, and the Data Docs it writes.

Nothing here makes a network call: GX 1.x sends no usage statistics (the
context's `analytics_enabled` is set off anyway), and the Data Docs pages work
offline: GX links bootstrap, jQuery, vega and font-awesome from CDNs and its
logo from its S3 bucket, and `offline_data_docs` rewrites every page it has just
built to load copies from the site itself (`flywheel.validation.offline_docs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig

from flywheel.validation.offline_docs import make_site_offline

if TYPE_CHECKING:
    from great_expectations.data_context import FileDataContext


class ValidationSetupError(RuntimeError):
    """The gate could not run at all (e.g. the GX context folder is unusable)."""


def open_context(root: Path) -> FileDataContext:
    """The file-backed GX context at `root` (created on first use), quiet and offline."""
    try:
        context = gx.get_context(mode="file", context_root_dir=root)
    except (gx.exceptions.GreatExpectationsError, OSError) as err:
        raise ValidationSetupError(
            f"{root}: cannot open the Great Expectations context: {err}"
        ) from err
    variables = context.variables
    progress_bars: Any = variables.progress_bars or {}
    if variables.analytics_enabled is not False or progress_bars.get("globally", True):
        variables.analytics_enabled = False
        variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        variables.save()
    return context


def register_checkpoint(
    context: FileDataContext,
    asset_name: str,
    suite: gx.ExpectationSuite,
    result_format: dict[str, Any],
) -> gx.Checkpoint:
    """Add or update datasource → asset → batch definition → suite → validation → checkpoint."""
    source = context.data_sources.add_or_update_pandas("flywheel_manifests")
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(asset_name)
    try:
        batch = asset.get_batch_definition("manifest")
    except KeyError:
        batch = asset.add_batch_definition_whole_dataframe("manifest")
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{asset_name}-{suite.name}", data=batch, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{asset_name}-gate",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format=result_format,
        )
    )


def docs_page(context: FileDataContext, key: Any) -> Path | None:
    """The local Data Docs page of one validation result (the site index if not found)."""
    for site in context.get_docs_sites_urls(resource_identifier=key):
        url = site.get("site_url")
        if url and urlparse(url).scheme == "file":
            return Path(url2pathname(urlparse(url).path))
    return None


def offline_data_docs(context: FileDataContext, *, since: float) -> None:
    """Make the pages GX wrote at or after `since` (`time.time()`) in local sites work offline."""
    for site in context.get_docs_sites_urls():
        url = site.get("site_url")
        if url and urlparse(url).scheme == "file":
            index = Path(url2pathname(urlparse(url).path))
            make_site_offline(index.parent, since=since)
