"""Pixel-level metrics and curves over all pixels of all images: exact (sklearn, or one bin per distinct
score for AUPRO) up to ``EXACT_PIXEL_LIMIT`` pixels, from a score histogram above it."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from onenip.metrics.checks import ArrayLike, BinEdges, Method, check_pixel_inputs, is_fpr_limit, is_method
from onenip.metrics.curves import PrCurve, RocCurve, f1max
from onenip.metrics.histogram import (
    DEFAULT_FPR_LIMIT,
    DEFAULT_NUM_BINS,
    BinnedEstimate,
    ScoreHistogram,
    exact_histogram,
    histogram_counts,
)

EXACT_PIXEL_LIMIT = 1 << 22  # about 4.2M pixels (64 images of 256x256): sklearn's sorts stay well under 1 GB
BINNED_WARN_BOUND = 1e-3


def use_binned(map_list: list[np.ndarray], method: Method) -> bool:
    is_method(method)
    if method == "auto":
        return sum(anomaly_map.size for anomaly_map in map_list) > EXACT_PIXEL_LIMIT
    return method == "binned"


def concatenate(map_list: list[np.ndarray], mask_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([anomaly_map.ravel() for anomaly_map in map_list]).astype(np.float64)
    labels = np.concatenate([mask.ravel() > 0 for mask in mask_list])
    return scores, labels


def binned_value(estimate: BinnedEstimate, name: str, num_bins: int, stacklevel: int = 3) -> float:
    if estimate.error_bound > BINNED_WARN_BOUND:
        msg = (
            f"{name} from {num_bins} score bins may be off by up to {estimate.error_bound:.2e}; "
            "use method='exact' or more num_bins if that matters"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)
    return estimate.value


def _pixel_metric(
    maps: ArrayLike,
    masks: ArrayLike,
    method: Method,
    num_bins: int,
    edges: BinEdges,
    name: str,
    binned: Callable[[ScoreHistogram], BinnedEstimate],
    exact: Callable[[np.ndarray, np.ndarray], float],
) -> float:
    """One pixel metric: exact from all pixels, or binned (with its error bound) above the limit."""
    map_list, mask_list = check_pixel_inputs(maps, masks)
    if use_binned(map_list, method):
        return binned_value(binned(histogram_counts(map_list, mask_list, num_bins, edges)), name, num_bins, stacklevel=4)
    scores, labels = concatenate(map_list, mask_list)
    return exact(labels, scores)


def pixel_auroc(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    method: Method = "auto",
    num_bins: int = DEFAULT_NUM_BINS,
    edges: BinEdges = "quantile",
) -> float:
    """Pixel AUROC over all pixels of all images (exact up to ``EXACT_PIXEL_LIMIT`` pixels, else binned)."""
    return _pixel_metric(
        maps, masks, method, num_bins, edges, "pixel_AUROC", ScoreHistogram.auroc,
        lambda labels, scores: float(roc_auc_score(labels, scores)),
    )


def pixel_ap(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    method: Method = "auto",
    num_bins: int = DEFAULT_NUM_BINS,
    edges: BinEdges = "quantile",
) -> float:
    """Pixel average precision (exact up to ``EXACT_PIXEL_LIMIT`` pixels, else binned)."""
    return _pixel_metric(
        maps, masks, method, num_bins, edges, "pixel_AP", ScoreHistogram.average_precision,
        lambda labels, scores: float(average_precision_score(labels, scores)),
    )


def pixel_f1max(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    method: Method = "auto",
    num_bins: int = DEFAULT_NUM_BINS,
    edges: BinEdges = "quantile",
) -> float:
    """Best pixel F1 over all thresholds (exact up to ``EXACT_PIXEL_LIMIT`` pixels, else binned)."""
    return _pixel_metric(
        maps, masks, method, num_bins, edges, "pixel_F1max", ScoreHistogram.f1max,
        lambda labels, scores: f1max(*precision_recall_curve(labels, scores)[:2]),
    )


def pixel_aupro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    *,
    method: Method = "auto",
    num_bins: int = DEFAULT_NUM_BINS,
    edges: BinEdges = "quantile",
) -> float:
    """Normalised area under the per-region-overlap curve for FPR in ``[0, fpr_limit]`` (MVTec AD definition).

    Example:
        >>> masks = np.zeros((1, 8, 8), dtype=np.uint8); masks[0, 2:4, 2:4] = 255
        >>> pixel_aupro(masks.astype(float), masks)  # regions score above every normal pixel
        1.0
    """
    is_fpr_limit(fpr_limit)
    map_list, mask_list = check_pixel_inputs(maps, masks)
    if use_binned(map_list, method):
        histogram = histogram_counts(map_list, mask_list, num_bins, edges)
        return binned_value(histogram.aupro(fpr_limit), "pixel_AUPRO", num_bins)
    return exact_histogram(map_list, mask_list).aupro(fpr_limit).value


def pixel_roc_curve_points(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    method: Method = "auto",
    edges: BinEdges = "quantile",
) -> RocCurve:
    """Pixel-level ROC curve; from the histogram (at most ``num_bins + 1`` points) when binned."""
    map_list, mask_list = check_pixel_inputs(maps, masks)
    if use_binned(map_list, method):
        return histogram_counts(map_list, mask_list, num_bins, edges).roc_curve()
    scores, labels = concatenate(map_list, mask_list)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def pixel_pr_curve_points(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    method: Method = "auto",
    edges: BinEdges = "quantile",
) -> PrCurve:
    """Pixel-level precision-recall curve; from the histogram when binned."""
    map_list, mask_list = check_pixel_inputs(maps, masks)
    if use_binned(map_list, method):
        return histogram_counts(map_list, mask_list, num_bins, edges).pr_curve()
    scores, labels = concatenate(map_list, mask_list)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    return PrCurve(precision=precision, recall=recall, thresholds=thresholds)
