"""The validation-only methods (``VALIDATION_METHODS``): ``warp`` (a local deformation, a dent), ``smudge``
(a blurred, tinted stain), ``spots`` (small round pits or specks), ``missing`` (material broken off: a
jagged hole filled with its surroundings' shade) and ``misplaced`` (a part turned and moved as a whole,
with a break at its border).

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


def _jagged_region(
    generator: torch.Generator, foreground: Tensor | None, height: int, width: int, device: torch.device,
    radius_range: tuple[float, float],
) -> tuple[Tensor, float, float, float]:
    """A hard-edged region (H, W) bool whose radius wobbles with the angle (a broken outline), its centre and radius."""
    short = min(height, width)
    cy, cx = random_point(generator, foreground, height, width)
    radius = uniform(generator, *radius_range) * short
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :] - cx
    theta = torch.atan2(ys, xs)
    outline = torch.ones_like(theta)
    for k in range(2, 6):
        outline = outline + uniform(generator, 0.0, 0.35 / (k - 1)) * torch.cos(k * theta + uniform(generator, -math.pi, math.pi))
    return torch.sqrt(ys**2 + xs**2) < radius * outline.clamp(min=0.3), cy, cx, radius


def missing_anomaly(image: Tensor, generator: torch.Generator, foreground: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validation only: material broken off or a hole: a jagged region whose structure is gone, filled with
    the smooth shade of its surroundings (darker, as in a cavity), with a thin bright or dark break edge."""
    from onenip.models.blur import gaussian_smooth

    _, height, width = image.shape
    region, _, _, radius = _jagged_region(generator, foreground, height, width, image.device, (0.04, 0.12))
    keep = (~region).to(image.dtype)[None]
    sigma = max(2.0, 0.6 * radius)
    # normalised convolution: the blur of the surroundings only, so the fill never sees what was removed
    shade = gaussian_smooth((image * keep)[:, None], sigma)[:, 0] / gaussian_smooth(keep[:, None], sigma)[:, 0].clamp_min(1e-3)
    fill = shade * uniform(generator, 0.35, 0.85) + 0.03 * torch.randn(image.shape[-2:], generator=generator).to(image)
    width_px = randint(generator, 1, 2)
    grown = F.max_pool2d(region[None, None].float(), 2 * width_px + 1, stride=1, padding=width_px)[0, 0] > 0
    rim = grown & ~region
    edge = (image * uniform(generator, 1.3, 1.8)) if uniform(generator, 0, 1) < 0.5 else image * uniform(generator, 0.2, 0.5)
    out = torch.where(region, fill.clamp(0, 1), torch.where(rim, edge.clamp(0, 1), image))
    # the whole broken-off region is the defect, also where its fill happens to match
    mask = grown if foreground is None else grown & foreground
    return mask, torch.where(mask, out, image)


def misplaced_anomaly(image: Tensor, generator: torch.Generator, foreground: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validation only: a part turned by 15-60 degrees and moved as a whole, sharp at its border (a loose,
    shifted or wrongly mounted component), unlike ``warp``, which bends the surface smoothly."""
    _, height, width = image.shape
    region, cy, cx, radius = _jagged_region(generator, foreground, height, width, image.device, (0.06, 0.15))
    ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :] - cx
    angle = math.radians(uniform(generator, 15, 60)) * (1 if uniform(generator, 0, 1) < 0.5 else -1)
    heading = uniform(generator, -math.pi, math.pi)
    shift = uniform(generator, 0.1, 0.4) * radius
    src_y = cy + math.cos(angle) * ys - math.sin(angle) * xs - shift * math.sin(heading)
    src_x = cx + math.sin(angle) * ys + math.cos(angle) * xs - shift * math.cos(heading)
    grid = torch.stack((src_x / (width - 1) * 2 - 1, src_y / (height - 1) * 2 - 1), dim=-1)[None]
    moved = F.grid_sample(image[None], grid.to(image.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    mask = region if foreground is None else region & foreground  # the whole part, also where it happens to look alike
    return mask, torch.where(mask, moved, image)


VALIDATION_ANOMALIES: dict[str, Callable[[Tensor, torch.Generator, Tensor | None], tuple[Tensor, Tensor]]] = {
    "warp": warp_anomaly,
    "smudge": smudge_anomaly,
    "spots": spots_anomaly,
    "missing": missing_anomaly,
    "misplaced": misplaced_anomaly,
}
"""Each validation method's function: ``(image, generator, foreground)`` -> ``(mask, image)``."""
