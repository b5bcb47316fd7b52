"""Score new images with a saved detector: the code path shared by ``onenip predict`` and the MLflow
pyfunc model (``onenip.pyfunc``), so a served model and the CLI give the same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from onenip.data.geometry import InputGeometry
from onenip.data.transforms import image_to_tensor
from onenip.models.detector import OneNIPDetector


@dataclass
class Prediction:
    category: str
    score: float
    threshold: float
    is_anomaly: bool
    anomaly_map: np.ndarray | None = None
    """(h, w) float32 at the category's input resolution, letterbox padding removed, when asked for
    (``InputGeometry.map_to_image`` brings it to the image's own size)."""


class CategoryNotServed(ValueError):
    """A registered model version was asked for a category other than its own."""


class Predictor:
    """A loaded detector plus the preprocessing it was trained with (each category's input geometry).

    ``served_category`` restricts the predictor to one category: a registered model version passed its
    gate for its own category only, so the unified network's other categories (which may have failed
    theirs) must not be reachable through it. ``model_name_pattern`` (``onenip-elpv-{category}``)
    lets the refusal name the model to use instead.
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
        from onenip.export import ExportedModel

        if self.runtime != "torch" and (detector.device.type != "cpu" or not isinstance(detector, (OneNIPDetector, ExportedModel))):
            # exported graphs are CPU graphs of OneNIP; on a GPU, or for a generalist model, torch runs it
            self.runtime = "torch"
        self.export_root = Path(export_root) if export_root else None
        self._graphs: dict[str, Any] = {}
        if served_category is not None:
            detector.category_index(served_category)
            if default_category not in (None, served_category):
                raise self._not_served(default_category, served_category, model_name_pattern)
            default_category = served_category
        if default_category is not None:
            detector.category_index(default_category)  # unknown category -> ValueError naming the known ones
        self.default_category = default_category or (detector.categories[0] if len(detector.categories) == 1 else None)
        self.served_category = served_category
        self.model_name_pattern = model_name_pattern

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
        wanted = [c for c in (served_category, default_category) if c]
        if resolve_runtime(runtime) != "torch" and torch.device(device).type == "cpu":
            from onenip.export import ExportedModel

            exported = ExportedModel.from_folder(model_dir, wanted)
            if exported is not None:  # the graphs are all it takes: no torch model is built
                return cls(exported, default_category, served_category=served_category,  # type: ignore[arg-type]
                           model_name_pattern=model_name_pattern, runtime=runtime, export_root=Path(model_dir) / EXPORT_FOLDER)  # fmt: skip
        from onenip.models.generalist import load_any_detector

        return cls(
            load_any_detector(model_dir, map_location=device), default_category,
            served_category=served_category, model_name_pattern=model_name_pattern,
            runtime=runtime, export_root=Path(model_dir) / EXPORT_FOLDER,
        )  # fmt: skip

    @staticmethod
    def _not_served(category: str, served: str, pattern: str | None) -> CategoryNotServed:
        own = f"models:/{pattern.format(category=served)}" if pattern else "This model version"
        advice = (
            f"use models:/{pattern.format(category=category)}@champion (each category is served by its own model, "
            "promoted only when it passed its gate)"
            if pattern
            else "use that category's own registered model"
        )
        return CategoryNotServed(f"{own} serves category {served!r} only, not {category!r}: {advice}")

    @property
    def device(self) -> torch.device:
        return self.detector.device

    @staticmethod
    def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
        """RGB PIL image or (H, W, 3) / (H, W) uint8 array -> (3, H, W) in [0, 1] at its own size."""
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
        return image_to_tensor(image)

    def preprocess(self, image: Image.Image | np.ndarray, category: str | None = None) -> torch.Tensor:
        """An image -> (3, H, W) in [0, 1] at the category's input geometry."""
        category = self._category(category)
        return self.detector.geometry(category).apply(self.to_tensor(image))

    def _category(self, category: str | None) -> str:
        category = category or self.default_category
        if self.served_category is not None and category != self.served_category:
            raise self._not_served(category, self.served_category, self.model_name_pattern)
        if category is None:
            msg = f"This model knows several categories {self.detector.categories}; say which one"
            raise ValueError(msg)
        self.detector.category_index(category)
        return category

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
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    output = self.detector(batch, k, valid)
                scores = output.pred_score.float().cpu().tolist()
                full_maps = output.anomaly_map.float().cpu().numpy() if return_maps else None
            else:
                full_maps, raw = self.graph(category)(batch.numpy(), None if valid is None else valid.numpy())
                scores = [float(v) for v in raw]
            maps: list[np.ndarray | None] = [None] * len(scores)
            if return_maps and full_maps is not None:
                maps = [_content(geometry, m, h, w) for m, (h, w) in zip(full_maps[:, 0], sizes, strict=True)]
            results.extend(
                Prediction(category, score, threshold, score > threshold, anomaly_map)
                for score, anomaly_map in zip(scores, maps, strict=True)
            )
        return results


    def graph(self, category: str) -> Any:
        """The exported scoring graph of ``category`` on this predictor's runtime (loaded once)."""
        if category not in self._graphs:
            from onenip.export import EXPORT_JSON, export_category, load_export

            folder = self.export_root / safe_name(category) if self.export_root else None
            if folder is None or not (folder / EXPORT_JSON).is_file():
                import tempfile

                folder = Path(tempfile.mkdtemp(prefix="onenip-export-")) / safe_name(category)
                export_category(self.detector, category, folder, fmt="openvino" if self.runtime == "openvino" else "onnx")
            info, graph = load_export(folder, self.runtime, threads=_threads())
            if info.category != category:
                msg = f"Export folder {folder} holds category {info.category!r}, not {category!r}"
                raise ValueError(msg)
            self._graphs[category] = graph
        return self._graphs[category]


EXPORT_FOLDER = "export"
"""Inside a model folder: ``export/<category>/`` holds that category's exported graph (``onenip.export``)."""


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def resolve_runtime(runtime: str) -> str:
    """torch | onnx | openvino; ``auto`` is onnx when ONNX Runtime is installed, else torch."""
    import importlib.util

    if runtime == "auto":
        return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"
    if runtime not in ("torch", "onnx", "openvino"):
        msg = f"Unknown runtime {runtime!r}: use torch, onnx, openvino or auto"
        raise ValueError(msg)
    package = {"onnx": "onnxruntime", "openvino": "openvino"}.get(runtime)
    if package and importlib.util.find_spec(package) is None:
        msg = f"Runtime {runtime!r} needs the package {package!r}: pip install {package}"
        raise ValueError(msg)
    return runtime


def _threads() -> int | None:
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _content(geometry: InputGeometry, anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left, h, w = geometry.content_box(height, width)
    return np.ascontiguousarray(anomaly_map[top : top + h, left : left + w])


# -- predict on files -------------------------------------------------------------------------------
@dataclass
class PredictReport:
    predictions: list[dict[str, object]]
    failures: list[dict[str, str]]
    csv_path: Path
    json_path: Path


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    from onenip.data.manifest import DatasetError, is_image_file

    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
        elif item.exists():
            paths.append(item)
        else:
            msg = f"No such file or folder: {item}"
            raise DatasetError(msg)
    return paths


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: str | Path,
    category: str | None = None,
    *,
    batch_size: int = 16,
    heatmaps: bool = True,
    progress: bool = True,
) -> PredictReport:
    """Score image files; write ``predictions.csv``, ``predictions.json`` and heatmap overlays.

    A file that cannot be read (corrupt, truncated, empty, not an image, too small or too large) is
    reported in ``failures`` with its reason; every other file is still scored.
    """
    import json

    import pandas as pd
    from tqdm.auto import tqdm

    from onenip.data.manifest import ImageReadError, decode_image
    from onenip.plots import heatmap_overlay
    from onenip.metrics.resize import resize_maps_to_masks

    out_dir = Path(out_dir)
    heatmap_dir = out_dir / "heatmaps"
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    failures: list[dict[str, str]] = []
    bar = tqdm(total=len(paths), desc="Predicting", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch_paths, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(decode_image(Path(path).read_bytes(), source=str(path)))
                batch_paths.append(Path(path))
            except (ImageReadError, OSError) as error:
                failures.append({"image_path": str(path), "error": str(error)})
        if images:
            predictions = predictor.predict(images, category, return_maps=heatmaps, batch_size=batch_size)
            for path, image, prediction in zip(batch_paths, images, predictions, strict=True):
                row: dict[str, object] = {
                    "image_path": str(path),
                    "category": prediction.category,
                    "score": prediction.score,
                    "threshold": prediction.threshold,
                    "is_anomaly": prediction.is_anomaly,
                    "width": image.width,
                    "height": image.height,
                }
                if heatmaps and prediction.anomaly_map is not None:
                    anomaly_map = resize_maps_to_masks(prediction.anomaly_map[None], (image.height, image.width))[0]
                    vmax = max(2.0 * prediction.threshold, 1e-6)  # same colour scale for every image: red is well past the threshold
                    name = f"{len(rows):05d}_{path.stem}_{'anomaly' if prediction.is_anomaly else 'normal'}.png"
                    heatmap_overlay(image, anomaly_map, vmax, None).save(heatmap_dir / name)
                    row["heatmap"] = str(heatmap_dir / name)
                rows.append(row)
        bar.update(len(paths[start : start + batch_size]))
    bar.close()
    csv_path, json_path = out_dir / "predictions.csv", out_dir / "predictions.json"
    pd.DataFrame(rows, columns=["image_path", "category", "score", "threshold", "is_anomaly", "width", "height", "heatmap"]).to_csv(
        csv_path, index=False,
    )
    summary = {
        "images": len(paths),
        "scored": len(rows),
        "anomalous": sum(bool(r["is_anomaly"]) for r in rows),
        "failed": len(failures),
        "predictions": rows,
        "failures": failures,
    }
    json_path.write_text(json.dumps(summary, indent=2))
    return PredictReport(rows, failures, csv_path, json_path)
