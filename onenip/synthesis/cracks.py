"""The ``crack`` method: a thin (1-4 px) curved line, darker or brighter than the surface (the cracks and
scratches of KolektorSDD and magnetic tiles)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from onenip.synthesis.draws import random_point, uniform


def crack_anomaly(
    image: Tensor,
    generator: torch.Generator,
    foreground: Tensor | None,
    *,
    crack_width: tuple[float, float],
    crack_length: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """A thin curved line: a random walk whose heading drifts smoothly, thickened to 1-4 px."""
    _, height, width = image.shape
    short = min(height, width)
    length = max(8, round(uniform(generator, *crack_length) * short))
    y, x = random_point(generator, foreground, height, width)
    heading = uniform(generator, -math.pi, math.pi)
    turn = uniform(generator, 0.02, 0.15)  # how wavy: radians of drift per pixel
    steps = torch.randn(length, generator=generator) * turn
    headings = heading + torch.cumsum(steps, 0)
    ys = y + torch.cumsum(torch.sin(headings), 0)
    xs = x + torch.cumsum(torch.cos(headings), 0)
    inside = (ys >= 0) & (ys <= height - 1) & (xs >= 0) & (xs <= width - 1)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[ys[inside].round().long(), xs[inside].round().long()] = True
    line_width = max(1, round(uniform(generator, *crack_width)))
    if line_width > 1:  # any width, odd or even: max-pool and crop back to the image
        pooled = F.max_pool2d(mask[None, None].float(), line_width, stride=1, padding=line_width // 2)
        mask = pooled[0, 0, :height, :width] > 0.5
    mask = mask.to(image.device)
    if foreground is not None:
        mask &= foreground
    if not mask.any():
        return mask, image
    strength = uniform(generator, 0.3, 0.9)
    local = image.mean(0, keepdim=True)
    target = local * 0.15 if uniform(generator, 0, 1) < 0.7 else (local + 0.5).clamp(max=1.0)  # mostly dark
    cracked = (image * (1 - strength) + target.expand_as(image) * strength).clamp(0, 1)
    return mask, torch.where(mask, cracked, image)
