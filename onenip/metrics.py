"""Image- and pixel-level anomaly detection metrics, computed at the ground-truth mask resolution.

Plain functions over numpy arrays (torch tensors are accepted and moved to numpy) that return floats:

- image level: ``image_auroc``, ``image_ap``, ``image_f1max`` (sklearn, exact);
- pixel level: ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``pixel_aupro``;
- ``compute_metrics`` gathers them under the names in ``METRIC_NAMES``; categories without masks get the
  image metrics only.

Pixel metrics take anomaly maps and masks of the same shape: ``(N, H, W)`` arrays (``(N, 1, H, W)`` is
squeezed) or a sequence of ``(H, W)`` arrays when image sizes differ. Maps at another resolution go through
``resize_maps_to_masks`` first. Masks are 0/1, 0/255 or bool and are binarised with ``> 0``.

Memory stays bounded on large test sets. Up to ``EXACT_PIXEL_LIMIT`` pixels the pixel metrics are exact
(sklearn for AUROC/AP/F1max, one bin per distinct score for AUPRO). Above it they come from a histogram of
at most ``num_bins`` score bins (``pixel_histogram``), which costs ``O(num_bins)`` memory, one image and a
batch of scores at a time, and bounded samples of the scores (about 10 MB in all at 50M pixels). Bin edges
follow the ranks of the scores (``edges="quantile"``, the default), so skewed maps, most pixels near 0 and
a few near 1, still spread over all bins; equal-width bins over ``[min, max]`` (``edges="uniform"``) are
kept for comparison. Every threshold of the binned path is also a threshold of the exact computation, and
the histogram knows how far the exact value can be, so each binned value comes with a bound on its error
(``BinnedEstimate.error_bound``, derivations in the ``ScoreHistogram`` methods), whatever the edges. Bins
whose scores are all equal are exact and add nothing to the bound; a warning is raised when a bound
exceeds ``BINNED_WARN_BOUND``.

AUPRO follows the MVTec AD evaluation code (Bergmann et al., IJCV 2021): ground-truth regions are the
8-connected components of each mask (``scipy.ndimage.label`` with a 3x3 structure of ones), PRO at a
threshold is the mean over all regions of the fraction of each region at or above it, FPR counts every
normal pixel of every image, and the PRO-over-FPR curve is integrated with the trapezoid rule up to
``fpr_limit`` (interpolated there) and divided by ``fpr_limit``.

See Also:
    ``tests/helpers/aupro_reference.py`` (brute-force AUPRO the tests compare against), ``onenip.plots``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

IMAGE_METRIC_NAMES = ("image_AUROC", "image_AP", "image_F1max")
PIXEL_METRIC_NAMES = ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")
METRIC_NAMES = IMAGE_METRIC_NAMES + PIXEL_METRIC_NAMES

DEFAULT_FPR_LIMIT = 0.3  # AUPRO's usual limit (MVTec AD paper, anomalib.metrics.AUPRO)
EXACT_PIXEL_LIMIT = 1 << 22  # about 4.2M pixels (64 images of 256x256): sklearn's sorts stay well under 1 GB
DEFAULT_NUM_BINS = 1 << 16
BINNED_WARN_BOUND = 1e-3
# Quantile bin edges come from two seeded samples of the scores (see _adaptive_edges). A uniform one of
# QUANTILE_SAMPLE_SIZE places the equal-size bins (16 scores per bin at the default num_bins; sampling noise
# only unbalances bins, it never makes a bound wrong). A top-heavy one keeps the TOP_SAMPLE_SCALE highest
# scores and rank r with probability about TOP_SAMPLE_SCALE / r, so it resolves ranks near the top to a few
# pixels; it grows by 0.75 * TOP_SAMPLE_SCALE scores per 4x more pixels (4.5 MB at 50M pixels).
QUANTILE_SAMPLE_SIZE = 1 << 18
TOP_SAMPLE_SCALE = 1 << 16
# Normal scores sorted together when binning: one binary search per bin edge places the whole batch.
ACCUMULATE_BATCH = 1 << 18
QUANTILE_SEED = 0  # fixed, so the same maps always give the same bins and metrics
# 8-connectivity, as the MVTec AD evaluation code labels ground-truth regions.
REGION_STRUCTURE = np.ones((3, 3), dtype=int)

Method = Literal["auto", "exact", "binned"]
BinEdges = Literal["quantile", "uniform"]
ArrayLike = Any  # numpy array, torch tensor, or a sequence of them


# --------------------------------------------------------------------------------------------- checks


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


def _as_image_list(images: ArrayLike, name: str) -> list[np.ndarray]:
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


def _check_image_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_numpy(scores).astype(np.float64, copy=False)
    labels = _as_numpy(labels)
    is_binary_labels(labels)
    is_same_shape(scores, labels, ("image scores", "image labels"))
    check_finite(scores, "image scores")
    labels = labels.astype(bool)
    has_both_classes(int(labels.sum()), int((~labels).sum()), "image")
    return scores, labels


def _check_pixel_inputs(maps: ArrayLike, masks: ArrayLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Checks, then ``(H, W)`` maps and masks, one per image; masks are binarised (``> 0``) where used, one
    image at a time, so no copy of the whole set is made."""
    map_list = _as_image_list(maps, "anomaly_maps")
    mask_list = _as_image_list(masks, "masks")
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


def _masks_agree_with_labels(labels: np.ndarray, masks: list[np.ndarray]) -> None:
    """A normal image (label 0) must have an empty mask; otherwise labels and masks are misaligned."""
    if len(labels) != len(masks):
        msg = f"Expected one mask per image, but got {len(masks)} masks for {len(labels)} image labels"
        raise ValueError(msg)
    for index, (label, mask) in enumerate(zip(labels, masks, strict=True)):
        if not label and mask.any():
            msg = f"Image {index} is labelled normal but masks[{index}] has {np.count_nonzero(mask)} anomalous pixels"
            raise ValueError(msg)


# --------------------------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class RocCurve:
    """ROC curve, points ordered by decreasing threshold (sklearn's ``roc_curve`` layout)."""

    fpr: np.ndarray  # (K,) float64, non-decreasing, starts at 0
    tpr: np.ndarray  # (K,) float64, non-decreasing, starts at 0
    thresholds: np.ndarray  # (K,) float64, decreasing; thresholds[0] = inf (nothing predicted anomalous)

    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))


@dataclass(frozen=True)
class PrCurve:
    """Precision-recall curve in sklearn's ``precision_recall_curve`` layout."""

    precision: np.ndarray  # (K + 1,) float64; the last point is (recall 0, precision 1) and has no threshold
    recall: np.ndarray  # (K + 1,) float64, non-increasing, ends at 0
    thresholds: np.ndarray  # (K,) float64, increasing

    def average_precision(self) -> float:
        """Step-wise area, as ``sklearn.metrics.average_precision_score``."""
        return float(-np.sum(np.diff(self.recall) * self.precision[:-1]))

    def f1max(self) -> float:
        return _f1max(self.precision, self.recall)


def _f1max(precision: np.ndarray, recall: np.ndarray) -> float:
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.max())


def roc_curve_points(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
    """Image-level ROC curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = _check_image_inputs(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds.astype(np.float64))


def pr_curve_points(scores: ArrayLike, labels: ArrayLike) -> PrCurve:
    """Image-level precision-recall curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = _check_image_inputs(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    return PrCurve(precision=precision, recall=recall, thresholds=thresholds.astype(np.float64))


def pixel_roc_curve_points(
    maps: ArrayLike,
    masks: ArrayLike,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    method: Method = "auto",
    edges: BinEdges = "quantile",
) -> RocCurve:
    """Pixel-level ROC curve; from the histogram (at most ``num_bins + 1`` points) when binned."""
    map_list, mask_list = _check_pixel_inputs(maps, masks)
    if _use_binned(map_list, method):
        return _histogram(map_list, mask_list, num_bins, edges).roc_curve()
    scores, labels = _concatenate(map_list, mask_list)
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
    map_list, mask_list = _check_pixel_inputs(maps, masks)
    if _use_binned(map_list, method):
        return _histogram(map_list, mask_list, num_bins, edges).pr_curve()
    scores, labels = _concatenate(map_list, mask_list)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    return PrCurve(precision=precision, recall=recall, thresholds=thresholds)


# --------------------------------------------------------------------------------------- image metrics


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``(N,)`` image scores against ``(N,)`` 0/1 labels."""
    scores, labels = _check_image_inputs(scores, labels)
    return float(roc_auc_score(labels, scores))


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision (sklearn's step-wise area under the PR curve) of ``(N,)`` image scores."""
    scores, labels = _check_image_inputs(scores, labels)
    return float(average_precision_score(labels, scores))


def image_f1max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Best F1 over all thresholds of the image-level precision-recall curve."""
    return pr_curve_points(scores, labels).f1max()


# ------------------------------------------------------------------------------------------- histogram


@dataclass(frozen=True)
class BinnedEstimate:
    """A metric from a score histogram and a bound on its distance to the exact value."""

    value: float
    error_bound: float  # |exact - value| <= error_bound


@dataclass(frozen=True)
class ScoreHistogram:
    """Pixel counts per score bin, bins in increasing score order.

    A pixel is predicted anomalous at threshold ``k`` when its bin is ``>= k``. Bin assignment never
    decreases with the score, so that set is "score >= the smallest score in bins >= k": every threshold
    here is a threshold of the exact metric, and the exact metric differs only in thresholds that fall
    inside a bin. Bins whose scores are all equal (``tied``) contain no such threshold.
    """

    thresholds: np.ndarray  # (K,) float64, lower edge of each bin
    positives: np.ndarray  # (K,) int64, anomalous pixels per bin
    negatives: np.ndarray  # (K,) int64, normal pixels per bin
    region_overlap: np.ndarray  # (K,) float64, sum over the bin's anomalous pixels of 1 / (size of their region)
    tied: np.ndarray  # (K,) bool, all scores in the bin are equal (empty bins count as tied)
    num_regions: int  # connected ground-truth regions over all masks

    @property
    def num_positives(self) -> int:
        return int(self.positives.sum())

    @property
    def num_negatives(self) -> int:
        return int(self.negatives.sum())

    def auroc(self) -> BinnedEstimate:
        """AUROC = P(anomalous score > normal score) + P(equal) / 2, with scores replaced by bins.

        Pairs in different bins are ordered as in the exact metric; a pair within one bin counts 1/2 here
        and 0, 1/2 or 1 exactly. Bound: ``sum_k P_k N_k / (2 P N)`` over bins ``k`` that are not tied.
        """
        pos, neg = self.positives.astype(np.float64), self.negatives.astype(np.float64)
        num_pairs = pos.sum() * neg.sum()
        negatives_below = np.cumsum(neg) - neg
        value = float(np.sum(pos * (negatives_below + 0.5 * neg)) / num_pairs)
        bound = float(0.5 * np.sum((pos * neg)[~self.tied]) / num_pairs)
        return BinnedEstimate(value, bound)

    def average_precision(self) -> BinnedEstimate:
        """AP = mean over anomalous pixels of the precision at the threshold equal to their score.

        Here the ``P_k`` anomalous pixels of bin ``k`` all get ``v_k = TP_k / C_k``, with ``TP_k`` and ``C_k``
        the anomalous and all pixels in bins ``>= k``. Exactly, with ``a = TP_{k+1}`` and ``c = C_{k+1}``
        above the bin, the ``j``-th of them counts itself and at least ``j - 1`` anomalous pixels of the bin,
        and at most its ``N_k`` normal ones: its precision is at least ``(a + j) / (c + N_k + j)`` (normal
        pixels first) and at most ``(a + P_k) / (c + P_k)`` (anomalous first, tied). So their sum lies in
        ``[L_k, U_k]`` with ``U_k = P_k (a + P_k) / (c + P_k)`` and ``L_k = P_k - (x - a) H``, ``x = c + N_k``,
        ``H = sum_j 1 / (x + j) <= ln((x + P_k + 1/2) / (x + 1/2))`` (midpoint rule on a convex function).
        Bound: ``sum_k max(U_k - P_k v_k, P_k v_k - L_k) / P`` over bins that are not tied. Bins ranked
        below few normal pixels (``x - a`` small), such as a run of detected defects, are nearly exact.
        """
        tp, count = self._cumulative_from_top()
        pos, neg = self.positives.astype(np.float64), self.negatives.astype(np.float64)
        has_pos = pos > 0
        precision = np.divide(tp[:-1], count[:-1], out=np.zeros_like(pos), where=has_pos)
        value = float(np.sum(pos * precision) / pos.sum())
        above_pos, above_all = tp[1:], count[1:]
        normal_first = above_all + neg
        lowest_sum = pos - (normal_first - above_pos) * np.log1p(pos / (normal_first + 0.5))
        highest_sum = pos * np.divide(above_pos + pos, above_all + pos, out=np.ones_like(pos), where=has_pos)
        error = np.maximum(highest_sum - pos * precision, pos * precision - lowest_sum)
        error = np.where(has_pos & ~self.tied, error, 0.0)
        return BinnedEstimate(value, float(np.sum(error) / pos.sum()))

    def f1max(self) -> BinnedEstimate:
        """Best F1 = 2 TP / (TP + FP + P) over the bin thresholds.

        These thresholds are a subset of the exact ones, so the value is at most the exact F1max. A
        threshold inside bin ``k`` has ``TP <= TP_k`` and ``FP >= FP_{k+1}``, so its F1 is at most
        ``2 TP_k / (TP_k + FP_{k+1} + P)``. Bound: the largest of these (F1 of tied bins as is) minus the value.
        """
        tp, count = self._cumulative_from_top()
        fp = count - tp
        num_pos = tp[0]
        f1 = 2 * tp[:-1] / (tp[:-1] + fp[:-1] + num_pos)
        value = float(f1.max())
        upper = np.where(self.tied, f1, 2 * tp[:-1] / (tp[:-1] + fp[1:] + num_pos))
        return BinnedEstimate(value, float(max(upper.max() - value, 0.0)))

    def aupro(self, fpr_limit: float = DEFAULT_FPR_LIMIT) -> BinnedEstimate:
        """Area under the PRO-over-FPR curve up to ``fpr_limit``, divided by ``fpr_limit``.

        The curve through the bin thresholds is a subset of the exact curve's points. Between two
        neighbouring points the exact curve is monotone, so it stays in the box they span: a trapezoid is
        off by at most half the box's area, the interpolated piece at ``fpr_limit`` by at most its whole
        box (width up to ``fpr_limit``). Bound: the sum of these over bins that are not tied, / ``fpr_limit``.
        """
        is_fpr_limit(fpr_limit)
        if self.num_regions == 0:
            msg = "Expected at least one anomalous region for AUPRO, but the masks are empty"
            raise ValueError(msg)
        # Points from the highest threshold (nothing anomalous: (0, 0)) down to the lowest (everything: (1, 1)).
        fpr = np.concatenate([[0.0], np.cumsum(self.negatives[::-1])]) / self.num_negatives
        pro = np.concatenate([[0.0], np.cumsum(self.region_overlap[::-1])]) / self.num_regions
        pro = np.minimum(pro, 1.0)  # summing 1/size over a region may overshoot 1 by rounding
        exact_segment = self.tied[::-1]  # segment i joins points i and i+1, i.e. adds bin K-1-i
        num_inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points with fpr <= fpr_limit
        area = float(np.trapezoid(pro[:num_inside], fpr[:num_inside]))
        boxes = np.diff(fpr[:num_inside]) * np.diff(pro[:num_inside])
        bound = 0.5 * float(np.sum(boxes[~exact_segment[: num_inside - 1]]))
        if num_inside < len(fpr) and fpr[num_inside - 1] < fpr_limit:
            x0, x1 = fpr[num_inside - 1], fpr[num_inside]
            y0, y1 = pro[num_inside - 1], pro[num_inside]
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (fpr_limit - x0)
            if not exact_segment[num_inside - 1]:
                bound += (fpr_limit - x0) * (y1 - y0)
        return BinnedEstimate(float(area / fpr_limit), float(bound / fpr_limit))

    def roc_curve(self) -> RocCurve:
        tp, count = self._cumulative_from_top()
        fp = count - tp
        return RocCurve(
            fpr=fp[::-1] / fp[0],
            tpr=tp[::-1] / tp[0],
            thresholds=np.concatenate([[np.inf], self.thresholds[::-1]]),
        )

    def pr_curve(self) -> PrCurve:
        tp, count = self._cumulative_from_top()
        keep = count[:-1] > 0  # thresholds above every score have no precision
        precision = tp[:-1][keep] / count[:-1][keep]
        recall = tp[:-1][keep] / tp[0]
        return PrCurve(
            precision=np.concatenate([precision, [1.0]]),
            recall=np.concatenate([recall, [0.0]]),
            thresholds=self.thresholds[keep],
        )

    def _cumulative_from_top(self) -> tuple[np.ndarray, np.ndarray]:
        """``(K + 1,)`` anomalous and all pixels in bins ``>= k``; index ``K`` is 0."""
        pos, neg = self.positives.astype(np.float64), self.negatives.astype(np.float64)
        tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
        count = np.concatenate([np.cumsum((pos + neg)[::-1])[::-1], [0.0]])
        return tp, count


def pixel_histogram(
    maps: ArrayLike, masks: ArrayLike, num_bins: int = DEFAULT_NUM_BINS, *, edges: BinEdges = "quantile"
) -> ScoreHistogram:
    """Histogram of pixel scores over at most ``num_bins`` bins spanning all scores, one image at a time.

    ``edges="quantile"`` (default) places most edges at ranks of the scores, whatever their scale: half
    the bins get finer toward the highest scores (a bin's size grows with the number of pixels above it),
    where precision and F1 move fastest, a quarter hold equally many pixels, and a quarter are equally
    wide; a score shared by more pixels than one bin's share gets a bin of its own (``_adaptive_edges``).
    Ranks come from seeded samples (``QUANTILE_SAMPLE_SIZE``, ``TOP_SAMPLE_SCALE``), read in two passes
    over the maps before the one that counts. ``edges="uniform"`` uses ``num_bins`` equal-width bins over
    ``[min, max]``, which skewed maps (most pixels near 0) fill badly. Memory is ``O(num_bins)`` plus one
    image, ``ACCUMULATE_BATCH`` scores and the samples.
    """
    map_list, mask_list = _check_pixel_inputs(maps, masks)
    return _histogram(map_list, mask_list, num_bins, edges)


def _histogram(
    map_list: list[np.ndarray], mask_list: list[np.ndarray], num_bins: int, edges: BinEdges = "quantile"
) -> ScoreHistogram:
    is_num_bins(num_bins)
    is_bin_edges(edges)
    if edges == "quantile":
        lower_edges = _adaptive_edges(map_list, num_bins)
    else:
        low = min(float(anomaly_map.min()) for anomaly_map in map_list)
        high = max(float(anomaly_map.max()) for anomaly_map in map_list)
        lower_edges = np.unique(low + np.arange(num_bins) * ((high - low) / num_bins))
    return _accumulate(map_list, mask_list, lower_edges, track_ties=True)


@dataclass(frozen=True)
class _RankSketch:
    """Some of the scores, highest first, each standing for the pixels ranked about where it is."""

    scores: np.ndarray  # (M,) float64, non-increasing
    ranks: np.ndarray | None = None  # (M,) float64, increasing: pixels estimated to score >= scores[i]
    pixels_per_score: float = 1.0  # without ranks, scores[i] has rank (i + 1) * pixels_per_score

    def index_at(self, ranks: np.ndarray) -> np.ndarray:
        """Index of the stored score at each rank (1 = highest score)."""
        if self.ranks is None:
            index = np.ceil(ranks / self.pixels_per_score).astype(np.int64) - 1
        else:
            index = np.searchsorted(self.ranks, ranks)
        return np.clip(index, 0, len(self.scores) - 1)

    def at_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Increasing scores at ``ranks``; ranks that fall on the same stored score give it once, so a
        score comes back twice only if two stored scores (pixels) have it."""
        return self.scores[np.unique(self.index_at(ranks))][::-1]


def _uniform_sketch(map_list: list[np.ndarray]) -> tuple[float, float, int, _RankSketch]:
    """Smallest and largest score, number of scores, and ``QUANTILE_SAMPLE_SIZE`` scores drawn uniformly
    with replacement (seeded; every score when there are no more), one image at a time."""
    sizes = np.array([anomaly_map.size for anomaly_map in map_list], dtype=np.int64)
    num_scores = int(sizes.sum())
    rng = np.random.default_rng(QUANTILE_SEED)
    if num_scores <= QUANTILE_SAMPLE_SIZE:
        counts = sizes
    else:  # each image contributes in proportion to its pixels, so images of different sizes weigh as pixels do
        counts = rng.multinomial(QUANTILE_SAMPLE_SIZE, sizes / num_scores)
    sample = np.empty(int(counts.sum()), dtype=np.float64)
    low, high, start = np.inf, -np.inf, 0
    for anomaly_map, count in zip(map_list, counts, strict=True):
        scores = anomaly_map.ravel()
        low, high = min(low, float(scores.min())), max(high, float(scores.max()))
        sample[start : start + count] = scores if count == scores.size else scores[rng.integers(0, scores.size, count)]
        start += count
    sample[::-1].sort()  # decreasing
    return low, high, num_scores, _RankSketch(scores=sample, pixels_per_score=num_scores / len(sample))


def _top_sketch(map_list: list[np.ndarray], uniform: _RankSketch, num_scores: int) -> _RankSketch:
    """Scores kept with probability about ``min(1, s / rank)``, ``s = TOP_SAMPLE_SCALE``, so that ranks are
    resolved to a fixed fraction of themselves (``uniform`` resolves them to ``1 / QUANTILE_SAMPLE_SIZE``
    of all pixels, too coarse near the top): all of the top ``s``, then rank bands ``(s 4^(b-1), s 4^b]``
    at rate ``4^-b``, about ``0.75 s`` scores each, ``s (1 + 0.75 log4(pixels / s))`` in all. Band
    borders come from ``uniform``; a score tied at a border takes the lower rate, so a heavily tied score
    keeps at most about ``s`` pixels."""
    num_bands = max(int(np.ceil(np.log(num_scores / TOP_SAMPLE_SCALE) / np.log(4.0))), 0)
    border_ranks = TOP_SAMPLE_SCALE * 4.0 ** np.arange(num_bands)
    borders = uniform.scores[uniform.index_at(border_ranks)]  # non-increasing
    rates = 4.0 ** -np.arange(num_bands + 1)
    rng = np.random.default_rng(QUANTILE_SEED + 1)
    kept = []
    for anomaly_map in map_list:
        scores = anomaly_map.ravel()
        band = np.zeros(scores.size, dtype=np.int8)
        for border in borders:  # how many borders are >= the score; a few comparisons beat a binary search
            band += scores <= border
        kept.append(scores[rng.random(scores.size) < rates[band]].astype(np.float64))
    sketch = np.concatenate(kept)
    del kept
    sketch[::-1].sort()  # decreasing
    # The band never decreases down the sorted sketch, so its runs start where the borders fall.
    band_starts = np.searchsorted(-sketch, -borders, side="left")
    weights = np.ones(len(sketch))
    for band, start in enumerate(band_starts, start=1):
        weights[start:] = 1.0 / rates[band]
    return _RankSketch(scores=sketch, ranks=np.cumsum(weights, out=weights))


def _adaptive_edges(map_list: list[np.ndarray], num_bins: int) -> np.ndarray:
    """Increasing lower bin edges, at most ``num_bins``: the smallest score, then three kinds of edges
    sharing the budget. Half at ranks from the top spaced ``max(1, eps * rank)``: a bin's pixels have a
    precision uncertain by about the bin's size over the pixels above it, so AP and F1 need small bins at
    the top. A quarter at equally spaced ranks: AUROC and AUPRO errors add up as ``positives * negatives``
    per bin, which equal bins keep small wherever the classes mix. A quarter equally spaced in score: where
    few pixels spread over a wide range (the anomalous tail), they give bins of a few pixels. Splitting a
    bin never loosens the AUROC, F1max or AUPRO bound and at most doubles AP's, so the mix is about as
    good as the best kind for each metric.

    Any edge is a threshold of the exact metric: ``score >= edge`` selects the pixels at or above the
    smallest score that is ``>= edge``."""
    low, high, num_scores, uniform = _uniform_sketch(map_list)
    top = _top_sketch(map_list, uniform, num_scores)
    num_equal = num_width = (num_bins - 1) // 4
    equal_ranks = np.arange(1, num_equal + 1) * (num_scores / (num_equal + 1))
    top_heavy_ranks = _top_heavy_ranks(num_scores, num_bins - 1 - num_equal - num_width)
    edges = [np.array([low]), low + np.arange(1, num_width + 1) * ((high - low) / (num_width + 1))]
    for group in (uniform.at_ranks(equal_ranks), top.at_ranks(top_heavy_ranks)):
        # A score at two or more chosen ranks (heavy ties, e.g. a map clipped at 0) would widen the bins
        # around it; it gets a bin of its own, [v, nextafter(v)), which holds one value and so is exact.
        # g >= 2 equal edges become 2, so there are never more than num_bins edges.
        repeated = group[1:][group[1:] == group[:-1]]
        edges += [group, np.nextafter(repeated, np.inf)]
    return np.unique(np.concatenate(edges))


def _top_heavy_ranks(num_scores: int, count: int) -> np.ndarray:
    """About ``count`` ranks in ``[1, num_scores]`` (1 = highest score): 1, 2, ... up to ``1 / eps``, then
    growing by a factor ``1 + eps``, with ``eps`` set so that the ranks reach ``num_scores``."""
    if count >= num_scores:
        return np.arange(1, num_scores + 1, dtype=np.int64)
    if count == 0:
        return np.empty(0, dtype=np.int64)
    # count = 1/eps consecutive ranks + ln(num_scores * eps) / ln(1 + eps) geometric ones; a fixed point
    # iteration on eps ~ (1 + ln(num_scores * eps)) / count converges in a few steps (slope 1 / (count eps)).
    eps = np.log(num_scores) / count
    for _ in range(20):
        eps = max((1.0 + np.log(max(num_scores * eps, 1.0))) / count, 1.0 / count)
    consecutive = max(int(1.0 / eps), 1)
    if consecutive >= count:
        return np.arange(1, count + 1, dtype=np.int64)
    geometric = np.geomspace(consecutive, num_scores, count - consecutive + 1)[1:]
    ranks = np.concatenate([np.arange(1, consecutive + 1), np.round(geometric)]).astype(np.int64)
    return np.unique(np.clip(ranks, 1, num_scores))


def _exact_histogram(map_list: list[np.ndarray], mask_list: list[np.ndarray]) -> ScoreHistogram:
    """One bin per distinct score: every bin is tied, so every estimate is exact (memory O(pixels))."""
    values = np.unique(np.concatenate([anomaly_map.ravel() for anomaly_map in map_list]).astype(np.float64))
    return _accumulate(map_list, mask_list, values, track_ties=False)


def _bin_starts(sorted_scores: np.ndarray, lower_edges: np.ndarray) -> np.ndarray:
    """``(K,)`` index of the first score in each bin, i.e. how many scores are below each lower edge. One
    binary search per edge or per score, whichever are fewer (sorted keys keep the latter fast)."""
    if len(lower_edges) <= len(sorted_scores):
        return np.searchsorted(sorted_scores, lower_edges, side="left")
    counts = np.bincount(np.searchsorted(lower_edges, sorted_scores, side="right") - 1, minlength=len(lower_edges))
    return np.cumsum(counts) - counts


def _accumulate(
    map_list: list[np.ndarray], mask_list: list[np.ndarray], lower_edges: np.ndarray, *, track_ties: bool
) -> ScoreHistogram:
    """Bin ``k`` holds the scores in ``[lower_edges[k], lower_edges[k + 1])``; ``lower_edges[0]`` is the
    smallest score. Normal scores are sorted in batches of about ``ACCUMULATE_BATCH`` pixels, so that one
    binary search per bin edge and batch places them (rather than one per pixel), and each bin's smallest
    and largest score are the ends of its run. Anomalous pixels carry region weights and are binned one by
    one."""
    num_bins = len(lower_edges)
    positives = np.zeros(num_bins, dtype=np.int64)
    negatives = np.zeros(num_bins, dtype=np.int64)
    region_overlap = np.zeros(num_bins, dtype=np.float64)
    bin_min = np.full(num_bins, np.inf)
    bin_max = np.full(num_bins, -np.inf)
    num_regions = 0

    def add_runs(sorted_scores: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> None:
        filled = np.flatnonzero(counts)
        bin_min[filled] = np.minimum(bin_min[filled], sorted_scores[starts[filled]])
        bin_max[filled] = np.maximum(bin_max[filled], sorted_scores[starts[filled] + counts[filled] - 1])

    def add_normal(batch: list[np.ndarray]) -> None:
        normal = np.sort(np.concatenate(batch)).astype(np.float64)
        starts = _bin_starts(normal, lower_edges)
        counts = np.diff(starts, append=len(normal))
        negatives[:] += counts
        if track_ties:
            add_runs(normal, starts, counts)

    batch: list[np.ndarray] = []
    batch_size = 0
    for anomaly_map, mask in zip(map_list, mask_list, strict=True):
        mask = mask > 0
        flat_mask = mask.ravel()
        scores = anomaly_map.ravel()
        batch.append(scores[~flat_mask])
        batch_size += batch[-1].size
        if batch_size >= ACCUMULATE_BATCH:
            add_normal(batch)
            batch, batch_size = [], 0
        regions, count = ndimage.label(mask, structure=REGION_STRUCTURE)
        if count == 0:
            continue
        anomalous_scores = scores[flat_mask]
        order = np.argsort(anomalous_scores)
        anomalous = anomalous_scores[order].astype(np.float64)
        anomalous_bins = np.searchsorted(lower_edges, anomalous, side="right") - 1
        counts = np.bincount(anomalous_bins, minlength=num_bins)
        positives += counts
        region_sizes = np.bincount(regions.ravel())
        weights = 1.0 / region_sizes[regions.ravel()[flat_mask]]
        region_overlap += np.bincount(anomalous_bins, weights=weights[order], minlength=num_bins)
        num_regions += count
        if track_ties:
            add_runs(anomalous, np.cumsum(counts) - counts, counts)
    if batch:
        add_normal(batch)
    tied = (bin_min == bin_max) | (positives + negatives == 0) if track_ties else np.ones(num_bins, dtype=bool)
    return ScoreHistogram(
        thresholds=np.asarray(lower_edges, dtype=np.float64),
        positives=positives,
        negatives=negatives,
        region_overlap=region_overlap,
        tied=tied,
        num_regions=num_regions,
    )


# --------------------------------------------------------------------------------------- pixel metrics


def _use_binned(map_list: list[np.ndarray], method: Method) -> bool:
    is_method(method)
    if method == "auto":
        return sum(anomaly_map.size for anomaly_map in map_list) > EXACT_PIXEL_LIMIT
    return method == "binned"


def _concatenate(map_list: list[np.ndarray], mask_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([anomaly_map.ravel() for anomaly_map in map_list]).astype(np.float64)
    labels = np.concatenate([mask.ravel() > 0 for mask in mask_list])
    return scores, labels


def _binned_value(estimate: BinnedEstimate, name: str, num_bins: int, stacklevel: int = 3) -> float:
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
    map_list, mask_list = _check_pixel_inputs(maps, masks)
    if _use_binned(map_list, method):
        return _binned_value(binned(_histogram(map_list, mask_list, num_bins, edges)), name, num_bins, stacklevel=4)
    scores, labels = _concatenate(map_list, mask_list)
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
        lambda labels, scores: _f1max(*precision_recall_curve(labels, scores)[:2]),
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
    map_list, mask_list = _check_pixel_inputs(maps, masks)
    if _use_binned(map_list, method):
        histogram = _histogram(map_list, mask_list, num_bins, edges)
        return _binned_value(histogram.aupro(fpr_limit), "pixel_AUPRO", num_bins)
    return _exact_histogram(map_list, mask_list).aupro(fpr_limit).value


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

    map_list = _as_image_list(maps, "anomaly_maps")
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
    scores, binary_labels = _check_image_inputs(image_scores, labels)
    image_precision, image_recall, _ = precision_recall_curve(binary_labels, scores)
    metrics = {
        "image_AUROC": float(roc_auc_score(binary_labels, scores)),
        "image_AP": float(average_precision_score(binary_labels, scores)),
        "image_F1max": _f1max(image_precision, image_recall),
    }
    if masks is None:
        return metrics
    if anomaly_maps is None:
        msg = "Got masks but no anomaly_maps; pass both for pixel metrics, or neither for image metrics only"
        raise ValueError(msg)
    is_fpr_limit(fpr_limit)
    map_list, mask_list = _check_pixel_inputs(anomaly_maps, masks)
    _masks_agree_with_labels(binary_labels, mask_list)
    if _use_binned(map_list, method):
        # One pass over the maps serves all four pixel metrics.
        histogram = _histogram(map_list, mask_list, num_bins, edges)
        estimates = {
            "pixel_AUROC": histogram.auroc(),
            "pixel_AP": histogram.average_precision(),
            "pixel_F1max": histogram.f1max(),
            "pixel_AUPRO": histogram.aupro(fpr_limit),
        }
        metrics |= {name: _binned_value(estimate, name, num_bins) for name, estimate in estimates.items()}
        return metrics
    pixel_scores, pixel_labels = _concatenate(map_list, mask_list)
    pixel_precision, pixel_recall, _ = precision_recall_curve(pixel_labels, pixel_scores)
    metrics |= {
        "pixel_AUROC": float(roc_auc_score(pixel_labels, pixel_scores)),
        "pixel_AP": float(average_precision_score(pixel_labels, pixel_scores)),
        "pixel_F1max": _f1max(pixel_precision, pixel_recall),
        "pixel_AUPRO": _exact_histogram(map_list, mask_list).aupro(fpr_limit).value,
    }
    return metrics
