"""Input checks and conversions shared by every metric: the argument types, the ``is_*`` / ``has_*`` checks
(each raises ``ValueError``), and scores, labels, maps and masks brought to numpy with their shapes checked."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Method = Literal["auto", "exact", "binned"]
BinEdges = Literal["quantile", "uniform"]
ArrayLike = Any  # numpy array, torch tensor, or a sequence of them


def is_same_shape(first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("scores", "labels")) -> None:
    """Raise ``ValueError`` unless the two arrays have the same shape."""
    if first.shape != second.shape:
        msg = f"Expected {names[0]} and {names[1]} to have the same shape, but got {first.shape} and {second.shape}"
        if names[0].startswith("anomaly_maps"):
            msg += "; resize the maps to the mask resolution with onenip.metrics.resize_maps_to_masks"
        raise ValueError(msg)


def check_finite(values: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if any value is NaN or infinite."""
    if not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        msg = f"Expected finite {name}, but {bad} of {values.size} values are NaN or infinite"
        raise ValueError(msg)


def is_binary_labels(labels: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``labels`` is 1-D and holds only 0 (normal) and 1 (anomalous)."""
    if labels.ndim != 1:
        msg = f"Expected image labels of shape (N,), but got shape {labels.shape}"
        raise ValueError(msg)
    values = np.unique(labels)
    if not set(values.tolist()) <= {0, 1}:
        msg = f"Expected image labels in {{0, 1}}, but got values {values.tolist()[:10]}"
        raise ValueError(msg)


def is_binary_mask(mask: np.ndarray, name: str = "mask") -> None:
    """Raise ``ValueError`` unless ``mask`` is bool or holds only {0, 1} or only {0, 255}."""
    if mask.dtype == bool:
        return
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:10]
        msg = f"Expected {name} to be binary (bool, 0/1 or 0/255), but got values {shown}"
        raise ValueError(msg)


def has_both_classes(num_anomalous: int, num_normal: int, level: str) -> None:
    """Raise ``ValueError`` unless there is at least one anomalous and one normal ``level`` (image or pixel)."""
    if num_anomalous == 0 or num_normal == 0:
        msg = (
            f"Expected at least one anomalous and one normal {level}, but got {num_anomalous} anomalous and "
            f"{num_normal} normal; the metric is undefined"
        )
        raise ValueError(msg)


def is_fpr_limit(fpr_limit: float) -> None:
    """Raise ``ValueError`` unless ``0 < fpr_limit <= 1``."""
    if not 0.0 < fpr_limit <= 1.0:
        msg = f"Expected fpr_limit in (0, 1], but got {fpr_limit}"
        raise ValueError(msg)


def is_num_bins(num_bins: int) -> None:
    """Raise ``ValueError`` unless ``num_bins`` is an integer of at least 2."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 2:
        msg = f"Expected num_bins to be an integer >= 2, but got {num_bins!r}"
        raise ValueError(msg)


def is_method(method: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of auto, exact, binned."""
    if method not in ("auto", "exact", "binned"):
        msg = f"Expected method to be one of 'auto', 'exact', 'binned', but got {method!r}"
        raise ValueError(msg)


def is_bin_edges(edges: str) -> None:
    """Raise ``ValueError`` unless ``edges`` is quantile or uniform."""
    if edges not in ("quantile", "uniform"):
        msg = f"Expected edges to be one of 'quantile', 'uniform', but got {edges!r}"
        raise ValueError(msg)


def _as_numpy(array: ArrayLike) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_image_list(images: ArrayLike, name: str) -> list[np.ndarray]:
    """``(N, H, W)``, ``(N, 1, H, W)`` or a sequence of ``(H, W)``/``(1, H, W)`` -> list of ``(H, W)`` arrays."""
    if isinstance(images, list | tuple):
        items = [_as_numpy(image) for image in images]
        items = [item[0] if item.ndim == 3 and item.shape[0] == 1 else item for item in items]
        for index, item in enumerate(items):
            if item.ndim != 2:
                msg = f"Expected {name}[{index}] to have shape (H, W), but got {item.shape}"
                raise ValueError(msg)
        if not items:
            msg = f"Expected at least one image in {name}, but got none"
            raise ValueError(msg)
        return items
    array = _as_numpy(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] == 0:
        msg = f"Expected {name} of shape (N, H, W) or (N, 1, H, W) or a list of (H, W) arrays, but got {array.shape}"
        raise ValueError(msg)
    return list(array)


def check_image_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_numpy(scores).astype(np.float64, copy=False)
    labels = _as_numpy(labels)
    is_binary_labels(labels)
    is_same_shape(scores, labels, ("image scores", "image labels"))
    check_finite(scores, "image scores")
    labels = labels.astype(bool)
    has_both_classes(int(labels.sum()), int((~labels).sum()), "image")
    return scores, labels


def check_pixel_inputs(maps: ArrayLike, masks: ArrayLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Checks, then ``(H, W)`` maps and masks, one per image; masks are binarised (``> 0``) where used, one
    image at a time, so no copy of the whole set is made."""
    map_list = as_image_list(maps, "anomaly_maps")
    mask_list = as_image_list(masks, "masks")
    if len(map_list) != len(mask_list):
        msg = f"Expected as many anomaly maps as masks, but got {len(map_list)} maps and {len(mask_list)} masks"
        raise ValueError(msg)
    num_anomalous = 0
    for index, (anomaly_map, mask) in enumerate(zip(map_list, mask_list, strict=True)):
        is_same_shape(anomaly_map, mask, (f"anomaly_maps[{index}]", f"masks[{index}]"))
        check_finite(anomaly_map, f"anomaly_maps[{index}]")
        is_binary_mask(mask, f"masks[{index}]")
        num_anomalous += int(np.count_nonzero(mask))
    num_pixels = sum(mask.size for mask in mask_list)
    has_both_classes(num_anomalous, num_pixels - num_anomalous, "pixel")
    return map_list, mask_list


def masks_agree_with_labels(labels: np.ndarray, masks: list[np.ndarray]) -> None:
    """A normal image (label 0) must have an empty mask; otherwise labels and masks are misaligned."""
    if len(labels) != len(masks):
        msg = f"Expected one mask per image, but got {len(masks)} masks for {len(labels)} image labels"
        raise ValueError(msg)
    for index, (label, mask) in enumerate(zip(labels, masks, strict=True)):
        if not label and mask.any():
            msg = f"Image {index} is labelled normal but masks[{index}] has {np.count_nonzero(mask)} anomalous pixels"
            raise ValueError(msg)
