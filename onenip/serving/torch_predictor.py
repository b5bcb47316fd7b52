"""Scoring with a saved torch detector (``TorchPredictor``): what ``load_predictor`` returns for the torch
runtime, a GPU, a generalist model or a category without an exported graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from onenip.categories import CategoryDetector
from onenip.data.geometry import InputGeometry
from onenip.data.transforms import image_to_tensor
from onenip.models.detector import OneNIPDetector
from onenip.runtime import EXPORT_FOLDER, load_export, resolve_runtime, runtime_threads, safe_name
from onenip.serving.base import BasePredictor


class TorchPredictor(BasePredictor):
    """A loaded torch detector plus the preprocessing it was trained with (each category's input
    geometry). ``runtime`` onnx/openvino runs the category's exported graph instead of the torch
    forward (exported on first use when the model folder has none); ``onenip.serving.load_predictor``
    serves folders with exported graphs without importing torch at all.

    ``served_category`` restricts the predictor to one category (see ``CategoryChoice``).
    """

    def __init__(
        self,
        detector: CategoryDetector,
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
    ) -> TorchPredictor:
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

    def geometry(self, category: str) -> InputGeometry:
        return self.detector.geometry(category)

    def threshold(self, category: str) -> float:
        return float(self.detector.score_threshold[self.detector.category_index(category)])

    @torch.no_grad()
    def _score(self, category: str, images: list[np.ndarray], return_maps: bool) -> tuple[np.ndarray | None, list[float]]:
        geometry = self.geometry(category)
        pictures = [image_to_tensor(image) for image in images]
        batch = torch.stack([geometry.apply(p) for p in pictures]).to(self.device)
        valid = None
        if geometry.letterbox:
            valid = torch.stack([geometry.valid_mask(*p.shape[-2:])[None] for p in pictures]).to(self.device)
        if self.runtime != "torch":
            full_maps, raw = self.graph(category)(batch.numpy(), None if valid is None else valid.numpy())
            return full_maps, [float(v) for v in raw]
        # AMP for the backbone only: the maps are distances (|q|^2 + |b|^2 - 2 q.b, Mahalanobis, whitened
        # errors) whose large terms cancel, so in float16 they would no longer be the float32 maps the
        # threshold and the scoring rule were calibrated on (features rounded to float16, as cached)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            features = self.detector.extract(batch)
        output = self.detector.forward_features(features.float(), self.detector.category_index(category), valid)
        full_maps = output.anomaly_map.float().cpu().numpy() if return_maps else None
        return full_maps, output.pred_score.float().cpu().tolist()

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
