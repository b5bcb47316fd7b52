"""Anomaly maps brought to the ground-truth mask resolution, where every pixel metric is computed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onenip.metrics.checks import ArrayLike, as_image_list


def resize_maps_to_masks(
    maps: ArrayLike, mask_shape: tuple[int, int] | Sequence[tuple[int, int]]
) -> np.ndarray | list[np.ndarray]:
    """Bilinearly resize anomaly maps to the ground-truth resolution (metrics are computed there).

    Args:
        maps: ``(N, H, W)`` / ``(N, 1, H, W)`` array or tensor, or a list of ``(H, W)`` maps.
        mask_shape: one ``(H, W)`` for all maps, or one per map (image sizes may differ within a category).

    Returns:
        ``(N, H', W')`` float32 array for one target shape given an array; a list of float32 maps otherwise.
        Bilinear with ``align_corners=False``, as anomalib upsamples its anomaly maps.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    map_list = as_image_list(maps, "anomaly_maps")
    one_shape = len(mask_shape) == 2 and all(isinstance(size, int | np.integer) for size in mask_shape)
    shapes = [tuple(mask_shape)] * len(map_list) if one_shape else [tuple(shape) for shape in mask_shape]
    if len(shapes) != len(map_list):
        msg = f"Expected one mask shape per map, but got {len(shapes)} shapes for {len(map_list)} maps"
        raise ValueError(msg)
    resized = []
    for anomaly_map, shape in zip(map_list, shapes, strict=True):
        anomaly_map = anomaly_map.astype(np.float32, copy=False)
        if anomaly_map.shape != shape:
            tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map))[None, None]
            anomaly_map = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        resized.append(anomaly_map)
    if one_shape and not isinstance(maps, list | tuple):
        return np.stack(resized)
    return resized
