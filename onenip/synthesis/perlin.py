"""The ``perlin`` method (DRAEM, Zavrtanik et al., ICCV 2021): a texture blended into the image inside a
mask of thresholded Perlin noise."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from onenip.synthesis.draws import randint, uniform
from onenip.synthesis.noise import perlin_noise

MIN_PERLIN_CELL_PX = 4
"""Perlin cells are kept at least this many pixels wide, so ``2^5`` cells on a 64 px image become
16 (finer noise is pixel speckle, not a defect shape)."""

TextureFn = Callable[[int, int, torch.Generator, torch.device], Tensor]
"""``(height, width, generator, device)`` -> a ``(3, H, W)`` texture in [0, 1]."""


def perlin_anomaly(
    image: Tensor,
    generator: torch.Generator,
    foreground: Tensor | None,
    make_texture: TextureFn,
    *,
    perlin_threshold: float,
    scale_exp: tuple[int, int],
    perlin_rotation: tuple[float, float],
    perlin_octaves: int,
    texture_opacity: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Mask = Perlin noise (``2^a x 2^b`` cells, ``a, b`` in ``scale_exp``, rotated by ``perlin_rotation``)
    above ``perlin_threshold``; inside it the image is blended with ``make_texture``'s texture at an opacity
    drawn from ``texture_opacity``."""
    _, height, width = image.shape
    scale_y = 2 ** randint(generator, *scale_exp)
    scale_x = 2 ** randint(generator, *scale_exp)
    res_y = min(scale_y, max(1, height // MIN_PERLIN_CELL_PX))
    res_x = min(scale_x, max(1, width // MIN_PERLIN_CELL_PX))
    angle = uniform(generator, *perlin_rotation)
    noise = perlin_noise(
        height,
        width,
        (res_y, res_x),
        generator=generator,
        device=image.device,
        angle=angle,
        octaves=perlin_octaves,
    )
    mask = noise > perlin_threshold
    if foreground is not None:
        mask &= foreground
    if not mask.any():  # skip the texture work; the caller retries
        return mask, image
    texture = make_texture(height, width, generator, image.device).to(image.dtype)
    opacity = uniform(generator, *texture_opacity)
    blended = (image * (1 - opacity) + texture * opacity).clamp(0, 1)
    # where() keeps pixels outside the mask bitwise identical to the input.
    return mask, torch.where(mask, blended, image)
