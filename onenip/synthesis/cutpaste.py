"""The ``cutpaste_patch`` and ``cutpaste_scar`` methods (CutPaste, Li et al., CVPR 2021): a piece of the same
image is cut, colour-jittered and pasted elsewhere."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from onenip.synthesis.colour import colour_jitter
from onenip.synthesis.draws import randint, uniform


def cutpaste_anomaly(
    image: Tensor,
    generator: torch.Generator,
    foreground: Tensor | None,
    *,
    scar: bool,
    grey: bool = False,
    patch_area: tuple[float, float],
    patch_aspect: tuple[float, float],
    scar_width: tuple[float, float],
    scar_length: tuple[float, float],
    scar_rotation: tuple[float, float],
    colour_jitter_strength: float,
    colour_jitter_hue: float,
) -> tuple[Tensor, Tensor]:
    """Cut an axis-aligned ``(h, w)`` rectangle, jitter it, paste it rotated by ``angle`` elsewhere."""
    _, height, width = image.shape
    short = min(height, width)
    if scar:
        patch_w = max(1, round(uniform(generator, *scar_width) * short))
        patch_h = max(patch_w + 1, round(uniform(generator, *scar_length) * short))
        angle = uniform(generator, *scar_rotation)
    else:
        area = uniform(generator, *patch_area) * height * width
        log_low, log_high = math.log(patch_aspect[0]), math.log(patch_aspect[1])
        aspect = math.exp(uniform(generator, log_low, log_high))
        patch_h = max(1, round(math.sqrt(area * aspect)))
        patch_w = max(1, round(math.sqrt(area / aspect)))
        angle = 0.0  # CutPaste pastes patches unrotated
    patch_h, patch_w = min(patch_h, height), min(patch_w, width)
    src_top = randint(generator, 0, height - patch_h)
    src_left = randint(generator, 0, width - patch_w)
    patch = image[:, src_top : src_top + patch_h, src_left : src_left + patch_w]
    patch = colour_jitter(patch, colour_jitter_strength, generator, hue=colour_jitter_hue, grey=grey)

    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Half extents of the rotated rectangle's bounding box keep the paste inside the image.
    half_y = min(height / 2, abs(patch_h / 2 * cos) + abs(patch_w / 2 * sin))
    half_x = min(width / 2, abs(patch_h / 2 * sin) + abs(patch_w / 2 * cos))
    if foreground is None:
        centre_y = randint(generator, 0, height - 1) + 0.5
        centre_x = randint(generator, 0, width - 1) + 0.5
    else:
        # Centre on a random foreground pixel so the paste lands on the object.
        candidates = foreground.nonzero()
        pick = candidates[randint(generator, 0, len(candidates) - 1)]
        centre_y, centre_x = (pick.float() + 0.5).tolist()
    # Snap so an unrotated patch's top-left corner is an integer pixel (an exact copy).
    centre_y = min(max(centre_y, half_y), height - half_y) - patch_h / 2
    centre_x = min(max(centre_x, half_x), width - half_x) - patch_w / 2
    centre_y, centre_x = math.floor(centre_y) + patch_h / 2, math.floor(centre_x) + patch_w / 2

    ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None] + 0.5 - centre_y
    xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :] + 0.5 - centre_x
    # Target pixel -> patch coordinates (inverse rotation), then nearest patch pixel.
    patch_y = cos * ys + sin * xs + patch_h / 2
    patch_x = -sin * ys + cos * xs + patch_w / 2
    mask = (patch_y >= 0) & (patch_y < patch_h) & (patch_x >= 0) & (patch_x < patch_w)
    if foreground is not None:
        mask &= foreground
    index_y = patch_y.floor().long().clamp(0, patch_h - 1)
    index_x = patch_x.floor().long().clamp(0, patch_w - 1)
    pasted = patch[:, index_y, index_x]
    return mask, torch.where(mask, pasted, image)
