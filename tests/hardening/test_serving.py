"""`mlflow models serve -m models:/<name>@champion --env-manager local`, offline, on 127.0.0.1: real
images score like `onenip predict`; bad payloads get a clear 400 and the server stays up."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from tests.helpers.net import free_port, wait_until_up

pytestmark = pytest.mark.slow
MODEL = "models:/onenip-widgets-plate@champion"



@pytest.fixture(scope="module")
def server(registered_project: Path) -> Iterator[str]:
    port = free_port()
    # `onenip serve` from a folder inside the project, in a shell with nothing set: it finds the project's
    # store and puts this environment's bin on PATH for the server itself
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    log = (registered_project / "serve.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "onenip"), "serve", MODEL, "--port", str(port)],
        cwd=registered_project / "data", env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, {f"{url}/ping": ""}, registered_project / "serve.log")
    except AssertionError as error:
        process.kill()
        pytest.fail(f"model server did not start: {error}")
    yield url
    process.terminate()
    process.wait(timeout=30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(url: str, payload: object) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=120)


def frame(*images: str, columns: tuple[str, ...] = ("image",)) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": [[image] for image in images]}}


def test_served_scores_match_predict(server: str, registered_project: Path, tmp_path: Path) -> None:
    from onenip.config import load_params
    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.registry import resolve_model

    images = sorted((registered_project / "data/widgets/plate/test").rglob("*.png"))[:3]
    response = post(server, frame(*(b64(p.read_bytes()) for p in images)) | {"params": {"return_map": True}})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    model_dir, category, *_ = resolve_model(MODEL, load_params(registered_project / "params.yaml"), registered_project)
    local = TorchPredictor.load(model_dir, category).predict([Image.open(p).convert("RGB") for p in images])
    for row, expected in zip(rows, local, strict=True):
        assert row["score"] == pytest.approx(expected.score, rel=1e-5)
        assert row["is_anomaly"] == expected.is_anomaly and row["category"] == "plate"
        assert len(row["anomaly_map"]) == 64


def test_bad_payloads_get_clear_errors_and_server_stays_up(server: str, registered_project: Path) -> None:
    good = next((registered_project / "data/widgets/plate/test/good").glob("*.png")).read_bytes()
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    cases = {
        "not an image": (frame(b64(b"hello, this is text")), "Cannot decode"),
        "truncated PNG": (frame(b64(good[: len(good) // 2])), "Cannot decode"),
        "not base64": (frame("%%%not-base64%%%"), "base64"),
        "wrong field": (frame(b64(good), columns=("img",)), "image"),
        "20000x20000": (frame(b64(huge.getvalue())), "pixels"),
        "empty batch": ({"dataframe_split": {"columns": ["image"], "data": []}}, ""),
        "unknown category": ({"dataframe_split": {"columns": ["image", "category"], "data": [[b64(good), "gizmo"]]}}, "gizmo"),
    }
    for name, (payload, expected) in cases.items():
        response = post(server, payload)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:500])
        assert expected.lower() in response.text.lower(), (name, response.text[:500])
        assert requests.get(f"{server}/ping", timeout=5).status_code == 200, f"server down after {name}"
    response = requests.post(f"{server}/invocations", data=b"\x00\x01garbage", headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500
    assert post(server, frame(b64(good))).status_code == 200


def test_a_version_serves_only_its_own_category(server: str, registered_project: Path) -> None:
    """The gate cannot be bypassed: the plate champion is a unified network that also knows 'widget',
    but widget images must go to widget's own (gated) model, so the plate version refuses them."""
    good = next((registered_project / "data/widgets/widget/test/good").glob("*.png")).read_bytes()
    response = post(server, {"dataframe_split": {"columns": ["image", "category"], "data": [[b64(good), "widget"]]}})
    assert response.status_code == 400, response.text[:500]
    assert "serves category 'plate' only" in response.text
    assert "models:/onenip-widgets-widget@champion" in response.text
    mixed = {"dataframe_split": {"columns": ["image", "category"], "data": [[b64(good), "plate"], [b64(good), "widget"]]}}
    assert post(server, mixed).status_code == 400  # no partial answer that slips the other category through
    own = post(server, {"dataframe_split": {"columns": ["image", "category"], "data": [[b64(good), "plate"]]}})
    assert own.status_code == 200 and own.json()["predictions"][0]["category"] == "plate"


def test_ui_starts_both_interfaces_on_the_project_and_stops_both(registered_project: Path, tmp_path: Path) -> None:
    import signal

    ports = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    log = (tmp_path / "ui.log").open("w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "onenip"), "ui", "--mlflow-port", str(ports[0]), "--prefect-port",
                                str(ports[1])], cwd=registered_project / "data", env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    checks = {f"http://127.0.0.1:{ports[0]}/api/2.0/mlflow/registered-models/search": "onenip-widgets-plate",
              f"http://127.0.0.1:{ports[1]}/api/health": "true"}  # fmt: skip
    try:
        wait_until_up(process, checks, tmp_path / "ui.log", timeout=240)
        output = (tmp_path / "ui.log").read_text()
        assert f"http://127.0.0.1:{ports[0]}" in output and f"http://127.0.0.1:{ports[1]}" in output
        assert str(registered_project / "mlflow.db") in output.replace("\n", "")  # the project's store, found from data/
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C (handled even where the test runner's shell ignores SIGINT)
        process.wait(timeout=90)
    import psutil

    for port in ports:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if any(str(port) in " ".join(p.info["cmdline"] or []) for port in ports)]  # fmt: skip
    assert not leftovers, f"processes left running: {leftovers}"
