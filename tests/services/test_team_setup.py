"""The team topology on real services started here: retrain through a Prefect server's process work
pool and worker, tracked on an MLflow server backed by PostgreSQL (artifacts through its proxy), two
retrains at once against that server, rollback and `mlflow models serve` from it, and a separately
started Dask scheduler with two workers."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.helpers.project import make_project, write_params
from tests.services.conftest import BIN, free_port, service_env, start, stop, wait_until

pytestmark = pytest.mark.slow
MODELS = ("onenip-widgets-plate", "onenip-widgets-widget")
POOL = "onenip-test"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("team-a"))


def api_post(api: str, path: str, body: dict) -> list | dict:
    response = requests.post(f"{api}{path}", json=body, timeout=30)
    assert response.status_code < 300, response.text[:1000]
    return response.json()


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_deployment_runs_through_a_worker_against_the_mlflow_server(
    prefect_server: tuple[str, dict[str, str]], mlflow_server: str, project: Path,
) -> None:
    api, prefect_env = prefect_server
    env = prefect_env | {"MLFLOW_TRACKING_URI": mlflow_server}
    cli([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], project, env)
    deployed = cli([str(BIN / "onenip"), "deploy", "--pool", POOL, "--params", "params.yaml"], project, env)
    assert "weekly-retrain" in deployed.stdout
    [deployment] = api_post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["weekly-retrain"]}}})
    assert deployment["work_pool_name"] == POOL and deployment["parameters"]["project_root"] == str(project.resolve())
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"  # pipeline.schedule_cron
    [monitor] = api_post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["hourly-monitor"]}}})
    assert monitor["work_pool_name"] == POOL and monitor["schedules"][0]["schedule"]["cron"] == "0 * * * *"  # monitoring.schedule_cron

    log = project.parent / "worker.log"
    worker = start([str(BIN / "prefect"), "worker", "start", "-p", POOL, "--limit", "1"], log, env, cwd=project)
    try:
        flow_run = api_post(api, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"force": True}})
        deadline = time.monotonic() + 900
        while True:
            state = requests.get(f"{api}/flow_runs/{flow_run['id']}", timeout=10).json()["state"]
            if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                break
            assert time.monotonic() < deadline, f"flow run still {state['type']}:\n{log.read_text()[-3000:]}"
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(2)
    finally:
        stop(worker)
    assert state["type"] == "COMPLETED", log.read_text()[-5000:]

    # the server saw the flow run, its retrain subflow, the task runs and the per-category artifacts
    children = api_post(api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run["id"]]}}})
    [retrain] = [r for r in children if r["state_type"] == "COMPLETED"]
    tasks = api_post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [retrain["id"]]}}})
    assert len(tasks) >= 6 and {t["state_type"] for t in tasks} == {"COMPLETED"}
    keys = {a["key"] for a in api_post(api, "/artifacts/filter", {})}
    assert {"onenip-widgets-plate", "onenip-widgets-widget"} <= keys

    client = client_for(mlflow_server)
    for name in MODELS:
        assert aliases(client, name) == {"champion": "1"}
        version = client.get_model_version(name, "1")
        assert version.tags["onenip.gate"] == "passed"
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored through the server's proxy
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config",
                                                         tracking_uri=mlflow_server))  # fmt: skip
        assert any(local.rglob("params.effective.yaml"))
        assert {"evaluation", "validation", "config"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        source = client.get_model_version_download_uri(name, "1")
        model = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=mlflow_server))
        assert any(model.rglob("onenip.json")) and any(model.rglob("*.onnx"))  # weights and ONNX graph, via the proxy
    assert not [m.name for m in client.search_registered_models() if m.name.startswith("_lock.")]


def test_two_retrains_at_once_promote_one_at_a_time(
    mlflow_server: str, project: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two machines (two projects, two processes) retrain the same models against one server.

    Counted from the versions already there, so this test stands on its own when an earlier one failed."""
    client = client_for(mlflow_server)
    before = {name: _versions(client, name) for name in MODELS}
    champions = {name: aliases(client, name).get("champion") if before[name] else None for name in MODELS}
    other = make_project(tmp_path_factory.mktemp("team-b"))
    code = "import json; from pipelines.flows import run_retrain; print(json.dumps(run_retrain('params.yaml', force=True)))"
    processes = []
    for root in (project, other):
        env = service_env(MLFLOW_TRACKING_URI=mlflow_server, PREFECT_HOME=str(root.parent / "prefect-home"))
        processes.append(subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = [p.communicate(timeout=900) for p in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err[-3000:]
        assert {o["status"] for o in json.loads(out.strip().splitlines()[-1]).values()} == {"promoted"}
    for name in MODELS:
        versions = _versions(client, name)
        new = {v: tags for v, tags in versions.items() if v not in before[name]}
        assert len(new) == 2, (sorted(before[name]), sorted(versions))
        compared = {v: tags.get("onenip.compared_to") for v, tags in new.items()}
        # serialised: the first promotion compared against the champion before, the second against the first
        first = next(v for v, c in compared.items() if c == champions[name])
        second = next(v for v in new if v != first)
        assert compared[second] == first, compared
        assert aliases(client, name) == {"champion": second, "previous": first}


def _versions(client: MlflowClient, name: str) -> dict[str, dict[str, str]]:
    """Version -> tags of a registered model ({} when it is not registered yet)."""
    return {str(v.version): v.tags for v in client.search_model_versions(f"name = '{name}'")}


def test_rollback_and_serving_the_champion_from_the_server(mlflow_server: str, project: Path) -> None:
    client = client_for(mlflow_server)
    before = aliases(client, MODELS[0])
    env = service_env(MLFLOW_TRACKING_URI=mlflow_server)
    cli([str(BIN / "onenip"), "promote", "--category", "plate", "--rollback"], project, env)
    assert aliases(client, MODELS[0])["champion"] == before["previous"]

    port = free_port()
    log = project.parent / "serve.log"
    server = start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODELS[0]}@champion", "--env-manager", "local",
                    "-h", "127.0.0.1", "-p", str(port)], log, env, cwd=project)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/ping", timeout=2).status_code == 200, server, log, "mlflow models serve")
        image = base64.b64encode(next((project / "data/widgets/plate/test/good").glob("*.png")).read_bytes()).decode()
        ok = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[image]]}}, timeout=60)
        assert ok.status_code == 200 and ok.json()["predictions"][0]["category"] == "plate", ok.text[:500]
        other = {"dataframe_split": {"columns": ["image", "category"], "data": [[image, "widget"]]}}
        refused = requests.post(f"{url}/invocations", json=other, timeout=60)
        assert refused.status_code == 400 and "onenip-widgets-widget@champion" in refused.text
    finally:
        stop(server)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes, started apart from any flow."""
    pytest.importorskip("prefect_dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = service_env()
    scheduler = start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                      tmp_path / "scheduler.log", env)  # fmt: skip
    workers = [
        start([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
              tmp_path / f"worker{i}.log", env)  # fmt: skip
        for i in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in [*workers, scheduler]:
            stop(process)


def test_external_dask_cluster_gives_the_same_results(
    dask_cluster: str, tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client

    from pipelines.flows import run_retrain

    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = run_retrain("params.yaml", project_root=root)
    write_params(root, pipeline={"task_runner": "dask", "dask_address": dask_cluster, "threads_per_worker": 1})
    on_cluster = run_retrain("params.yaml", project_root=root, force=True)
    with Client(dask_cluster, timeout=60) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert ran, "no task ran on the external scheduler"
    for category, outcome in local.items():
        assert on_cluster[category]["status"] == "promoted"
        assert on_cluster[category]["metrics"] == pytest.approx(outcome["metrics"], abs=1e-6), category


def test_prediction_log_on_the_team_postgresql(postgres: str, tmp_path: Path) -> None:
    """The team setup's prediction log: its own database on the PostgreSQL server MLflow uses."""
    import numpy as np

    from onenip.monitoring.log import LoggedPrediction, PredictionLog
    from onenip.monitoring.store import ImageStore

    url = postgres.rsplit("/", 1)[0] + "/onenip_predictions"
    log = PredictionLog(url, ImageStore(tmp_path / "store", 10**7))
    image = np.full((16, 16, 3), 90, np.uint8)
    log.submit([LoggedPrediction("plate", 0.7, 0.5, True, image, np.ones((4, 4), np.float32), station="line-1", model_version="models:/m/1")])
    log.flush()
    (row,) = log.predictions(station="line-1")
    assert row["model_version"] == "models:/m/1" and row["is_anomaly"] and log.failures == 0
    log.submit([LoggedPrediction("plate", 0.45, 0.5, False, image, None, station="line-1")])
    log.flush()
    log.add_verdict(row["id"], "normal", "ana", "reviewer", comment="glare")
    assert log.summary("plate", 1) | {} == {"predictions": 2, "alarms": 1, "alarm_rate": 0.5, "reviewed_alarms": 1, "false_alarm_rate": 1.0,
                                           "misses_found": 0, "reviewed": 1}  # fmt: skip
    assert [r["score"] for r in log.predictions(nearest_threshold=True)] == [0.45, 0.7]  # the queue's order, in PostgreSQL's SQL
    assert [r["score"] for r in log.predictions(review="unreviewed")] == [0.45]
