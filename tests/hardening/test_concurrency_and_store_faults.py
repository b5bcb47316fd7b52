"""Two `onenip run` processes at once against one project (same MLflow store, same DVC repo), and an
artifact store that cannot be written: the registry stays consistent and the champion never moves
to a version whose run failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onenip import registry
from onenip.config import load_params

pytestmark = pytest.mark.slow
NAMES = ("onenip-widgets-plate", "onenip-widgets-widget")


def run_command(project: Path, prefect_home: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    for variable in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_PROFILES_PATH"):
        env.pop(variable, None)
    return subprocess.Popen([sys.executable, "-c", "from pipelines.cli import app; app()", "run", "--force"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_two_runs_at_once_leave_a_consistent_registry(registered_project: Path, tmp_path: Path) -> None:
    processes = [run_command(registered_project, tmp_path / f"prefect{i}") for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    client = registry.connect(load_params(registered_project / "params.yaml"), registered_project)
    for name in NAMES:
        versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
        assert sorted(versions, key=int) == ["1", "2", "3"]
        for version in versions.values():
            for tag in ("onenip.gate", "onenip.gate_reasons", "onenip.data_version", "onenip.cache_key", "onenip.metric.image_AUROC"):
                assert tag in version.tags, (name, version.version, tag)
        aliases = {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
        champion = versions[aliases["champion"]]
        assert champion.tags["onenip.gate"] == "passed"
        # promotions were serialised: the champion was compared against exactly the version now 'previous'
        assert champion.tags.get("onenip.compared_to") == aliases.get("previous")


def test_unwritable_artifact_store_fails_cleanly_and_keeps_champion(registered_project: Path,
                                                                      prefect_harness: None) -> None:  # fmt: skip
    from pipelines.flows import run_retrain

    client = registry.connect(load_params(registered_project / "params.yaml"), registered_project)
    before = {name: (dict(client.get_registered_model(name).aliases), len(client.search_model_versions(f"name = '{name}'")))
              for name in NAMES}  # fmt: skip
    store = registered_project / "mlruns"
    shutil.move(store, registered_project / "mlruns.saved")
    store.write_text("not a folder: the artifact store is unwritable")
    try:
        with pytest.raises(registry.RegistryError, match="Cannot record the run in MLflow"):
            run_retrain("params.yaml", project_root=registered_project, force=True)
    finally:
        store.unlink()
        shutil.move(registered_project / "mlruns.saved", store)
    # the store fails later, while a category is logged: that category fails, the champion stays
    real_log_artifacts = registry.log_artifacts

    def failing_for_categories(client, run_id, paths):  # noqa: ANN001, ANN202
        if "evaluation" in paths:
            raise OSError(28, "No space left on device")
        return real_log_artifacts(client, run_id, paths)

    registry.log_artifacts = failing_for_categories
    try:
        outcomes = run_retrain("params.yaml", project_root=registered_project, force=True)
    finally:
        registry.log_artifacts = real_log_artifacts
    assert {o["status"] for o in outcomes.values()} == {"failed"}
    assert all("No space left on device" in o["reasons"][0] for o in outcomes.values())
    after = {name: (dict(client.get_registered_model(name).aliases), len(client.search_model_versions(f"name = '{name}'")))
             for name in NAMES}  # fmt: skip
    assert after == before  # no new version, no alias moved
    for name in NAMES:  # and the champion still loads
        model_dir = registry.resolve_model(f"models:/{name}@champion", load_params(registered_project / "params.yaml"),
                                           registered_project).folder  # fmt: skip
        assert (model_dir / "model.safetensors").is_file()
