"""The promotion gate's served-graph checks: parity of the export with torch, and its latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onenip.config import GateParams, ModelParams
from onenip.export_check import ExportCheck, check_export, compare_predictions, spread_sample
from onenip.gates import decide
from onenip.models.detector import OneNIPDetector
from onenip.models.scoring import ScoringRule
from onenip.serving import Prediction
from tests.helpers.tiny import TINY_MODEL

GOOD = {"image_AUROC": 0.95}


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, size=(48 + 4 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny detector whose threshold splits its own scores of ``pictures`` in half."""
    torch.manual_seed(0)
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate"], pretrained=False).eval()
    detector.set_memory(0, torch.randn(TINY_MODEL["memory_patches"], detector.feature_extractor.num_fine_features))
    detector.scoring["plate"] = ScoringRule((0.5, 0.25, 0.0, 0.0, 0.25), 1.0, 4)
    folder = tmp_path_factory.mktemp("model")
    detector.save(folder)
    from onenip.serving.torch_predictor import TorchPredictor

    scores = [p.score for p in TorchPredictor.load(folder, "plate").predict(pictures(8), "plate")]
    detector.score_threshold.fill_(float(np.median(scores)))
    detector.save(folder)
    return folder


def test_the_export_of_a_model_agrees_with_torch_and_is_timed(model_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    from onenip.pyfunc import export_for_serving
    from onenip.runtime import exported_runtimes

    runtimes = export_for_serving(model_dir, "plate")
    assert runtimes == exported_runtimes() and "onnx" in runtimes
    check = check_export(model_dir, "plate", pictures(8), runtime=runtimes, tolerance=1e-3, latency_repeats=5)
    assert check.runtime in runtimes and check.images == 8
    assert check.parity is True and check.flipped == 0
    # every other installed runtime was measured too, and the chosen one is the fastest that agrees
    assert {r for r, _, _ in check.others} == set(runtimes) - {check.runtime}
    assert all(check.p50_ms <= p50 for _, parity, p50 in check.others if parity)
    # float32 through two runtimes: far inside the tolerance, but not bit-identical arithmetic
    assert check.max_score_diff < 1e-4 and check.max_map_diff < 1e-4
    assert 0 < check.p50_ms < 5000
    tags = check.tags()
    assert tags["export_parity"] == "passed" and float(tags["export_p50_ms"]) == pytest.approx(check.p50_ms, abs=0.05)
    assert decide(GOOD, GateParams(minimum={"image_AUROC": 0.8}), has_masks=False, export=check).passed


def test_an_export_that_disagrees_with_torch_fails_the_gate(model_dir: Path, tmp_path: Path) -> None:
    """A graph exported from other weights but recorded as these (what a stale or broken export looks like)."""
    pytest.importorskip("onnxruntime")
    import shutil

    from onenip.export import export_category
    from onenip.runtime import EXPORT_FOLDER

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns(EXPORT_FOLDER))
    other = OneNIPDetector.load(folder)
    other.scoring["plate"] = ScoringRule((0.0, 0.0, 0.0, 0.0, 1.0), 1.0, 4)  # the memory map alone: every score moves
    export_category(other, "plate", folder / EXPORT_FOLDER / "plate", weights=folder / "model.safetensors")
    check = check_export(folder, "plate", pictures(8), tolerance=1e-3, latency_repeats=2)
    assert check.parity is False and check.max_score_diff > 1e-2
    decision = decide(GOOD, GateParams(minimum={"image_AUROC": 0.8}), has_masks=False, export=check)
    assert not decision.passed
    assert any(f.startswith("export parity:") and "DISAGREES" in f for f in decision.failures)
    assert check.tags()["export_parity"] == "failed"


def prediction(score: float, threshold: float = 1.0, value: float = 0.0) -> Prediction:
    return Prediction("plate", score, threshold, score > threshold, np.full((4, 4), value, dtype=np.float32))


def test_compare_predictions_in_threshold_units_and_flips_away_from_the_threshold() -> None:
    reference = [prediction(0.5, 2.0, 1.0), prediction(2.0005, 2.0), prediction(3.0, 2.0)]
    candidate = [prediction(0.51, 2.0, 1.02), prediction(1.9999, 2.0), prediction(1.9, 2.0)]
    score_diff, map_diff, flipped = compare_predictions(reference, candidate, tolerance=1e-3)
    assert score_diff == pytest.approx(1.1 / 2.0)  # the third image: 3.0 -> 1.9 at threshold 2
    assert map_diff == pytest.approx(0.02 / 2.0, rel=1e-5)
    # the second image's torch score sits within the tolerance of the threshold: its flip does not count
    assert flipped == 1


def test_a_nan_anywhere_fails_parity() -> None:
    reference = [prediction(0.5, 1.0, 0.2), prediction(0.7, 1.0, 0.2)]
    broken_map = prediction(0.5, 1.0, 0.2)
    broken_map.anomaly_map[1, 1] = np.nan
    assert compare_predictions(reference, [broken_map, prediction(0.7, 1.0, 0.2)], 1e-3)[1] == float("inf")
    assert compare_predictions(reference, [prediction(0.5, 1.0, 0.2), prediction(float("nan"), 1.0, 0.2)], 1e-3)[0] == float("inf")


def test_latency_limit_per_category_or_for_all() -> None:
    check = ExportCheck("plate", "onnx", 4, 1e-3, 1e-6, 1e-6, 0, 30.0)
    gates = GateParams(minimum={"image_AUROC": 0.8}, max_latency_ms={"plate": 25.0})
    slow = decide(GOOD, gates, has_masks=False, export=check)
    assert not slow.passed and slow.failures == ["served p50 30.0 ms (onnx, batch 1) > max_latency_ms 25"]
    assert decide(GOOD, gates.model_copy(update={"max_latency_ms": 35.0}), has_masks=False, export=check).passed
    other = ExportCheck("strip", "onnx", 4, 1e-3, 1e-6, 1e-6, 0, 30.0)
    assert decide(GOOD, gates, has_masks=False, export=other).passed  # no limit set for strip
    with pytest.raises(ValueError, match="max_latency_ms must be positive"):
        GateParams(max_latency_ms={"plate": 0})


def test_torch_served_version_has_no_parity_to_check() -> None:
    check = ExportCheck("plate", "torch", 4, 1e-3, None, None, 0, 80.0)
    assert check.parity is None and check.tags()["export_parity"] == "n/a"
    assert decide(GOOD, GateParams(minimum={"image_AUROC": 0.8}), has_masks=False, export=check).passed


def test_spread_sample_covers_the_sorted_list() -> None:
    paths = [Path(f"{group}/{i:03d}.png") for group in ("crack", "good") for i in range(10)]
    chosen = spread_sample(paths, 4)
    assert chosen[0] == Path("crack/000.png") and chosen[-1] == Path("good/009.png") and len(chosen) == 4
    assert spread_sample(paths[:3], 4) == sorted(paths[:3])


def test_auto_runtime_is_the_one_registration_chose(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    import shutil

    from onenip.serving import load_predictor
    from onenip.pyfunc import export_for_serving
    from onenip.runtime import EXPORT_FOLDER, record_served_runtime, served_runtime

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    export_for_serving(folder, "plate")
    export = folder / EXPORT_FOLDER / "plate"
    assert served_runtime(export) is None and load_predictor(folder, "plate", runtime="auto").runtime == "onnx"  # nothing recorded
    record_served_runtime(export, "openvino")
    assert served_runtime(export) == "openvino"
    predictor = load_predictor(folder, "plate", runtime="auto")
    assert predictor.runtime == "openvino" and type(predictor).__name__ == "ExportedPredictor"
    assert load_predictor(folder, "plate", runtime="onnx").runtime == "onnx"  # asked for by name: that one
