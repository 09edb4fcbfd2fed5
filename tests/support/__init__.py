"""Builders the tests share: projects, data plans, MLflow stores, prediction logs, servers.

Plain functions and context managers, imported as `tests.support.<module>` (the
repository root is on `sys.path`, see `pythonpath` in pyproject.toml). The
fixtures built from them live in `tests/conftest.py`. No module here is named
`test_*`: pytest collects no tests from them, only their doctests
(`--doctest-modules`).

Modules:
    project: a tiny flywheel project in a DVC repository, a git + DVC repository.
    plans: the tiny data plan and model the training tests share.
    tracking: a SQLite MLflow store selected through the environment.
    models: a small model logged to MLflow as training logs it.
    labeling: a real prediction log and the simulator's truth, written without a server.
    processes: a free port for the servers tests start.
"""
