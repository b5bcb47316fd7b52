"""Paired bootstrap over images (``onenip.metrics.bootstrap``): summaries add up to the exact metrics,
intervals cover a known difference and vanish for identical scorers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from onenip.metrics.bootstrap import PerImage, interval, paired_differences
from onenip.metrics.compute import compute_metrics


def _scorer(rng: np.random.Generator, labels: np.ndarray, masks: list[np.ndarray], strength: float) -> tuple[np.ndarray, list[np.ndarray]]:
    maps = [rng.random(m.shape).astype(np.float32) + strength * m for m in masks]
    return np.array([m.max() for m in maps]), maps


def _images(count: int = 40, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (count // 2) + [1] * (count // 2))
    masks = []
    for label in labels:
        mask = np.zeros((rng.integers(20, 30), rng.integers(20, 30)), dtype=bool)  # sizes differ between images
        if label:
            top, left = rng.integers(0, 10, size=2)
            mask[top : top + 6, left : left + 6] = True
        masks.append(mask)
    return labels, masks


def test_a_summary_gives_the_exact_metrics_of_its_images() -> None:
    labels, masks = _images()
    scores, maps = _scorer(np.random.default_rng(1), labels, masks, 0.5)
    summary = PerImage.from_maps(scores, labels, maps, masks)
    exact = compute_metrics(scores, labels, maps, masks)
    found = summary.metrics()
    assert found["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores))
    for name in ("pixel_AUROC", "pixel_AP", "pixel_AUPRO"):
        assert found[name] == pytest.approx(exact[name], abs=0.01)
    twice = summary.metrics(np.full(len(labels), 2.0))  # every image drawn twice: the same metrics
    assert twice["pixel_AUROC"] == pytest.approx(found["pixel_AUROC"]) and twice["image_AUROC"] == pytest.approx(found["image_AUROC"])


def test_paired_intervals_separate_a_better_scorer_and_not_a_copy(tmp_path) -> None:
    labels, masks = _images(60)
    rng = np.random.default_rng(2)
    good_scores, good_maps = _scorer(rng, labels, masks, 0.8)
    weak_scores, weak_maps = _scorer(rng, labels, masks, 0.1)
    good = PerImage.from_maps(good_scores, labels, good_maps, masks)
    weak = PerImage.from_maps(weak_scores, labels, weak_maps, masks)
    differences = paired_differences([good], [weak], 200)
    low, high = interval(differences["pixel_AUROC"])
    assert low > 0 and high > low
    same = paired_differences([good], [good], 50)
    assert all(np.all(values == 0) for values in same.values())
    # several seeds on one side are averaged per resample; ids align scorers that listed images differently
    good.ids = weak.ids = np.array([f"img{i}" for i in range(len(labels))])
    path = good.save(tmp_path / "good.npz")
    order = list(reversed(good.ids))
    loaded = PerImage.load(path).aligned(order).aligned(list(good.ids))
    assert np.array_equal(loaded.scores, good.scores) and np.array_equal(loaded.positives, good.positives)
    with pytest.raises(ValueError, match="same images"):
        paired_differences([good], [PerImage(good.scores[:-1], good.labels[:-1])], 5)


def test_summaries_of_two_copies_of_a_dataset_align_by_the_path_below_the_root() -> None:
    """A run over a folder of links and one over the dataset itself list the same images under other roots."""
    labels, masks = _images(8)
    scores, maps = _scorer(np.random.default_rng(3), labels, masks, 0.5)
    summary = PerImage.from_maps(scores, labels, maps, masks)
    tails = [f"bottle/test/{'good' if not label else 'broken'}/{i:03d}.png" for i, label in enumerate(labels)]
    summary.ids = np.array([f"/data/industrial/{t}" for t in tails])
    other_root = [f"/runs/r/root/{t}" for t in reversed(tails)]
    aligned = summary.aligned(other_root)
    assert np.array_equal(aligned.scores, scores[::-1]) and np.array_equal(aligned.positives, summary.positives[::-1])
    with pytest.raises(ValueError, match="1 images are not in this summary, e.g. /runs/r/root/kolektor/test/good/000.png"):
        summary.aligned([*other_root[:-1], "/runs/r/root/kolektor/test/good/000.png"])
