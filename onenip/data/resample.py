"""Bilinear resizing in numpy, the same arithmetic as ``torch.nn.functional.interpolate``.

The served model (an exported graph in ONNX Runtime or OpenVINO) must not import torch: importing it
costs seconds of start-up and hundreds of MB of memory. Its preprocessing therefore resizes here, with
the weights torch uses (``mode="bilinear", align_corners=False``, with or without ``antialias``), so the
exported path and the torch path see the same input (differences are float rounding, ~1e-6).

Output pixel ``i`` samples the input around ``center = (i + 0.5) * in / out`` with a triangle filter
that is stretched by the scale when shrinking with antialias (every input pixel contributes) and of
width one otherwise (plain bilinear). That is Pillow's BILINEAR filter (torch's antialiased kernel was
ported from it), so Pillow resizes each channel as a float32 ("F") image: single-threaded C, no BLAS
threads that would spin beside the runtime's own. Plain bilinear shrinking (no antialias), which Pillow
does not offer, is a product with the (out, in) weight matrices of ``resize_weights``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """(out_size, in_size) float32: row ``i`` holds the input weights of output pixel ``i`` (sums to 1)."""
    if in_size < 1 or out_size < 1:
        msg = f"sizes must be positive, got {in_size} -> {out_size}"
        raise ValueError(msg)
    scale = in_size / out_size
    stretch = scale if (antialias and scale > 1.0) else 1.0  # the filter widens only when shrinking
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    if not antialias:
        # plain bilinear: the sample point is clamped at the first pixel's centre, as torch does
        centers = np.maximum(centers, 0.5)
    lows = np.maximum((centers - stretch + 0.5).astype(np.int64), 0)
    highs = np.minimum((centers + stretch + 0.5).astype(np.int64), in_size)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        taps = np.arange(lows[i], highs[i])
        tap_weights = np.maximum(0.0, 1.0 - np.abs((taps + 0.5 - centers[i]) / stretch))
        total = tap_weights.sum()
        weights[i, taps] = tap_weights / total if total > 0 else 0.0
    return weights.astype(np.float32)


def resize_chw(image: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """(C, H, W) or (H, W) float32 -> the same at ``size`` (height, width)."""
    height, width = image.shape[-2:]
    image = np.asarray(image, dtype=np.float32)
    if (height, width) == tuple(size):
        return image
    if antialias or (size[0] >= height and size[1] >= width):
        channels = image.reshape(-1, height, width)
        if len(channels) > 1 and all(np.array_equal(channels[0], c) for c in channels[1:]):
            # a grey image comes as equal channels (most inspection cameras): resizing one gives the same numbers
            channels = channels[:1]
        resized = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((size[1], size[0]), Image.Resampling.BILINEAR))
                   for c in channels]  # fmt: skip
        if len(resized) == 1 and image.ndim == 3 and image.shape[0] > 1:
            resized = resized * image.shape[0]
        return np.stack(resized).reshape(*image.shape[:-2], *size)
    rows = resize_weights(height, size[0], antialias)
    cols = resize_weights(width, size[1], antialias)
    return np.matmul(np.matmul(rows, image), cols.T)
