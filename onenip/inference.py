"""Score new images with a saved torch detector (``Predictor``): what ``onenip.predictors.load_predictor``
returns for the torch runtime, a GPU, a generalist model or a category without an exported graph. The
CLI and the MLflow pyfunc both go through ``load_predictor``, so a served model and the CLI give the
same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from onenip.data.transforms import image_to_tensor
from onenip.models.detector import OneNIPDetector
from onenip.prediction import CategoryChoice, Prediction, as_rgb_uint8, crop_content
from onenip.runtime import EXPORT_FOLDER, load_export, resolve_runtime, runtime_threads, safe_name



class Predictor(CategoryChoice):
    """A loaded torch detector plus the preprocessing it was trained with (each category's input
    geometry). ``runtime`` onnx/openvino runs the category's exported graph instead of the torch
    forward (exported on first use when the model folder has none); ``onenip.predictors.load_predictor``
    serves folders with exported graphs without importing torch at all.

    ``served_category`` restricts the predictor to one category (see ``CategoryChoice``).
    """

    def __init__(
        self,
        detector: OneNIPDetector,
        default_category: str | None = None,
        *,
        served_category: str | None = None,
        model_name_pattern: str | None = None,
        runtime: str = "torch",
        export_root: str | Path | None = None,
    ) -> None:
        self.detector = detector.eval()
        self.runtime = resolve_runtime(runtime)
        if self.runtime != "torch" and (detector.device.type != "cpu" or not isinstance(detector, OneNIPDetector)):
            # exported graphs are CPU graphs of OneNIP; on a GPU, or for a generalist model, torch runs it
            self.runtime = "torch"
        self.export_root = Path(export_root) if export_root else None
        self._graphs: dict[str, Any] = {}
        self._choose_categories(detector.categories, default_category, served_category, model_name_pattern)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        default_category: str | None = None,
        device: str | torch.device = "cpu",
        *,
        served_category: str | None = None,
        model_name_pattern: str | None = None,
        runtime: str = "torch",
    ) -> Predictor:
        """``runtime``: torch, onnx, openvino or auto (onnx when ONNX Runtime is installed). Graphs
        exported at registration (``<model_dir>/export/<category>``) are used; others are exported
        on first use into a temporary folder."""
        from onenip.models.generalist import load_any_detector

        return cls(
            load_any_detector(model_dir, map_location=device), default_category,
            served_category=served_category, model_name_pattern=model_name_pattern,
            runtime=runtime, export_root=Path(model_dir) / EXPORT_FOLDER,
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.detector.device

    @staticmethod
    def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
        """RGB PIL image or (H, W, 3) / (H, W) array -> (3, H, W) in [0, 1] at its own size."""
        return image_to_tensor(as_rgb_uint8(image))

    def preprocess(self, image: Image.Image | np.ndarray, category: str | None = None) -> torch.Tensor:
        """An image -> (3, H, W) in [0, 1] at the category's input geometry."""
        category = self._category(category)
        return self.detector.geometry(category).apply(self.to_tensor(image))

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
        category = self._category(category)
        k = self.detector.category_index(category)
        geometry = self.detector.geometry(category)
        threshold = float(self.detector.score_threshold[k])
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            pictures = [self.to_tensor(image) for image in images[start : start + batch_size]]
            sizes = [tuple(p.shape[-2:]) for p in pictures]
            batch = torch.stack([geometry.apply(p) for p in pictures]).to(self.device)
            valid = None
            if geometry.letterbox:
                valid = torch.stack([geometry.valid_mask(h, w)[None] for h, w in sizes]).to(self.device)
            if self.runtime == "torch":
                # AMP for the backbone only: the maps are distances (|q|^2 + |b|^2 - 2 q.b, Mahalanobis, whitened
                # errors) whose large terms cancel, so in float16 they would no longer be the float32 maps the
                # threshold and the scoring rule were calibrated on (features rounded to float16, as cached)
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    features = self.detector.extract(batch)
                output = self.detector.forward_features(features.float(), k, valid)
                scores = output.pred_score.float().cpu().tolist()
                full_maps = output.anomaly_map.float().cpu().numpy() if return_maps else None
            else:
                full_maps, raw = self.graph(category)(batch.numpy(), None if valid is None else valid.numpy())
                scores = [float(v) for v in raw]
            maps: list[np.ndarray | None] = [None] * len(scores)
            if return_maps and full_maps is not None:
                maps = [crop_content(geometry, m, h, w) for m, (h, w) in zip(full_maps[:, 0], sizes, strict=True)]
            results.extend(
                Prediction(category, score, threshold, score > threshold, anomaly_map)
                for score, anomaly_map in zip(scores, maps, strict=True)
            )
        return results


    def graph(self, category: str) -> Any:
        """The exported scoring graph of ``category`` on this predictor's runtime (loaded once)."""
        if category not in self._graphs:
            from onenip.export import EXPORT_JSON, export_category

            folder = self.export_root / safe_name(category) if self.export_root else None
            if folder is None or not (folder / EXPORT_JSON).is_file():
                import tempfile

                folder = Path(tempfile.mkdtemp(prefix="onenip-export-")) / safe_name(category)
                export_category(self.detector, category, folder, fmt="openvino" if self.runtime == "openvino" else "onnx")
            info, graph = load_export(folder, self.runtime, threads=runtime_threads())
            if info.category != category:
                msg = f"Export folder {folder} holds category {info.category!r}, not {category!r}"
                raise ValueError(msg)
            self._graphs[category] = graph
        return self._graphs[category]
