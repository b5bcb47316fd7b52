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
