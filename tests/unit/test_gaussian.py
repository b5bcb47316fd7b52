"""The per-position Gaussian map (PaDiM's statistic) against direct formulas on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onenip.config import ModelParams
from onenip.models.detector import OneNIPDetector
from onenip.models.gaussian import RIDGE, fit_position_gaussian, mahalanobis_map, select_channels
from onenip.models.scoring import ScoringRule
from tests.helpers.tiny import TINY_MODEL


def test_channel_subset_is_seeded_sorted_and_keeps_all_when_asked_for_more() -> None:
    chosen = select_channels(152, 100)
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100 and torch.equal(chosen, chosen.sort().values)
    assert torch.equal(chosen, select_channels(152, 100)) and not torch.equal(chosen, select_channels(152, 100, seed=1))
    assert torch.equal(select_channels(40, 100), torch.arange(40))


def test_without_prior_each_position_gets_padims_mean_and_covariance() -> None:
    features = torch.randn(30, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(30, 1, 2, 2)
    mean, precision = fit_position_gaussian([(features[:16], weights[:16]), (features[16:], weights[16:])], prior=0.0)
    for i, j in [(0, 0), (1, 1)]:
        x = features[:, :, i, j].double().numpy()
        assert np.allclose(mean[:, i, j].numpy(), x.mean(0), atol=1e-5)
        covariance = np.cov(x, rowvar=False, bias=True) + RIDGE * np.eye(3)
        assert np.allclose(precision[i * 2 + j].numpy(), np.linalg.inv(covariance), atol=1e-4)


def test_padding_does_not_count_and_an_uncovered_position_gets_the_pooled_statistics() -> None:
    features = torch.randn(20, 2, 1, 2, generator=torch.Generator().manual_seed(1))
    weights = torch.ones(20, 1, 1, 2)
    weights[:, :, 0, 1] = 0  # the second cell is letterbox padding in every image
    features[:, :, 0, 1] = 1e6  # whatever padding holds must not leak into the statistics
    mean, precision = fit_position_gaussian([(features, weights)], prior=10.0)
    assert torch.allclose(mean[:, 0, 1], mean[:, 0, 0], atol=1e-4)  # only the pooled (= first cell's) mean
    assert torch.isfinite(precision).all() and torch.allclose(precision[1], precision[0], rtol=1e-3)


def test_mahalanobis_map_equals_the_formula_and_is_zero_at_the_mean() -> None:
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(3, 2, 3, generator=g)
    factor = torch.randn(6, 3, 3, generator=g)
    precision = factor @ factor.transpose(1, 2) + torch.eye(3)
    features = torch.randn(4, 3, 2, 3, generator=g)
    distance = mahalanobis_map(features, mean, precision)
    assert distance.shape == (4, 1, 2, 3)
    for b, i, j in [(0, 0, 0), (3, 1, 2)]:
        delta = features[b, :, i, j] - mean[:, i, j]
        assert distance[b, 0, i, j] == pytest.approx(float(delta @ precision[i * 3 + j] @ delta) ** 0.5, rel=1e-5)
    assert mahalanobis_map(mean[None], mean, precision).abs().max() < 1e-5


def test_detector_scores_the_gaussian_only_where_fitted_and_loads_models_saved_without_it(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = ModelParams.model_validate(TINY_MODEL | {"gaussian_channels": 8})
    detector = OneNIPDetector(cfg, ["plate"], pretrained=False).eval()
    assert detector.gaussian_channels.tolist() == select_channels(detector.feature_extractor.num_fine_features, 8).tolist()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert detector(images, 0).components[3] is None  # not fitted: no fourth map
        features = detector.extract(images)
        source = detector.gaussian_source(features)
        mean, precision = fit_position_gaussian([(source, torch.ones(2, 1, *source.shape[-2:]))])
        detector.set_gaussian(0, mean, precision)
        detector.gaussian_scale[0] = 2.0
        detector.scoring["plate"] = ScoringRule((0.0, 0.0, 0.0, 1.0), 0.0, 1)  # four weights: the memory map gets 0
        out = detector(images, 0)
    expected = torch.nn.functional.interpolate(mahalanobis_map(source, mean, precision), size=(64, 64), mode="bilinear") / 2.0
    assert torch.allclose(out.components[3], expected, atol=1e-5) and torch.allclose(out.anomaly_map, expected, atol=1e-5)
    # a model saved before the Gaussian existed: no gaussian_* tensors, three weights per rule
    from safetensors.torch import load_file, save_file

    folder = detector.save(tmp_path / "model")
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("gaussian_")}
    save_file(state, str(folder / "model.safetensors"))
    config = (folder / "onenip.json").read_text().replace('"weights": [\n        0.0,\n        0.0,\n        0.0,\n        1.0,\n        0.0\n      ]', '"weights": [1.0, 0.0, 0.0]')
    assert '"weights": [1.0, 0.0, 0.0]' in config
    (folder / "onenip.json").write_text(config)
    old = OneNIPDetector.load(folder)
    assert old.scoring["plate"].weights == (1.0, 0.0, 0.0, 0.0, 0.0) and not bool(old.gaussian_fitted[0])
    with torch.no_grad():
        assert old(images, 0).components[3] is None


def test_without_a_fine_path_the_gaussian_models_the_coarse_grid() -> None:
    torch.manual_seed(0)
    cfg = ModelParams.model_validate(TINY_MODEL | {"gaussian_channels": 4, "backbone": {"input_size": 64, "fine_indices": []}})
    detector = OneNIPDetector(cfg, ["plate"], pretrained=False).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        features = detector.extract(images)
        assert features.fine is None
        source = detector.gaussian_source(features)
        assert source.shape == (3, 4, 4, 4)  # 4 channels of the stride-16 grid of a 64 px image
        detector.set_gaussian(0, *fit_position_gaussian([(source, torch.ones(3, 1, 4, 4))]))
        gaussian = detector.components(detector.extract(images), 0)[3]
    assert gaussian is not None and gaussian.shape == (3, 1, 64, 64) and torch.isfinite(gaussian).all()


def test_fitting_uses_the_configured_statistics_prior_and_a_large_one_pools_the_positions() -> None:
    from types import SimpleNamespace

    from onenip.training.calibration import fit_gaussians

    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fitted = {}
    for prior in (0.0, 1e6):
        torch.manual_seed(0)
        cfg = ModelParams.model_validate(TINY_MODEL | {"gaussian_channels": 4, "statistics_prior": prior})
        detector = OneNIPDetector(cfg, ["plate"], pretrained=False).eval()
        with torch.no_grad():
            features = detector.extract(images)
            fit_gaussians(detector, [SimpleNamespace(fit_features=features, fit_valid=None, index=0, jittered=None, jittered_valid=None)])
            source = detector.gaussian_source(features)
        expected = fit_position_gaussian([(source, torch.ones(6, 1, *source.shape[-2:]))], prior=prior)
        fitted[prior] = (detector.gaussian_mean_0.clone(), detector.gaussian_precision_0.clone())
        assert torch.allclose(fitted[prior][0], expected[0], atol=1e-5)
        assert torch.allclose(fitted[prior][1], expected[1], rtol=1e-3, atol=1e-2)
    own, pooled = fitted[0.0][0], fitted[1e6][0]
    assert torch.allclose(own.mean(dim=(1, 2)), pooled[:, 0, 0], atol=1e-4)  # the pooled mean, at every position
    assert pooled.std(dim=(1, 2)).max() < 1e-3 < own.std(dim=(1, 2)).min()
