"""Real services started by the tests themselves (nothing mocked): PostgreSQL 15, an MLflow tracking
server on it with proxied artifacts, a Prefect server, Dask scheduler and workers. Each fixture skips
with the reason when its service truly cannot start here (no PostgreSQL binaries, no unprivileged user)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from tests.helpers.net import free_port

BIN = Path(sys.executable).parent
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}



def service_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything pointing at another Prefect/MLflow, venv bin first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    return env | QUIET_ENV | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"} | extra


def wait_until(ready: Callable[[], bool], process: subprocess.Popen | None, log: Path, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if ready():
                return
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temp dir on a free 127.0.0.1 port; yields the database URI for MLflow.

    PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` system user.
    """
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="onenip-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and 'runuser' is missing: cannot start PostgreSQL unprivileged")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*as_user, str(pg_bin / "initdb"), "-D", str(data), "-U", "onenip", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
    subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        # the prediction log and the Prefect server have their own databases on the same server
        for database in ("mlflow", "onenip_predictions", "prefect"):
            subprocess.run([*as_user, str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "onenip", database],
                           check=True, capture_output=True)  # fmt: skip
        # SQLAlchemy 2.1 would pick the psycopg (3) driver for postgresql://; the driver installed is psycopg2
        yield f"postgresql+psycopg2://onenip@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on the PostgreSQL store, artifacts proxied (``--serve-artifacts``)."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver (pip install -e '.[team]') is missing")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = folder / "server.log"
    process = start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres, "--serve-artifacts",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        log, service_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, process, log, "mlflow server")
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def prefect_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on its own PostgreSQL database, as a team runs it; yields (API URL, env
    pointing at it). On its default SQLite (one writer at a time) it answered 503 on a loaded 2-core machine."""
    pytest.importorskip("asyncpg", reason="Prefect's PostgreSQL driver (asyncpg) is missing")
    psycopg2 = pytest.importorskip("psycopg2", reason="the PostgreSQL driver (pip install -e '.[team]') is missing")
    folder = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = service_env(PREFECT_HOME=str(folder / "home"), PREFECT_API_URL=api)
    database = postgres.rsplit("/", 1)[0] + "/prefect"  # postgresql+psycopg2://...; the server's driver is asyncpg
    server_env = env | {"PREFECT_API_DATABASE_CONNECTION_URL": database.replace("+psycopg2", "+asyncpg")}
    log = folder / "server.log"
    process = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"], log, server_env)
    try:
        wait_until(lambda: requests.get(f"{api}/health", timeout=2).status_code == 200, process, log, "prefect server")
        with contextlib.closing(psycopg2.connect(database.replace("+psycopg2", ""))) as db:
            cursor = db.cursor()
            cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'")
            assert cursor.fetchone() == (1,), "the Prefect server did not create its tables in PostgreSQL"
        yield api, env
    finally:
        stop(process)
