"""Score new images with a saved detector: the code path shared by ``onenip predict`` and the MLflow
pyfunc model (``onenip.pyfunc``), so a served model and the CLI give the same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onenip.data.transforms import image_to_tensor, resize_image
from onenip.models.detector import OneNIPDetector


@dataclass
class Prediction:
    category: str
    score: float
    threshold: float
    is_anomaly: bool
    anomaly_map: np.ndarray | None = None
    """(S, S) float32 at the model's input size, when asked for."""


class Predictor:
    """A loaded detector plus the preprocessing it was trained with."""

    def __init__(self, detector: OneNIPDetector, default_category: str | None = None) -> None:
        self.detector = detector.eval()
        self.input_size = detector.cfg.backbone.input_size
        if default_category is not None:
            detector.category_index(default_category)  # unknown category -> ValueError naming the known ones
        self.default_category = default_category or (detector.categories[0] if len(detector.categories) == 1 else None)

    @classmethod
    def load(cls, model_dir: str | Path, default_category: str | None = None, device: str | torch.device = "cpu") -> Predictor:
        return cls(OneNIPDetector.load(model_dir, map_location=device), default_category)

    @property
    def device(self) -> torch.device:
        return self.detector.prompt_features.device

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """RGB PIL image or (H, W, 3) / (H, W) uint8 array -> (3, S, S) in [0, 1]."""
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
                msg = f"Image arrays must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}"
                raise ValueError(msg)
            if image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            image = image[..., :3]
            if image.dtype != np.uint8:
                top = 65535.0 if image.dtype == np.uint16 else (1.0 if image.dtype.kind == "f" else 255.0)
                image = np.clip(np.rint(image.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
        return resize_image(image_to_tensor(image), self.input_size)

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Image.Image | np.ndarray],
        category: str | None = None,
        *,
        return_maps: bool = False,
        batch_size: int = 16,
    ) -> list[Prediction]:
        """Score images of one category in batches."""
        category = category or self.default_category
        if category is None:
            msg = f"This model knows several categories {self.detector.categories}; say which one"
            raise ValueError(msg)
        k = self.detector.category_index(category)
        threshold = float(self.detector.score_threshold[k])
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]]).to(self.device)
            indices = torch.full((len(batch),), k, dtype=torch.long)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                output = self.detector(batch, indices)
            scores = output.pred_score.float().cpu().tolist()
            maps = output.anomaly_map.float().cpu().numpy()[:, 0] if return_maps else [None] * len(scores)
            results.extend(
                Prediction(category, score, threshold, score > threshold, anomaly_map)
                for score, anomaly_map in zip(scores, maps, strict=True)
            )
        return results
