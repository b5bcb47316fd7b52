"""Scoring with a model folder's exported graphs in ONNX Runtime or OpenVINO (``ExportedPredictor``):
numpy preprocessing with torch's arithmetic (``InputGeometry.apply_array``); torch is never imported."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onenip.data.geometry import InputGeometry
from onenip.runtime import EXPORT_FOLDER, EXPORT_JSON, ExportInfo, GraphScorer, file_sha256, load_export, resolve_runtime, runtime_threads, safe_name
from onenip.serving.base import BasePredictor, image_to_array


class ExportedPredictor(BasePredictor):
    """Scores images with the exported graphs of a model folder; torch is never imported."""

    def __init__(
        self,
        categories: list[str],
        export_folders: dict[str, Path],
        runtime: str,
        default_category: str | None = None,
        *,
        served_category: str | None = None,
        model_name_pattern: str | None = None,
    ) -> None:
        self.runtime = resolve_runtime(runtime)
        if self.runtime == "torch":
            msg = "ExportedPredictor runs exported graphs (onnx or openvino); use onenip.serving.TorchPredictor for torch"
            raise ValueError(msg)
        self._choose_categories(categories, default_category, served_category, model_name_pattern)
        self.infos = {category: ExportInfo.read(folder)[0] for category, folder in export_folders.items()}
        self.export_folders = export_folders
        self._graphs: dict[str, GraphScorer] = {}

    def geometry(self, category: str) -> InputGeometry:
        info = self._info(self._category(category))
        return InputGeometry(info.height, info.width, info.letterbox)

    def graph(self, category: str) -> GraphScorer:
        """The exported scoring graph of ``category`` (loaded once)."""
        if category not in self._graphs:
            info, graph = load_export(self.export_folders[category], self.runtime, threads=runtime_threads())  # type: ignore[arg-type]
            if info.category != category:
                msg = f"Export folder {self.export_folders[category]} holds category {info.category!r}, not {category!r}"
                raise ValueError(msg)
            self._graphs[category] = graph
        return self._graphs[category]

    def threshold(self, category: str) -> float:
        return float(self._info(category).threshold)

    def _info(self, category: str) -> ExportInfo:
        if category not in self.infos:
            msg = f"No exported graph for category {category!r}; load the model with runtime='torch'"
            raise ValueError(msg)
        return self.infos[category]

    def _score(self, category: str, images: list[np.ndarray], return_maps: bool) -> tuple[np.ndarray | None, list[float]]:
        geometry = self.geometry(category)
        batch = np.stack([geometry.apply_array(image_to_array(image)) for image in images])
        valid = None
        if geometry.letterbox:
            valid = np.stack([geometry.valid_mask_array(image.shape[0], image.shape[1])[None] for image in images]).astype(np.float32)
        full_maps, raw = self.graph(category)(batch, valid)
        return full_maps, [float(score) for score in raw]

    @classmethod
    def from_folder(
        cls, model_dir: str | Path, runtime: str, categories: Sequence[str], **choice: Any,
    ) -> ExportedPredictor | None:
        """None unless every one of ``categories`` (all the model's categories when none is named) has
        an export under ``model_dir/export``."""
        model_dir = Path(model_dir)
        try:
            record = json.loads((model_dir / "onenip.json").read_text())
        except (OSError, ValueError):
            return None  # the torch loader names what is wrong with the folder
        known = record.get("categories", [])
        categories = list(categories) or list(known)
        if not categories or record.get("kind") == "inctrl":
            return None
        folders = {category: model_dir / EXPORT_FOLDER / safe_name(category) for category in categories}
        weights = model_dir / "model.safetensors"
        if any(c not in known or not export_matches(f, weights, runtime) for c, f in folders.items()):
            return None
        return cls(known, folders, runtime, **choice)


def export_matches(folder: Path, weights: Path, runtime: str) -> bool:
    """The export folder holds the graph ``runtime`` reads, made from these weights (a model folder
    retrained in place after an export must not be served by the stale graph)."""
    try:
        meta = json.loads((folder / EXPORT_JSON).read_text())
    except (OSError, ValueError):
        return False
    graph = meta.get("onnx") if runtime == "onnx" else (meta.get("graph") or meta.get("onnx"))
    if not graph or not (folder / graph).is_file():
        return False
    recorded = meta.get("weights_sha256")
    return recorded is None or (weights.is_file() and recorded == file_sha256(weights))
