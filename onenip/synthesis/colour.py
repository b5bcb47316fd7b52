"""Colour jitter and grey detection.

The OneNIP reference's CutPaste uses torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.1)``; this is the same
idea in plain torch with the CPU generator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from onenip.synthesis.draws import uniform

# RGB -> YIQ; hue is rotated in the (I, Q) chroma plane, which avoids an RGB <-> HSV round trip.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _grayscale(image: Tensor) -> Tensor:
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)


def _rotate_hue(image: Tensor, hue: float) -> Tensor:
    theta = 2 * math.pi * hue
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(theta), -math.sin(theta)], [0.0, math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(device=image.device, dtype=image.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, image)


def colour_jitter(
    image: Tensor, strength: float, generator: torch.Generator, *, hue: float | None = None, grey: bool = False,
) -> Tensor:
    """Random brightness, contrast, saturation (factors in ``1 +- strength``) and hue (``+- hue`` of a
    turn, default ``strength``, at most half a turn), applied in that order to a ``(3, H, W)`` image in
    [0, 1]. ``grey``: brightness and contrast only, and the result is grey (a grey product stays grey)."""
    if strength <= 0:
        return _grayscale(image).expand_as(image).clone() if grey else image
    low = max(0.0, 1.0 - strength)
    brightness = uniform(generator, low, 1.0 + strength)
    contrast = uniform(generator, low, 1.0 + strength)
    saturation = uniform(generator, low, 1.0 + strength)
    hue_limit = min(strength if hue is None else hue, 0.5)
    hue_shift = uniform(generator, -hue_limit, hue_limit)
    if grey:
        image = _grayscale(image).expand_as(image)
    out = (image * brightness).clamp(0, 1)
    mean = _grayscale(out).mean()
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    if grey:
        return out
    gray = _grayscale(out)
    out = (gray + (out - gray) * saturation).clamp(0, 1)
    return _rotate_hue(out, hue_shift).clamp(0, 1)


def is_grey(image: Tensor, tolerance: float = 2.0 / 255) -> bool:
    """True when the channels of a ``(3, H, W)`` image are equal (a grey-scale picture stored as RGB)."""
    return bool((image.amax(0) - image.amin(0)).max().item() <= tolerance)
