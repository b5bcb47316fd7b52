"""Onboarding a new category from k normal images with no training: prompts, input geometry, the
scoring chosen on its own normals and synthetic anomalies, threshold, evaluation."""

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

from onenip.config import Params
from onenip.data.geometry import InputGeometry
from onenip.data.manifest import DatasetError, make_manifest
from onenip.device import resolve_device
from onenip.features import FeatureCache
from onenip.models.features import Features
from onenip.fewshot.selection import apply_selection, choose_scoring, evenly_spaced, rotated_prompt_features, scoring_candidates
from onenip.fewshot.train import generalist_params
from onenip.models.generalist import INCTRL_HEAD_WEIGHT, GeneralistDetector


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
        return self.normals["image_path"].iloc[evenly_spaced(self.calibration, self.params.generalist.validation_images)].tolist()


def prepare_onboarding(generalist_dir: str | Path, root: str | Path, category: str, shots: int, params: Params, *,
                       progress: bool = True, prompt_paths: Sequence[str] | None = None) -> Onboarding:  # fmt: skip
    """Load the generalist, choose (or check) the ``shots`` prompts among ``category``'s normal training
    images and add the category: the part of ``onboard_category`` that every choice of scoring shares."""
    from onenip.training.data import select_prompts

    input_size = params.model.input_sizes.get(category)  # the user's input for this category, read before it is cleared
    params = generalist_params(params)
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
    state.calibration = evenly_spaced(state.rest, params.generalist.calibration_images)
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
                apply_selection(detector, k, selection)
            else:
                apply_selection(detector, k, selection)
                scores = detector.category_scores(normal_features, k)[1].float().cpu().numpy()
        else:  # only the prompts: each scored against the others (leave one out); k = 1 gives no basis
            apply_selection(detector, k, selection)
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


def prompt_table(result: OnboardResult) -> pd.DataFrame:
    return pd.DataFrame({"prompt": range(len(result.prompt_paths)), "image_path": result.prompt_paths})
