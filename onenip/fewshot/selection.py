"""What onboarding chooses on a category's validation data (its other normals and synthetic anomalies
made on them): the residual and how much the trained head counts, under the rule that a trained part
must beat the untrained one (``onenip.rules``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from onenip.config import Params
from onenip.rules import trained_must_beat_untrained
from onenip.models.features import Features
from onenip.models.generalist import INCTRL_HEAD_WEIGHT, RESIDUALS, GeneralistDetector


def evenly_spaced(items: Sequence[int], count: int) -> list[int]:
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def scoring_candidates(params: Params, shots: int) -> list[tuple[str, float]]:
    """(residual, head weight) pairs onboarding chooses among for ``shots`` prompts; the neighbourhood
    residuals have no head. The rotated bank doubles the search, so it is offered only while it holds at
    most ``generalist.rotated_bank_images`` images."""
    weights = sorted({float(w) for w in params.generalist.head_weights})
    residuals = params.generalist.residuals
    pairs = [("inctrl", w) for w in weights] if "inctrl" in residuals else []
    pairs += [("neighbourhood", 0.0)] if "neighbourhood" in residuals else []
    if "neighbourhood_rotated" in residuals and 2 * shots <= params.generalist.rotated_bank_images:
        pairs.append(("neighbourhood_rotated", 0.0))
    return pairs or [("neighbourhood", 0.0)]  # only the rotated bank asked for, and k too large for it


@torch.no_grad()
def rotated_prompt_features(detector: GeneralistDetector, category: int, paths: Sequence[str], params: Params,
                            device: torch.device) -> Features:  # fmt: skip
    """Backbone features of the prompt images turned by 180 degrees, rounded as the feature cache rounds
    (float16) so both halves of the bank carry the same error."""
    from onenip.features import extract_features
    from onenip.training.data import load_images

    images, _ = load_images(list(paths), detector.geometry(category))
    turned = (images.float() / 255).flip(-2, -1)
    features = extract_features(detector.feature_extractor, turned.to(device), detector.backbone_cfg, params.train.feature_batch_size)
    return Features(features.coarse.half().float(), None if features.fine is None else features.fine.half().float()).to(device)


def apply_selection(detector: GeneralistDetector, category: int, selection: dict[str, Any]) -> None:
    detector.set_residual(category, selection["residual"])
    detector.head_weight[category] = selection["head_weight"]


@dataclass
class ValidationScores:
    """Every onboarding candidate's image scores of the category's calibration normals and of its
    synthetic validation anomalies; ``families`` names each anomaly's synthesis family."""

    normal: dict[tuple[str, float], Tensor]
    anomalous: dict[tuple[str, float], Tensor]
    families: list[str]

    def flat(self) -> tuple[dict[tuple[str, float], np.ndarray], np.ndarray, np.ndarray]:
        """(candidate -> scores of normals then anomalies, labels, family per sample: ``""`` for a normal)."""
        scores = {c: torch.cat([self.normal[c], self.anomalous[c]]).float().cpu().numpy() for c in self.normal}
        count = len(next(iter(self.normal.values())))
        labels = np.r_[np.zeros(count), np.ones(len(self.families))]
        return scores, labels, np.array([""] * count + list(self.families), dtype=object)


@torch.no_grad()
def validation_scores(detector: GeneralistDetector, category: int, normal_features: Features, anomaly_sources: Sequence[str],
                      params: Params, device: torch.device) -> ValidationScores:  # fmt: skip
    """Each of ``anomaly_sources`` (normal images that are not prompts) gets one anomaly of the validation
    families (seeded, never used to train the head); every candidate of ``scoring_candidates`` scores them
    and ``normal_features`` (the category's calibration normals)."""
    from onenip.features import extract_features
    from onenip.synthesis import AnomalySynthesizer
    from onenip.training.data import load_images

    images, _ = load_images(list(anomaly_sources), detector.geometry(category))
    # full strength: validation.anomaly_strength fades OneNIP's saturated validation, not this one (AUROCs about 0.8)
    synthesizer = AnomalySynthesizer(methods=params.validation.methods)
    generator = torch.Generator().manual_seed(params.train.seed)
    made = [synthesizer(image.float() / 255, generator=generator) for image in images]
    anomalous = torch.stack([result.image for result in made])
    features = extract_features(detector.feature_extractor, anomalous.to(device), detector.backbone_cfg, params.train.feature_batch_size)
    # rounded as the feature cache rounds the normals (float16), so both sides carry the same error
    features = Features(features.coarse.half().float(), None if features.fine is None else features.fine.half().float()).to(device)
    normal, anomaly = candidate_scores(detector, category, normal_features, features, params)
    return ValidationScores(normal, anomaly, [str(result.method) for result in made])


@torch.no_grad()
def candidate_scores(detector: GeneralistDetector, category: int, normal_features: Features, anomaly_features: Features,
                     params: Params) -> tuple[dict[tuple[str, float], Tensor], dict[tuple[str, float], Tensor]]:  # fmt: skip
    """Every candidate of ``scoring_candidates``'s image scores of ``normal_features`` and of
    ``anomaly_features`` (both at the category's input)."""
    candidates = scoring_candidates(params, len(detector.prompt(category).coarse))
    prompts = detector.prompt(category)
    normal: dict[tuple[str, float], Tensor] = {}
    anomaly: dict[tuple[str, float], Tensor] = {}
    if any(residual == "inctrl" for residual, _ in candidates):
        normal_out, anomaly_out = detector.score_features(normal_features, prompts), detector.score_features(anomaly_features, prompts)
        for residual, weight in candidates:
            if residual == "inctrl":
                detector.head_weight[category] = weight
                normal[(residual, weight)], anomaly[(residual, weight)] = detector.image_score(normal_out, category), detector.image_score(anomaly_out, category)
    banks = {"neighbourhood": prompts}
    if ("neighbourhood_rotated", 0.0) in candidates:
        banks["neighbourhood_rotated"] = Features.cat([prompts, detector.rotated_prompts(category)])
    for residual, bank in banks.items():
        if (residual, 0.0) in candidates:
            normal[(residual, 0.0)] = detector.neighbourhood_residual(normal_features, bank)[1]
            anomaly[(residual, 0.0)] = detector.neighbourhood_residual(anomaly_features, bank)[1]
    return normal, anomaly


def choose_scoring(detector: GeneralistDetector, category: int, normal_features: Features, anomaly_sources: Sequence[str],
                   params: Params, device: torch.device) -> tuple[dict[str, Any], np.ndarray]:  # fmt: skip
    """The category's residual and the holistic head's share of its image score, from its training data only.

    Every candidate of ``scoring_candidates`` is scored by image AUROC of ``normal_features`` (the
    category's calibration normals) against one synthetic anomaly of the validation families on each of
    ``anomaly_sources`` (``validation_scores``). Ties go to ``inctrl`` (the reference), then to the head
    weight nearest InCTRL's 0.5. The head learned synthetic anomalies of other families on other
    categories: where it does not carry over to this category, the weight goes to the max patch residual,
    or to the neighbourhood residual, which have no trained part. ``inctrl`` must also beat the best
    untrained residual by more than ``generalist.trained_margin_se`` standard errors of the paired AUROC
    difference (``paired_auroc_difference``), else the untrained one is chosen: a few dozen synthetic
    anomalies are a noisy and, for a head trained on synthetic anomalies, a flattering measure, and the
    lead of the best of several head weights is biased upwards. With ``generalist.trained_every_family``
    it must moreover score at least as high on each validation family alone (``pick_scoring``).

    Returns the selection and the chosen candidate's scores of ``normal_features`` (what the threshold
    is calibrated on, so they are not computed twice)."""
    validation = validation_scores(detector, category, normal_features, anomaly_sources, params, device)
    flat, labels, families = validation.flat()
    (residual, weight), aurocs, lead = pick_scoring(flat, labels, params.generalist.trained_margin_se, families,
                                                    every_family=params.generalist.trained_every_family)  # fmt: skip
    selection = {"residual": residual, "head_weight": weight,
                 "val_image_AUROC": {str(w): v for (r, w), v in aurocs.items() if r == "inctrl"},
                 "val_image_AUROC_neighbourhood": aurocs.get(("neighbourhood", 0.0)),
                 "val_image_AUROC_neighbourhood_rotated": aurocs.get(("neighbourhood_rotated", 0.0)),
                 "val_inctrl_lead": lead,
                 "val_image_AUROC_chosen": aurocs[(residual, weight)],
                 "normal_images": len(normal_features), "anomalous_images": len(anomaly_sources),
                 "methods": list(params.validation.methods)}  # fmt: skip
    return selection, validation.normal[(residual, weight)].float().cpu().numpy()


def family_aurocs(scores: np.ndarray, labels: np.ndarray, families: np.ndarray) -> dict[str, float]:
    """Image AUROC of the normals against each family's anomalies alone."""
    from onenip.metrics import image_auroc

    normal = labels == 0
    return {str(f): float(image_auroc(np.r_[scores[normal], scores[families == f]], np.r_[np.zeros(normal.sum()), np.ones((families == f).sum())]))
            for f in sorted(set(families[~normal]))}  # fmt: skip


def pick_scoring(scores: dict[tuple[str, float], np.ndarray], labels: np.ndarray, margin_se: float, families: np.ndarray | None = None,
                 *, every_family: bool = False) -> tuple[tuple[str, float], dict[tuple[str, float], float], dict[str, Any] | None]:  # fmt: skip
    """The (residual, head weight) with the highest image AUROC of its ``scores`` against ``labels``
    (among equals the reference's residual first, then the bank without turns, then the head weight
    nearest InCTRL's); ``inctrl`` only when ``onenip.rules.trained_must_beat_untrained`` keeps it against
    the best untrained candidate: a lead of more than ``margin_se`` paired standard errors
    (``generalist.trained_margin_se``; a tie goes to the untrained one) and, with ``every_family``, no
    family of ``families`` (each sample's synthesis family, ``""`` for a normal) on which it is behind.

    Returns the choice, every candidate's AUROC, and ``inctrl``'s lead over the untrained candidate (its
    AUROC difference and standard error, and per family when given) when ``inctrl`` had the highest AUROC
    and there was one."""
    from onenip.metrics import image_auroc, paired_auroc_difference

    aurocs = {c: float(image_auroc(values, labels)) for c, values in scores.items()}

    def best_of(pool: list[tuple[str, float]]) -> tuple[str, float]:
        top = max(aurocs[c] for c in pool)
        return min((c for c in pool if aurocs[c] == top), key=lambda c: (RESIDUALS.index(c[0]), abs(c[1] - INCTRL_HEAD_WEIGHT)))

    chosen = best_of(list(aurocs))
    untrained = [c for c in aurocs if c[0] != "inctrl"]
    if chosen[0] != "inctrl" or not untrained:
        return chosen, aurocs, None
    baseline = best_of(untrained)
    difference, error = paired_auroc_difference(scores[chosen], scores[baseline], labels)
    lead: dict[str, Any] = {"over": baseline[0], "difference": difference, "standard_error": error, "margin_se": margin_se}
    if families is not None:
        trained, other = family_aurocs(scores[chosen], labels, families), family_aurocs(scores[baseline], labels, families)
        lead["by_family"] = {f: trained[f] - other[f] for f in trained}
    kept = trained_must_beat_untrained(difference, error, margin_se, lead.get("by_family") if every_family else None)
    return (chosen if kept else baseline), aurocs, lead
