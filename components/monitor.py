"""Component: drift monitoring of the prediction log against the serving version's reference."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from flywheel.workflows import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def monitor_drift(
    params: str, overrides: list, report: Output[HTML], metrics: Output[Metrics]
) -> bool:
    """Compare the recent prediction log with the reference; return whether it drifted.

    The return value is the decision (KFP names a single return value `Output`;
    the local runner resolves conditions only on that name).

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        report: the Evidently drift report.
        metrics: drift shares, per-feature scores, mean confidence, accuracy if labelled.
    """
    from pathlib import Path

    from flywheel import workflows

    result = workflows.detect_drift(
        workflows.resolve_params(params, overrides),
        report_out=Path(report.path),
        metrics_out=Path(metrics.path),
    )
    for name, value in result.scalars().items():
        metrics.log_metric(name, value)
    return result.drift


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def monitor_pages(
    params: str, overrides: list, report: Output[HTML], metrics: Output[Metrics]
) -> str:
    """Check the page log per stage against each serving version's reference; say which drifted.

    The return value is the decision: the drifted stages, comma-separated in
    the plan's order (`detection`, `recognition`, `detection,recognition`), ''
    for none (KFP names a single return value `Output`; the local runner
    resolves conditions only on that name, and compares text with == and !=).

    Args:
        params: the page plan as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        report: each stage's Evidently drift report, on one page.
        metrics: per stage its drift shares, scores and confidence (`<stage>.<name>`).
    """
    from pathlib import Path

    from flywheel import workflows

    result = workflows.detect_page_drift(
        workflows.resolve_params(params, overrides),
        report_out=Path(report.path),
        metrics_out=Path(metrics.path),
    )
    for name, value in result.scalars().items():
        metrics.log_metric(name, value)
    return ",".join(workflows.drifted_stages(result))
