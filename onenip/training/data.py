"""The training data of each category: held-out normals, input geometry, images, cached features,
prompts; what training, validation and few-shot onboarding all start from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import Params
from onenip.data.geometry import aspects_vary, choose_geometry, InputGeometry
from onenip.data.manifest import DatasetError
from onenip.features import FeatureCache
from onenip.models.features import Features

def split_holdout(frame: pd.DataFrame, fraction: float, min_holdout: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training normals into (fit, holdout) per category with a seeded permutation.

    The holdout calibrates the reconstruction scale and the decision threshold, so no test image
    (and no test label) is ever used for either.
    """
    fit_parts, holdout_parts = [], []
    for category, rows in frame.groupby("category", sort=True):
        rows = rows.sort_values("image_path")
        count = len(rows)
        num_holdout = 0 if fraction <= 0 else max(min_holdout, round(count * fraction))
        num_holdout = min(num_holdout, count - 2)  # keep at least two images to draw prompts from
        if num_holdout < 0:
            msg = f"Category {category!r} has {count} training images; at least 2 are needed"
            raise DatasetError(msg)
        order = np.random.default_rng([seed, count]).permutation(count)
        holdout_parts.append(rows.iloc[np.sort(order[:num_holdout])])
        fit_parts.append(rows.iloc[np.sort(order[num_holdout:])])
    return pd.concat(fit_parts, ignore_index=True), pd.concat(holdout_parts, ignore_index=True)


def select_prompt(features: Tensor) -> int:
    """Index of the image nearest (L2 over the whole feature map) to the mean feature map.

    A deterministic, typical normal image: the one least likely to carry an unusual pose or
    lighting that would bias every reconstruction of the category.
    """
    mean = features.mean(dim=0, keepdim=True)
    return int((features - mean).flatten(1).pow(2).sum(dim=1).argmin())


def select_prompts(features: Tensor, count: int) -> list[int]:
    """``count`` prompt indices: the typical image (``select_prompt``), then k-center greedy on the
    grid-mean features (each next prompt is the image farthest from those chosen), so the stored
    prompts cover the category's variety (lighting, pose, crop); deterministic."""
    first = select_prompt(features)
    chosen = [first]
    if count <= 1:
        return chosen
    descriptors = torch.nn.functional.normalize(features.mean(dim=(-2, -1)), dim=1)
    distance = 1 - descriptors @ descriptors[first]
    for _ in range(min(count, len(features)) - 1):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = torch.minimum(distance, 1 - descriptors @ descriptors[nxt])
    while len(chosen) < count:  # fewer images than prompts: repeat the typical one
        chosen.append(first)
    return chosen


def choose_geometries(manifest: pd.DataFrame, params: Params, categories: Sequence[str]) -> dict[str, InputGeometry]:
    """Each category's input geometry: ``model.input_sizes`` where given, else from its training images."""
    cfg = params.model
    stride = cfg.backbone.feature_stride
    geometries = {}
    for category in categories:
        train = manifest[(manifest["category"] == category) & (manifest["split"] == "train")]
        if category in cfg.input_sizes:
            height, width = cfg.input_sizes[category]
            if height % stride or width % stride:
                msg = f"model.input_sizes[{category!r}] = {[height, width]} must be multiples of the feature stride {stride}"
                raise DatasetError(msg)
            aspects = (train["width"] / train["height"]).dropna().to_numpy(dtype=float)
            geometries[category] = InputGeometry(int(height), int(width), aspects_vary(aspects))
            continue
        known = train.dropna(subset=["width", "height"])
        geometries[category] = choose_geometry(
            known["height"].astype(int).tolist(), known["width"].astype(int).tolist(), cfg.backbone.input_size,
            multiple=stride, keep_aspect=cfg.keep_aspect,
        )
    return geometries


def load_images(paths: Sequence[str], geometry: InputGeometry, progress: bool = False, desc: str = "Loading images") -> tuple[Tensor, Tensor | None]:
    """uint8 (N, 3, H, W) images at the geometry, and (N, 1, H, W) content masks when letterboxed."""
    from onenip.data.manifest import read_image
    from onenip.data.transforms import image_to_tensor

    images, valids = [], []
    for path in tqdm(paths, desc=desc, unit="img", disable=not progress):
        picture = image_to_tensor(read_image(path))
        images.append((geometry.apply(picture) * 255).round().to(torch.uint8))
        if geometry.letterbox:
            valids.append(geometry.valid_mask(picture.shape[-2], picture.shape[-1])[None])
    if not images:
        return torch.zeros(0, 3, *geometry.size, dtype=torch.uint8), None
    return torch.stack(images), (torch.stack(valids) if valids else None)


@dataclass
class CategoryData:
    """One category's training data on the CPU: features, images for synthesis, the holdout."""

    name: str
    index: int
    geometry: InputGeometry
    fit: pd.DataFrame
    holdout: pd.DataFrame
    fit_features: Features
    holdout_features: Features
    fit_images: Tensor  # (N, 3, H, W) uint8, for synthesis
    fit_valid: Tensor | None  # (N, 1, H, W) bool where letterboxed
    holdout_images: Tensor
    holdout_valid: Tensor | None
    jittered: Features | None = None
    """Fit images again under other lighting (``add_jittered_normals``), for the per-position statistics."""
    jittered_valid: Tensor | None = None


def prepare_category_data(
    manifest: pd.DataFrame, params: Params, cache: FeatureCache, category: str, index: int, geometry: InputGeometry, progress: bool,
) -> CategoryData:
    train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0) & (manifest["category"] == category)]
    if train.empty:
        msg = f"No normal training images for category {category!r}"
        raise DatasetError(msg)
    fit, holdout = split_holdout(train, params.train.holdout_fraction, params.train.min_holdout, params.train.seed)
    kwargs = {"batch_size": params.train.feature_batch_size, "progress": progress}
    # Kept as float16 (the cache's precision, half the memory); batches are converted to float32.
    kwargs["dtype"] = torch.float16
    fit_features = cache.get(fit["image_path"].tolist(), fit["sha256"].tolist(), geometry, **kwargs)
    holdout_features = (
        cache.get(holdout["image_path"].tolist(), holdout["sha256"].tolist(), geometry, **kwargs)
        if len(holdout)
        else fit_features.select(slice(0, 0))
    )
    fit_images, fit_valid = load_images(fit["image_path"].tolist(), geometry, progress, f"Loading images ({category})")
    holdout_images, holdout_valid = load_images(holdout["image_path"].tolist(), geometry)
    return CategoryData(
        category, index, geometry, fit.reset_index(drop=True), holdout.reset_index(drop=True),
        fit_features, holdout_features, fit_images, fit_valid, holdout_images, holdout_valid,
    )


# -- checkpoints ------------------------------------------------------------------------------------


def texture_sources(data: Sequence[CategoryData], category: CategoryData) -> list[Tensor]:
    """Textures for a category's synthesis: images of the OTHER categories (the paper uses DTD, not
    available offline), up to 16 spread over them; procedural textures are always available too."""
    others = [d for d in data if d is not category]
    picked: list[Tensor] = []
    for other in others:
        step = max(1, len(other.fit_images) // 8)
        picked += [other.fit_images[i].float() / 255 for i in range(0, len(other.fit_images), step)][:8]
    return picked[:16]
