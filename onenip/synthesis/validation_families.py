"""The validation-only methods (``VALIDATION_METHODS``): ``warp`` (a local deformation, a dent), ``smudge``
(a blurred, tinted stain) and ``spots`` (small round pits or specks).

They are never used for training, so choices made on validation data measure how the model transfers to
defect types it never saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from onenip.synthesis.colour import is_grey
from onenip.synthesis.draws import randint, random_point, uniform


def _blob(
    generator: torch.Generator, foreground: Tensor | None, height: int, width: int, device: torch.device
) -> tuple[Tensor, float, float, float]:
    """A soft elliptical weight (H, W) in [0, 1] around a random (foreground) point, and its centre and radius."""
    short = min(height, width)
    cy, cx = random_point(generator, foreground, height, width)
    radius = uniform(generator, 0.05, 0.15) * short
    aspect = math.exp(uniform(generator, -0.7, 0.7))
    angle = uniform(generator, -math.pi, math.pi)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :] - cx
    along = (math.cos(angle) * ys + math.sin(angle) * xs) / (radius * aspect)
    across = (-math.sin(angle) * ys + math.cos(angle) * xs) / (radius / aspect)
    distance = torch.sqrt(along**2 + across**2)
    return (1 - distance).clamp(0, 1), cy, cx, radius


def warp_anomaly(image: Tensor, generator: torch.Generator, foreground: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validation only: a local swirl-and-bulge deformation (a dent or a bent part)."""
    _, height, width = image.shape
    weight, cy, cx, radius = _blob(generator, foreground, height, width, image.device)
    ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :] - cx
    twist = uniform(generator, 0.6, 1.5) * (1 if uniform(generator, 0, 1) < 0.5 else -1)
    bulge = uniform(generator, -0.5, 0.5)
    smooth = weight**2 * (3 - 2 * weight)
    angle = twist * smooth
    scale = 1 - bulge * smooth
    src_y = cy + scale * (torch.cos(angle) * ys - torch.sin(angle) * xs)
    src_x = cx + scale * (torch.sin(angle) * ys + torch.cos(angle) * xs)
    grid = torch.stack((src_x / (width - 1) * 2 - 1, src_y / (height - 1) * 2 - 1), dim=-1)[None]
    warped = F.grid_sample(image[None], grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)[0]
    moved = torch.sqrt((src_y - cy - ys) ** 2 + (src_x - cx - xs) ** 2)
    mask = (moved > 0.75) & ((warped - image).abs().amax(0) > 0.02)
    if foreground is not None:
        mask &= foreground
    return mask, torch.where(mask, warped, image)


def smudge_anomaly(image: Tensor, generator: torch.Generator, foreground: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validation only: a blurred, slightly darkened or tinted stain (contamination, residue)."""
    _, height, width = image.shape
    weight, _, _, radius = _blob(generator, foreground, height, width, image.device)
    sigma = max(1.0, uniform(generator, 0.15, 0.4) * radius)
    from onenip.models.blur import gaussian_smooth  # one separable blur for the whole project

    blurred = gaussian_smooth(image[:, None], sigma)[:, 0]
    tint = torch.rand(3, generator=generator).to(image.device)
    if is_grey(image):
        tint = tint.mean().expand(3)
    darker = uniform(generator, 0, 1) < 0.6
    level = uniform(generator, 0.45, 0.8) if darker else uniform(generator, 1.2, 1.6)
    stain = blurred * level + tint[:, None, None] * uniform(generator, 0.0, 0.15)
    alpha = (weight * uniform(generator, 1.5, 3.0)).clamp(0, 1)
    out = (image * (1 - alpha) + stain.clamp(0, 1) * alpha).clamp(0, 1)
    mask = (alpha > 0.15) & ((out - image).abs().amax(0) > 0.02)
    if foreground is not None:
        mask &= foreground
    return mask, torch.where(mask, out, image)


def spots_anomaly(image: Tensor, generator: torch.Generator, foreground: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validation only: 1-6 small round pits or specks (2-8 px radius), dark or bright."""
    _, height, width = image.shape
    out = image.clone()
    mask = torch.zeros(height, width, dtype=torch.bool, device=image.device)
    ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :]
    cy0, cx0 = random_point(generator, foreground, height, width)
    spread = uniform(generator, 0.02, 0.12) * min(height, width)
    dark = uniform(generator, 0, 1) < 0.7
    for _ in range(randint(generator, 1, 6)):
        cy = cy0 + spread * torch.randn((), generator=generator).item()
        cx = cx0 + spread * torch.randn((), generator=generator).item()
        radius = uniform(generator, 2.0, 8.0) * min(height, width) / 256
        distance = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) / max(radius, 1.0)
        alpha = (1.2 - distance).clamp(0, 1) * uniform(generator, 0.5, 0.95)
        target = out * 0.1 if dark else (out + 0.6).clamp(max=1.0)
        out = out * (1 - alpha) + target * alpha
        mask |= alpha > 0.1
    if foreground is not None:
        mask &= foreground
    return mask, torch.where(mask, out.clamp(0, 1), image)


VALIDATION_ANOMALIES: dict[str, Callable[[Tensor, torch.Generator, Tensor | None], tuple[Tensor, Tensor]]] = {
    "warp": warp_anomaly,
    "smudge": smudge_anomaly,
    "spots": spots_anomaly,
}
"""Each validation method's function: ``(image, generator, foreground)`` -> ``(mask, image)``."""
