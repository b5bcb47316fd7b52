"""Score histograms: pixels counted per score bin, and each pixel metric read from them with a bound on
its distance to the exact value (``BinnedEstimate``); one bin per distinct score makes them exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onenip.metrics.checks import ArrayLike, BinEdges, check_pixel_inputs, is_bin_edges, is_fpr_limit, is_num_bins
from onenip.metrics.curves import PrCurve, RocCurve
from onenip.metrics.edges import adaptive_edges

DEFAULT_FPR_LIMIT = 0.3  # AUPRO's usual limit (MVTec AD paper, anomalib.metrics.AUPRO)
DEFAULT_NUM_BINS = 1 << 16
# Normal scores sorted together when binning: one binary search per bin edge places the whole batch.
ACCUMULATE_BATCH = 1 << 18
# 8-connectivity, as the MVTec AD evaluation code labels ground-truth regions.
REGION_STRUCTURE = np.ones((3, 3), dtype=int)


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
    wide; a score shared by more pixels than one bin's share gets a bin of its own (``adaptive_edges``).
    Ranks come from seeded samples (``QUANTILE_SAMPLE_SIZE``, ``TOP_SAMPLE_SCALE``), read in two passes
    over the maps before the one that counts. ``edges="uniform"`` uses ``num_bins`` equal-width bins over
    ``[min, max]``, which skewed maps (most pixels near 0) fill badly. Memory is ``O(num_bins)`` plus one
    image, ``ACCUMULATE_BATCH`` scores and the samples.
    """
    map_list, mask_list = check_pixel_inputs(maps, masks)
    return histogram_counts(map_list, mask_list, num_bins, edges)


def histogram_counts(
    map_list: list[np.ndarray], mask_list: list[np.ndarray], num_bins: int, edges: BinEdges = "quantile"
) -> ScoreHistogram:
    is_num_bins(num_bins)
    is_bin_edges(edges)
    if edges == "quantile":
        lower_edges = adaptive_edges(map_list, num_bins)
    else:
        low = min(float(anomaly_map.min()) for anomaly_map in map_list)
        high = max(float(anomaly_map.max()) for anomaly_map in map_list)
        lower_edges = np.unique(low + np.arange(num_bins) * ((high - low) / num_bins))
    return accumulate(map_list, mask_list, lower_edges, track_ties=True)


def exact_histogram(map_list: list[np.ndarray], mask_list: list[np.ndarray]) -> ScoreHistogram:
    """One bin per distinct score: every bin is tied, so every estimate is exact (memory O(pixels))."""
    values = np.unique(np.concatenate([anomaly_map.ravel() for anomaly_map in map_list]).astype(np.float64))
    return accumulate(map_list, mask_list, values, track_ties=False)


def _bin_starts(sorted_scores: np.ndarray, lower_edges: np.ndarray) -> np.ndarray:
    """``(K,)`` index of the first score in each bin, i.e. how many scores are below each lower edge. One
    binary search per edge or per score, whichever are fewer (sorted keys keep the latter fast)."""
    if len(lower_edges) <= len(sorted_scores):
        return np.searchsorted(sorted_scores, lower_edges, side="left")
    counts = np.bincount(np.searchsorted(lower_edges, sorted_scores, side="right") - 1, minlength=len(lower_edges))
    return np.cumsum(counts) - counts


def accumulate(
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
