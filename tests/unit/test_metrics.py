"""Metrics against references: sklearn for AUROC/AP/F1max, a brute-force AUPRO, and hand-worked cases."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from onenip import metrics
from onenip.metrics import pixel as pixel_metrics
from onenip.metrics import (
    METRIC_NAMES,
    compute_metrics,
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_aupro,
    pixel_auroc,
    pixel_f1max,
    pixel_histogram,
    pixel_pr_curve_points,
    pixel_roc_curve_points,
    pr_curve_points,
    resize_maps_to_masks,
    roc_curve_points,
)
from onenip.plots import plot_curves
from tests.helpers.aupro_reference import aupro_reference, connected_regions

# Exact paths (sklearn, one bin per distinct score) agree with the references up to float summation order.
EXACT_TOL = 1e-10


def _image_case(seed: int, tie_heavy: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    labels[:2] = [0, 1]
    scores = rng.normal(size=60) + labels
    if tie_heavy:  # a handful of distinct values shared by both classes
        scores = np.round(scores * 2) / 2
    return scores, labels


def _brute_f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        best = max(best, 2 * tp / (predicted.sum() + labels.sum()))
    return best


def _pixel_case(seed: int, num_images: int = 6, size: int = 32, decimals: int | None = None):
    """Maps with blob-shaped defects (several regions, some touching diagonally) and one normal image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), dtype=np.uint8)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, size - 6, size=2)
            height, width = rng.integers(1, 6, size=2)
            mask[row : row + height, col : col + width] = 255
        mask[rng.random(mask.shape) < 0.01] = 255  # isolated pixels: single-pixel regions
    maps = rng.normal(size=masks.shape) + 1.5 * (masks > 0) * rng.random(masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps.astype(np.float32), masks


# ------------------------------------------------------------------------------------------ image level


@pytest.mark.parametrize("tie_heavy", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_equal_sklearn(seed: int, tie_heavy: bool) -> None:
    scores, labels = _image_case(seed, tie_heavy)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=EXACT_TOL)
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=EXACT_TOL)
    assert image_f1max(scores, labels) == pytest.approx(_brute_f1max(scores, labels), abs=EXACT_TOL)


@pytest.mark.parametrize("decimals", [None, 1])
def test_paired_auroc_difference_matches_sklearn_and_a_paired_bootstrap(decimals: int | None) -> None:
    """The difference is sklearn's AUROC difference (ties count half); DeLong's standard error agrees with
    the spread of the difference over stratified paired bootstrap resamples of the same images."""
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(200), np.ones(40)].astype(int)
    shared = rng.normal(size=240) + 0.8 * labels  # both scorers see the same images: correlated
    a, b = shared + rng.normal(0, 0.7, 240) + 0.4 * labels, shared + rng.normal(0, 0.7, 240)
    if decimals is not None:
        a, b = a.round(decimals), b.round(decimals)
    difference, error = metrics.paired_auroc_difference(a, b, labels)
    assert difference == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b), abs=1e-12)
    normals, anomalies = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    resampled = []
    for _ in range(600):
        rows = np.r_[rng.choice(normals, len(normals)), rng.choice(anomalies, len(anomalies))]
        resampled.append(roc_auc_score(labels[rows], a[rows]) - roc_auc_score(labels[rows], b[rows]))
    assert error == pytest.approx(np.std(resampled), rel=0.15)
    assert 0 < error < 0.05
    assert metrics.paired_auroc_difference(a, a, labels) == (0.0, 0.0)  # one scorer against itself


def test_image_metrics_perfect_and_inverted() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert image_auroc(scores, labels) == 1.0
    assert image_auroc(-scores, labels) == 0.0
    assert image_ap(scores, labels) == 1.0
    assert image_f1max(scores, labels) == 1.0


def test_image_metrics_accept_torch_and_bool() -> None:
    scores, labels = _image_case(3, tie_heavy=False)
    expected = image_auroc(scores, labels)
    assert image_auroc(torch.from_numpy(scores), torch.from_numpy(labels.astype(bool))) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1]), "same shape"),
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]), r"labels in \{0, 1\}"),
        (np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]), "finite"),
        (np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]), "at least one anomalous and one normal image"),
        (np.array([[0.1, 0.2]]), np.array([[0, 1]]), r"shape \(N,\)"),
    ],
)
def test_image_inputs_are_checked(scores: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_auroc(scores, labels)


# ---------------------------------------------------------------------------------- pixel level, exact


@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_metrics_exact_equal_sklearn(decimals: int | None) -> None:
    maps, masks = _pixel_case(0, decimals=decimals)
    scores, labels = maps.ravel().astype(np.float64), masks.ravel() > 0
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    assert pixel_auroc(maps, masks, method="exact") == pytest.approx(roc_auc_score(labels, scores), abs=EXACT_TOL)
    expected_ap = average_precision_score(labels, scores)
    assert pixel_ap(maps, masks, method="exact") == pytest.approx(expected_ap, abs=EXACT_TOL)
    assert pixel_f1max(maps, masks, method="exact") == pytest.approx(f1.max(), abs=EXACT_TOL)


def test_pixel_inputs_accept_lists_channels_and_mask_encodings() -> None:
    maps, masks = _pixel_case(1)
    expected = pixel_auroc(maps, masks)
    assert pixel_auroc(maps[:, None], masks > 0) == expected  # (N, 1, H, W) maps, bool masks
    assert pixel_auroc(list(maps), list((masks > 0).astype(np.uint8))) == expected  # lists, 0/1 masks
    # Images of different sizes, as in magnetic_tile: only lists can hold them.
    sizes = [(12, 20), (16, 16), (17, 9)]
    rng = np.random.default_rng(0)
    ragged_masks = [(rng.random(size) < 0.1).astype(np.uint8) * 255 for size in sizes]
    ragged_maps = [rng.random(size) + (mask > 0) for size, mask in zip(sizes, ragged_masks, strict=True)]
    scores = np.concatenate([m.ravel() for m in ragged_maps])
    labels = np.concatenate([m.ravel() > 0 for m in ragged_masks])
    assert pixel_auroc(ragged_maps, ragged_masks) == pytest.approx(roc_auc_score(labels, scores), abs=EXACT_TOL)
    assert pixel_aupro(ragged_maps, ragged_masks) == pytest.approx(
        aupro_reference(ragged_maps, ragged_masks), abs=EXACT_TOL
    )


@pytest.mark.parametrize(
    ("maps", "masks", "match"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "resize_maps_to_masks"),
        (np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), "as many anomaly maps as masks"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), 128), "binary"),
        (np.full((1, 4, 4), np.inf), np.eye(4)[None], "finite"),
        (np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), "at least one anomalous and one normal pixel"),
        (np.zeros((4, 4)), np.zeros((4, 4)), r"\(N, H, W\)"),
    ],
)
def test_pixel_inputs_are_checked(maps: np.ndarray, masks: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pixel_auroc(maps, masks)


def test_bad_options_are_rejected() -> None:
    maps, masks = _pixel_case(0, num_images=2, size=8)
    with pytest.raises(ValueError, match="fpr_limit"):
        pixel_aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="method"):
        pixel_auroc(maps, masks, method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_bins"):
        pixel_auroc(maps, masks, method="binned", num_bins=1)
    with pytest.raises(ValueError, match="edges"):
        pixel_auroc(maps, masks, method="binned", edges="log")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- pixel level, binned


def _exact_pixel_values(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {
        "auroc": pixel_auroc(maps, masks, method="exact"),
        "ap": pixel_ap(maps, masks, method="exact"),
        "f1max": pixel_f1max(maps, masks, method="exact"),
        "aupro": aupro_reference(maps, masks),
    }


def _binned_estimates(
    maps: np.ndarray, masks: np.ndarray, num_bins: int, edges: metrics.BinEdges = "quantile"
) -> dict[str, metrics.BinnedEstimate]:
    histogram = pixel_histogram(maps, masks, num_bins=num_bins, edges=edges)
    return {
        "auroc": histogram.auroc(),
        "ap": histogram.average_precision(),
        "f1max": histogram.f1max(),
        "aupro": histogram.aupro(0.3),
    }


@pytest.mark.parametrize("edges", ["quantile", "uniform"])
@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, None), (2, 1), (3, 2)])
def test_binned_error_is_within_its_stated_bound(seed: int, decimals: int | None, edges: metrics.BinEdges) -> None:
    maps, masks = _pixel_case(seed, num_images=4, size=16, decimals=decimals)
    exact = _exact_pixel_values(maps, masks)
    for num_bins in (3, 8, 64, 1024):
        estimates = _binned_estimates(maps, masks, num_bins, edges)
        for name, estimate in estimates.items():
            error = abs(estimate.value - exact[name])
            assert error <= estimate.error_bound + 1e-12, (num_bins, name, error, estimate.error_bound)
        if num_bins == 8 and decimals is None:  # coarse bins on continuous scores really are off
            assert all(abs(estimates[name].value - exact[name]) > 0 for name in exact)


def test_default_bins_are_accurate_on_continuous_scores() -> None:
    maps, masks = _pixel_case(4, num_images=40, size=64)
    exact = {
        "auroc": pixel_auroc(maps, masks, method="exact"),
        "ap": pixel_ap(maps, masks, method="exact"),
        "f1max": pixel_f1max(maps, masks, method="exact"),
        "aupro": pixel_aupro(maps, masks, method="exact"),
    }
    for name, estimate in _binned_estimates(maps, masks, metrics.DEFAULT_NUM_BINS).items():
        assert estimate.error_bound < metrics.BINNED_WARN_BOUND, (name, estimate.error_bound)
        assert abs(estimate.value - exact[name]) <= estimate.error_bound + 1e-12


def test_bins_holding_one_value_are_exact() -> None:
    # Many pixels at exactly 0 (a clipped map) and a few distinct values: each value gets its own bin.
    maps, masks = _pixel_case(5, decimals=1)
    maps = np.maximum(maps, 0.0)
    exact = _exact_pixel_values(maps, masks)
    for name, estimate in _binned_estimates(maps, masks, metrics.DEFAULT_NUM_BINS).items():
        assert estimate.error_bound == 0.0, name
        assert estimate.value == pytest.approx(exact[name], abs=EXACT_TOL), name


def test_bounds_are_attained_by_the_worst_order_within_a_bin() -> None:
    # Two equal-width bins over [0, 1]. The top bin holds 40 normal pixels; the bottom one 40 anomalous and
    # 20 normal pixels, in one of two orders the histogram cannot tell apart: normal pixels all above the
    # anomalous ones, or anomalous ones (tied) above the normal ones. Each bound is the larger of the two
    # errors (AP's up to its bounded harmonic sum), so a bound that is too tight or too loose fails here.
    normal_top = np.linspace(0.6, 1.0, 40)

    def case(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = np.concatenate([anomalous, normal, normal_top]).reshape(1, 10, 10)
        masks = np.zeros((1, 10, 10), dtype=np.uint8)
        masks.reshape(-1)[:40] = 1
        return maps, masks

    normal_first = case(normal=np.linspace(0.3, 0.49, 20), anomalous=np.linspace(0.0, 0.29, 40))
    anomalous_first = case(normal=np.linspace(0.0, 0.19, 20), anomalous=np.full(40, 0.45))
    bounds = _binned_estimates(*normal_first, num_bins=2, edges="uniform")
    for name in ("auroc", "ap", "f1max"):
        errors = []
        for maps, masks in (normal_first, anomalous_first):
            estimate = _binned_estimates(maps, masks, num_bins=2, edges="uniform")[name]
            assert estimate == bounds[name], name  # same bin counts, same estimate
            errors.append(abs(estimate.value - _exact_pixel_values(maps, masks)[name]))
        assert max(errors) <= bounds[name].error_bound + 1e-12, name
        assert bounds[name].error_bound <= 1.001 * max(errors), name


def test_binned_path_warns_when_its_bound_is_loose() -> None:
    maps, masks = _pixel_case(0)
    with pytest.warns(RuntimeWarning, match="pixel_AUROC from 4 score bins may be off"):
        pixel_auroc(maps, masks, method="binned", num_bins=4)


def test_auto_switches_to_bins_above_the_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = _pixel_case(6, num_images=3, size=16)
    binned = pixel_histogram(maps, masks, num_bins=32)
    monkeypatch.setattr(pixel_metrics, "EXACT_PIXEL_LIMIT", maps.size - 1)  # the module that reads it
    with pytest.warns(RuntimeWarning):
        assert pixel_auroc(maps, masks, num_bins=32) == binned.auroc().value
        assert pixel_aupro(maps, masks, num_bins=32) == binned.aupro().value
    monkeypatch.setattr(pixel_metrics, "EXACT_PIXEL_LIMIT", maps.size)
    assert pixel_auroc(maps, masks, num_bins=32) == pytest.approx(
        roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=EXACT_TOL
    )


def test_binned_memory_stays_bounded_as_images_grow() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((128, 256, 256), dtype=np.uint8)
    masks[:, 100:140, 60:90] = 255
    maps = rng.random(masks.shape, dtype=np.float32)  # 8.4M pixels, 32 MB of maps

    def peak_bytes(num_images: int) -> int:
        tracemalloc.start()
        pixel_histogram(maps[:num_images], masks[:num_images])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = peak_bytes(16), peak_bytes(128)
    # Working memory is one image, the bins and the score samples that place the bin edges (a few MB); the
    # top-heavy sample grows by 0.75 * TOP_SAMPLE_SCALE scores per 4x more pixels, so 8x more pixels add
    # about 1 MB. The exact path would need at least a float64 copy of all scores (64 MB here).
    assert large < 12 * 2**20
    assert large - small < 2 * 2**20


def _skewed_case(seed: int, num_images: int = 20, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Probability-like maps: 90% of pixels normal, ~ Beta(0.5, 30), so most scores sit near 0; anomalous
    pixels mostly ~ Beta(4, 2), a fifth of them missed (scored like normal ones); a quarter of the images
    are defect-free. 327,680 pixels: more than QUANTILE_SAMPLE_SIZE, so bin edges come from the samples, as
    on real test sets."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), dtype=np.uint8)
    while np.count_nonzero(masks) < 0.1 * masks.size:
        image = rng.integers(num_images // 4, num_images)
        row, col = rng.integers(0, size - 24, size=2)
        height, width = rng.integers(4, 24, size=2)
        masks[image, row : row + height, col : col + width] = 255
    maps = rng.beta(0.5, 30, size=masks.shape)
    anomalous = masks > 0
    count = int(anomalous.sum())
    maps[anomalous] = np.where(rng.random(count) < 0.8, rng.beta(4, 2, count), rng.beta(0.5, 30, count))
    return maps.astype(np.float32), masks


def _exact_skewed_values(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    scores, labels = maps.ravel().astype(np.float64), masks.ravel() > 0
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "f1max": float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))),
        "aupro": pixel_aupro(maps, masks, method="exact"),
    }


def test_quantile_bins_keep_skewed_maps_accurate() -> None:
    maps, masks = _skewed_case(0)
    assert maps.size > metrics.QUANTILE_SAMPLE_SIZE
    num_bins, share = 4096, maps.size / 4096
    uniform = pixel_histogram(maps, masks, num_bins, edges="uniform")
    quantile = pixel_histogram(maps, masks, num_bins)
    # Equal-width bins crowd most pixels into the first few; quantile bins spread them out.
    assert (uniform.positives + uniform.negatives).max() > 100 * share
    assert (quantile.positives + quantile.negatives).max() < 8 * share
    estimates = _binned_estimates(maps, masks, num_bins)
    quantile_bounds = {name: estimate.error_bound for name, estimate in estimates.items()}
    uniform_estimates = _binned_estimates(maps, masks, num_bins, "uniform")
    uniform_bounds = {name: estimate.error_bound for name, estimate in uniform_estimates.items()}
    assert uniform_bounds["auroc"] > 1e-3 and quantile_bounds["auroc"] < 1e-4
    assert quantile_bounds["aupro"] < 1e-4
    assert max(quantile_bounds.values()) < 2e-4 < max(uniform_bounds.values()) / 5
    exact = _exact_skewed_values(maps, masks)
    for name, estimate in estimates.items():
        assert abs(estimate.value - exact[name]) <= estimate.error_bound + 1e-12, name

    # compute_metrics takes the same option, and warns only for the loose equal-width bounds.
    labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(int)
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    binned = compute_metrics(image_scores, labels, maps, masks, method="binned", num_bins=num_bins)
    assert binned["pixel_AUROC"] == estimates["auroc"].value and binned["pixel_AP"] == estimates["ap"].value
    with pytest.warns(RuntimeWarning, match="pixel_AUROC from 4096 score bins may be off"):
        compute_metrics(image_scores, labels, maps, masks, method="binned", num_bins=num_bins, edges="uniform")


def test_heavily_tied_scores_get_bins_of_their_own() -> None:
    # A map clipped from below (60% of pixels at its floor, with distinct scores just above it, closer than
    # equal-width edges are spaced) whose sigmoid saturates (confident detections exactly 1.0). Each tied
    # value is many bins' worth of pixels, and gets a bin holding only itself, which is exact.
    maps, masks = _skewed_case(1)
    floor = np.quantile(maps, 0.6)
    maps = np.maximum(maps, floor)
    maps[maps > 0.9] = 1.0
    histogram = pixel_histogram(maps, masks, num_bins=4096)
    counts = histogram.positives + histogram.negatives
    one = int(np.searchsorted(histogram.thresholds, 1.0))
    assert histogram.thresholds[0] == floor and histogram.thresholds[one] == 1.0
    assert np.count_nonzero((maps > floor) & (maps < floor + 1e-3)) > 1000  # neighbours a coarse bin would take in
    assert counts[0] == np.count_nonzero(maps == floor) > 100 * maps.size / 4096
    assert counts[one] == np.count_nonzero(maps == 1) > 10 * maps.size / 4096
    assert histogram.tied[0] and histogram.tied[one]
    exact = _exact_skewed_values(maps, masks)
    for name, estimate in _binned_estimates(maps, masks, 4096).items():
        assert estimate.error_bound < 2e-4, name
        assert abs(estimate.value - exact[name]) <= estimate.error_bound + 1e-12, name


def test_quantile_edges_are_reproducible_and_within_budget() -> None:
    maps, masks = _skewed_case(2)
    first = pixel_histogram(maps, masks, num_bins=1000)
    again = pixel_histogram(list(maps), list(masks), num_bins=1000)  # same pixels as a list: same bins
    np.testing.assert_array_equal(first.thresholds, again.thresholds)
    np.testing.assert_array_equal(first.negatives, again.negatives)
    assert len(first.thresholds) <= 1000
    assert np.all(np.diff(first.thresholds) > 0)
    assert first.thresholds[0] == maps.min()
    assert first.num_positives + first.num_negatives == maps.size
    assert first.num_positives == np.count_nonzero(masks)


# ------------------------------------------------------------------------------------------------ AUPRO


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize(("seed", "decimals"), [(10, None), (11, None), (12, 1), (13, 2)])
def test_aupro_equals_brute_force_reference(seed: int, decimals: int | None, fpr_limit: float) -> None:
    maps, masks = _pixel_case(seed, num_images=4, size=14, decimals=decimals)
    expected = aupro_reference(maps, masks, fpr_limit)
    assert pixel_aupro(maps, masks, fpr_limit, method="exact") == pytest.approx(expected, abs=EXACT_TOL)


def test_aupro_stripes_on_a_ramp_give_one_sixth() -> None:
    # anomalib's AUPRO test case: scores rise linearly through a 400x7 image in row-major order, so every
    # region and the normal pixels fill up at the same rate: PRO ~= FPR, and the area up to 1/3, divided by
    # 1/3, is (1/3)^2 / 2 / (1/3) = 1/6. The ramp steps one pixel at a time, so the curve is off the
    # diagonal by under one row (7 / 2800 of the range): exact value within 1e-5 of 1/6.
    ramp = (np.arange(2800) / 2800.0).reshape(1, 400, 7)
    one_stripe = np.zeros((1, 400, 7), dtype=np.uint8)
    one_stripe[..., 3] = 1
    three_stripes = np.zeros((1, 400, 7), dtype=np.uint8)
    three_stripes[..., [1, 3, 5]] = 1
    both_maps, both_masks = np.concatenate([ramp, ramp]), np.concatenate([one_stripe, three_stripes])
    for maps, masks in [(ramp, one_stripe), (ramp, three_stripes), (both_maps, both_masks)]:
        assert pixel_aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-5)
        estimate = pixel_histogram(maps, masks, num_bins=256).aupro(1 / 3)
        assert abs(estimate.value - 1 / 6) <= estimate.error_bound + 1e-5
    assert pixel_histogram(ramp, three_stripes).num_regions == 3


def test_aupro_perfect_and_inverted_maps() -> None:
    _, masks = _pixel_case(7)
    maps = (masks > 0).astype(np.float64)
    assert pixel_aupro(maps, masks) == 1.0
    assert pixel_aupro(1.0 - maps, masks) == 0.0


def test_aupro_regions_are_eight_connected() -> None:
    # Two squares touching at a corner are one region; the 3x3 structure of the MVTec code.
    mask = np.zeros((1, 8, 8), dtype=np.uint8)
    mask[0, 1:3, 1:3] = 1
    mask[0, 3:5, 3:5] = 1
    assert pixel_histogram(np.random.default_rng(0).random(mask.shape), mask).num_regions == 1
    assert len(connected_regions(mask[0] > 0)) == 1
    # One region fully detected, the other not at all: PRO averages regions, not pixels, so it is 1/2 before
    # any normal pixel fires (a pixel TPR would be 1/17), then rises linearly to (1, 1): area 0.75.
    mask = np.zeros((1, 10, 10), dtype=np.uint8)
    mask[0, 0:1, 0:1] = 1  # 1 pixel, detected
    mask[0, 5:9, 5:9] = 1  # 16 pixels, scored like the background
    maps = np.zeros(mask.shape)
    maps[0, 0, 0] = 1.0
    assert pixel_histogram(maps, mask).num_regions == 2
    assert pixel_aupro(maps, mask, fpr_limit=1.0) == pytest.approx(aupro_reference(maps, mask, 1.0), abs=EXACT_TOL)
    assert pixel_aupro(maps, mask, fpr_limit=1.0) == pytest.approx(0.75, abs=EXACT_TOL)


# -------------------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_names_and_values() -> None:
    maps, masks = _pixel_case(8, num_images=5, size=16)
    labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(int)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    result = compute_metrics(scores, labels, maps, masks)
    assert tuple(result) == METRIC_NAMES
    assert all(isinstance(value, float) for value in result.values())
    assert result["image_AUROC"] == image_auroc(scores, labels)
    assert result["image_AP"] == image_ap(scores, labels)
    assert result["image_F1max"] == image_f1max(scores, labels)
    assert result["pixel_AUROC"] == pytest.approx(pixel_auroc(maps, masks), abs=EXACT_TOL)
    assert result["pixel_AP"] == pytest.approx(pixel_ap(maps, masks), abs=EXACT_TOL)
    assert result["pixel_F1max"] == pytest.approx(pixel_f1max(maps, masks), abs=EXACT_TOL)
    assert result["pixel_AUPRO"] == pytest.approx(aupro_reference(maps, masks), abs=EXACT_TOL)

    binned = compute_metrics(scores, labels, maps, masks, method="binned")
    histogram = pixel_histogram(maps, masks)
    bounds = {
        "pixel_AUROC": histogram.auroc().error_bound,
        "pixel_AP": histogram.average_precision().error_bound,
        "pixel_F1max": histogram.f1max().error_bound,
        "pixel_AUPRO": histogram.aupro().error_bound,
    }
    for name, bound in bounds.items():
        assert abs(binned[name] - result[name]) <= bound + 1e-12


def test_compute_metrics_without_masks_gives_image_metrics_only() -> None:
    scores, labels = _image_case(0, tie_heavy=False)
    result = compute_metrics(scores, labels)
    assert tuple(result) == metrics.IMAGE_METRIC_NAMES
    # A category without masks may still have maps; they are not scored without ground truth.
    assert tuple(compute_metrics(scores, labels, anomaly_maps=np.zeros((60, 4, 4)))) == metrics.IMAGE_METRIC_NAMES


def test_compute_metrics_rejects_inconsistent_inputs() -> None:
    maps, masks = _pixel_case(9, num_images=3, size=8)
    labels = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="no anomaly_maps"):
        compute_metrics(np.array([0.1, 0.5, 0.9]), labels, masks=masks)
    with pytest.raises(ValueError, match="labelled normal"):
        compute_metrics(np.array([0.1, 0.5, 0.9]), np.array([1, 0, 1]), maps, masks)
    with pytest.raises(ValueError, match="one mask per image"):
        compute_metrics(np.array([0.1, 0.5]), np.array([0, 1]), maps, masks)


# ------------------------------------------------------------------------------------ resize and curves


def test_resize_maps_to_masks() -> None:
    maps = np.stack([np.full((8, 8), 2.0), np.arange(64, dtype=np.float64).reshape(8, 8)])
    resized = resize_maps_to_masks(maps, (32, 24))
    assert isinstance(resized, np.ndarray)
    assert resized.shape == (2, 32, 24)
    assert resized.dtype == np.float32
    np.testing.assert_allclose(resized[0], 2.0)  # bilinear keeps constants
    # A ramp stays monotone (up to float32 rounding) and within its range.
    assert np.all(np.diff(resized[1], axis=0) > -1e-4) and np.all(np.diff(resized[1], axis=1) > -1e-4)
    assert resized[1].min() >= 0 and resized[1].max() <= 63
    # One shape per map, for categories whose images differ in size.
    ragged = resize_maps_to_masks(torch.from_numpy(maps[:, None]), [(16, 16), (5, 7)])
    assert [m.shape for m in ragged] == [(16, 16), (5, 7)]
    # Already at the mask size: unchanged.
    np.testing.assert_array_equal(resize_maps_to_masks(maps, (8, 8)), maps.astype(np.float32))
    with pytest.raises(ValueError, match="one mask shape per map"):
        resize_maps_to_masks(maps, [(4, 4)] * 3)


def test_curves_match_their_metrics() -> None:
    scores, labels = _image_case(1, tie_heavy=True)
    roc, pr = roc_curve_points(scores, labels), pr_curve_points(scores, labels)
    assert roc.auc() == pytest.approx(image_auroc(scores, labels), abs=EXACT_TOL)
    assert pr.average_precision() == pytest.approx(image_ap(scores, labels), abs=EXACT_TOL)
    assert pr.f1max() == pytest.approx(image_f1max(scores, labels), abs=EXACT_TOL)

    maps, masks = _pixel_case(2, decimals=1)
    for method in ("exact", "binned"):
        pixel_roc = pixel_roc_curve_points(maps, masks, method=method)
        pixel_pr = pixel_pr_curve_points(maps, masks, method=method)
        assert pixel_roc.fpr[0] == 0 and pixel_roc.fpr[-1] == 1 and pixel_roc.tpr[-1] == 1
        assert pixel_pr.recall[-1] == 0 and pixel_pr.precision[-1] == 1
        # Distinct values sit in distinct bins here, so binned curves give the exact areas.
        assert pixel_roc.auc() == pytest.approx(pixel_auroc(maps, masks, method="exact"), abs=EXACT_TOL)
        assert pixel_pr.average_precision() == pytest.approx(pixel_ap(maps, masks, method="exact"), abs=EXACT_TOL)


def test_plot_curves_writes_png(tmp_path) -> None:
    scores, labels = _image_case(0, tie_heavy=False)
    maps, masks = _pixel_case(0)
    image_curves = (roc_curve_points(scores, labels), pr_curve_points(scores, labels))
    pixel_curves = (pixel_roc_curve_points(maps, masks), pixel_pr_curve_points(maps, masks))
    both = plot_curves(tmp_path / "plots" / "both.png", *image_curves, *pixel_curves, title="bottle")
    image_only = plot_curves(tmp_path / "image.png", *image_curves)
    for path in (both, image_only):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="both pixel_roc and pixel_pr"):
        plot_curves(tmp_path / "bad.png", *image_curves, pixel_roc=pixel_curves[0])
    with pytest.raises(ValueError, match=r"\.png"):
        plot_curves(tmp_path / "bad.jpg", *image_curves)
