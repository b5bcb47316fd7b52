"""``model.statistics_jitter``: the per-position statistics also fitted on fit images under other lighting."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from onenip.config import ModelParams
from onenip.models.detector import OneNIPDetector
from onenip.data.photometric import is_colour, jittered_images
from onenip.training.calibration import add_jittered_normals, fit_gaussians
from tests.helpers.tiny import TINY_MODEL


def test_each_image_gets_one_gain_and_one_gamma_within_the_strength_and_padding_stays() -> None:
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    valid = torch.ones(5, 1, 16, 16, dtype=torch.bool)
    valid[:, :, :4] = False
    out = jittered_images(images, valid, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, :4], images[:, :, :4])
    again = jittered_images(images, valid, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded
    inside = out[:, :, 4:].clamp_min(1e-6).log()
    for i in range(5):  # log(out) = log(gain) + gamma * log(image): one straight line per image
        unclipped = out[i, :, 4:].flatten() < 1
        x, y = images[i, :, 4:].log().flatten()[unclipped], inside[i].flatten()[unclipped]
        gamma, log_gain = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution.flatten()
        assert torch.allclose(y, log_gain + gamma * x, atol=1e-4)
        assert abs(float(gamma.log())) <= 0.3 + 1e-4 and abs(float(log_gain)) <= 0.3 + 1e-4
    assert not torch.allclose(out, images)


def test_colour_adds_one_gain_per_channel_after_the_shared_draws() -> None:
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.2
    plain = jittered_images(images, None, 0.3, torch.Generator().manual_seed(1))
    tinted = jittered_images(images, None, 0.3, torch.Generator().manual_seed(1), colour=0.2)
    ratio = (tinted / plain).flatten(2)  # nothing clips at these values: the ratio is the channel's gain
    assert torch.allclose(ratio, ratio[:, :, :1].expand_as(ratio), atol=1e-5)
    gains = ratio[:, :, 0]
    assert float(gains.log().abs().max()) <= 0.2 + 1e-5
    assert float((gains[:, 0] - gains[:, 1]).abs().max()) > 0.01  # the channels drift apart: a white-balance change


def test_only_images_whose_channels_differ_count_as_colour() -> None:
    grey = torch.randint(20, 236, (4, 1, 8, 8), dtype=torch.uint8).expand(4, 3, 8, 8).clone()
    assert not is_colour(grey)
    noisy = grey.clone()
    noisy[2, 0, 3, 3] += 9  # a compression artefact on one pixel is not colour
    assert not is_colour(noisy)
    tinted = grey.clone()
    tinted[:, 0] += 3  # every pixel a little red
    assert is_colour(tinted)


def _fitted(strength: float, images: torch.Tensor, colour: float = 0.0) -> OneNIPDetector:
    torch.manual_seed(0)
    cfg = ModelParams.model_validate(TINY_MODEL | {"gaussian_channels": 4, "statistics_jitter": strength})
    detector = OneNIPDetector(cfg, ["plate"], pretrained=False).eval()
    with torch.no_grad():
        item = SimpleNamespace(fit_features=detector.extract(images), fit_valid=None, fit_images=(images * 255).round().to(torch.uint8),
                               index=0, jittered=None, jittered_valid=None)
        add_jittered_normals(detector, [item], strength, seed=0, colour=colour)
        assert (item.jittered is None) == (strength == 0 and colour == 0)
        fit_gaussians(detector, [item])
    return detector


def _gaussian_ratio(detector: OneNIPDetector, normal: torch.Tensor, changed: torch.Tensor) -> float:
    with torch.no_grad():
        scores = [detector.components(detector.extract(x), 0)[3].mean() for x in (normal, changed)]
    return float(scores[1] / scores[0])


def test_a_white_balance_drift_scores_lower_once_the_gaussian_has_seen_colour_jittered_normals() -> None:
    generator = torch.Generator().manual_seed(4)
    base = torch.rand(1, 3, 64, 64, generator=generator) * 0.5 + 0.25
    images = (base + 0.05 * torch.randn(24, 3, 64, 64, generator=generator)).clamp(0, 1)
    cast = (images[:4] * torch.tensor([1.2, 1.0, 0.83])[:, None, None]).clamp(0, 1)
    ratios = {colour: _gaussian_ratio(_fitted(0.1, images, colour), images[:4], cast) for colour in (0.0, 0.25)}
    assert ratios[0.0] > 1.5  # the cast alone looks anomalous when only lighting was jittered (measured 1.63)
    assert ratios[0.25] - 1 < 0.65 * (ratios[0.0] - 1)  # measured 0.35 against 0.63 above the normal images


def test_a_grey_category_gets_no_colour_jitter() -> None:
    generator = torch.Generator().manual_seed(5)
    grey = (torch.rand(12, 1, 64, 64, generator=generator) * 0.6 + 0.2).expand(12, 3, 64, 64)
    with_colour, without = (_fitted(0.2, grey, colour) for colour in (0.3, 0.0))
    for a, b in zip(with_colour.state_dict().values(), without.state_dict().values()):
        assert torch.equal(a, b)


def test_a_change_of_lighting_scores_lower_once_the_gaussian_has_seen_jittered_normals() -> None:
    generator = torch.Generator().manual_seed(3)
    base = torch.rand(1, 3, 64, 64, generator=generator) * 0.5 + 0.25
    images = (base + 0.05 * torch.randn(24, 3, 64, 64, generator=generator)).clamp(0, 1)  # one product, small variation
    brighter = (images[:4] * 1.25).clamp(0, 1)
    ratios = {}
    for strength in (0.0, 0.3):
        ratios[strength] = _gaussian_ratio(_fitted(strength, images), images[:4], brighter)
    assert ratios[0.0] > 2.0  # the lighting change alone looks anomalous to the plain Gaussian
    assert ratios[0.3] < 0.6 * ratios[0.0]


def test_a_model_saved_before_the_setting_existed_says_it_was_fitted_without_jitter(tmp_path) -> None:
    import json

    cfg = ModelParams.model_validate(TINY_MODEL | {"statistics_jitter": 0.4})
    folder = OneNIPDetector(cfg, ["plate"], pretrained=False).save(tmp_path / "model")
    assert OneNIPDetector.load(folder).cfg.statistics_jitter == 0.4
    config = json.loads((folder / "onenip.json").read_text())
    del config["model"]["statistics_jitter"]
    (folder / "onenip.json").write_text(json.dumps(config))
    del config["model"]["statistics_colour_jitter"], config["model"]["statistics_prior"]
    (folder / "onenip.json").write_text(json.dumps(config))
    loaded = OneNIPDetector.load(folder).cfg
    assert loaded.statistics_jitter == 0.0 and loaded.statistics_colour_jitter == 0.0
    assert loaded.statistics_prior == 10.0  # the constant it replaced, not today's default (40)
    assert ModelParams().statistics_jitter == 0.25  # while a new model gets the default
