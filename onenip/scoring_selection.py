"""Choosing each category's scoring rule on validation data built from training images only.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
import torch.nn.functional as F
from torch import Tensor

from onenip.config import Params, ValidationParams
from onenip.data.photometric import jittered_images, tint_strength
from onenip.features import extract_features
from onenip.models.features import Features
from onenip.metrics.bootstrap import PerImage, paired_differences, rank_auroc
from onenip.rules import trained_must_beat_untrained
from onenip.metrics.pixel import pixel_aupro
from onenip.models.blur import masked_gaussian_smooth
from onenip.models.scoring import COMPONENTS, ScoringRule, blend, pooled_map, score_maps
from onenip.synthesis.checks import SynthesisError
from onenip.synthesis.settings import AcceptanceSettings
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
    return AnomalySynthesizer(methods=cfg.methods, acceptance=AcceptanceSettings(strength=cfg.anomaly_strength))


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
    if cfg.jittered_normals:
        drifted = jittered_normals(images, valid, params, seed)
        if drifted is not None:
            pictures.append(drifted)
            masks.append(torch.zeros(len(drifted), 1, height, width, dtype=torch.bool))
            valids += [valid] if valid is not None else []
            methods += [JITTERED_NORMAL] * len(drifted)
    batch = torch.cat(pictures)
    features = extract_features(extractor, batch, params.model.backbone, params.train.feature_batch_size).half()
    labels = torch.tensor([m not in ("normal", JITTERED_NORMAL) for m in methods]).long()
    return CategoryValidation(category, features, labels, torch.cat(masks), torch.cat(valids) if valids else None, methods)


JITTERED_NORMAL = "jittered normal"


def jittered_normals(images: Tensor, valid: Tensor | None, params: Params, seed: int) -> Tensor | None:
    """The held-out normals (uint8) again under the statistics' seeded photometric jitter, in [0, 1]; None when
    both strengths are 0. Its own generator: the validation anomalies stay those drawn without it."""
    model = params.model
    colour = tint_strength(images, model.statistics_colour_jitter)
    if model.statistics_jitter <= 0 and colour <= 0:
        return None
    generator = torch.Generator().manual_seed(int(seed) * 7919 + 211)
    return jittered_images(images.float() / 255, valid, model.statistics_jitter, generator, colour)


def candidate_rules(
    cfg: ValidationParams, has_residual: bool, has_gaussian: bool = False, has_memory: bool = False, *, has_network: bool = True,
) -> list[tuple[tuple[float, ...], float]]:
    """(weights, sigma) pairs: the simplex of (recon, refiner, residual, gaussian, memory) weights in
    ``weight_step`` steps, without the maps this model lacks (or may not use: ``has_network`` false
    leaves out recon and refiner) and with the refiner's weight at most ``max_refiner_weight``, times
    the sigmas."""
    steps = round(1 / cfg.weight_step)
    available = (has_network, has_network, has_residual, has_gaussian, has_memory)
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
    restricted: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    """``"network"`` / ``"statistics"`` -> category -> the rule chosen among the network's maps (recon,
    refiner, residual) or the statistics' (Gaussian, memory bank) alone, with its validation metrics."""
    network_adds: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per category, what the network adds on validation: the chosen rule's selection score minus the
    statistics-only rule's, and the paired bootstrap standard error of that difference."""


NETWORK_MAPS = (True, True, True, False, False)
STATISTICS_MAPS = (False, False, False, True, True)


def restricted_selections(
    per_category: Sequence[tuple[CategoryValidation, list[Tensor | None]]], cfg: ValidationParams, defaults: dict[str, ScoringRule],
    selection: Selection,
) -> None:
    """Fill ``selection.restricted`` (the rules among the network's maps alone and among the statistics'
    alone; ``defaults[name]``, reading those maps only, where a category is too small to validate) and
    ``selection.network_adds`` (the chosen rule against statistics only, with its standard error): what a
    registered version records about its network."""
    for name, allowed in (("network", NETWORK_MAPS), ("statistics", STATISTICS_MAPS)):
        if not any(c is not None and ok for _, components in per_category for c, ok in zip(components, allowed, strict=False)):
            continue
        restricted = select_scoring(per_category, cfg, defaults[name], allowed)
        selection.restricted[name] = {c: {"rule": r.to_dict(), "metrics": restricted.metrics.get(c, {})} for c, r in restricted.rules.items()}
    statistics = selection.restricted.get("statistics", {})
    for validation, components in per_category:
        c = validation.category
        if c not in selection.metrics or not statistics.get(c, {}).get("metrics"):
            continue
        chosen, base = selection.rules[c], ScoringRule.from_dict(statistics[c]["rule"])  # type: ignore[arg-type]
        difference = float(np.mean([selection.metrics[c][m] for m in SELECTION_METRICS])) - float(
            np.mean([statistics[c]["metrics"][m] for m in SELECTION_METRICS]))  # type: ignore[index]
        error = 0.0
        if chosen != base:
            components = [*components, *[None] * (len(COMPONENTS) - len(components))]
            masks = (downscaled(validation.masks.float(), SELECTION_DOWNSCALE) >= 0.5)[:, 0].numpy()
            valid = None if validation.valid is None else downscaled(validation.valid.float(), SELECTION_DOWNSCALE) >= 0.5
            error = paired_score_difference_se(rule_maps(chosen, components, valid), rule_maps(base, components, valid), masks,
                                               validation.labels.numpy(), cfg.refiner_bootstrap)  # fmt: skip
        selection.network_adds[c] = {"difference": difference, "standard_error": error,
                                     "network_weight": float(sum(chosen.weights[:3]))}  # fmt: skip


def downscaled(maps: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(maps, factor) if factor > 1 else maps


@torch.no_grad()
def validation_components(
    detector: torch.nn.Module, validation: CategoryValidation, batch_size: int = 16, weights: Sequence[float] | None = None,
) -> list[Tensor | None]:
    """The detector's normalised component maps of a category's validation images, at a quarter size
    (only those of ``weights`` not 0 when given)."""
    k = detector.category_index(validation.category)
    parts: list[list[Tensor]] = [[] for _ in COMPONENTS]
    device = detector.device
    for start in range(0, len(validation.features), batch_size):
        chunk = validation.features.select(slice(start, start + batch_size)).float().to(device)
        for index, maps in enumerate(detector.components(chunk, k, weights=weights)):
            if maps is not None:
                parts[index].append(downscaled(maps.float(), SELECTION_DOWNSCALE).cpu())
    return [torch.cat(p) if p else None for p in parts]


def select_scoring(
    per_category: Sequence[tuple[CategoryValidation, list[Tensor | None]]],
    cfg: ValidationParams,
    default: ScoringRule,
    allowed: Sequence[bool] | None = None,
) -> Selection:
    """Choose (weights, sigma, pool) per category by the mean of the ``SELECTION_METRICS``.

    One network serves products as different as a bottle and a magnetic tile; the map that
    transfers best differs between them, so each category gets its own rule. A category with fewer
    than ``cfg.min_normals`` held-out normals (or no validation anomaly) keeps ``default`` and does
    not count in the score. Ties keep the earlier candidate. ``allowed`` (one flag per ``COMPONENTS``)
    restricts the rules to some maps (a statistics-only model: the Gaussian and the memory bank).
    """
    if allowed is not None:
        per_category = [(v, [c if ok else None for c, ok in zip(components, allowed, strict=False)]) for v, components in per_category]
    rules: dict[str, ScoringRule] = {}
    metrics: dict[str, dict[str, float]] = {}
    tables: dict[str, list[dict[str, object]]] = {}
    scores = []
    for validation, components in per_category:
        if validation.num_normals < cfg.min_normals or int(validation.labels.sum()) == 0:
            rules[validation.category] = default
            continue
        score, rule, chosen, table = select_one(validation, components, cfg)
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


def select_one(
    validation: CategoryValidation, components: list[Tensor | None], cfg: ValidationParams,
) -> tuple[float, ScoringRule, dict[str, float], list[dict[str, object]]]:
    components = [*components, *[None] * (len(COMPONENTS) - len(components))]  # maps a model lacks
    factor = SELECTION_DOWNSCALE
    masks = (downscaled(validation.masks.float(), factor) >= 0.5)[:, 0].numpy()
    valid = None if validation.valid is None else downscaled(validation.valid.float(), factor) >= 0.5
    labels = validation.labels.numpy()
    sample = _pixel_sample(masks)
    sampled_masks = masks.ravel()[sample]
    # each sampled normal pixel stands for this many: the sampled AP estimates the AP over every pixel
    negative_weight = float((~masks).sum()) / max(1, int((~sampled_masks).sum()))
    # Stage 1: every (weights, sigma) with every pooling, by image AUROC and pixel AUROC. Smoothing,
    # masking and pooling are linear, so they are applied to each component once per sigma (and pool)
    # and the candidates blend the results: a handful of convolutions instead of one per candidate.
    candidates = candidate_rules(cfg, components[2] is not None, components[3] is not None, components[4] is not None,
                                 has_network=components[0] is not None)  # fmt: skip
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
    anchor = anchor_weights(cfg, components)
    if anchor is not None:  # and the anchor's best few, for its tie rule
        finalists += [i for i in order if stage[i][1] == anchor and i not in finalists][:LEVEL_FINALISTS]
    pixel_scores: dict[int, tuple[float, float]] = {}  # finalist -> (AUPRO, pixel AP)
    for sigma in sorted({stage[i][2] for i in finalists}):  # each sigma's smoothing once
        parts = smoothed_components(sigma)
        for i in (i for i in finalists if stage[i][2] == sigma):
            smoothed = blend(parts, stage[i][1])[:, 0].numpy()
            # every pixel (not the AUROC's sample): AP depends on how many normal pixels there are
            pixel_ap = float(average_precision_score(masks.ravel(), smoothed.ravel())) if masks.any() else 0.0
            pixel_scores[i] = (float(pixel_aupro(smoothed, masks)), pixel_ap)
        del parts
    table, best = _scored_table(order, stage, pixel_scores)
    if cfg.refiner_margin_se > 0 and best[1].weights[1] > 0:
        best = _less_refiner_within_noise(best, table, validation, components, masks, valid, cfg)
    if anchor is not None and best[1].weights != anchor:
        best = _anchor_unless_beaten(best, anchor, table, validation, components, masks, valid, cfg)
    return best[0], best[1], best[2], table


def _scored_table(
    order: list[int], stage: list[Any], pixel_scores: dict[int, tuple[float, float]],
) -> tuple[list[dict[str, object]], tuple[float, ScoringRule, dict[str, float]]]:  # fmt: skip
    """Every candidate rule (each pooling of each stage-1 entry) as a table row, scored by the mean of the
    ``SELECTION_METRICS`` where it reached stage 2; and the best (an earlier candidate wins ties)."""
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
    return table, best


LOCALISATION_METRICS = ("pixel_AUROC", "pixel_AUPRO")


def anchor_weights(cfg: ValidationParams, components: Sequence[Tensor | None]) -> tuple[float, ...] | None:
    """The weights of ``cfg.anchor`` (the memory bank alone), or None when there is no anchor or the
    model has no memory map."""
    if cfg.anchor == "none" or len(components) < len(COMPONENTS) or components[4] is None:
        return None
    return (0.0, 0.0, 0.0, 0.0, 1.0)


def _anchor_unless_beaten(
    best: tuple[float, ScoringRule, dict[str, float]], anchor: tuple[float, ...], table: list[dict[str, object]],
    validation: CategoryValidation, components: list[Tensor | None], masks: np.ndarray, valid: Tensor | None, cfg: ValidationParams,
) -> tuple[float, ScoringRule, dict[str, float]]:
    """The safe rule wins ties: ``best`` (more maps) replaces the anchor's best rule (the memory bank
    alone, its sigma and pooling chosen on validation) only when it beats it by more than
    ``cfg.anchor_margin_se`` paired bootstrap standard errors, on localisation (mean of pixel AUROC and
    AUPRO) and on image AUROC with ``anchor_rule: both``; with ``score``, on the selection score while
    losing on neither beyond that margin."""
    rows = [r for r in table if r["score"] is not None and tuple(r["weights"]) == anchor]  # type: ignore[arg-type]
    if not rows:
        return best
    row = max(rows, key=lambda r: float(r["score"]))  # type: ignore[arg-type]
    base = float(row["score"]), ScoringRule.from_dict(row), {name: float(row[name]) for name in SELECTION_METRICS}  # type: ignore[arg-type]
    differences = paired_metric_differences(rule_maps(best[1], components, valid), rule_maps(base[1], components, valid), masks,
                                            validation.labels.numpy(), cfg.refiner_bootstrap)  # fmt: skip
    margin = cfg.anchor_margin_se
    parts = {"localisation": np.mean([differences[n] for n in LOCALISATION_METRICS], axis=0), "image": differences["image_AUROC"]}
    beaten = {name: float(np.mean(d)) > margin * float(np.std(d, ddof=1)) for name, d in parts.items()}
    if cfg.anchor_rule == "both":
        keep = not all(beaten.values())
    else:
        total = np.mean([differences[n] for n in SELECTION_METRICS], axis=0)
        worse = any(float(np.mean(d)) < -margin * float(np.std(d, ddof=1)) for d in parts.values())
        keep = worse or not float(np.mean(total)) > margin * float(np.std(total, ddof=1))
    summary = {name: f"{float(np.mean(d)):+.4f} (SE {float(np.std(d, ddof=1)):.4f})" for name, d in parts.items()}
    logger.info("%s: %s against the memory bank alone %s: %s", validation.category, best[1].weights, base[1].to_dict(), summary)
    return base if keep else best


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
    best_maps = rule_maps(best[1], components, valid)
    for level in levels:
        row = max((r for r in scored if float(r["weights"][1]) == level), key=lambda r: float(r["score"]))  # type: ignore[arg-type, index]
        rule = ScoringRule.from_dict(row)
        difference = best[0] - float(row["score"])  # type: ignore[arg-type]
        error = paired_score_difference_se(best_maps, rule_maps(rule, components, valid), masks, validation.labels.numpy(),
                                           cfg.refiner_bootstrap)  # fmt: skip
        logger.info("%s: refiner %.2f scores %.4f below refiner %.2f (bootstrap SE %.4f)", validation.category, level, difference,
                    best[1].weights[1], error)  # fmt: skip
        less = float(row["score"]), rule, {name: float(row[name]) for name in SELECTION_METRICS}  # type: ignore[arg-type]
        by_family = None
        if cfg.refiner_every_family and difference > cfg.refiner_margin_se * error:  # only needed when the lead is clear
            by_family = family_score_differences(best_maps, rule_maps(rule, components, valid), masks, validation.labels.numpy(),
                                                 np.array(validation.methods))  # fmt: skip
            logger.info("%s: refiner %.2f minus refiner %.2f per family: %s", validation.category, best[1].weights[1], level, by_family)
        if not trained_must_beat_untrained(difference, error, cfg.refiner_margin_se, by_family):
            return less
    return best


def rule_maps(rule: ScoringRule, components: list[Tensor | None], valid: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps (N, h, w), image scores (N,)) of a rule at the selection's quarter size (sigma and
    pooling scaled alike, as stage 1 scales them)."""
    factor = SELECTION_DOWNSCALE
    quarter = ScoringRule(rule.weights, rule.smoothing_sigma / factor, max(1, round(rule.score_pool_size / factor)))
    anomaly_map, scores = score_maps(components, quarter, valid)
    return anomaly_map[:, 0].numpy(), scores.numpy()


BOOTSTRAP_BINS = 1024
"""Score bins of the per-image pixel histograms that the bootstrap resamples (a standard error needs no exact metric)."""


def paired_metric_differences(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], masks: np.ndarray, labels: np.ndarray,
    resamples: int, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per selection metric, (first's value - second's) over ``resamples`` bootstrap resamples of the images
    (normals and anomalies drawn separately, the same images for both rules; ``onenip.metrics.bootstrap``).
    Each rule is given as (maps (N, h, w), image scores (N,))."""
    summaries = [PerImage.from_maps(scores, labels, list(maps), list(masks), BOOTSTRAP_BINS) for maps, scores in (first, second)]
    return paired_differences([summaries[0]], [summaries[1]], resamples, seed)


def paired_score_difference_se(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], masks: np.ndarray, labels: np.ndarray,
    resamples: int, seed: int = 0,
) -> float:
    """Standard error of (first's selection score - second's) over bootstrap resamples of the images
    (``paired_metric_differences``; the score is the mean of the ``SELECTION_METRICS``)."""
    differences = paired_metric_differences(first, second, masks, labels, resamples, seed)
    return float(np.std(np.mean([differences[name] for name in SELECTION_METRICS], axis=0), ddof=1))


def family_score_differences(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], masks: np.ndarray, labels: np.ndarray,
    families: np.ndarray,
) -> dict[str, float]:
    """Per validation family: first's selection score minus second's on the normals and that family's
    anomalies alone (the same per-image histograms as ``paired_score_difference_se``). Rules as there."""
    labels = np.asarray(labels).astype(bool)
    summaries = [PerImage.from_maps(scores, labels, list(maps), list(masks), BOOTSTRAP_BINS) for maps, scores in (first, second)]
    out = {}
    for family in sorted(set(families[labels])):
        counts = (~labels | (families == family)).astype(np.float64)
        scores = [float(np.mean(list(summary.metrics(counts).values()))) for summary in summaries]
        out[str(family)] = scores[0] - scores[1]
    return out


def _pixel_sample(masks: np.ndarray) -> np.ndarray:
    """Flat indices: every anomalous pixel and at most ``MAX_NEGATIVE_PIXELS`` normal ones (seeded)."""
    flat = masks.ravel()
    positives, negatives = np.flatnonzero(flat), np.flatnonzero(~flat)
    if len(negatives) > MAX_NEGATIVE_PIXELS:
        negatives = np.sort(np.random.default_rng(0).choice(negatives, MAX_NEGATIVE_PIXELS, replace=False))
    return np.concatenate([positives, negatives])


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
