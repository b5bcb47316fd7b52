"""What a scored image is, which category a predictor answers for, and the torch-free predictor that
runs exported graphs (``onenip.predictors.load_predictor`` chooses between it and the torch one).

A model folder whose categories carry exported graphs (``export/<category>/``, written at
registration) is served by ``ExportedPredictor``: numpy preprocessing with torch's arithmetic
(``InputGeometry.apply_array``) and the graph in ONNX Runtime or OpenVINO, without importing torch.
Anything else (the torch runtime, a GPU, a generalist model, a category without an export) is served
by ``onenip.inference.Predictor``, which imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from onenip.data.geometry import InputGeometry
from onenip.data.manifest import to_rgb
from onenip.runtime import (
    EXPORT_FOLDER,
    EXPORT_JSON,
    ExportInfo,
    GraphScorer,
    file_sha256,
    load_export,
    resolve_runtime,
    runtime_threads,
    safe_name,
)


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

    def predict(
        self, images: Sequence[Image.Image | np.ndarray], category: str | None = None, *, return_maps: bool = False, batch_size: int = 16,
    ) -> list[Prediction]: ...


class CategoryChoice:
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

    def category_index(self, category: str) -> int:
        try:
            return self.categories.index(category)
        except ValueError:
            msg = f"Unknown category {category!r}; this model knows {self.categories}"
            raise ValueError(msg) from None

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


class ExportedPredictor(CategoryChoice):
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
            msg = "ExportedPredictor runs exported graphs (onnx or openvino); use onenip.inference.Predictor for torch"
            raise ValueError(msg)
        self._choose_categories(categories, default_category, served_category, model_name_pattern)
        self.infos = {category: ExportInfo.read(folder)[0] for category, folder in export_folders.items()}
        self.export_folders = export_folders
        self._graphs: dict[str, GraphScorer] = {}

    def geometry(self, category: str) -> InputGeometry:
        info = self.infos[self._category(category)]
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
        if category not in self.infos:
            msg = f"No exported graph for category {category!r}; load the model with runtime='torch'"
            raise ValueError(msg)
        geometry = self.geometry(category)
        threshold = float(self.infos[category].threshold)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            pictures = [image_to_array(image) for image in images[start : start + batch_size]]
            sizes = [tuple(p.shape[-2:]) for p in pictures]
            batch = np.stack([geometry.apply_array(p) for p in pictures])
            valid = None
            if geometry.letterbox:
                valid = np.stack([geometry.valid_mask_array(h, w)[None] for h, w in sizes]).astype(np.float32)
            full_maps, raw = self.graph(category)(batch, valid)
            maps: list[np.ndarray | None] = [None] * len(raw)
            if return_maps:
                maps = [crop_content(geometry, m, h, w) for m, (h, w) in zip(full_maps[:, 0], sizes, strict=True)]
            results.extend(
                Prediction(category, float(score), threshold, float(score) > threshold, anomaly_map)
                for score, anomaly_map in zip(raw, maps, strict=True)
            )
        return results

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


# -- predict on files -------------------------------------------------------------------------------
@dataclass
class PredictReport:
    predictions: list[dict[str, object]]
    failures: list[dict[str, str]]
    csv_path: Path
    json_path: Path
    html_path: Path
    """``index.html``: every image sorted by score, with filters, the threshold and a histogram."""


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
    predictor: ImagePredictor,
    paths: Sequence[Path],
    out_dir: str | Path,
    category: str | None = None,
    *,
    batch_size: int = 16,
    heatmaps: bool = True,
    progress: bool = True,
    model: str = "",
) -> PredictReport:
    """Score image files; write ``predictions.csv``, ``predictions.json``, heatmap overlays and the
    ``index.html`` report (``model`` names the model version on it).

    A file that cannot be read (corrupt, truncated, empty, not an image, too small or too large) is
    reported in ``failures`` with its reason; every other file is still scored.
    """
    import json

    import pandas as pd
    from tqdm.auto import tqdm

    from onenip.data.manifest import ImageReadError, decode_image
    from onenip.data.resample import resize_chw
    from onenip.plots import prediction_overlay
    from onenip.report import PREDICT_KINDS, predict_items, write_report

    out_dir = Path(out_dir)
    heatmap_dir = out_dir / "heatmaps"
    out_dir.mkdir(parents=True, exist_ok=True)
    if heatmaps:
        heatmap_dir.mkdir(exist_ok=True)
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
                    anomaly_map = resize_chw(prediction.anomaly_map, (image.height, image.width), antialias=False)
                    name = f"{len(rows):05d}_{path.stem}_{'anomaly' if prediction.is_anomaly else 'normal'}.png"
                    prediction_overlay(image, anomaly_map, prediction.score, prediction.threshold).save(heatmap_dir / name)
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
    html_path = write_report(out_dir, predict_items(rows, failures), title=f"Predictions: {len(rows)} of {len(paths)} images scored",
                             threshold=float(rows[0]["threshold"]) if rows else float("nan"),  # type: ignore[arg-type]
                             model=model or "-", kinds=PREDICT_KINDS)  # fmt: skip
    return PredictReport(rows, failures, csv_path, json_path, html_path)
