"""Image and mask tensors at the model's input geometry (``onenip.data.geometry``).

A category's images enter the model at its ``InputGeometry``: resized (bilinear, antialiased) to
``height x width`` with the category's aspect, or letterboxed when the aspects vary. An ``int`` size
means the square ``size x size`` input (MVTec AD practice, used by the peers in ``benchmarks/``).
Anomaly maps go back to each image's own resolution through ``InputGeometry.map_to_image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from onenip.data.geometry import InputGeometry, square_geometry
from onenip.data.manifest import read_image, read_mask


def image_to_tensor(image: object) -> Tensor:
    """PIL RGB image or (H, W, 3) uint8 array -> (3, H, W) float in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_image(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """(3, H, W) or (B, 3, H, W) -> same at ``size``; antialiased when shrinking."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    batched = image if image.dim() == 4 else image[None]
    if tuple(batched.shape[-2:]) != size:
        batched = F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=True)
    return batched.clamp_(0.0, 1.0) if image.dim() == 4 else batched[0].clamp_(0.0, 1.0)


def as_geometry(geometry: InputGeometry | int) -> InputGeometry:
    return square_geometry(geometry) if isinstance(geometry, int) else geometry


def load_image(path: str | Path, geometry: InputGeometry | int) -> Tensor:
    """Read any supported image as (3, height, width) float in [0, 1] at the input geometry."""
    return as_geometry(geometry).apply(image_to_tensor(read_image(path)))


def load_mask(path: str | Path | None, size: int | tuple[int, int] | None = None) -> Tensor:
    """(1, H, W) float {0, 1}; ``None`` path gives nothing (use ``torch.zeros``). Nearest resize."""
    if path is None:
        msg = "load_mask needs a path; normal images have no mask"
        raise ValueError(msg)
    mask = torch.from_numpy((read_mask(path) > 0).astype(np.float32))[None]
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(mask.shape[-2:]) != size:
            mask = F.interpolate(mask[None], size=size, mode="nearest")[0]
    return mask


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Channel-wise ``(x - mean) / std`` for (3, H, W) or (B, 3, H, W) tensors in [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t
