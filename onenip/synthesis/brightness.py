"""The ``brightness`` method: a low-frequency region of uneven brightness (Perlin noise on intensity only), as
on unevenly lit or worn surfaces."""

from __future__ import annotations

import torch
from torch import Tensor

from onenip.synthesis.draws import randint, uniform
from onenip.synthesis.noise import perlin_noise


def brightness_anomaly(
    image: Tensor,
    generator: torch.Generator,
    foreground: Tensor | None,
    *,
    brightness_change: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """A low-frequency region whose intensity is scaled (same hue): uneven lighting or wear."""
    _, height, width = image.shape
    res = 2 ** randint(generator, 0, 2)
    noise = perlin_noise(
        height, width, (res, res), generator=generator, device=image.device,
        angle=uniform(generator, -90, 90), octaves=2,
    )
    threshold = uniform(generator, 0.1, 0.5)
    weight = ((noise - threshold) / 0.25).clamp(0, 1)
    weight = torch.where(weight >= 0.2, weight, torch.zeros_like(weight))
    mask = weight > 0
    if foreground is not None:
        mask &= foreground
        weight = weight * mask
    if not mask.any():
        return mask, image
    change = uniform(generator, *brightness_change)
    factor = 1 - change if uniform(generator, 0, 1) < 0.5 else 1 + change
    out = (image * (1 + (factor - 1) * weight)).clamp(0, 1)
    return mask, torch.where(mask, out, image)
