"""Few-shot generalist mode (InCTRL): train once on auxiliary categories, onboard a new category from
k normal images with no training.

Training draws balanced batches: normal queries (fit normals) and anomalous ones (fresh synthetic
anomalies every epoch, plus the auxiliary categories' real test anomalies when
``generalist.real_anomalies`` allows it); each query gets k prompts from its own category's fit normals,
never itself nor the image its anomaly was made from. Onboarding picks the k prompts deterministically
(the typical image, then k-center greedy), chooses the residual (InCTRL's, or PatchCore's neighbourhood
distance against the prompts, or against the prompts and their half turns) and how much the holistic
head counts in the image score on the category's other normal training images plus synthetic anomalies
made on them, calibrates the threshold on those normals (never on test), and evaluates on its labelled
test images when there are any.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import Params
from onenip.rules import trained_must_beat_untrained
from onenip.data.geometry import InputGeometry, square_geometry
from onenip.data.manifest import DatasetError, make_manifest
from onenip.device import resolve_device
from onenip.features import FeatureCache, Features
from onenip.models.generalist import INCTRL_HEAD_WEIGHT, RESIDUALS, GeneralistDetector
from onenip.models.inctrl import inctrl_loss


@dataclass
class GeneralistResult:
    detector: GeneralistDetector
    model_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)


def _generalist_params(params: Params) -> Params:
    # one fixed square input for every category: the holistic head reads a fixed-size residual map
    model = params.model.model_copy(update={"keep_aspect": False, "input_sizes": {}})
    return params.model_copy(update={"model": model})


def _draw_prompts(count: int, k: int, exclude: Sequence[int], generator: torch.Generator) -> list[list[int]]:
    """k prompt indices per query from ``count`` fit images, never the query's own/source image."""
    rows = []
    for skip in exclude:
        pool = torch.randperm(count, generator=generator).tolist()
        rows.append([i for i in pool if i != skip][:k])
    return rows


def _stack_prompts(fit: Features, rows: list[list[int]]) -> Features:
    coarse = torch.stack([fit.coarse[r] for r in rows]).float()
    fine = torch.stack([fit.fine[r] for r in rows]).float()  # type: ignore[index]
    return Features(coarse, fine)


def train_generalist(
    root: str | Path, categories: Sequence[str], params: Params, out_dir: str | Path, *, progress: bool = True,
) -> GeneralistResult:
    """The InCTRL head on the auxiliary ``categories`` of ``root``; saved to ``out_dir/model``."""
    from onenip.synthesis import AnomalySynthesizer
    from onenip.training.data import prepare_category_data
    from onenip.training.pool import SyntheticPool, build_synthesizer
    from onenip.scoring_selection import check_validation_methods

    check_validation_methods(params)  # the gate and onboarding's choice are scored on families training never saw
    started = time.perf_counter()
    params = _generalist_params(params)
    cfg = params.generalist
    device = resolve_device(params.train.device)
    torch.manual_seed(params.train.seed)
    generator = torch.Generator().manual_seed(params.train.seed)
    manifest = make_manifest(root, list(categories), progress=False)
    detector = GeneralistDetector(params.model.backbone, smoothing_sigma=cfg.smoothing_sigma, holistic_input=cfg.holistic_input).to(device)
    extractor = detector.feature_extractor.eval()
    geometry = square_geometry(params.model.backbone.input_size)
    cache = FeatureCache(params.train.cache_dir, extractor, params.model.backbone)
    data = [prepare_category_data(manifest, params, cache, c, i, geometry, progress) for i, c in enumerate(categories)]
    real: dict[str, Features] = {}
    if cfg.real_anomalies:
        for c in categories:
            rows = manifest[(manifest["category"] == c) & (manifest["split"] == "test") & (manifest["label_index"] == 1)]
            if len(rows):
                real[c] = cache.get(rows["image_path"].tolist(), rows["sha256"].tolist(), geometry, progress=False, dtype=torch.float16)
    synthesizer = build_synthesizer(params.synthesis)
    optimizer = torch.optim.AdamW(detector.head.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    half = cfg.batch_size // 2
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        pools = {}
        for item in data:
            pool = SyntheticPool.build(item, synthesizer, extractor, params, seed=params.train.seed, generation=epoch, progress=progress)
            anomalies, sources = pool.features, [i // pool.pool_size for i in range(len(pool.features))]
            if item.name in real:
                anomalies = Features.cat([anomalies, real[item.name]])
                sources += [-1] * len(real[item.name])
            pools[item.name] = (anomalies, sources)
        steps = max(1, sum(len(item.fit_features) for item in data) // half)
        detector.head.train()
        losses = []
        bar = tqdm(range(steps), desc=f"Generalist epoch {epoch}/{cfg.epochs}", disable=not progress)
        for _ in bar:
            item = data[int(torch.randint(len(data), (1,), generator=generator))]
            fit, (anomalies, sources) = item.fit_features, pools[item.name]
            k = int(cfg.train_shots[int(torch.randint(len(cfg.train_shots), (1,), generator=generator))])
            k = max(1, min(k, len(fit) - 1))
            normal_idx = torch.randint(len(fit), (half,), generator=generator).tolist()
            anomaly_idx = torch.randint(len(anomalies), (half,), generator=generator).tolist()
            queries = Features(
                torch.cat([fit.coarse[normal_idx], anomalies.coarse[anomaly_idx]]).float(),
                torch.cat([fit.fine[normal_idx], anomalies.fine[anomaly_idx]]).float(),  # type: ignore[index]
            )
            prompts = _stack_prompts(fit, _draw_prompts(len(fit), k, normal_idx + [sources[i] for i in anomaly_idx], generator))
            targets = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
            out = detector.score_features(queries.to(device), prompts.to(device))
            loss = inctrl_loss(out, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record = {"epoch": float(epoch), "loss": float(np.mean(losses))}
        history.append(record)
    detector.head.eval()
    validation = validate_generalist(detector, data, params, AnomalySynthesizer(methods=params.validation.methods), device)
    out = Path(out_dir) / "model"
    detector.save(out, metadata={"auxiliary_categories": list(categories), "real_anomalies": bool(real), "history": history,
                                 "validation": validation,
                                 "train_seconds": time.perf_counter() - started})  # fmt: skip
    return GeneralistResult(detector, out, history, time.perf_counter() - started, validation)


@torch.no_grad()
def validate_generalist(detector: GeneralistDetector, data: Sequence[Any], params: Params, synthesizer: Any, device: torch.device) -> dict[str, float]:
    """Image AUROC per auxiliary category on training data only: its held-out normals against anomalies
    of the validation families (never used in training) made on them, k = ``generalist.shots`` prompts."""
    from onenip.metrics import image_auroc
    from onenip.features import extract_features
    from onenip.training.data import select_prompts

    detector.eval()
    result: dict[str, float] = {}
    for item in data:
        if len(item.holdout_features) < 2:
            continue
        prompts = item.fit_features.select(select_prompts(item.fit_features.coarse.float(), params.generalist.shots)).float().to(device)
        generator = torch.Generator().manual_seed(params.train.seed + item.index)
        bad = torch.stack([synthesizer(img.float() / 255, generator=generator).image for img in item.holdout_images])
        anomalies = extract_features(detector.feature_extractor, bad.to(device), params.model.backbone, params.train.feature_batch_size)
        normal = detector.score_features(item.holdout_features.float().to(device), prompts).score
        anomalous = detector.score_features(anomalies.to(device), prompts).score
        scores = torch.cat([normal, anomalous]).cpu().numpy()
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        result[f"val_image_AUROC_{item.name}"] = float(image_auroc(scores, labels))
    if result:
        result["val_image_AUROC"] = float(np.mean(list(result.values())))
    return result


# -- onboarding ---------------------------------------------------------------------------------------
@dataclass
class Onboarding:
    """A generalist with ``category`` added from its prompts, before its scoring is chosen."""

    detector: GeneralistDetector
    index: int
    """The category's index in ``detector``."""
    manifest: pd.DataFrame
    normals: pd.DataFrame
    """The category's normal training images, sorted by path (rows match ``features``)."""
    features: Features
    chosen: list[int]
    """Rows of ``normals`` that are the prompts."""
    calibration: list[int]
    """Rows of ``normals`` (not prompts) that calibrate the threshold and validate the choice."""
    cache: FeatureCache
    device: torch.device
    params: Params

    @property
    def rest(self) -> list[int]:
        """Rows of ``normals`` that are not prompts."""
        prompts = set(self.chosen)
        return [i for i in range(len(self.normals)) if i not in prompts]

    def validation_paths(self) -> list[str]:
        """The calibration normals that get a synthetic anomaly for choosing the scoring."""
        return self.normals["image_path"].iloc[_evenly_spaced(self.calibration, self.params.generalist.validation_images)].tolist()


def prepare_onboarding(generalist_dir: str | Path, root: str | Path, category: str, shots: int, params: Params, *,
                       progress: bool = True, prompt_paths: Sequence[str] | None = None) -> Onboarding:  # fmt: skip
    """Load the generalist, choose (or check) the ``shots`` prompts among ``category``'s normal training
    images and add the category: the part of ``onboard_category`` that every choice of scoring shares."""
    from onenip.training.data import select_prompts

    input_size = params.model.input_sizes.get(category)  # the user's input for this category, read before it is cleared
    params = _generalist_params(params)
    device = resolve_device(params.train.device)
    manifest = make_manifest(root, [category], progress=False)
    normals = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)].sort_values("image_path").reset_index(drop=True)
    if normals.empty:
        msg = f"Category {category!r} under {root} has no normal training images (train/good) to take prompts from"
        raise DatasetError(msg)
    if shots > len(normals):
        msg = f"{shots} shots asked for {category!r}, but it has only {len(normals)} normal training images"
        raise DatasetError(msg)
    detector = GeneralistDetector.load(generalist_dir, map_location=device)
    if detector.categories:
        msg = f"{generalist_dir} is already an onboarded model ({detector.categories}); give the generalist itself"
        raise DatasetError(msg)
    if detector.metadata.get("real_anomalies") and category in detector.metadata.get("auxiliary_categories", []):
        msg = (f"{generalist_dir} was trained on the real test anomalies of {category!r} (generalist.real_anomalies), so its test "
               f"metrics and gate would be inflated; onboard it with a generalist trained without them")  # fmt: skip
        raise DatasetError(msg)
    # the generalist's own backbone (params.yaml may have changed since); the category's own aspect when asked
    geometry = onboarding_geometry(detector, normals, params, input_size)
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, detector.backbone_cfg)
    features = cache.get(normals["image_path"].tolist(), normals["sha256"].tolist(), geometry, progress=progress)
    if prompt_paths is None:
        chosen = select_prompts(features.coarse, shots)
    else:
        where = {str(path): i for i, path in enumerate(normals["image_path"])}
        unknown = [p for p in prompt_paths if str(p) not in where]
        if unknown:
            msg = f"Prompt images {unknown} are not normal training images of {category!r}"
            raise DatasetError(msg)
        repeated = sorted({str(p) for p in prompt_paths if [str(q) for q in prompt_paths].count(str(p)) > 1})
        if not prompt_paths or repeated:
            msg = f"Prompt images for {category!r} must be distinct and at least one; got {list(prompt_paths)}" + (
                f" ({repeated} repeated)" if repeated else "")  # fmt: skip
            raise DatasetError(msg)
        chosen = [where[str(p)] for p in prompt_paths]
    k = detector.add_category(category, features.coarse[chosen], features.fine[chosen], geometry=geometry)  # type: ignore[index]
    state = Onboarding(detector, k, manifest, normals, features, list(chosen), [], cache, device, params)
    state.calibration = _evenly_spaced(state.rest, params.generalist.calibration_images)
    return state


def onboarding_geometry(detector: GeneralistDetector, normals: pd.DataFrame, params: Params,
                        input_size: Sequence[int] | None = None) -> InputGeometry:  # fmt: skip
    """The input a category is onboarded at: with ``generalist.keep_aspect`` the one a trained model of it
    gets (``onenip.training.choose_geometries`` at the generalist's backbone: ``input_size``, its
    ``model.input_sizes`` entry, or else its normal training images' aspect); without, the generalist's
    square. A category whose aspects vary stays square: letterboxed, the nearest-patch residuals would
    compare padding with padding. ``normals``: the category's manifest rows."""
    from onenip.training.data import choose_geometries

    if not params.generalist.keep_aspect or normals.empty:
        return detector.geometry_
    category = str(normals["category"].iloc[0])
    sizes = {category: tuple(int(v) for v in input_size)} if input_size is not None else {}
    model = params.model.model_copy(update={"backbone": detector.backbone_cfg, "keep_aspect": True, "input_sizes": sizes})
    geometry = choose_geometries(normals, params.model_copy(update={"model": model}), [category])[category]
    return detector.geometry_ if geometry.letterbox else geometry


@dataclass
class OnboardResult:
    model_dir: Path
    category: str
    shots: int
    prompt_paths: list[str]
    threshold: float
    metrics: dict[str, float]
    has_masks: bool
    seconds: float
    head_weight: float = INCTRL_HEAD_WEIGHT
    selection: dict[str, Any] = field(default_factory=dict)
    residual: str = "inctrl"
    input_size: tuple[int, int] = (0, 0)
    """(height, width) the category is scored at."""
    data_version: str = ""
    """Content hash of the category's images (``onenip.jobs.category_data_versions``), as a trained
    version records it."""


def onboard_category(
    generalist_dir: str | Path,
    root: str | Path,
    category: str,
    shots: int,
    params: Params,
    out_dir: str | Path,
    *,
    progress: bool = True,
    prompt_paths: Sequence[str] | None = None,
    source: str | None = None,
) -> OnboardResult:
    """A model for ``category`` from the trained generalist and ``shots`` of its normal images
    (chosen deterministically; ``prompt_paths`` gives them explicitly, e.g. random sets in a benchmark).
    ``source`` (``models:/onenip-generalist/3``) is recorded as the generalist instead of the folder."""
    from onenip.evaluation import evaluate
    from onenip.jobs import category_data_versions
    from onenip.scoring_selection import check_validation_methods

    check_validation_methods(params)
    started = time.perf_counter()
    state = prepare_onboarding(generalist_dir, root, category, shots, params, progress=progress, prompt_paths=prompt_paths)
    params, device, manifest, normals, features, cache = state.params, state.device, state.manifest, state.normals, state.features, state.cache
    detector, k, chosen, calibration = state.detector, state.index, state.chosen, state.calibration
    shots, rest = len(chosen), state.rest
    candidates = scoring_candidates(params, shots)
    if any(residual == "neighbourhood_rotated" for residual, _ in candidates):
        detector.set_rotated_prompts(k, rotated_prompt_features(detector, k, normals["image_path"].iloc[chosen].tolist(), params, device))
    if len(candidates) == 1:
        selection: dict[str, Any] = {"residual": candidates[0][0], "head_weight": candidates[0][1],
                                     "reason": "generalist.residuals and generalist.head_weights have one value each"}  # fmt: skip
    else:
        selection = {"residual": "inctrl", "head_weight": INCTRL_HEAD_WEIGHT,
                     "reason": "InCTRL's mean: too few normal images besides the prompts to choose"}  # fmt: skip
    with torch.no_grad():
        if rest:  # the threshold from the category's other normal images, never from test
            normal_features = features.select(calibration).to(device)
            if len(candidates) > 1 and len(calibration) >= params.validation.min_normals:
                selection, scores = choose_scoring(detector, k, normal_features, state.validation_paths(), params, device)
                _apply_selection(detector, k, selection)
            else:
                _apply_selection(detector, k, selection)
                scores = detector.category_scores(normal_features, k)[1].float().cpu().numpy()
        else:  # only the prompts: each scored against the others (leave one out); k = 1 gives no basis
            _apply_selection(detector, k, selection)
            scores = np.array([]) if shots < 2 else np.array([
                float(detector.category_scores(features.select([i]).to(device), k,
                                               features.select([j for j in chosen if j != i]).to(device))[1])
                for i in chosen
            ])  # fmt: skip
    if not len(scores):
        msg = f"{category!r}: no normal image besides the single prompt to calibrate a threshold on; add images or use more shots"
        raise DatasetError(msg)
    if detector.residual(k) != "neighbourhood_rotated":  # only the chosen residual's bank is kept
        prompt = detector.prompt(k)
        detector.set_rotated_prompts(k, Features(prompt.coarse[:0], prompt.fine[:0]))  # type: ignore[index]
    threshold = float(np.quantile(scores, params.eval.threshold_quantile))
    detector.score_threshold[k] = threshold
    out = Path(out_dir) / "model"
    prompt_paths = normals["image_path"].iloc[chosen].tolist()
    metrics: dict[str, float] = {}
    has_masks = False
    tests = manifest[manifest["split"] == "test"]
    stale = Path(out_dir) / "eval"
    if stale.is_dir():  # an earlier onboarding's evaluation (logged with its own run): never passed off as this one's
        shutil.rmtree(stale)
    if len(tests) and tests["label_index"].nunique() == 2:
        results = evaluate(detector, manifest, cache, Path(out_dir) / "eval", [category], num_heatmaps=params.eval.num_heatmaps,
                           progress=progress)  # type: ignore[arg-type]  # fmt: skip
        metrics = {key: float(v) for key, v in results[category].metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        has_masks = results[category].has_masks
    detector.save(out, metadata={"kind": "onboarded", "generalist": source or str(generalist_dir), "category": category, "shots": shots,
                                 "prompt_paths": prompt_paths, "threshold": threshold, "calibration_images": len(calibration),
                                 "head_weight_selection": selection, "metrics": metrics})  # fmt: skip
    return OnboardResult(out, category, shots, prompt_paths, threshold, metrics, has_masks, time.perf_counter() - started,
                         float(detector.head_weight[k]), selection, detector.residual(k), detector.geometry(k).size,
                         category_data_versions(manifest)[category])


def _evenly_spaced(items: Sequence[int], count: int) -> list[int]:
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


def _apply_selection(detector: GeneralistDetector, category: int, selection: dict[str, Any]) -> None:
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


def prompt_table(result: OnboardResult) -> pd.DataFrame:
    return pd.DataFrame({"prompt": range(len(result.prompt_paths)), "image_path": result.prompt_paths})
