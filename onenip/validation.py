"""Validation data from training images only, and the choices made on it.

No choice may look at the test split. Per category the validation set is the held-out training normals
(``train.holdout_fraction``) plus ``anomalies_per_image`` synthetic anomalies made on each of them with
families the model never trains on (``synthesis.VALIDATION_METHODS``: warps, smudges, spots), seeded
and fixed. A refiner trained on the training synthesis would look perfect on anomalies of the same
synthesis; anomalies of unseen families measure what matters, how the maps transfer to defect types
the model never saw (on real defects the refiner alone can be far worse than the reconstruction error).

On it ``select_scoring`` chooses each category's scoring rule (blend weights of the five component
maps, Gaussian sigma, score pooling window) by the mean of image AUROC, pixel AUROC, pixel AP and AUPRO, and the
training loop keeps the latest epoch that validates about as well as the best one. A rule that gives
the refiner (the map trained on synthetic anomalies) more weight wins only by more than
``refiner_margin_se`` paired bootstrap standard errors of the score. Selection runs on maps at a quarter
of the input resolution (sigma and pooling scaled alike), which ranks rules as the full maps do at a
sixteenth of the cost.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score
import torch.nn.functional as F
from torch import Tensor

from onenip.config import Params, ValidationParams
from onenip.features import Features, extract_features
from onenip.metrics.edges import _adaptive_edges
from onenip.metrics.histogram import ScoreHistogram, _accumulate
from onenip.metrics.pixel import pixel_aupro
from onenip.models.onenip import masked_gaussian_smooth
from onenip.models.scoring import COMPONENTS, ScoringRule, blend, pooled_map, score_maps
from onenip.synthesis.checks import SynthesisError
from onenip.synthesis.synthesizer import VALIDATION_METHODS, AnomalySynthesizer

logger = logging.getLogger(__name__)

SELECTION_DOWNSCALE = 4
SELECTION_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")


@dataclass
class CategoryValidation:
    """One category's validation images: features, labels, masks (at the input size) and letterbox content."""

    category: str
    features: Features
    labels: Tensor  # (N,) 0 normal, 1 synthetic anomaly
    masks: Tensor  # (N, 1, H, W) bool
    valid: Tensor | None  # (N, 1, H, W) bool where letterboxed
    methods: list[str]

    @property
    def num_normals(self) -> int:
        return int((self.labels == 0).sum())


def check_validation_methods(params: Params) -> None:
    """Validation families must be validation-only and never among the training methods."""
    methods = tuple(params.validation.methods)
    unknown = [m for m in methods if m not in VALIDATION_METHODS]
    if not methods or unknown:
        msg = f"validation.methods must be entries of {VALIDATION_METHODS}, got {list(methods)}"
        raise SynthesisError(msg)
    shared = sorted(set(methods) & set(params.synthesis.methods))
    if shared:
        msg = f"validation.methods {shared} are also training methods (synthesis.methods); validation must use unseen families"
        raise SynthesisError(msg)


def validation_synthesizer(cfg: ValidationParams) -> AnomalySynthesizer:
    """The validation families, faded as ``cfg.anomaly_strength`` says (what the validation set is made of)."""
    return AnomalySynthesizer(methods=cfg.methods, strength=cfg.anomaly_strength)


def build_category_validation(
    category: str,
    images: Tensor,
    valid: Tensor | None,
    extractor: torch.nn.Module,
    params: Params,
    *,
    seed: int,
) -> CategoryValidation:
    """Held-out normals (uint8 (M, 3, H, W) at the input geometry) + their synthetic anomalies."""
    cfg: ValidationParams = params.validation
    synthesizer = validation_synthesizer(cfg)
    generator = torch.Generator().manual_seed(int(seed) * 31337 + 17)
    normals = images.float() / 255
    pictures = [normals]
    height, width = normals.shape[-2:]
    masks = [torch.zeros(len(normals), 1, height, width, dtype=torch.bool)]
    valids = [valid] if valid is not None else []
    methods = ["normal"] * len(normals)
    for i in range(len(normals)):
        for _ in range(cfg.anomalies_per_image):
            # on a letterboxed image's content only, sized as on an unpadded image (AnomalySynthesizer.on_content)
            result = synthesizer(normals[i], generator) if valid is None else synthesizer.on_content(normals[i], generator, valid[i, 0])
            pictures.append(result.image[None])
            masks.append(result.mask[None] > 0.5)
            if valid is not None:
                valids.append(valid[i : i + 1])
            methods.append(str(result.method))
    batch = torch.cat(pictures)
    features = extract_features(extractor, batch, params.model.backbone, params.train.feature_batch_size).half()
    labels = torch.cat([torch.zeros(len(normals)), torch.ones(len(batch) - len(normals))]).long()
    return CategoryValidation(category, features, labels, torch.cat(masks), torch.cat(valids) if valids else None, methods)


def candidate_rules(
    cfg: ValidationParams, has_residual: bool, has_gaussian: bool = False, has_memory: bool = False,
) -> list[tuple[tuple[float, ...], float]]:
    """(weights, sigma) pairs: the simplex of (recon, refiner, residual, gaussian, memory) weights in
    ``weight_step`` steps, without the maps this model lacks and with the refiner's weight at most
    ``max_refiner_weight``, times the sigmas."""
    steps = round(1 / cfg.weight_step)
    available = (True, True, has_residual, has_gaussian, has_memory)
    weights = []
    for head in itertools.product(range(steps + 1), repeat=len(COMPONENTS) - 1):
        last = steps - sum(head)
        parts = (*head, last)
        if last < 0 or any(p > 0 and not ok for p, ok in zip(parts, available, strict=True)) or parts[1] / steps > cfg.max_refiner_weight + 1e-9:
            continue
        weights.append(tuple(p / steps for p in parts))
    return [(w, float(s)) for w in weights for s in cfg.smoothing_sigmas]


@dataclass
class Selection:
    rules: dict[str, ScoringRule]
    """Per category, the chosen rule (the default where the category has too little validation data)."""
    score: float
    """Mean over the categories that voted of their best rule's score (what the epoch choice compares)."""
    metrics: dict[str, dict[str, float]]
    """Per category: the validation metrics of the chosen rule."""
    table: dict[str, list[dict[str, object]]]
    """Per category, every candidate with its score."""


def _downscaled(maps: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(maps, factor) if factor > 1 else maps


@torch.no_grad()
def validation_components(detector: torch.nn.Module, validation: CategoryValidation, batch_size: int = 16) -> list[Tensor | None]:
    """The detector's normalised component maps of a category's validation images, at a quarter size."""
    k = detector.category_index(validation.category)
    parts: list[list[Tensor]] = [[] for _ in COMPONENTS]
    device = detector.device
    for start in range(0, len(validation.features), batch_size):
        chunk = validation.features.select(slice(start, start + batch_size)).float().to(device)
        for index, maps in enumerate(detector.components(chunk, k)):
            if maps is not None:
                parts[index].append(_downscaled(maps.float(), SELECTION_DOWNSCALE).cpu())
    return [torch.cat(p) if p else None for p in parts]


def select_scoring(
    per_category: Sequence[tuple[CategoryValidation, list[Tensor | None]]],
    cfg: ValidationParams,
    default: ScoringRule,
) -> Selection:
    """Choose (weights, sigma, pool) per category by the mean of the ``SELECTION_METRICS``.

    One network serves products as different as a bottle and a magnetic tile; the map that
    transfers best differs between them, so each category gets its own rule. A category with fewer
    than ``cfg.min_normals`` held-out normals (or no validation anomaly) keeps ``default`` and does
    not count in the score. Ties keep the earlier candidate.
    """
    rules: dict[str, ScoringRule] = {}
    metrics: dict[str, dict[str, float]] = {}
    tables: dict[str, list[dict[str, object]]] = {}
    scores = []
    for validation, components in per_category:
        if validation.num_normals < cfg.min_normals or int(validation.labels.sum()) == 0:
            rules[validation.category] = default
            continue
        score, rule, chosen, table = _select_one(validation, components, cfg)
        rules[validation.category], metrics[validation.category], tables[validation.category] = rule, chosen, table
        scores.append(score)
    return Selection(rules, float(np.mean(scores)) if scores else float("nan"), metrics, tables)


AUPRO_FINALISTS = 8
"""(weights, sigma) candidates whose AUPRO and exact pixel AP are computed: the best by image AUROC, pixel
AUROC and sampled pixel AP (AUPRO costs about a hundred times more than a rank AUROC)."""
LEVEL_FINALISTS = 2
"""Finalists of each refiner weight at least (the refiner margin compares the best of each)."""
MAX_NEGATIVE_PIXELS = 200_000
"""Normal pixels sampled (fixed seed) for the pixel AUROC; every anomalous pixel is kept."""


def _select_one(
    validation: CategoryValidation, components: list[Tensor | None], cfg: ValidationParams,
) -> tuple[float, ScoringRule, dict[str, float], list[dict[str, object]]]:
    components = [*components, *[None] * (len(COMPONENTS) - len(components))]  # maps a model lacks
    factor = SELECTION_DOWNSCALE
    masks = (_downscaled(validation.masks.float(), factor) >= 0.5)[:, 0].numpy()
    valid = None if validation.valid is None else _downscaled(validation.valid.float(), factor) >= 0.5
    labels = validation.labels.numpy()
    sample = _pixel_sample(masks)
    sampled_masks = masks.ravel()[sample]
    # each sampled normal pixel stands for this many: the sampled AP estimates the AP over every pixel
    negative_weight = float((~masks).sum()) / max(1, int((~sampled_masks).sum()))
    # Stage 1: every (weights, sigma) with every pooling, by image AUROC and pixel AUROC. Smoothing,
    # masking and pooling are linear, so they are applied to each component once per sigma (and pool)
    # and the candidates blend the results: a handful of convolutions instead of one per candidate.
    candidates = candidate_rules(cfg, components[2] is not None, components[3] is not None, components[4] is not None)
    sigmas = sorted({sigma for _, sigma in candidates})

    def smoothed_components(sigma: float) -> list[Tensor | None]:
        # as ``score_maps`` scores: padding left out of the blur, then zeroed
        return [None if c is None else masked_gaussian_smooth(c, sigma / factor, valid) for c in components]

    found_stage: dict[tuple[tuple[float, ...], float], tuple[dict[int, float], float]] = {}
    for sigma in sigmas:
        parts = smoothed_components(sigma)
        group = [weights for weights, s in candidates if s == sigma]
        pixel: dict[tuple[float, ...], tuple[float, float]] = {}
        for w in group:
            sampled = blend(parts, w)[:, 0].numpy().ravel()[sample]
            pixel[w] = sampled_auroc_and_ap(sampled, sampled_masks, negative_weight)
        images: dict[tuple[float, ...], dict[int, float]] = {w: {} for w in group}
        for pool in cfg.score_pool_sizes:
            pooled = [None if c is None else pooled_map(c, max(1, round(pool / factor))) for c in parts]
            for w in group:
                images[w][int(pool)] = rank_auroc(blend(pooled, w).flatten(1).amax(dim=1).numpy(), labels)
        for w in group:
            found_stage[(w, sigma)] = (images[w], pixel[w])
    # Ranked by three of the four selection metrics: with the AUROCs alone the finalists missed the
    # rules of high pixel AP (on bottle the validation optimum scored 0.924, the best finalist 0.881).
    stage = [((max(im.values()) + px + ap) / 3, w, sigma, im, px) for (w, sigma), (im, (px, ap)) in ((key, found_stage[key]) for key in candidates)]
    # Stage 2: AUPRO and the exact pixel AP for the finalists; the choice is by the mean of the four metrics.
    order = sorted(range(len(stage)), key=lambda i: -stage[i][0])
    finalists = list(order[:AUPRO_FINALISTS])
    for level in sorted({stage[i][1][1] for i in order}):  # and the best few of each refiner weight, for its margin
        missing = LEVEL_FINALISTS - sum(stage[i][1][1] == level for i in finalists)
        finalists += [i for i in order if stage[i][1][1] == level and i not in finalists][: max(0, missing)]
    pixel_scores: dict[int, tuple[float, float]] = {}  # finalist -> (AUPRO, pixel AP)
    for sigma in sorted({stage[i][2] for i in finalists}):  # each sigma's smoothing once
        parts = smoothed_components(sigma)
        for i in (i for i in finalists if stage[i][2] == sigma):
            smoothed = blend(parts, stage[i][1])[:, 0].numpy()
            # every pixel (not the AUROC's sample): AP depends on how many normal pixels there are
            pixel_ap = float(average_precision_score(masks.ravel(), smoothed.ravel())) if masks.any() else 0.0
            pixel_scores[i] = (float(pixel_aupro(smoothed, masks)), pixel_ap)
        del parts
    table: list[dict[str, object]] = []
    best: tuple[float, ScoringRule, dict[str, float]] | None = None
    for i in order:
        _, weights, sigma, images, pixel_auroc = stage[i]
        aupro, pixel_ap = pixel_scores.get(i, (None, 0.0))
        for pool, image in images.items():
            rule = ScoringRule(weights, sigma, pool)
            found = {"image_AUROC": image, "pixel_AUROC": pixel_auroc}
            if aupro is None:
                table.append({**rule.to_dict(), **found, "score": None})
                continue
            found["pixel_AUPRO"], found["pixel_AP"] = aupro, pixel_ap
            score = float(np.mean([found[name] for name in SELECTION_METRICS]))
            table.append({**rule.to_dict(), **found, "score": score})
            if best is None or score > best[0] + 1e-9:
                best = (score, rule, found)
    assert best is not None
    if cfg.refiner_margin_se > 0 and best[1].weights[1] > 0:
        best = _less_refiner_within_noise(best, table, validation, components, masks, valid, cfg)
    return best[0], best[1], best[2], table


def _less_refiner_within_noise(
    best: tuple[float, ScoringRule, dict[str, float]], table: list[dict[str, object]], validation: CategoryValidation,
    components: list[Tensor | None], masks: np.ndarray, valid: Tensor | None, cfg: ValidationParams,
) -> tuple[float, ScoringRule, dict[str, float]]:
    """The best rule of the smallest refiner weight whose score is within ``cfg.refiner_margin_se``
    paired bootstrap standard errors of ``best``'s, or, with ``cfg.refiner_every_family``, that scores
    higher than ``best`` on one validation family alone (``best`` itself when none is)."""
    scored = [row for row in table if row["score"] is not None]
    levels = sorted({float(row["weights"][1]) for row in scored if float(row["weights"][1]) < best[1].weights[1]})  # type: ignore[index]
    if not levels:
        return best
    best_maps = _rule_maps(best[1], components, valid)
    for level in levels:
        row = max((r for r in scored if float(r["weights"][1]) == level), key=lambda r: float(r["score"]))  # type: ignore[arg-type, index]
        rule = ScoringRule.from_dict(row)
        difference = best[0] - float(row["score"])  # type: ignore[arg-type]
        error = paired_score_difference_se(best_maps, _rule_maps(rule, components, valid), masks, validation.labels.numpy(),
                                           cfg.refiner_bootstrap)  # fmt: skip
        logger.info("%s: refiner %.2f scores %.4f below refiner %.2f (bootstrap SE %.4f)", validation.category, level, difference,
                    best[1].weights[1], error)  # fmt: skip
        less = float(row["score"]), rule, {name: float(row[name]) for name in SELECTION_METRICS}  # type: ignore[arg-type]
        if difference <= cfg.refiner_margin_se * error:
            return less
        if cfg.refiner_every_family:
            by_family = family_score_differences(best_maps, _rule_maps(rule, components, valid), masks, validation.labels.numpy(),
                                                 np.array(validation.methods))  # fmt: skip
            logger.info("%s: refiner %.2f minus refiner %.2f per family: %s", validation.category, best[1].weights[1], level, by_family)
            if min(by_family.values()) < 0:
                return less
    return best


def _rule_maps(rule: ScoringRule, components: list[Tensor | None], valid: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps (N, h, w), image scores (N,)) of a rule at the selection's quarter size (sigma and
    pooling scaled alike, as stage 1 scales them)."""
    factor = SELECTION_DOWNSCALE
    quarter = ScoringRule(rule.weights, rule.smoothing_sigma / factor, max(1, round(rule.score_pool_size / factor)))
    anomaly_map, scores = score_maps(components, quarter, valid)
    return anomaly_map[:, 0].numpy(), scores.numpy()


BOOTSTRAP_BINS = 1024
"""Score bins of the per-image pixel histograms that the bootstrap resamples (a standard error needs no exact metric)."""


def paired_score_difference_se(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], masks: np.ndarray, labels: np.ndarray,
    resamples: int, seed: int = 0,
) -> float:
    """Standard error of (first's selection score - second's) over bootstrap resamples of the images
    (normals and anomalies drawn separately, the same images for both rules). Each rule is given as
    (maps (N, h, w), image scores (N,)); the pixel metrics come from per-image score histograms, which
    add up over a resample, so a resample costs no pass over the pixels."""
    labels = np.asarray(labels).astype(bool)
    per_image = [_image_histograms(maps, masks) for maps, _ in (first, second)]
    rng = np.random.default_rng(seed)
    normals, anomalies = np.flatnonzero(~labels), np.flatnonzero(labels)
    differences = []
    for _ in range(resamples):
        drawn = np.r_[rng.choice(normals, len(normals)), rng.choice(anomalies, len(anomalies))]
        counts = np.bincount(drawn, minlength=len(labels)).astype(np.float64)
        values = [_histogram_score(image_scores, histograms, counts, labels) for (_, image_scores), histograms in zip((first, second), per_image, strict=True)]
        differences.append(values[0] - values[1])
    return float(np.std(differences, ddof=1))


def family_score_differences(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], masks: np.ndarray, labels: np.ndarray,
    families: np.ndarray,
) -> dict[str, float]:
    """Per validation family: first's selection score minus second's on the normals and that family's
    anomalies alone (the same per-image histograms as ``paired_score_difference_se``). Rules as there."""
    labels = np.asarray(labels).astype(bool)
    per_image = [_image_histograms(maps, masks) for maps, _ in (first, second)]
    out = {}
    for family in sorted(set(families[labels])):
        counts = (~labels | (families == family)).astype(np.float64)
        scores = [_histogram_score(image_scores, histograms, counts, labels) for (_, image_scores), histograms in zip((first, second), per_image, strict=True)]
        out[str(family)] = scores[0] - scores[1]
    return out


def _histogram_score(image_scores: np.ndarray, histograms: tuple[np.ndarray, ...], counts: np.ndarray, labels: np.ndarray) -> float:
    """The selection score of the images weighted by ``counts`` (0 leaves one out, 2 draws it twice)."""
    thresholds, positives, negatives, overlap, regions = histograms
    histogram = ScoreHistogram(thresholds, counts @ positives, counts @ negatives, counts @ overlap, np.ones(len(thresholds), dtype=bool),
                               int(counts @ regions))  # fmt: skip
    drawn = np.repeat(np.arange(len(counts)), counts.astype(int))
    pixel = [histogram.auroc().value, histogram.average_precision().value, histogram.aupro().value]
    return float(np.mean([rank_auroc(image_scores[drawn], labels[drawn]), *pixel]))


def _image_histograms(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image, on bins shared by all: (lower edges (K,), positives, negatives, region overlap (N, K), regions (N,))."""
    edges = _adaptive_edges(list(maps), BOOTSTRAP_BINS)
    rows = [_accumulate([m], [k], edges, track_ties=False) for m, k in zip(maps, masks, strict=True)]
    return (np.asarray(edges, dtype=np.float64), np.stack([r.positives for r in rows]).astype(np.float64),
            np.stack([r.negatives for r in rows]).astype(np.float64), np.stack([r.region_overlap for r in rows]),
            np.array([r.num_regions for r in rows], dtype=np.float64))  # fmt: skip


def _pixel_sample(masks: np.ndarray) -> np.ndarray:
    """Flat indices: every anomalous pixel and at most ``MAX_NEGATIVE_PIXELS`` normal ones (seeded)."""
    flat = masks.ravel()
    positives, negatives = np.flatnonzero(flat), np.flatnonzero(~flat)
    if len(negatives) > MAX_NEGATIVE_PIXELS:
        negatives = np.sort(np.random.default_rng(0).choice(negatives, MAX_NEGATIVE_PIXELS, replace=False))
    return np.concatenate([positives, negatives])


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic from average ranks (ties count half): equal to sklearn's
    ``roc_auc_score``, at a fraction of its overhead for the hundreds of candidates tried here."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        msg = "AUROC needs both normal and anomalous samples"
        raise ValueError(msg)
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def sampled_auroc_and_ap(scores: np.ndarray, labels: np.ndarray, negative_weight: float = 1.0) -> tuple[float, float]:
    """(AUROC, average precision) from one sort, ties as one threshold (sklearn's definitions), where
    every negative counts ``negative_weight`` times: on a uniform sample of the negatives, estimates of
    both over all of them (the AUROC does not depend on the weight)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        msg = "AUROC and AP need both normal and anomalous samples"
        raise ValueError(msg)
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]  # the last index of each distinct score
    tp = np.cumsum(hits)[last].astype(np.float64)
    fp = np.cumsum(~hits)[last].astype(np.float64)
    tp_rate, fp_rate = np.r_[0.0, tp / positives], np.r_[0.0, fp / negatives]
    auroc = float(np.sum(np.diff(fp_rate) * (tp_rate[1:] + tp_rate[:-1]) / 2))
    average_precision = float(np.sum(np.diff(tp_rate) * tp / (tp + fp * negative_weight)))
    return auroc, average_precision


def _pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"pixel_AUROC": rank_auroc(maps, masks), "pixel_AUPRO": float(pixel_aupro(maps, masks))}
