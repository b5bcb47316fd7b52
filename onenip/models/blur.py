"""The project's one separable Gaussian blur of maps, and its letterbox-aware form (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps with reflect padding (kernel radius 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(4 * sigma))
    # reflect padding needs the pad below the size of the map
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    coords = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def masked_gaussian_smooth(maps: Tensor, sigma: float, valid: Tensor | None) -> Tensor:
    """``gaussian_smooth`` of the content only: (B, 1, H, W) maps, ``valid`` (B or 1, 1, H, W) marks
    content (letterbox padding is 0). A normalised blur, ``smooth(map * valid) / smooth(valid)``, then
    padding zeroed: the padding's values (far from every normal patch, so high) never bleed into the
    content's border, and a map constant on the content stays that constant. Linear in ``maps``, so
    blending and smoothing still commute. ``valid`` None: the plain blur."""
    if valid is None:
        return gaussian_smooth(maps, sigma)
    valid = valid.to(maps.dtype)
    if sigma <= 0:
        return maps * valid
    weight = gaussian_smooth(valid.expand_as(maps[:, :1]), sigma)
    return gaussian_smooth(maps * valid, sigma) / weight.clamp_min(1e-6) * valid
