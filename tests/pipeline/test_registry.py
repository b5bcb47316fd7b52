"""Gates, aliases and rollback against a real MLflow sqlite registry (versions without training)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from onenip import registry
from onenip.cli import app
from onenip.config import GateParams, Params
from onenip.gates import decide

NAME = "onenip-widgets-plate"


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registry.connect(Params(), tmp_path)


def add_version(client: MlflowClient, **metrics: float) -> str:
    try:
        client.create_registered_model(NAME)
    except Exception:  # noqa: BLE001 - exists already
        pass
    tags = {f"onenip.metric.{k}": str(v) for k, v in metrics.items()}
    return str(client.create_model_version(NAME, source="file:///nonexistent/model", tags=tags).version)


def alias(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(NAME, name).version)
    except Exception:  # noqa: BLE001
        return None


GATES = GateParams(minimum={"image_AUROC": 0.8, "pixel_AUROC": 0.8}, max_regression=0.01)
GOOD = {"image_AUROC": 0.95, "pixel_AUROC": 0.9}


def test_decide_minimum_regression_and_masks() -> None:
    assert decide(GOOD, GATES).passed
    failed = decide({"image_AUROC": 0.7, "pixel_AUROC": 0.9}, GATES)
    assert not failed.passed and any("0.7000 < minimum 0.8" in r for r in failed.reasons)
    assert not decide({"image_AUROC": 0.95}, GATES).passed  # pixel metric required but missing
    assert decide({"image_AUROC": 0.95}, GATES, has_masks=False).passed  # no masks: image gates only
    worse = decide({"image_AUROC": 0.92, "pixel_AUROC": 0.9}, GATES, {"image_AUROC": 0.95, "pixel_AUROC": 0.9})
    assert not worse.passed and any("regresses" in r for r in worse.reasons)
    within = decide({"image_AUROC": 0.945, "pixel_AUROC": 0.9}, GATES, {"image_AUROC": 0.95, "pixel_AUROC": 0.9})
    assert within.passed


def test_pass_sets_champion_and_keeps_previous(client: MlflowClient) -> None:
    v1 = add_version(client, **GOOD)
    assert registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True).passed
    assert alias(client, "champion") == v1
    better = {"image_AUROC": 0.97, "pixel_AUROC": 0.93}
    v2 = add_version(client, **better)
    assert registry.gate_and_promote(client, NAME, v2, better, GATES, has_masks=True).passed
    assert (alias(client, "champion"), alias(client, "previous")) == (v2, v1)
    version = client.get_model_version(NAME, v2)
    assert version.tags["onenip.gate"] == "passed"
    assert version.tags["onenip.compared_to"] == v1
    assert json.loads(version.tags["onenip.gate_reasons"])


def test_impossible_gate_leaves_champion(client: MlflowClient) -> None:
    v1 = add_version(client, **GOOD)
    registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True)
    impossible = GateParams(minimum={"image_AUROC": 1.01})
    v2 = add_version(client, **GOOD)
    decision = registry.gate_and_promote(client, NAME, v2, GOOD, impossible, has_masks=True)
    assert not decision.passed
    assert (alias(client, "champion"), alias(client, "challenger")) == (v1, v2)
    tags = client.get_model_version(NAME, v2).tags
    assert tags["onenip.gate"] == "failed" and "minimum 1.01" in tags["onenip.gate_reasons"]


def test_worse_model_than_champion_is_not_promoted(client: MlflowClient) -> None:
    v1 = add_version(client, **GOOD)
    registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True)
    worse = {"image_AUROC": 0.90, "pixel_AUROC": 0.9}  # above the minimum, below the champion
    v2 = add_version(client, **worse)
    assert not registry.gate_and_promote(client, NAME, v2, worse, GATES, has_masks=True).passed
    assert alias(client, "champion") == v1
    assert "regresses" in client.get_model_version(NAME, v2).tags["onenip.gate_reasons"]


def test_export_that_disagrees_is_never_promoted_and_its_figures_are_tags(client: MlflowClient) -> None:
    from onenip.export_check import ExportCheck

    v1 = add_version(client, **GOOD)
    agrees = ExportCheck("plate", "onnx", 24, 1e-3, 2e-6, 5e-6, 0, 21.34)
    assert registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True, export=agrees).passed
    better = {"image_AUROC": 0.97, "pixel_AUROC": 0.93}
    v2 = add_version(client, **better)
    disagrees = ExportCheck("plate", "onnx", 24, 1e-3, 0.2, 0.4, 3, 19.0)
    decision = registry.gate_and_promote(client, NAME, v2, better, GATES, has_masks=True, export=disagrees)
    assert not decision.passed and (alias(client, "champion"), alias(client, "challenger")) == (v1, v2)
    tags = client.get_model_version(NAME, v2).tags
    assert (tags["onenip.export_parity"], tags["onenip.export_p50_ms"]) == ("failed", "19.0")
    assert "3 verdicts flipped" in tags["onenip.export_parity_detail"]
    with pytest.raises(registry.RegistryError, match="exported graph disagrees with torch"):
        registry.promote_version(client, NAME, v2)  # not even by hand
    assert alias(client, "champion") == v1
    rows = {row.version: row for row in registry.describe(client)}
    assert (rows[v1].export, rows[v2].export) == ("passed, 21.3 ms", "failed, 19.0 ms")


def test_rollback_command_and_clear_errors(client: MlflowClient, tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "params.yaml").write_text("data:\n  name: widgets\n")
    result = runner.invoke(app, ["promote", "--category", "plate", "--rollback"])
    assert result.exit_code == 1 and "onenip-widgets-plate" in result.output and "known models" in result.output
    v1 = add_version(client, **GOOD)
    registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True)
    result = runner.invoke(app, ["promote", "--category", "plate", "--rollback"])
    assert result.exit_code == 1 and "no 'previous' alias" in result.output
    v2 = add_version(client, image_AUROC=0.99, pixel_AUROC=0.95)
    registry.gate_and_promote(client, NAME, v2, {"image_AUROC": 0.99, "pixel_AUROC": 0.95}, GATES, has_masks=True)
    result = runner.invoke(app, ["promote", "--category", "plate", "--rollback"])
    assert result.exit_code == 0, result.output
    assert alias(client, "champion") == v1 and alias(client, "previous") is None
    assert "onenip.rolled_back" in client.get_model_version(NAME, v2).tags
    result = runner.invoke(app, ["promote", "--category", "plate", "--version", "nightly"])
    assert result.exit_code == 1 and "no version or alias 'nightly'" in result.output
    result = runner.invoke(app, ["promote", "--category", "plate", "--version", v2])
    assert result.exit_code == 0 and alias(client, "champion") == v2
    listing = runner.invoke(app, ["registry"])
    assert listing.exit_code == 0 and "champion" in listing.output
    # the same through a model reference, as predict, evaluate, export and serve take it
    result = runner.invoke(app, ["promote", f"models:/{NAME}", "--rollback"])
    assert result.exit_code == 0 and alias(client, "champion") == v1, result.output
    result = runner.invoke(app, ["promote", f"models:/{NAME}/{v2}"])
    assert result.exit_code == 0 and alias(client, "champion") == v2, result.output
    for args, expected in ((["promote", f"models:/{NAME}/{v1}", "--rollback"], "--rollback takes the model name only"),
                           (["promote", f"models:/{NAME}/{v1}", "--category", "plate"], "not both"),
                           (["promote", "runs/plate/model"], "promote takes a registered model"),
                           (["promote"], "Say which model")):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and expected in result.output, (args, result.output)
    assert alias(client, "champion") == v2  # nothing moved on a refused command


def test_concurrent_promotions_leave_consistent_aliases(client: MlflowClient, tmp_path: Path) -> None:
    """Two runs gating at once: under the registry lock every decision sees the champion before it."""
    v1 = add_version(client, **GOOD)
    registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True)
    candidates = [{"image_AUROC": 0.96 + i / 100, "pixel_AUROC": 0.9} for i in range(4)]
    versions = [add_version(client, **m) for m in candidates]
    errors: list[BaseException] = []

    def promote(version: str, metrics: dict[str, float]) -> None:
        try:
            with registry.registry_lock(client, NAME, poll=0.05):
                registry.gate_and_promote(client, NAME, version, metrics, GATES, has_masks=True)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=promote, args=(v, m)) for v, m in zip(versions, candidates, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    champion, previous = alias(client, "champion"), alias(client, "previous")
    tags = {v: client.get_model_version(NAME, v).tags for v in versions}
    assert all({"onenip.gate", "onenip.gate_reasons", "onenip.compared_to"} <= set(t) for t in tags.values())
    # the champion passed, and 'previous' is exactly the version it was compared against
    assert tags[champion]["onenip.gate"] == "passed"
    assert tags[champion]["onenip.compared_to"] == previous


def test_registry_lock_retries_when_the_holder_releases_during_the_conflict(client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a name conflict MLflow's SQL store reads the existing model to word its error; when the holder
    deletes its lock in between, creating the lock fails with RESOURCE_DOES_NOT_EXIST. That is contention
    (seen in CI under four concurrent promotions): the lock is retried, not given up. Other errors are not."""
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    real_create = client.create_registered_model
    failures = [MlflowException("Registered Model with name=_lock.x not found", RESOURCE_DOES_NOT_EXIST)]

    def create(name: str, *args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return real_create(name, *args, **kwargs)

    monkeypatch.setattr(client, "create_registered_model", create)
    with registry.registry_lock(client, NAME, timeout=5, poll=0.01):
        assert not failures and client.get_registered_model(f"{registry.LOCK_PREFIX}{NAME}")
    failures.append(MlflowException("database is on fire", INTERNAL_ERROR))
    with pytest.raises(registry.RegistryError, match="Cannot take the promotion lock.*database is on fire"):
        with registry.registry_lock(client, NAME, timeout=5, poll=0.01):
            pass


def test_registry_lock_is_exclusive_breaks_stale_locks_and_names_the_holder(client: MlflowClient) -> None:
    lock = f"{registry.LOCK_PREFIX}{NAME}"
    with registry.registry_lock(client, NAME):
        holder = client.get_registered_model(lock).tags["onenip.lock_owner"]
        with pytest.raises(registry.RegistryError, match="held by") as error:
            with registry.registry_lock(client, NAME, timeout=0.3, poll=0.05):
                pass
        assert holder in str(error.value)
    with pytest.raises(MlflowException):  # released
        client.get_registered_model(lock)
    # a holder that died mid-promotion: its lock is broken once older than stale_after
    client.create_registered_model(lock, tags={"onenip.lock_owner": "gone:1", "onenip.lock_since": "0"})
    with registry.registry_lock(client, NAME, timeout=5, stale_after=60):
        assert client.get_registered_model(lock).tags["onenip.lock_owner"] != "gone:1"
    assert all(not m.name.startswith(registry.LOCK_PREFIX) for m in client.search_registered_models())
    assert all(row.name == NAME for row in registry.describe(client))  # locks never show as models


def test_store_commands_find_the_project_from_below_and_create_nothing_outside(client: MlflowClient, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    runner = CliRunner()
    (tmp_path / "params.yaml").write_text("data:\n  name: widgets\n")
    v1 = add_version(client, **GOOD)
    registry.gate_and_promote(client, NAME, v1, GOOD, GATES, has_masks=True)
    below = tmp_path / "runs" / "today"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)  # as git and dvc do: the project is found from a folder inside it
    listing = runner.invoke(app, ["registry"])
    assert listing.exit_code == 0 and NAME in listing.output and str(tmp_path / "mlflow.db") in listing.output.replace("\n", "")
    assert not (below / "mlflow.db").exists()
    missing = runner.invoke(app, ["promote", "--category", "gizmo", "--rollback"])
    assert missing.exit_code == 1 and f"sqlite:///{tmp_path / 'mlflow.db'}" in missing.output.replace("\n", "")

    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the project's: a new shell has none
    for command in (["registry"], ["predict", "--model", f"models:/{NAME}@champion", str(outside)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert "No MLflow store at" in result.output and "params.yaml" in result.output
    assert list(outside.iterdir()) == []  # no mlflow.db, no runs folder: nothing created
