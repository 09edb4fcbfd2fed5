"""Component: drift monitoring over the prediction log (built in the monitoring issue)."""

from kfp import dsl
from kfp.dsl import HTML, Output

from flywheel.env import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def monitor_drift(params: str, overrides: list, report: Output[HTML]) -> bool:
    """Compare a window of the prediction log with the reference; return whether it drifted.

    Args:
        params: params.yaml as JSON text.
        overrides: dotted.key=value pairs that replace values of params.
        report: the drift report.
    """
    from pathlib import Path

    from flywheel import steps

    return steps.detect_drift(steps.resolve_params(params, overrides), report_out=Path(report.path))
