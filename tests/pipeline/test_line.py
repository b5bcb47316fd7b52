"""On the line, end to end, nothing mocked: serve a champion with the prediction log on, send images
from two stations, review them over HTTP (login, CSRF, roles), apply the verdicts to the data (GX, a
new DVC version), retrain that category through its gate, change the threshold without retraining,
and watch `monitor` fire on darkened images and stay quiet on normal traffic."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import uvicorn
from PIL import Image

from onenip.config import load_params
from onenip.monitoring.log import open_log
from tests.pipeline.conftest import write_params
from tests.pipeline.test_readme import invoke, served
from tests.helpers.net import free_port

pytestmark = pytest.mark.slow
MODEL = "models:/onenip-widgets-plate@champion"



def wait_for(condition, seconds: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def send(port: int, paths: list[Path], station: str, **params: object) -> list[dict]:
    records = [{"image": base64.b64encode(p.read_bytes()).decode(), "station": station} for p in paths]
    response = requests.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": records, "params": params}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def registered_tags(project: Path) -> dict[str, str]:
    from onenip import registry

    return registry.connect(load_params(project / "params.yaml"), project).get_model_version("onenip-widgets-plate", "1").tags


def mirrored(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{i}-{path.name}")
    return sorted(folder.glob("*.png"))


def csrf_of(page: str) -> str:
    return page.split('name="csrf" value="')[1].split('"')[0]


def review_server(project: Path, port: int) -> uvicorn.Server:
    from onenip.cli_operations import build_review_app

    server = uvicorn.Server(uvicorn.Config(build_review_app(load_params(project / "params.yaml"), project), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for(lambda: server.started)
    return server


def test_line_end_to_end(tmp_path: Path, project: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    # image labels only, as ELPV: a confirmed defect becomes a test anomaly without a mask (a category
    # with pixel masks keeps such a verdict out of its data: evaluation scores it on pixels)
    shutil.rmtree(tmp_path / "source" / "plate" / "ground_truth")
    write_params(project, monitoring={"drift_min_images": 8})
    assert invoke(["run"], capsys)[0] == 0
    for name, role, password in (("ana", "reviewer", "reviewer-pass"), ("lee", "lead", "lead-pass-1")):
        assert invoke(["review", "add-user", name, "--role", role, "--password", password], capsys)[0] == 0
    plate = project / "data" / "widgets" / "plate"
    # parts the line sees: new images (mirrored), not files of the dataset (GX would refuse a duplicate)
    good = mirrored(sorted((plate / "test" / "good").glob("*.png")), tmp_path / "line" / "good")
    bad = mirrored(sorted(p for p in (plate / "test").glob("*/*.png") if p.parent.name != "good"), tmp_path / "line" / "bad")

    # 1. served predictions carry the version and threshold, and land in the log with their station
    port = free_port()
    with served(f"onenip serve {MODEL} --port {port}", project):
        answers = send(port, good, "A") + send(port, bad, "B")
        own = send(port, good[:1], "A", threshold=1e-6)  # a request may carry its own threshold
        assert own[0]["threshold"] == 1e-6 and own[0]["is_anomaly"]
        log = open_log(load_params(project / "params.yaml"), project)
        wait_for(lambda: len(log.predictions()) == len(good) + len(bad) + 1)
    assert {a["model_version"] for a in answers} == {"models:/onenip-widgets-plate/1"} and all(a["prediction_id"] for a in answers)
    rows = {r["id"]: r for r in log.predictions()}
    assert {r["station"] for r in rows.values()} == {"A", "B"} and all(r["image_path"] and r["heatmap_path"] for r in rows.values())

    # 2. review over HTTP: refusals first (nothing written), then a false alarm and a defect
    server = review_server(project, review_port := free_port())
    base, normal_id, defect_id = f"http://127.0.0.1:{review_port}", answers[0]["prediction_id"], answers[-1]["prediction_id"]
    try:
        reviewer, lead = requests.Session(), requests.Session()
        assert reviewer.post(f"{base}/login", data={"username": "ana", "password": "wrong"}).status_code == 401
        assert reviewer.post(f"{base}/login", data={"username": "ana", "password": "reviewer-pass"}).status_code == 200
        token = csrf_of(reviewer.get(f"{base}/").text)
        assert reviewer.post(f"{base}/item/{normal_id}/verdict", data={"label": "normal"}).status_code == 403
        assert reviewer.post(f"{base}/item/unknown/verdict", data={"label": "normal", "csrf": token}).status_code == 404
        assert reviewer.get(f"{base}/image/..%2F..%2Fparams.yaml").status_code == 404
        assert reviewer.post(f"{base}/apply/plate", data={"csrf": token}).status_code == 403
        assert reviewer.post(f"{base}/threshold/plate", data={"csrf": token, "model": MODEL, "value": "0.1"}).status_code == 403
        assert not log.verdicts(normal_id) and "onenip.threshold" not in registered_tags(project)
        assert reviewer.post(f"{base}/item/{normal_id}/verdict", data={"label": "normal", "comment": "glare", "csrf": token}).status_code == 200
        assert reviewer.post(f"{base}/item/{defect_id}/verdict", data={"label": "defect", "defect_type": "scratch", "csrf": token}).status_code == 200
        assert lead.post(f"{base}/login", data={"username": "lee", "password": "lead-pass-1"}).status_code == 200
        set_here = lead.post(f"{base}/threshold/plate", data={"csrf": csrf_of(lead.get(f"{base}/").text), "model": MODEL, "fpr": "0.5"})
        assert set_here.status_code == 200 and "fpr 0.5" in set_here.text, set_here.text
        assert registered_tags(project)["onenip.threshold_set_by"] == "lee"
        before = (project / "data" / "widgets.dvc").read_text()
        applied = lead.post(f"{base}/apply/plate", data={"csrf": csrf_of(lead.get(f"{base}/").text)})
        assert applied.status_code == 200 and "added 1 to test/scratch, 1 to train/good" in applied.text, applied.text
    finally:
        server.should_exit = True
    assert (project / "data" / "widgets.dvc").read_text() != before  # a new DVC version of the data
    assert list((project / "runs" / "feedback").glob("*/validation.json"))  # GX ran and passed
    assert len(list((plate / "train" / "good").glob("feedback-*.png"))) == 1 and len(list((plate / "test" / "scratch").glob("feedback-*.png"))) == 1

    # 3. the retrain sees plate's new data and retrains it alone, through its gate
    code, output = invoke(["run"], capsys)
    assert code == 0 and "plate" in output, output
    from onenip import registry

    client = registry.connect(load_params(project / "params.yaml"), project)
    assert len(client.search_model_versions("name = 'onenip-widgets-plate'")) == 2
    assert len(client.search_model_versions("name = 'onenip-widgets-widget'")) == 1
    assert client.get_model_version("onenip-widgets-plate", "2").tags["onenip.gate"] in ("passed", "failed")

    # 4. the threshold changes a verdict without retraining
    def verdicts() -> list[bool]:
        out = tmp_path / f"predict-{time.monotonic_ns()}"
        assert invoke(["predict", "--model", MODEL, str(plate / "test" / "good"), "--out", str(out), "--no-heatmaps"], capsys)[0] == 0
        return pd.read_csv(out / "predictions.csv")["is_anomaly"].tolist()

    assert invoke(["threshold", MODEL, "--value", "-1000", "--user", "lee"], capsys)[0] == 0
    assert all(verdicts())
    code, output = invoke(["threshold", MODEL, "--fpr", "0.01", "--user", "lee"], capsys)
    assert code == 0 and "fpr 0.01" in output and "-1000" in output, output  # the history shows the earlier value
    # normal images that -1000 flagged are cleared (most of them: three test normals of a one-epoch tiny
    # model against a 1 % FPR threshold of its few held-out normals)
    assert sum(verdicts()) <= 1

    # 5. monitor: quiet on normal traffic, fires on darkened images of the same parts
    train = sorted((plate / "train" / "good").glob("*.png"))
    assert invoke(["predict", "--model", MODEL, str(plate / "train" / "good"), "--log", "--station", "line-1", "--out", str(tmp_path / "p1")], capsys)[0] == 0
    code, output = invoke(["monitor"], capsys)
    assert code == 0, output
    dark = tmp_path / "dark"
    dark.mkdir()
    for path in train:
        Image.fromarray((np.asarray(Image.open(path).convert("RGB")) * 0.3).astype(np.uint8)).save(dark / path.name)
    assert invoke(["predict", "--model", MODEL, str(dark), "--log", "--station", "line-2", "--out", str(tmp_path / "p2")], capsys)[0] == 0
    code, output = invoke(["monitor"], capsys)
    assert code == 1 and "line-2" in output and "brightness" in output and "line-1" not in output, output
