"""The Prefect ``retrain`` flow end to end on a tiny project (1 epoch of a tiny model per category).

Covers: MLflow parent/child runs with metrics, per-epoch losses, artifacts and tags; registry
versions and aliases; a forced rerun against an impossible gate; the cache hit on an unchanged
rerun; retraining exactly the category whose data changed; a validation failure that stops only its
category; the Dask task runner with a 2-worker LocalCluster; the registered pyfunc model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from onenip import registry
from onenip.config import load_params
from onenip.data.versioning import read_data_version
from tests.helpers.project import write_params

pytestmark = pytest.mark.slow


def run(project: Path, **kwargs: object) -> dict[str, dict]:
    from pipelines.flows import run_retrain

    return run_retrain("params.yaml", project_root=project, **kwargs)


def client_for(project: Path):  # noqa: ANN201
    return registry.connect(load_params(project / "params.yaml"), project)


def aliases(client, name: str) -> dict[str, str]:  # noqa: ANN001
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_end_to_end_then_cache_hit_then_impossible_gate(project: Path, prefect_harness: None) -> None:
    first = run(project)
    assert {c: o["status"] for c, o in first.items()} == {"plate": "promoted", "widget": "promoted"}
    client = client_for(project)
    data_version = read_data_version(project / "data" / "widgets.dvc")

    # MLflow: one experiment, a parent run with the params file, a child run per category
    outcome = first["plate"]
    run_ = client.get_run(outcome["run_id"])
    parent_id = run_.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).data.tags["onenip.data_version"] == data_version
    assert run_.data.tags["onenip.data_version"] == data_version
    assert run_.data.tags["onenip.git_commit"]
    assert run_.data.tags["onenip.prefect_flow_run_id"] not in ("", "none")
    assert run_.data.params["train.epochs"] == "1" and run_.data.params["model.embed_dim"] == "16"
    import json

    evaluated = json.loads(Path(client.download_artifacts(outcome["run_id"], "evaluation/metrics.json")).read_text())
    assert run_.data.metrics["image_AUROC"] == pytest.approx(evaluated["image_AUROC"])  # the evaluation's, logged as is
    assert run_.data.metrics["pixel_AUPRO"] == pytest.approx(evaluated["pixel_AUPRO"])
    history = client.get_metric_history(outcome["run_id"], "train_loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for folder in ("evaluation", "synthesis", "validation", "config")
                 for a in client.list_artifacts(outcome["run_id"], folder)}  # fmt: skip
    for expected in ("evaluation/curves.png", "evaluation/metrics.json", "evaluation/metrics.md", "synthesis/plate.png",
                     "validation/validation.json", "config/params.effective.yaml"):  # fmt: skip
        assert expected in artifacts, sorted(artifacts)
    assert any(a.path.startswith("config/params") for a in client.list_artifacts(parent_id, "config"))

    # the Prefect artifact of the category: metrics, gate decision with reasons, run and model URIs
    from prefect.artifacts import Artifact

    artifact = Artifact.get("onenip-widgets-plate")
    assert artifact is not None
    assert "image_AUROC" in artifact.data and "Gate decision" in artifact.data
    assert outcome["run_id"] in artifact.data and "models:/onenip-widgets-plate/1" in artifact.data

    # registry: version 1 is champion, tagged with the decision and data version
    name = "onenip-widgets-plate"
    assert aliases(client, name) == {"champion": "1"}
    version = client.get_model_version(name, "1")
    assert version.tags["onenip.gate"] == "passed" and version.tags["onenip.data_version"] == data_version
    # the served graph was checked against torch on the category's test images, and timed
    # (ONNX Runtime and OpenVINO both measured: the version is served by the faster one that agrees)
    served_by = version.tags["onenip.runtime"]
    assert served_by in ("onnx", "openvino") and version.tags["onenip.export_parity"] == "passed"
    assert f"{served_by} export agrees with torch on 6 images" in version.tags["onenip.export_parity_detail"]  # the tiny test split
    assert float(version.tags["onenip.export_p50_ms"]) > 0
    assert any(r.startswith(f"export parity: {served_by} export agrees") for r in json.loads(version.tags["onenip.gate_reasons"]))
    # what the score is made of, and what the network adds: tags and the model card
    run_dir = next(p.parent for p in (project / "runs" / "pipeline" / "widgets").glob("*/model/onenip.json")
                   if json.loads(p.read_text())["categories"] == ["plate"])  # fmt: skip
    saved = json.loads((run_dir / "onenip.json").read_text())
    assert json.loads(version.tags["onenip.scoring_rule"]) == saved["scoring"]["plate"]
    assert float(version.tags["onenip.network_weight"]) == pytest.approx(sum(saved["scoring"]["plate"]["weights"][:3]))
    card = Path(client.download_artifacts(outcome["run_id"], "model_card.md")).read_text()
    validated = "plate" in (saved["metadata"]["selection"].get("metrics") or {})  # else too few held-out normals: the fallback
    assert "## What the score is made of" in card and ("| chosen |" if validated else "| fallback: too few held-out normals to validate |") in card
    adds = saved["metadata"]["selection"]["network_adds"].get("plate")
    if adds:  # the tiny project validates plate: the difference and its standard error are on the version
        assert version.tags["onenip.network_adds"] == f"{adds['difference']:+.4f} (SE {adds['standard_error']:.4f})"

    # the registered pyfunc model loads offline and scores like the library does
    import mlflow.pyfunc

    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.pyfunc import encode_image

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.unwrap_python_model().predictor.runtime == served_by  # the runtime registration chose
    image_path = sorted((project / "data" / "widgets" / "plate" / "test").rglob("*.png"))[0]
    served = model.predict(pd.DataFrame({"image": [encode_image(image_path)]}), params={"return_map": True})
    local = TorchPredictor.load(run_dir).predict([np.asarray(Image.open(image_path).convert("RGB"))], "plate")[0]
    assert served["score"][0] == pytest.approx(local.score, rel=1e-4, abs=1e-4)  # served by the exported graph
    assert np.asarray(served["anomaly_map"][0]).shape == (64, 64)

    # unchanged data, params and code: nothing retrains, no new versions
    second = run(project)
    assert {o["status"] for o in second.values()} == {"up-to-date"}
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # forced retrain against a gate no model can pass: challenger, champion unchanged
    write_params(project, gates={"minimum": {"image_AUROC": 1.01}})
    third = run(project, force=True)
    assert third["plate"]["status"] == "challenger"
    assert aliases(client, name) == {"champion": "1", "challenger": "2"}
    assert "minimum 1.01" in client.get_model_version(name, "2").tags["onenip.gate_reasons"]


def test_changed_data_retrains_only_that_category_and_bad_data_stops_only_its_own(project: Path, prefect_harness: None) -> None:
    run(project)
    client = client_for(project)
    before = read_data_version(project / "data" / "widgets.dvc")
    good = project / "data" / "widgets" / "plate" / "train" / "good"
    shutil.copy(good / "000.png", good / "new_000.png")
    Image.open(good / "001.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(good / "new_000.png")
    bad = project / "data" / "widgets" / "widget" / "train" / "good" / "broken.png"
    bad.write_bytes(b"")  # a zero-byte image lands in the other category
    # the subject is which category retrains, not the regression gate (tested in test_registry): on 6 test
    # images of a 10-image category a 0.01 regression bound is a coin flip
    write_params(project, gates={"max_regression": 1.0})
    outcomes = run(project)
    assert outcomes["plate"]["status"] == "promoted" and outcomes["plate"]["version"] == "2"
    assert outcomes["widget"]["status"] == "validation-failed"
    assert read_data_version(project / "data" / "widgets.dvc") != before
    assert len(client.search_model_versions("name = 'onenip-widgets-widget'")) == 1  # not retrained
    failed_run = client.get_run(outcomes["widget"]["run_id"])
    assert failed_run.info.status == "FAILED"
    assert any(a.path.startswith("validation") for a in client.list_artifacts(failed_run.info.run_id))
    bad.unlink()
    again = run(project)  # the widget data is back to what version 1 was trained on
    assert again["widget"]["status"] == "up-to-date" and again["plate"]["status"] == "up-to-date"


def test_dask_runner_with_two_workers(project: Path, prefect_harness: None) -> None:
    pytest.importorskip("prefect_dask")
    write_params(project, pipeline={"task_runner": "dask", "dask_workers": 2, "threads_per_worker": 1})
    outcomes = run(project)
    assert {o["status"] for o in outcomes.values()} == {"promoted"}
    assert aliases(client_for(project), "onenip-widgets-widget") == {"champion": "1"}
