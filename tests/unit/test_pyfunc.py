"""The pyfunc wrapper on a saved (untrained) tiny detector: DataFrame and array inputs, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from onenip.config import ModelParams
from onenip.models.detector import OneNIPDetector
from onenip.pyfunc import MODEL_ARTIFACT, OneNIPPyfunc, encode_image
from tests.helpers.tiny import TINY_MODEL


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OneNIPPyfunc:
    folder = tmp_path_factory.mktemp("model")
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate", "widget"], pretrained=False)
    detector.score_threshold.fill_(0.5)
    detector.save(folder)
    wrapper = OneNIPPyfunc()
    config = {"category": "plate", "model_name_pattern": "onenip-demo-{category}"}
    wrapper.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(folder)}, model_config=config))
    return wrapper


def image(seed: int, size: tuple[int, int] = (40, 50)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)


def test_dataframe_and_array_inputs_agree(model: OneNIPPyfunc) -> None:
    images = [image(0), image(1, (70, 30))]
    frame = model.predict(None, pd.DataFrame({"image": [encode_image(i) for i in images]}))
    # the version and the log's id are None outside `onenip serve` (no registered version, no log)
    assert list(frame.columns) == ["category", "score", "threshold", "is_anomaly", "model_version", "prediction_id"]
    assert frame["category"].tolist() == ["plate", "plate"] and frame["threshold"].eq(0.5).all()
    single = model.predict(None, images[0])
    assert single["score"][0] == pytest.approx(frame["score"][0], rel=1e-5)
    named = model.predict(None, pd.DataFrame({"image": [encode_image(images[0])] * 2, "category": ["plate", None]}),
                          params={"return_map": True})  # fmt: skip
    assert named["category"].tolist() == ["plate", "plate"]
    assert np.asarray(named["anomaly_map"][0]).shape == (64, 64)


def test_a_version_serves_only_its_registered_category(model: OneNIPPyfunc) -> None:
    """The network also knows 'widget', whose own model may have failed its gate: no way round it."""
    frame = pd.DataFrame({"image": [encode_image(image(0))] * 2, "category": ["plate", "widget"]})
    with pytest.raises(MlflowException, match=r"serves category 'plate' only, not 'widget'") as error:
        model.predict(None, frame)
    assert "models:/onenip-demo-widget@champion" in error.value.message
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"  # the scoring server's 400


@pytest.mark.parametrize(
    ("model_input", "message"),
    [
        (pd.DataFrame({"img": ["x"]}), "column 'image'"),
        (pd.DataFrame({"image": []}), "Empty batch"),
        (pd.DataFrame({"image": ["@@not base64@@"]}), "not valid base64"),
        (pd.DataFrame({"image": [encode_image(image(0))], "category": ["gizmo"]}), "gizmo"),
        (pd.DataFrame({"image": [encode_image(image(0))] * 65}), "at most 64"),
        ("a path/to/file.png", "Unsupported input type"),
    ],
)
def test_bad_inputs_are_400_errors_with_a_reason(model: OneNIPPyfunc, model_input: object, message: str) -> None:
    with pytest.raises(MlflowException, match=message) as error:
        model.predict(None, model_input)
    assert error.value.get_http_status_code() == 400


def test_model_folder_is_safetensors_and_json_only(tmp_path: Path) -> None:
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate"], pretrained=False)
    detector.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "onenip.json"]


def test_onnx_runtime_scores_like_torch(model: OneNIPPyfunc, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "m"
    model.predictor.detector.save(folder)
    fast = OneNIPPyfunc()
    fast.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(folder)}, model_config={"category": "plate", "runtime": "onnx"}))
    assert fast.predictor.runtime == "onnx"
    frame = pd.DataFrame({"image": [encode_image(image(3)), encode_image(image(4, (90, 20)))]})
    expected = model.predict(None, frame, params={"return_map": True})
    got = fast.predict(None, frame, params={"return_map": True})
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got["anomaly_map"][1]), np.asarray(expected["anomaly_map"][1]), atol=1e-4)
    assert got["is_anomaly"].tolist() == expected["is_anomaly"].tolist()


def test_exported_graph_serves_without_building_the_torch_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from onenip.export import export_category
    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.serving import ExportedPredictor
    from onenip.serving import load_predictor

    folder = tmp_path / "m"
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate", "widget"], pretrained=False)
    detector.score_threshold.fill_(0.5)
    detector.save(folder)
    export_category(detector, "plate", folder / "export" / "plate")
    light = load_predictor(folder, served_category="plate", runtime="onnx")
    assert isinstance(light, ExportedPredictor) and light.runtime == "onnx"
    full = TorchPredictor.load(folder, "plate", runtime="torch")
    picture = image(5)
    assert light.predict([picture])[0].score == pytest.approx(full.predict([picture])[0].score, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="serves category 'plate' only"):
        light.predict([picture], "widget")
    with pytest.raises(ValueError, match="Unknown category 'bolt'"):
        load_predictor(folder, served_category="bolt", runtime="onnx")
    assert isinstance(load_predictor(folder, "widget", runtime="onnx"), TorchPredictor)  # no export: full model
    assert isinstance(load_predictor(folder, "plate", runtime="torch"), TorchPredictor)
