"""Exported scoring graphs (ONNX Runtime, OpenVINO) against the torch path on tiny detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onenip.config import ModelParams
from onenip.data.geometry import InputGeometry
from onenip.export import CategoryScorer, export_category, load_export
from onenip.models.detector import OneNIPDetector
from onenip.models.scoring import ScoringRule
from tests.helpers.tiny import TINY_MODEL


@pytest.fixture(scope="module")
def detector() -> OneNIPDetector:
    return _fitted_detector("category")


@pytest.fixture(scope="module")
def position_detector() -> OneNIPDetector:
    """The network reads features centred per grid position (``model.feature_standardization: position``)."""
    return _fitted_detector("position")


def _fitted_detector(standardization: str) -> OneNIPDetector:
    torch.manual_seed(0)
    cfg = ModelParams.model_validate(TINY_MODEL | {"prompts": 2, "feature_standardization": standardization})
    geometries = {"plate": InputGeometry(64, 64, False), "strip": InputGeometry(32, 96, True)}
    model = OneNIPDetector(cfg, ["plate", "strip"], geometries, pretrained=False).eval()
    for k in range(2):  # prompts and statistics that are not the identity, so every buffer matters
        bank = model.prompt(k)
        bank.coarse.normal_()
        if bank.fine is not None:
            bank.fine.normal_()
        mean, whiten, std = model.error_statistics(k, "recon")
        mean.normal_(0, 0.1), whiten.add_(0.05 * torch.randn_like(whiten)), std.uniform_(0.5, 2)
        channels = model.feature_extractor.num_features  # the network reads standardised features
        mean = torch.randn(getattr(model, f"coarse_mean_{k}").shape) * 0.1  # (C, 1, 1), or (C, h, w) per position
        model.set_standardization(k, mean, torch.rand(channels) + 0.5)
    # a fitted Gaussian on "strip" (random SPD precisions), weighted there: the graph carries the fourth map
    mean = torch.randn_like(model.gaussian_mean_1)
    factor = torch.randn(model.gaussian_precision_1.shape) * 0.1
    model.set_gaussian(1, mean, factor @ factor.transpose(1, 2) + torch.eye(factor.shape[-1]))
    model.scoring["strip"] = ScoringRule((0.25, 0.25, 0.25, 0.25), 2.0, 4)
    # a memory bank on "plate", weighted there: the graph carries the fifth map (OpenVINO's test reads plate)
    model.set_memory(0, torch.randn(TINY_MODEL["memory_patches"], model.feature_extractor.num_fine_features))
    model.scoring["plate"] = ScoringRule((0.5, 0.25, 0.0, 0.0, 0.25), 4.0, 16)
    model.score_threshold.fill_(1.0)
    return model


def images(geometry: InputGeometry, n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, geometry.height, geometry.width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("standardization", "category"), [("category", "plate"), ("category", "strip"), ("position", "strip")])
def test_onnx_graph_equals_torch(standardization: str, category: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pytest.importorskip("onnxruntime")
    detector = request.getfixturevalue("detector" if standardization == "category" else "position_detector")
    export_category(detector, category, tmp_path)
    info, graph = load_export(tmp_path, "onnx")
    geometry = detector.geometry(category)
    assert (info.height, info.width, info.letterbox, info.threshold) == (geometry.height, geometry.width, geometry.letterbox, 1.0)
    batch = images(geometry, 3, 1)  # another batch size than at export: the batch axis is dynamic
    valid = torch.ones(3, 1, geometry.height, geometry.width)
    valid[1, :, :, :20] = 0  # letterbox padding of one image
    with torch.no_grad():
        expected = detector(batch, detector.category_index(category), valid if geometry.letterbox else None)
    maps, scores = graph(batch.numpy(), valid.numpy() if geometry.letterbox else None)
    np.testing.assert_allclose(maps, expected.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scores, expected.pred_score.numpy(), atol=1e-4, rtol=1e-4)
    if geometry.letterbox:
        assert np.all(maps[1, :, :, :20] == 0)


@pytest.mark.parametrize("category", ["plate", "strip"])
def test_openvino_graph_equals_torch(detector: OneNIPDetector, category: str, tmp_path: Path) -> None:
    """Also with a letterbox mask: an OpenVINO input may carry another tensor name than the exported
    one, and an input left unfed is read as uninitialised memory (scores of 1e32), not refused."""
    pytest.importorskip("openvino")
    export_category(detector, category, tmp_path, fmt="openvino")
    assert (tmp_path / f"{category}.xml").is_file()
    _, graph = load_export(tmp_path, "openvino")
    geometry = detector.geometry(category)
    batch = images(geometry, 2, 2)
    valid = None
    if geometry.letterbox:
        valid = torch.ones(2, 1, geometry.height, geometry.width)
        valid[0, :, :, :30] = 0
        batch = batch * valid + 0.5 * (1 - valid)  # the padding as the geometry writes it
    with torch.no_grad():
        expected = CategoryScorer(detector, category)(batch, valid)
    maps, scores = graph(batch.numpy(), None if valid is None else valid.numpy())
    np.testing.assert_allclose(maps, expected[0].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scores, expected[1].numpy(), atol=1e-4, rtol=1e-4)


def test_graphs_score_concurrent_calls(detector: OneNIPDetector, tmp_path: Path) -> None:
    """A server scores requests from several threads at once: every runtime must allow it."""
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("openvino")
    export_category(detector, "plate", tmp_path, fmt="openvino")
    batches = [images(detector.geometry("plate"), 1, seed).numpy() for seed in range(8)]
    for runtime in ("onnx", "openvino"):
        _, graph = load_export(tmp_path, runtime)
        alone = [graph(b)[1] for b in batches]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda b: graph(b)[1], batches))
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5)
