"""All metrics of a test set at once (``compute_metrics``), under the names in ``METRIC_NAMES``."""

from __future__ import annotations

from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from onenip.metrics.checks import (
    ArrayLike,
    BinEdges,
    Method,
    check_image_inputs,
    check_pixel_inputs,
    masks_agree_with_labels,
    is_fpr_limit,
)
from onenip.metrics.curves import f1max
from onenip.metrics.histogram import DEFAULT_FPR_LIMIT, DEFAULT_NUM_BINS, exact_histogram, histogram_counts
from onenip.metrics.pixel import binned_value, concatenate, use_binned

IMAGE_METRIC_NAMES = ("image_AUROC", "image_AP", "image_F1max")
PIXEL_METRIC_NAMES = ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")
METRIC_NAMES = IMAGE_METRIC_NAMES + PIXEL_METRIC_NAMES


def compute_metrics(
    image_scores: ArrayLike,
    labels: ArrayLike,
    anomaly_maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    *,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    method: Method = "auto",
    num_bins: int = DEFAULT_NUM_BINS,
    edges: BinEdges = "quantile",
) -> dict[str, float]:
    """All metrics of a test set, named as in ``METRIC_NAMES``.

    Args:
        image_scores: ``(N,)`` ``pred_score`` per image.
        labels: ``(N,)`` 0 normal / 1 anomalous.
        anomaly_maps: ``(N, H, W)`` or list of ``(H, W)`` maps at the mask resolution; ignored without masks.
        masks: ground truth aligned with ``anomaly_maps`` (zeros for normal images), or ``None`` for categories
            without masks: then only the image metrics are returned.

    Example:
        >>> compute_metrics(np.array([0.1, 0.9, 0.4]), np.array([0, 1, 1]))["image_AUROC"]
        1.0
    """
    scores, binary_labels = check_image_inputs(image_scores, labels)
    image_precision, image_recall, _ = precision_recall_curve(binary_labels, scores)
    metrics = {
        "image_AUROC": float(roc_auc_score(binary_labels, scores)),
        "image_AP": float(average_precision_score(binary_labels, scores)),
        "image_F1max": f1max(image_precision, image_recall),
    }
    if masks is None:
        return metrics
    if anomaly_maps is None:
        msg = "Got masks but no anomaly_maps; pass both for pixel metrics, or neither for image metrics only"
        raise ValueError(msg)
    is_fpr_limit(fpr_limit)
    map_list, mask_list = check_pixel_inputs(anomaly_maps, masks)
    masks_agree_with_labels(binary_labels, mask_list)
    if use_binned(map_list, method):
        # One pass over the maps serves all four pixel metrics.
        histogram = histogram_counts(map_list, mask_list, num_bins, edges)
        estimates = {
            "pixel_AUROC": histogram.auroc(),
            "pixel_AP": histogram.average_precision(),
            "pixel_F1max": histogram.f1max(),
            "pixel_AUPRO": histogram.aupro(fpr_limit),
        }
        metrics |= {name: binned_value(estimate, name, num_bins) for name, estimate in estimates.items()}
        return metrics
    pixel_scores, pixel_labels = concatenate(map_list, mask_list)
    pixel_precision, pixel_recall, _ = precision_recall_curve(pixel_labels, pixel_scores)
    metrics |= {
        "pixel_AUROC": float(roc_auc_score(pixel_labels, pixel_scores)),
        "pixel_AP": float(average_precision_score(pixel_labels, pixel_scores)),
        "pixel_F1max": f1max(pixel_precision, pixel_recall),
        "pixel_AUPRO": exact_histogram(map_list, mask_list).aupro(fpr_limit).value,
    }
    return metrics
