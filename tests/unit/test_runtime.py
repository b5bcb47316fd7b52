"""The torch-free serving path: numpy preprocessing with torch's arithmetic, exported graphs that score
like the torch model (letterboxed too), and a fresh interpreter that serves a model without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from onenip.config import ModelParams
from onenip.data.geometry import InputGeometry
from onenip.data.resample import resize_chw, resize_weights
from onenip.models.detector import OneNIPDetector
from tests.helpers.tiny import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
SIZES = [((300, 300), (256, 256)), ((1024, 626), (256, 240)), ((100, 80), (256, 272)), ((512, 1250), (160, 400)),
         ((7, 9), (3, 20)), ((33, 17), (16, 16)), ((256, 256), (256, 255))]  # fmt: skip


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize(("source", "target"), SIZES)
def test_numpy_resize_is_torch_interpolate(source: tuple[int, int], target: tuple[int, int], antialias: bool) -> None:
    image = np.random.default_rng(sum(source)).random((3, *source), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(image)[None], size=target, mode="bilinear", align_corners=False, antialias=antialias)[0]
    np.testing.assert_allclose(resize_chw(image, target, antialias=antialias), expected.numpy(), atol=5e-5)


@pytest.mark.parametrize(("source", "target"), SIZES[:4])
def test_a_grey_image_resized_once_is_the_same_as_per_channel(source: tuple[int, int], target: tuple[int, int]) -> None:
    grey = np.random.default_rng(sum(source)).random(source, dtype=np.float32)
    image = np.stack([grey, grey, grey])
    expected = F.interpolate(torch.from_numpy(image)[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0]
    resized = resize_chw(image, target, antialias=True)
    assert resized.shape == (3, *target) and resized.flags.writeable
    np.testing.assert_allclose(resized, expected.numpy(), atol=5e-5)
    nearly = image.copy()
    nearly[2, 0, 0] += 0.5  # one pixel differs: every channel is resized on its own
    np.testing.assert_allclose(resize_chw(nearly, target, antialias=True)[2], F.interpolate(
        torch.from_numpy(nearly)[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0, 2].numpy(), atol=5e-5)


def test_resize_weights_rows_sum_to_one_and_identity_keeps_the_image() -> None:
    for source, target in SIZES:
        np.testing.assert_allclose(resize_weights(source[0], target[0]).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(resize_weights(5, 5), np.eye(5, dtype=np.float32))
    with pytest.raises(ValueError, match="sizes must be positive"):
        resize_weights(0, 4)


@pytest.mark.parametrize("geometry", [InputGeometry(64, 64), InputGeometry(48, 80), InputGeometry(64, 48, letterbox=True)])
def test_geometry_array_twins_equal_the_tensor_methods(geometry: InputGeometry) -> None:
    for height, width in [(90, 40), (30, 70), (64, 64)]:
        image = np.random.default_rng(height).random((3, height, width), dtype=np.float32)
        np.testing.assert_allclose(geometry.apply_array(image), geometry.apply(torch.from_numpy(image)).numpy(), atol=5e-5)
        np.testing.assert_array_equal(geometry.valid_mask_array(height, width), geometry.valid_mask(height, width).numpy())


def _saved_model(folder: Path, geometries: dict[str, InputGeometry] | None = None) -> OneNIPDetector:
    from onenip.export import export_category

    from onenip.models.scoring import ScoringRule

    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate", "tile"], geometries, pretrained=False)
    detector.score_threshold.fill_(0.5)
    generator = torch.Generator().manual_seed(7)
    for k, category in enumerate(detector.categories):  # the memory map in the graph too
        detector.set_memory(k, torch.randn(TINY_MODEL["memory_patches"], detector.feature_extractor.num_fine_features, generator=generator))
        detector.scoring[category] = ScoringRule((0.5, 0.5, 0.0, 0.0, 0.5), 1.0, 4)
    detector.save(folder)
    for category in detector.categories:
        export_category(detector, category, folder / "export" / category)
    return detector


def test_exported_predictor_scores_like_torch_on_letterboxed_and_squashed_inputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.serving import ExportedPredictor
    from onenip.serving import load_predictor

    _saved_model(tmp_path, {"tile": InputGeometry(48, 80, letterbox=True)})
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, size=shape, dtype=np.uint8) for shape in [(90, 40, 3), (30, 70, 3), (64, 64)]]
    for category in ("plate", "tile"):
        exported = load_predictor(tmp_path, category, runtime="onnx")
        assert isinstance(exported, ExportedPredictor)
        reference = TorchPredictor.load(tmp_path, category, runtime="torch").predict(images, return_maps=True)
        got = exported.predict(images, return_maps=True)
        for a, b in zip(got, reference, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4) and a.is_anomaly == b.is_anomaly
            assert a.anomaly_map.shape == b.anomaly_map.shape
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-4)


def test_serving_an_exported_model_never_imports_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    _saved_model(tmp_path)
    script = (
        "import sys, numpy as np\n"
        "from types import SimpleNamespace\n"
        "from onenip.pyfunc import MODEL_ARTIFACT, OneNIPPyfunc\n"
        "model = OneNIPPyfunc()\n"
        f"model.load_context(SimpleNamespace(artifacts={{MODEL_ARTIFACT: {str(tmp_path)!r}}}, model_config={{'category': 'plate', 'runtime': 'onnx'}}))\n"
        "frame = model.predict(None, np.zeros((40, 50, 3), np.uint8))\n"
        "assert frame['category'].tolist() == ['plate'], frame\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False", "the exported path imported torch"


def test_a_broken_or_stale_export_falls_back_to_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import json

    from onenip.export import export_category
    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.serving import ExportedPredictor
    from onenip.serving import load_predictor

    detector = _saved_model(tmp_path)
    export_category(detector, "plate", tmp_path / "export" / "plate", weights=tmp_path / "model.safetensors")
    assert isinstance(load_predictor(tmp_path, "plate", runtime="onnx"), ExportedPredictor)
    meta_path = tmp_path / "export" / "plate" / "export.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"weights_sha256": "0" * 64}))  # the weights changed since the export
    assert isinstance(load_predictor(tmp_path, "plate", runtime="onnx"), TorchPredictor)
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "export" / "plate" / meta["onnx"]).unlink()  # the graph file is gone
    assert isinstance(load_predictor(tmp_path, "plate", runtime="onnx"), TorchPredictor)


def test_several_exported_categories_without_a_default_need_one_named(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from onenip.serving import ExportedPredictor
    from onenip.serving import load_predictor

    _saved_model(tmp_path)
    predictor = load_predictor(tmp_path, runtime="onnx")
    assert isinstance(predictor, ExportedPredictor) and predictor.default_category is None
    picture = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="knows several categories"):
        predictor.predict([picture])
    assert predictor.predict([picture], "tile")[0].category == "tile"


def test_non_rgb_images_are_converted_like_decoded_files() -> None:
    from PIL import Image

    from onenip.data.manifest import to_rgb
    from onenip.serving import as_rgb_uint8

    grey16 = Image.fromarray(np.array([[0, 300], [40000, 65535]], dtype=np.uint16))
    grey = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8))
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 40))
    for image in (grey16, grey, rgba):
        converted = as_rgb_uint8(image)
        assert converted.shape == (2, 2, 3) and converted.dtype == np.uint8
        np.testing.assert_array_equal(converted, np.asarray(to_rgb(image)))
    assert as_rgb_uint8(grey16)[0, 1, 0] == round(300 * 255 / 65535)  # scaled by the dtype's range, no wrap-around


def test_maps_resize_to_the_image_like_torch() -> None:
    anomaly_map = np.random.default_rng(0).random((16, 20), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(anomaly_map)[None, None], size=(70, 90), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(resize_chw(anomaly_map, (70, 90), antialias=False), expected.numpy(), atol=5e-5)


def test_onenip_predict_on_an_exported_model_never_imports_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from PIL import Image

    _saved_model(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from onenip.cli import app\n"
        f"result = CliRunner().invoke(app, ['predict', {str(images)!r}, '--model', {str(tmp_path / 'model')!r}, '--out', {str(tmp_path / 'out')!r},"
        " '--runtime', 'onnx', '--category', 'tile'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False", "onenip predict imported torch"
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) == 2


def test_amp_covers_the_backbone_only_so_served_maps_are_the_calibrated_float32_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA ``predict`` runs under float16 autocast; the distance maps (|q|^2 + |b|^2 - 2 q.b and the like)
    must still be computed in float32, as calibration and evaluation computed them."""
    from onenip.serving.torch_predictor import TorchPredictor

    _saved_model(tmp_path)
    predictor = TorchPredictor.load(tmp_path, "plate", runtime="torch")
    detector, active, seen = predictor.detector, [], {}

    class RecordingAutocast:  # stands in for torch.autocast; records whether a block runs inside one
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> None:
            active.append(True)

        def __exit__(self, *exc: object) -> None:
            active.pop()

    extract, forward_features = detector.extract, detector.forward_features

    def recording_extract(images: torch.Tensor):  # noqa: ANN202
        seen["backbone under autocast"] = bool(active)
        return extract(images)

    def recording_forward_features(features, k, valid=None):  # noqa: ANN001, ANN202
        seen["maps under autocast"], seen["maps dtype"] = bool(active), features.coarse.dtype
        return forward_features(features, k, valid)

    monkeypatch.setattr(detector, "extract", recording_extract)
    monkeypatch.setattr(detector, "forward_features", recording_forward_features)
    monkeypatch.setattr(torch, "autocast", RecordingAutocast)
    predictor.predict([np.zeros((64, 64, 3), dtype=np.uint8)])
    assert seen == {"backbone under autocast": True, "maps under autocast": False, "maps dtype": torch.float32}


def test_onnx_sessions_flush_denormals_and_a_masked_softmax_stays_exact() -> None:
    """The attention's blocked logits (-inf) underflow to denormals in the softmax's exp; ONNX Runtime's
    sessions flush them to zero (4.0 -> 0.3 ms for a softmax of the mono graph's shape on this CPU, the
    full graph 23.6 -> 19.2 ms: benchmarks/README.md), and the probabilities stay those of numpy."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from onenip.runtime import onnx_session_options

    options = onnx_session_options(2)
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    shape = [2, 16, 16]
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape).astype(np.float32) * 30  # exp of the low ones is denormal
    logits[rng.random(shape) < 0.3] = -np.inf
    logits[..., 0] = 0.0  # no row fully blocked
    (found,) = session.run(None, {"x": logits})
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)
    assert (found[logits == -np.inf] == 0).all()
