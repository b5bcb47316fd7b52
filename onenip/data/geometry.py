"""Input geometry per category: the model's input height x width, keeping each product's aspect.

Squashing every image to a square costs thin defects on elongated products: a KolektorSDD surface is
about 1:2.5, so at 256x256 a 2-pixel crack shrinks to under one pixel across. A category instead gets
an input of about the same area as ``size x size`` with the aspect of its training images (kolektor:
400 x 160 = 25 x 10 tokens at stride 16, the cost of 16 x 16), both sides multiples of ``multiple``.
When the aspects within a category vary (magnetic_tile: 0.4 to 2.5) each image is letterboxed: resized
to fit inside the input and padded, so nothing is distorted; the padding is marked invalid, anomaly
maps are cropped back to the image before they are compared with masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onenip.data.resample import resize_chw

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the tensor methods only: the served model (an exported graph) uses the
# numpy twins (``apply_array``, ``valid_mask_array``) and must start without loading torch.

PAD_VALUE = 0.0
"""Letterbox padding (black): what a camera sees beside a product, the same for every image."""


@dataclass(frozen=True)
class InputGeometry:
    """How images of one category enter the model: ``height x width``, squashed or letterboxed."""

    height: int
    width: int
    letterbox: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def grid(self, stride: int) -> tuple[int, int]:
        return (self.height // stride, self.width // stride)

    def to_dict(self) -> dict[str, object]:
        return {"height": self.height, "width": self.width, "letterbox": self.letterbox}

    @classmethod
    def from_dict(cls, value: dict[str, object]) -> InputGeometry:
        return cls(int(value["height"]), int(value["width"]), bool(value.get("letterbox", False)))

    def key(self) -> str:
        return f"{self.height}x{self.width}{'-lb' if self.letterbox else ''}"

    def content_box(self, image_height: int, image_width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of an ``image_height x image_width`` image inside the input."""
        if not self.letterbox:
            return (0, 0, self.height, self.width)
        scale = min(self.height / image_height, self.width / image_width)
        height = min(self.height, max(1, round(image_height * scale)))
        width = min(self.width, max(1, round(image_width * scale)))
        return ((self.height - height) // 2, (self.width - width) // 2, height, width)

    def apply(self, image: Tensor) -> Tensor:
        """(3, H, W) float in [0, 1] at any size -> (3, height, width): resized (antialiased), padded."""
        top, left, height, width = self.content_box(image.shape[-2], image.shape[-1])
        resized = _resize(image, (height, width))
        if (height, width) == self.size:
            return resized
        import torch

        out = torch.full((image.shape[0], self.height, self.width), PAD_VALUE, dtype=resized.dtype)
        out[:, top : top + height, left : left + width] = resized
        return out

    def valid_mask(self, image_height: int, image_width: int) -> Tensor:
        """(height, width) bool: True where the input holds image content, False on padding."""
        import torch

        return torch.from_numpy(self.valid_mask_array(image_height, image_width))

    def apply_array(self, image: np.ndarray) -> np.ndarray:
        """``apply`` in numpy (the exported graphs' preprocessing): (3, H, W) float32 in [0, 1]."""
        top, left, height, width = self.content_box(image.shape[-2], image.shape[-1])
        resized = np.clip(resize_chw(image, (height, width), antialias=True), 0.0, 1.0)
        if (height, width) == self.size:
            return resized
        out = np.full((image.shape[0], self.height, self.width), PAD_VALUE, dtype=np.float32)
        out[:, top : top + height, left : left + width] = resized
        return out

    def valid_mask_array(self, image_height: int, image_width: int) -> np.ndarray:
        """``valid_mask`` in numpy: (height, width) bool."""
        top, left, height, width = self.content_box(image_height, image_width)
        mask = np.zeros(self.size, dtype=bool)
        mask[top : top + height, left : left + width] = True
        return mask

    def map_to_image(self, anomaly_map: np.ndarray, image_height: int, image_width: int) -> np.ndarray:
        """A (height, width) map at the model's input -> (image_height, image_width): crop, resize."""
        top, left, height, width = self.content_box(image_height, image_width)
        crop = np.ascontiguousarray(anomaly_map[top : top + height, left : left + width], dtype=np.float32)
        if crop.shape == (image_height, image_width):
            return crop
        import torch
        import torch.nn.functional as F  # noqa: N812

        tensor = torch.from_numpy(crop)[None, None]
        return F.interpolate(tensor, size=(image_height, image_width), mode="bilinear", align_corners=False)[0, 0].numpy()


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    import torch.nn.functional as F  # noqa: N812

    if tuple(image.shape[-2:]) == size:
        return image.clamp(0.0, 1.0)
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def square_geometry(size: int) -> InputGeometry:
    return InputGeometry(size, size, False)


def choose_geometry(
    heights: Sequence[int],
    widths: Sequence[int],
    size: int,
    *,
    multiple: int = 16,
    keep_aspect: bool = True,
    tolerance: float = 0.1,
) -> InputGeometry:
    """The input of a category from its training images' sizes.

    Aspect = the median of width / height (in log space); the input has about ``size**2`` pixels with
    that aspect, both sides rounded to ``multiple`` (at least ``multiple``). Letterboxed when the
    aspects vary (``aspects_vary``); a category whose images share one aspect is resized without
    padding. ``keep_aspect=False``: ``size x size``.
    """
    if size % multiple:
        msg = f"input size {size} must be a multiple of {multiple}"
        raise ValueError(msg)
    if not keep_aspect or not len(heights):
        return square_geometry(size)
    aspects = np.asarray(widths, dtype=np.float64) / np.asarray(heights, dtype=np.float64)
    if not np.all(np.isfinite(aspects)) or np.any(aspects <= 0):
        msg = "image sizes must be positive to choose an input size"
        raise ValueError(msg)
    log_aspect = float(np.median(np.log(aspects)))
    aspect = math.exp(log_aspect)
    height = max(multiple, round(size / math.sqrt(aspect) / multiple) * multiple)
    width = max(multiple, round(size * math.sqrt(aspect) / multiple) * multiple)
    return InputGeometry(int(height), int(width), aspects_vary(aspects, tolerance))


def aspects_vary(aspects: np.ndarray, tolerance: float = 0.1) -> bool:
    """True when more than a tenth of the images differ from the median aspect by more than
    ``tolerance`` (relative): those need letterboxing; a common aspect is resized (the rounding of the
    input to the stride distorts it by a few percent at most)."""
    aspects = np.asarray(aspects, dtype=np.float64)
    if not len(aspects):
        return False
    median = math.exp(float(np.median(np.log(aspects))))
    return bool((np.abs(aspects / median - 1.0) > tolerance).mean() > 0.1)
