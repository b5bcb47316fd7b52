"""Paired bootstrap over images: how far apart two scorers of the same images are, with an interval.

A scorer's outputs on a test (or validation) set are summarised per image (``PerImage``): its image score
and, with masks, a histogram of its pixel scores on bins shared by all its images (normal pixels,
anomalous pixels, and each anomalous pixel's share of its region for AUPRO). Histograms add up, so the
metrics of a bootstrap resample (images drawn with replacement, normals and anomalies separately) cost
one weighted sum instead of a pass over the pixels. ``paired_differences`` draws the same images for
both sides; each side may be several runs (seeds) of one method, averaged per resample.

Binned pixel metrics (``BINS`` bins per scorer, edges following the scores' ranks) are estimates for the
spread; point values come from ``compute_metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from onenip.metrics.edges import adaptive_edges
from onenip.metrics.histogram import ScoreHistogram, accumulate

BINS = 1024
IMAGE_METRIC = "image_AUROC"
PIXEL_METRICS = ("pixel_AUROC", "pixel_AP", "pixel_AUPRO")


ID_PARTS = 4
"""An image id's trailing path parts that identify it across dataset copies: category / split / defect / file."""


def _image_key(name: object) -> str:
    return "/".join(Path(str(name)).parts[-ID_PARTS:])


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic from average ranks (ties count half): equal to sklearn's
    ``roc_auc_score``, at a fraction of its overhead for the hundreds of evaluations a bootstrap makes."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        msg = "AUROC needs both normal and anomalous samples"
        raise ValueError(msg)
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass
class PerImage:
    """One scorer's outputs on N images: image scores and per-image pixel histograms (None without masks)."""

    scores: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray | None = None
    positives: np.ndarray | None = None
    negatives: np.ndarray | None = None
    overlap: np.ndarray | None = None
    regions: np.ndarray | None = None
    ids: np.ndarray | None = None
    """Optional name of each image (its path), to align scorers that listed the images differently."""

    @classmethod
    def from_maps(
        cls, scores: np.ndarray, labels: np.ndarray, maps: Sequence[np.ndarray] | None = None,
        masks: Sequence[np.ndarray] | None = None, bins: int = BINS,
    ) -> PerImage:
        """``maps`` and ``masks``: per image, at the same shape (shapes may differ between images)."""
        labels = np.asarray(labels).astype(bool)
        if maps is None or masks is None:
            return cls(np.asarray(scores, dtype=np.float64), labels)
        maps = [np.asarray(m, dtype=np.float32) for m in maps]
        edges = adaptive_edges(list(maps), bins)
        rows = [accumulate([m], [np.asarray(k) > 0], edges, track_ties=False) for m, k in zip(maps, masks, strict=True)]
        return cls(np.asarray(scores, dtype=np.float64), labels, np.asarray(edges, dtype=np.float64),
                   np.stack([r.positives for r in rows]).astype(np.float64), np.stack([r.negatives for r in rows]).astype(np.float64),
                   np.stack([r.region_overlap for r in rows]), np.array([r.num_regions for r in rows], dtype=np.float64))  # fmt: skip

    @property
    def has_pixels(self) -> bool:
        return self.positives is not None

    def aligned(self, ids: Sequence[str]) -> PerImage:
        """The same summary with its images in the order of ``ids`` (each must be one of its ``ids``). Image
        paths match by their last ``ID_PARTS`` parts (category / split / defect / file): summaries written
        from two copies of one dataset (another root, a folder of links) compare."""
        if self.ids is None:
            msg = "this summary has no image ids to align by"
            raise ValueError(msg)
        position = {_image_key(name): i for i, name in enumerate(self.ids)}
        missing = [str(name) for name in ids if _image_key(name) not in position]
        if missing:
            msg = f"{len(missing)} images are not in this summary, e.g. {missing[0]}"
            raise ValueError(msg)
        order = np.array([position[_image_key(name)] for name in ids])
        fields = {k: (v[order] if isinstance(v, np.ndarray) and k != "thresholds" else v) for k, v in self.__dict__.items()}
        return PerImage(**fields)

    def metrics(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """Image AUROC (and the binned pixel metrics) of the images weighted by ``counts`` (how often each
        is drawn; None: each once)."""
        counts = np.ones(len(self.scores)) if counts is None else np.asarray(counts, dtype=np.float64)
        drawn = np.repeat(np.arange(len(counts)), counts.astype(int))
        found = {IMAGE_METRIC: rank_auroc(self.scores[drawn], self.labels[drawn])}
        if self.has_pixels:
            histogram = ScoreHistogram(self.thresholds, counts @ self.positives, counts @ self.negatives, counts @ self.overlap,
                                       np.ones(len(self.thresholds), dtype=bool), int(counts @ self.regions))  # type: ignore[arg-type, operator]  # fmt: skip
            found |= {"pixel_AUROC": histogram.auroc().value, "pixel_AP": histogram.average_precision().value,
                      "pixel_AUPRO": histogram.aupro().value}  # fmt: skip
        return found

    def save(self, path: str | Path) -> Path:
        arrays = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.ids is not None:  # fixed-width strings: loading never unpickles
            arrays["ids"] = np.asarray([str(name) for name in self.ids], dtype=str)
        np.savez_compressed(path, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PerImage:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in data.files})


def paired_differences(
    first: Sequence[PerImage], second: Sequence[PerImage], resamples: int, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per metric both sides have, (mean over ``first`` - mean over ``second``) on ``resamples`` bootstrap
    resamples of the images (normals and anomalies drawn separately, the same images for every scorer).
    Every scorer must have scored the same images in the same order."""
    labels = first[0].labels
    for other in (*first, *second):
        if len(other.labels) != len(labels) or not np.array_equal(other.labels, labels):
            msg = "paired bootstrap needs every scorer on the same images in the same order"
            raise ValueError(msg)
    names = [IMAGE_METRIC] + ([*PIXEL_METRICS] if all(p.has_pixels for p in (*first, *second)) else [])
    rng = np.random.default_rng(seed)
    normals, anomalies = np.flatnonzero(~labels), np.flatnonzero(labels)
    out: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples):
        drawn = np.r_[rng.choice(normals, len(normals)), rng.choice(anomalies, len(anomalies))]
        counts = np.bincount(drawn, minlength=len(labels)).astype(np.float64)
        left = [p.metrics(counts) for p in first]
        right = [p.metrics(counts) for p in second]
        for name in names:
            out[name].append(float(np.mean([m[name] for m in left]) - np.mean([m[name] for m in right])))
    return {name: np.asarray(values) for name, values in out.items()}


def interval(differences: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap differences."""
    tail = (1 - level) / 2 * 100
    return float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))
