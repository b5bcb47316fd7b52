"""Photometric copies of images: a lighting or white-balance drift drawn at random, seeded.

Used where a map must count such a drift as normal (the statistics' jittered normals,
``onenip.training.calibration``) and where the selection must see it (``validation.jittered_normals``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def evenly_spread(count: int, limit: int) -> Tensor:
    return torch.linspace(0, count - 1, min(count, limit)).round().long().unique()


def jittered_images(images: Tensor, valid: Tensor | None, strength: float, generator: torch.Generator, colour: float = 0.0) -> Tensor:
    """(N, 3, H, W) images in [0, 1] -> each ``gain * image ** gamma`` (clipped), one gain and one gamma per
    image drawn from ``exp(U(-strength, strength))``, times one gain per channel from ``exp(U(-colour, colour))``
    when ``colour`` > 0; where ``valid`` (N, 1, H, W) is false, unchanged."""
    gain, gamma = torch.exp((torch.rand(2, len(images), generator=generator) * 2 - 1) * strength)[:, :, None, None, None]
    if colour > 0:  # drawn after the shared gain and gamma, so those stay what they were without it
        gain = gain * torch.exp((torch.rand(len(images), 3, generator=generator) * 2 - 1) * colour)[:, :, None, None]
    jittered = (images**gamma * gain).clamp(0, 1)
    return jittered if valid is None else torch.where(valid, jittered, images)


def is_colour(images: Tensor) -> bool:
    """Whether (N, 3, H, W) uint8 images are colour: their channels differ by more than one grey level on
    average (bottle: 8; a grey image saved as a colour JPEG: compression noise well below 1). Judged on
    16 evenly spread images, so the int16 copy stays small."""
    signed = images[evenly_spread(len(images), 16)].to(torch.int16)
    return float((signed - signed.roll(1, dims=1)).abs().amax(1).float().mean()) > 1.0


def tint_strength(images: Tensor, colour: float) -> float:
    """``colour`` for uint8 (N, 3, H, W) colour images, 0 for grey ones (a grey camera never tints); the check is skipped at 0."""
    return colour if colour > 0 and is_colour(images) else 0.0
