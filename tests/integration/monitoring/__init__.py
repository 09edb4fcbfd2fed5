"""Monitoring against the real stack: a tiny model trained and registered by the real training
step (which stores its reference profile), traffic from the real collector served through that
model the way the service does, a real prediction log, real Evidently, a real workspace.

One package-scoped set-up (conftest.py: a shrunk CNN, 4 classes) is shared by every check.
Traffic: two in-distribution and two windows of the drift scenario of params.yaml, one hour
apart.

* test_reference_and_drift.py: the reference profile, and `monitor` on the traffic windows;
* test_subcommands.py: `flywheel monitor` and `flywheel reference`;
* test_ui_and_component.py: the dashboards served by `flywheel ui`, then the KFP monitor
  component.

The modules run in the order of their names, and the set-up needs that order: the dashboard
fixture serves a fifth hour with a second version, which the window tests must not see, and
the component adds a snapshot to the dashboard's workspace after its checks. A package (this
file), so that the set-up's `scope="package"` means this folder.
"""
