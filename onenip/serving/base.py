"""What every predictor shares, torch-free: the prediction record, which category a request is for, the
image conversions, and the one batching / letterbox / crop loop (``BasePredictor.predict``) over each
runtime's ``_score``. One class per runtime builds on it: ``onenip.serving.exported`` (ONNX Runtime,
OpenVINO; never imports torch) and ``onenip.serving.torch_predictor`` (torch)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from onenip.categories import CategoryIndex
from onenip.data.geometry import InputGeometry
from onenip.data.manifest import to_rgb


@dataclass
class Prediction:
    category: str
    score: float
    threshold: float
    is_anomaly: bool
    anomaly_map: np.ndarray | None = None
    """(h, w) float32 at the category's input resolution, letterbox padding removed, when asked for
    (``onenip.data.resample.resize_chw(map, (height, width), antialias=False)`` brings it to the
    image's own size, as ``predict_files`` does for heatmaps)."""


class CategoryNotServed(ValueError):
    """A registered model version was asked for a category other than its own."""


class ImagePredictor(Protocol):
    """What ``predict_files`` and the pyfunc model need of a predictor."""

    runtime: str
    default_category: str | None
    threshold_source: Callable[[str], float | None] | None

    def predict(
        self, images: Sequence[Image.Image | np.ndarray], category: str | None = None, *, return_maps: bool = False, batch_size: int = 16,
        threshold: float | None = None,
    ) -> list[Prediction]: ...


class CategoryChoice(CategoryIndex):
    """Which category a request is for: the served one only (a registered version passed its gate for
    its own category; the unified network's other categories may have failed theirs), else the
    default, else the one named. ``model_name_pattern`` (``onenip-elpv-{category}``) lets a refusal
    name the model to use instead."""

    categories: list[str]

    def _choose_categories(
        self, categories: list[str], default_category: str | None, served_category: str | None, model_name_pattern: str | None,
    ) -> None:
        self.categories = list(categories)
        if served_category is not None:
            self.category_index(served_category)
            if default_category not in (None, served_category):
                raise not_served(default_category, served_category, model_name_pattern)
            default_category = served_category
        if default_category is not None:
            self.category_index(default_category)  # unknown category -> ValueError naming the known ones
        self.default_category = default_category or (self.categories[0] if len(self.categories) == 1 else None)
        self.served_category = served_category
        self.model_name_pattern = model_name_pattern

    def _category(self, category: str | None) -> str:
        category = category or self.default_category
        if self.served_category is not None and category != self.served_category:
            raise not_served(category, self.served_category, self.model_name_pattern)
        if category is None:
            msg = f"This model knows several categories {self.categories}; say which one"
            raise ValueError(msg)
        self.category_index(category)
        return category


def not_served(category: str | None, served: str, pattern: str | None) -> CategoryNotServed:
    own = f"models:/{pattern.format(category=served)}" if pattern else "This model version"
    advice = (
        f"use models:/{pattern.format(category=category)}@champion (each category is served by its own model, "
        "promoted only when it passed its gate)"
        if pattern
        else "use that category's own registered model"
    )
    return CategoryNotServed(f"{own} serves category {served!r} only, not {category!r}: {advice}")


def as_rgb_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """RGB PIL image or (H, W) / (H, W, 1|3|4) array of any integer or float range -> (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            msg = f"Image arrays must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}"
            raise ValueError(msg)
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        image = image[..., :3]
        if image.dtype != np.uint8:
            top = 65535.0 if image.dtype == np.uint16 else (1.0 if image.dtype.kind == "f" else 255.0)
            image = np.clip(np.rint(image.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
        return image
    if image.mode != "RGB":  # grey, 16-bit, RGBA, palette: the same conversion as decoding a file
        image = to_rgb(image)
    return np.asarray(image, dtype=np.uint8)


def image_to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image -> (3, H, W) float32 in [0, 1] at its own size (``image_to_tensor`` in numpy)."""
    return as_rgb_uint8(image).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


def crop_content(geometry: InputGeometry, anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """The part of a map at the model's input that shows the image (letterbox padding removed)."""
    top, left, h, w = geometry.content_box(height, width)
    return np.ascontiguousarray(anomaly_map[top : top + h, left : left + w])


class BasePredictor(CategoryChoice, ABC):
    """The one predict loop: images -> RGB arrays -> ``_score`` in batches -> the letterbox padding cropped
    from each map -> ``Prediction`` records at the category's threshold."""

    runtime: str
    threshold_source: Callable[[str], float | None] | None = None
    """An operating point set after training (``onenip threshold``: the registry's, for a registered
    version), asked per call; None from it, or no source: the trained threshold."""

    @abstractmethod
    def geometry(self, category: str) -> InputGeometry: ...

    @abstractmethod
    def threshold(self, category: str) -> float:
        """The threshold calibrated at training."""

    def operating_threshold(self, category: str) -> float:
        """The threshold predictions are judged against: the operating point set after training, else the trained one."""
        value = None if self.threshold_source is None else self.threshold_source(category)
        return self.threshold(category) if value is None else float(value)

    @abstractmethod
    def _score(self, category: str, images: list[np.ndarray], return_maps: bool) -> tuple[np.ndarray | None, list[float]]:
        """(H, W, 3) uint8 images of one category -> ((N, 1, h, w) maps at the model's input or None, N scores)."""

    def predict(
        self,
        images: Sequence[Image.Image | np.ndarray],
        category: str | None = None,
        *,
        return_maps: bool = False,
        batch_size: int = 16,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Score images of one category in batches, judged against ``threshold`` when given, else the
        category's operating point."""
        category = self._category(category)
        geometry = self.geometry(category)
        threshold = self.operating_threshold(category) if threshold is None else float(threshold)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            arrays = [as_rgb_uint8(image) for image in images[start : start + batch_size]]
            full_maps, scores = self._score(category, arrays, return_maps)
            maps: list[np.ndarray | None] = [None] * len(scores)
            if return_maps and full_maps is not None:
                maps = [crop_content(geometry, m, a.shape[0], a.shape[1]) for m, a in zip(full_maps[:, 0], arrays, strict=True)]
            results.extend(
                Prediction(category, float(score), threshold, float(score) > threshold, anomaly_map)
                for score, anomaly_map in zip(scores, maps, strict=True)
            )
        return results
