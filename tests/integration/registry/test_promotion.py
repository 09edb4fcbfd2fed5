"""The registry alone, with hand-made blessings: aliases as versions are promoted and
rolled back, clear errors, unblessed and stale blessings refused, `flywheel models`,
and the registry lock."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow import MlflowClient
from mlflow.models import get_model_info
from typer.testing import CliRunner

from flywheel import registry
from flywheel.registry import (
    AliasNotFoundError,
    ModelNotFoundError,
    PromotionRefusedError,
    RegistryLockTimeout,
    StaleBlessingError,
    VersionNotFoundError,
)
from tests.integration.registry.conftest import _broken, _log_model
from tests.support.registry_store import Store
from tests.support.registry_store import aliases as _aliases
from tests.support.registry_store import bless as _bless
from tests.support.registry_store import register_versions as _register

DATA_HASH = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"

pytestmark = pytest.mark.slow  # a real MLflow store and pt2 models: seconds, not milliseconds


def test_promote_without_production_then_replace_keeps_previous(uses_store: Store) -> None:
    name = "reg-basic"
    v1, v2, v3 = _register(uses_store, name, 3)
    assert _aliases(name) == {"candidate": v3}
    _bless(name, v1, champion=None)

    change = registry.promote(name, v1, reason="first")
    assert (change.production, change.previous) == (v1, None)
    assert "previous" not in _aliases(name)

    _bless(name, v2, champion=v1)
    registry.promote(name, v2, reason="second")
    _bless(name, v3, champion=v2)
    registry.promote(name, v3, reason="third")
    # One stage alias per version: v3 was candidate and staging; production is all it holds.
    assert _aliases(name) == {"production": v3, "previous": v2}
    assert registry.read_history(name, v1)[-1].action == "retire"  # dropped out of `previous`
    demoted = registry.read_history(name, v2)[-1]
    assert (demoted.action, demoted.from_role, demoted.to_role) == (
        "demote",
        "production",
        "previous",
    )
    assert demoted.reason.startswith(f"replaced by version {v3} (promoted by ")
    assert demoted.reason.endswith(": third)")

    unchanged = registry.promote(name, v3, reason="again")  # idempotent
    assert not unchanged.changed
    assert unchanged.previous == v2


def test_missing_things_give_clear_errors(uses_store: Store) -> None:
    name = "reg-missing"
    (v1,) = _register(uses_store, name, 1)

    with pytest.raises(AliasNotFoundError, match="no 'production' version"):
        registry.rollback(name, reason="panic")
    with pytest.raises(VersionNotFoundError, match=r"no version '7'; versions: \['1'\]"):
        registry.promote(name, "7", reason="x")
    with pytest.raises(VersionNotFoundError, match="not a version number"):
        registry.promote(name, "latest", reason="x")
    with pytest.raises(ModelNotFoundError, match="no registered model 'nope'"):
        registry.promote("nope", "1", reason="x")
    with pytest.raises(PromotionRefusedError, match="never evaluated") as never:
        registry.promote(name, v1, reason="x")
    assert never.value.failed_gates == ()

    _bless(name, v1, champion=None)
    registry.promote(name, v1, reason="first")
    with pytest.raises(AliasNotFoundError, match="no 'previous' version to roll back to"):
        registry.rollback(name, reason="panic")


def test_unblessed_and_stale_blessings_are_refused(uses_store: Store) -> None:
    name = "reg-stale"
    v1, v2, v3 = _register(uses_store, name, 3)
    _bless(name, v1, champion=None)
    _bless(name, v2, champion=v1)
    _bless(name, v3, champion=v1)
    _bless(name, v2, champion=v1, passed=False)  # re-evaluated: revoked
    assert _aliases(name)["staging"] == v3

    with pytest.raises(PromotionRefusedError) as refused:
        registry.promote(name, v2, reason="x")
    assert refused.value.failed_gates == ("min_accuracy",)
    assert "min_accuracy: fail (0.5000 >= 0.8000)" in str(refused.value)

    with pytest.raises(
        StaleBlessingError, match="blessed against champion 1, but production is now unset"
    ):
        registry.promote(name, v3, reason="x")  # blessed against v1, production unset
    registry.promote(name, v1, reason="first")
    registry.promote(name, v3, reason="judged against v1")
    assert _aliases(name)["production"] == v3


def _table_rows(output: str) -> dict[str, str]:
    """The rows of `flywheel models`' table, by version."""
    return {
        line.split("│")[1].strip(): line
        for line in output.splitlines()
        if line.count("│") > 3 and line.split("│")[1].strip().isdigit()
    }


def test_flywheel_models_lists_versions(uses_store: Store) -> None:
    from flywheel.cli import app

    name = "reg-cli"
    v1, v2 = _register(uses_store, name, 2)
    client = MlflowClient()
    client.set_model_version_tag(name, v1, "flywheel.git_commit", "feedfacecafe1234")
    client.set_model_version_tag(name, v1, "flywheel.data_version", f"{DATA_HASH}.dir")
    _bless(name, v1, champion=None)
    _bless(name, v2, champion=None, passed=False)
    registry.promote(name, v1, reason="first")

    summaries = registry.list_versions(name)
    assert [s.version for s in summaries] == [v2, v1]
    assert summaries[1].aliases == ("production",)  # it gave up staging
    assert (summaries[0].blessed, summaries[1].blessed) == (False, True)
    assert summaries[1].eval_accuracy == pytest.approx(0.9)
    assert summaries[1].git_commit == "feedfacecafe1234"
    assert summaries[1].last_transition is not None
    assert summaries[1].last_transition.action == "promote"

    result = CliRunner().invoke(app, ["models", "--model", name], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = _table_rows(result.output)
    assert set(lines) == {v1, v2}
    assert "production" in lines[v1]
    assert "feedfacecaf" in lines[v1]
    assert "0.900" in lines[v1]
    assert "no" in lines[v2]
    assert "candidate" in lines[v2]

    # At 80 columns (a narrow terminal, or a pipe without COLUMNS): a block per version,
    # every value whole, instead of nine columns squeezed to a few letters per line.
    narrow = CliRunner().invoke(app, ["models", "--model", name], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    shown = narrow.output.splitlines()
    assert max(len(line) for line in shown) <= 80, narrow.output
    assert f"version {v1} · production · blessed: yes · accuracy 0.900" in shown
    assert f"version {v2} · candidate · blessed: no · accuracy 0.500" in shown
    assert f"  data {DATA_HASH}" in shown  # the whole hash `flywheel data checkout` takes
    assert any(line.startswith("  created ") and "git feedfacecafe" in line for line in shown)
    assert any(line.startswith("  last: promote by ") for line in shown)

    refused = CliRunner().invoke(app, ["promote", v2, "--model", name, "--reason", "try"])
    assert refused.exit_code == 1
    assert "min_accuracy" in refused.output

    missing = CliRunner().invoke(app, ["rollback", "--model", name, "--reason", "x"])
    assert missing.exit_code == 2
    assert "no 'previous' version" in missing.output


def test_an_abandoned_registry_lock_is_broken_and_a_live_one_waited_for(
    uses_store: Store,
) -> None:
    name = "reg-lock"
    (v1,) = _register(uses_store, name, 1)
    _bless(name, v1, champion=None)
    client = MlflowClient()
    lock_name = name + registry.LOCK_SUFFIX
    client.create_registered_model(
        lock_name, description=json.dumps({"owner": "crashed", "expires": 0.0})
    )

    registry.promote(name, v1, reason="after a crash", lock="registry", lock_timeout=10)
    assert _aliases(name)["production"] == v1
    names = {m.name for m in client.search_registered_models()}
    assert not any(n.startswith(lock_name) for n in names)  # broken, then released

    client.create_registered_model(
        lock_name, description=json.dumps({"owner": "busy-worker", "expires": 4e9})
    )
    with pytest.raises(RegistryLockTimeout, match="busy-worker"):
        registry.rollback(name, reason="x", lock="registry", lock_timeout=0.5)
    client.delete_registered_model(lock_name)


def test_flywheel_models_names_a_served_version_whose_model_files_are_broken(
    uses_store: Store,
) -> None:
    """A production artifact gone or truncated is an outage waiting for the next start."""
    from flywheel.cli import app

    experiment = MlflowClient().get_experiment_by_name("registry-tests")
    assert experiment is not None
    name = "broken-files"
    versions = [  # models of their own: the package's logged models are shared
        registry.register(_log_model(_broken(), experiment.experiment_id, {}), name)
        for _ in range(3)
    ]
    good, truncated, gone = versions
    _bless(name, truncated, champion=None)
    registry.promote(name, truncated, reason="to be truncated")
    _bless(name, gone, champion=truncated)
    registry.promote(name, gone, reason="to be deleted")  # truncated is now previous
    client = MlflowClient()
    client.set_registered_model_alias(name, "staging", good)
    assert registry.artifact_problem(name, good) is None

    def model_file(version: str) -> Path:
        source = get_model_info(registry.model_uri(name, version)).artifact_path
        return Path(unquote(urlparse(source).path)) / "data" / "model.pt2"

    data = model_file(truncated).read_bytes()
    model_file(truncated).write_bytes(data[: len(data) // 2])
    model_file(gone).unlink()

    assert "not a readable archive" in (registry.artifact_problem(name, truncated) or "")
    assert "no model data" in (registry.artifact_problem(name, gone) or "")
    result = CliRunner().invoke(app, ["models", "--model", name], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = _table_rows(result.output)
    assert rows[good].rstrip("│ ").endswith("ok")
    assert "not a readable archive" in rows[truncated]
    assert "no model data" in rows[gone]
