"""Where the bin edges of a score histogram go (``edges="quantile"``): ranks of the scores, estimated from
seeded samples, one image at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Quantile bin edges come from two seeded samples of the scores (see adaptive_edges). A uniform one of
# QUANTILE_SAMPLE_SIZE places the equal-size bins (16 scores per bin at the default num_bins; sampling noise
# only unbalances bins, it never makes a bound wrong). A top-heavy one keeps the TOP_SAMPLE_SCALE highest
# scores and rank r with probability about TOP_SAMPLE_SCALE / r, so it resolves ranks near the top to a few
# pixels; it grows by 0.75 * TOP_SAMPLE_SCALE scores per 4x more pixels (4.5 MB at 50M pixels).
QUANTILE_SAMPLE_SIZE = 1 << 18
TOP_SAMPLE_SCALE = 1 << 16
QUANTILE_SEED = 0  # fixed, so the same maps always give the same bins and metrics


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


def adaptive_edges(map_list: list[np.ndarray], num_bins: int) -> np.ndarray:
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
