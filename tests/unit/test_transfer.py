"""OneNIP's transfer baseline: k prompts give, per position, the smallest reconstruction error of the
single-prompt maps; the image score is the map's maximum; it plugs into ``evaluate``'s interface."""

from __future__ import annotations

import pytest
import torch

from onenip.config import ModelParams
from onenip.models.features import Features
from onenip.models.detector import OneNIPDetector
from onenip.models.transfer import OneNIPTransfer
from tests.helpers.tiny import TINY_MODEL


@pytest.fixture(scope="module")
def detector() -> OneNIPDetector:
    torch.manual_seed(0)
    return OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate"], pretrained=False).eval()


def _features(detector: OneNIPDetector, count: int, seed: int) -> Features:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return detector.extract(torch.rand(count, 3, 64, 64, generator=generator))


@torch.no_grad()
def test_k_prompts_take_the_minimum_error_of_each_prompt(detector: OneNIPDetector) -> None:
    queries, prompts = _features(detector, 3, 1), _features(detector, 2, 2)
    both = OneNIPTransfer(detector, "gear", prompts, smoothing_sigma=0).recon_error(queries)
    singles = [OneNIPTransfer(detector, "gear", prompts.select([j]), smoothing_sigma=0).recon_error(queries) for j in range(2)]
    assert both.shape == (3, 1, 64, 64)
    torch.testing.assert_close(both, torch.minimum(*singles))
    assert not torch.equal(singles[0], singles[1])  # the prompt matters


@torch.no_grad()
def test_score_is_the_maximum_of_the_smoothed_map(detector: OneNIPDetector) -> None:
    model = OneNIPTransfer(detector, "gear", _features(detector, 1, 3), smoothing_sigma=2)
    out = model.forward_features(_features(detector, 4, 4), model.category_index("gear"))
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).amax(dim=1))
    with pytest.raises(ValueError, match="Unknown category 'plate'"):
        model.category_index("plate")


@torch.no_grad()
def test_a_position_centred_network_reads_features_centred_on_the_prompts() -> None:
    """``feature_standardization: position`` centres each position on the k prompts' mean there; with one
    prompt that mean would be the prompt itself (and its spread zero), so the channel mean stands in."""
    torch.manual_seed(0)
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL | {"feature_standardization": "position"}), ["plate"], pretrained=False).eval()
    prompts, queries = _features(detector, 3, 5), _features(detector, 2, 6)
    centred = OneNIPTransfer(detector, "gear", prompts).standardized(prompts.coarse)
    torch.testing.assert_close(centred.mean(dim=0), torch.zeros_like(centred[0]), atol=1e-5, rtol=0)
    single = OneNIPTransfer(detector, "gear", prompts.select([0]))
    one = single.standardized(queries.coarse)
    assert torch.isfinite(one).all() and one.abs().amax() < 100
    own = single.standardized(prompts.coarse[:1])  # channel-centred: the prompt keeps its own pattern
    torch.testing.assert_close(own.mean(dim=(0, 2, 3)), torch.zeros(one.shape[1]), atol=1e-5, rtol=0)
    assert own.abs().amax() > 0.1
    assert torch.isfinite(single.recon_error(queries)).all()
