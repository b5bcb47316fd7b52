"""Evaluate a trained detector on the test split: metrics, curves, heatmap overlays, predictions.

Maps are produced at the category's input geometry and brought back to each image's own resolution
(letterbox crop, bilinear resize: ``InputGeometry.map_to_image``) before any pixel metric. Categories without masks get
image metrics only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from onenip.data.geometry import InputGeometry
from onenip.data.manifest import DatasetError, read_image
from onenip.data.transforms import load_mask
from onenip.features import FeatureCache
from onenip.models.features import Features
from onenip.metrics.bootstrap import PerImage
from onenip.metrics.compute import compute_metrics
from onenip.metrics.image import pr_curve_points, roc_curve_points
from onenip.metrics.pixel import pixel_pr_curve_points, pixel_roc_curve_points
from onenip.metrics.resize import resize_maps_to_masks
from onenip.models.detector import OneNIPDetector
from onenip.plots import heatmap_overlay, plot_curves
from onenip.report import EVALUATE_KINDS, evaluation_items, write_report


@dataclass
class CategoryEvaluation:
    category: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    """image_path, defect_type, label_index, pred_score, pred_label, threshold."""
    has_masks: bool
    seconds: float


@torch.no_grad()
def predict_features(
    detector: OneNIPDetector,
    features: Features,
    category: str,
    batch_size: int = 16,
    valid: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cached features of one category -> (scores (N,), anomaly maps (N, H, W) at its input size)."""
    detector.eval()
    device = detector.device
    k = detector.category_index(category)
    scores, maps = [], []
    for start in range(0, len(features), batch_size):
        batch = features.select(slice(start, start + batch_size)).to(device)
        mask = None if valid is None else valid[start : start + batch_size].to(device)
        out = detector.forward_features(batch, k, mask)
        scores.append(out.pred_score.float().cpu())
        maps.append(out.anomaly_map[:, 0].float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def content_masks(geometry: InputGeometry, rows: pd.DataFrame) -> torch.Tensor | None:
    """(N, 1, H, W) letterbox content of each row's image (from the manifest's sizes), or None."""
    if not geometry.letterbox:
        return None
    return torch.stack([geometry.valid_mask(int(h), int(w))[None] for h, w in zip(rows["height"], rows["width"], strict=True)])


def heatmap_choice(labels: Sequence[int], scores: Sequence[float], threshold: float, count: int) -> list[tuple[int, str]]:
    """Which test images get an overlay, and why: the mistakes first (a quality engineer's questions),
    then the clearest finds and the most anomalous-looking normals.

    Order: missed defects (anomalous, score at or below the threshold; lowest first), false alarms
    (normal, above it; highest first), then found defects and normals by descending score, alternating.
    Returns up to ``count`` (index, kind) pairs, kind in missed / false-alarm / found / normal."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    missed = [(i, "missed") for i in reversed(ranked) if labels[i] == 1 and scores[i] <= threshold]
    false_alarms = [(i, "false-alarm") for i in ranked if labels[i] == 0 and scores[i] > threshold]
    found = [(i, "found") for i in ranked if labels[i] == 1 and scores[i] > threshold]
    normal = [(i, "normal") for i in ranked if labels[i] == 0 and scores[i] <= threshold]
    rest = [pair for pairs in zip_longest(found, normal) for pair in pairs if pair is not None]
    return (missed + false_alarms + rest)[:count]


def write_heatmaps(
    rows: pd.DataFrame, maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], folder: Path, count: int, vmax: float,
    threshold: float,
) -> dict[str, Path]:  # fmt: skip
    """Overlays for up to ``count`` images chosen by ``heatmap_choice``, named by why they were chosen
    (image path -> overlay)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows.reset_index(drop=True)
    chosen = heatmap_choice(rows["label_index"].tolist(), rows["pred_score"].tolist(), threshold, count)
    written: dict[str, Path] = {}
    for i, kind in chosen:
        row = rows.iloc[i]
        image = read_image(row["image_path"])
        anomaly_map = maps[i]
        if anomaly_map.shape != (image.height, image.width):
            anomaly_map = resize_maps_to_masks(anomaly_map[None], (image.height, image.width))[0]
        mask = masks[i]
        name = f"{kind}_{row['defect_type']}_{Path(row['image_path']).stem}_score{row['pred_score']:.3f}.png"
        path = folder / name
        heatmap_overlay(image, anomaly_map, vmax, None if mask is None else mask.astype(bool)).save(path)
        written[str(row["image_path"])] = path
    return written


def evaluate_category(
    detector: OneNIPDetector,
    manifest: pd.DataFrame,
    category: str,
    cache: FeatureCache,
    output_dir: str | Path | None = None,
    *,
    num_heatmaps: int = 8,
    batch_size: int = 16,
    progress: bool = True,
    per_image: str | Path | None = None,
    model: str = "",
) -> CategoryEvaluation:
    """Metrics of one category's test split; writes metrics.json, curves.png, heatmaps/ and the
    ``index.html`` report (``model`` names the model on it) when asked, and the per-image summary for paired bootstrap intervals (``onenip.metrics.bootstrap.PerImage``) to
    ``per_image``."""
    started = time.perf_counter()
    test = manifest[(manifest["category"] == category) & (manifest["split"] == "test")].reset_index(drop=True)
    if test.empty:
        msg = f"Category {category!r} has no test images"
        raise DatasetError(msg)
    anomalous = test[test["label_index"] == 1]
    has_masks = bool(anomalous["mask_path"].notna().any())
    unmasked = anomalous.loc[anomalous["mask_path"].isna(), "image_path"].tolist()
    if has_masks and unmasked:  # an all-zero mask would count its defect as normal pixels
        more = f" and {len(unmasked) - 3} more" if len(unmasked) > 3 else ""
        msg = (f"Category {category!r}: {len(unmasked)} anomalous test images have no mask while others do "
               f"({', '.join(map(str, unmasked[:3]))}{more}); add their masks or remove them (data.require_masks: auto)")  # fmt: skip
        raise DatasetError(msg)
    geometry = detector.geometry(category)
    features = cache.get(test["image_path"].tolist(), test["sha256"].tolist(), geometry, batch_size=batch_size, progress=progress)
    scores, maps = predict_features(detector, features, category, batch_size, content_masks(geometry, test))
    labels = test["label_index"].to_numpy().astype(int)
    k = detector.category_index(category)
    threshold = float(detector.score_threshold[k])
    predictions = test[["image_path", "category", "defect_type", "label_index"]].copy()
    predictions["pred_score"] = scores
    predictions["threshold"] = threshold
    predictions["pred_label"] = (scores > threshold).astype(int)

    masks: list[np.ndarray | None] = [None] * len(test)
    # Maps back at each image's own resolution: the letterbox crop, then a bilinear resize.
    resized = [geometry.map_to_image(m, int(h), int(w)) for m, h, w in zip(maps, test["height"], test["width"], strict=True)]
    if has_masks:
        for i, row in test.iterrows():
            if isinstance(row["mask_path"], str):
                masks[i] = load_mask(row["mask_path"])[0].numpy() > 0
            else:  # a normal image (anomalous ones without a mask were refused above)
                masks[i] = np.zeros((int(row["height"]), int(row["width"])), dtype=bool)
        resized = [
            m if m.shape == mask.shape else resize_maps_to_masks(m[None], mask.shape)[0]  # type: ignore[union-attr]
            for m, mask in zip(resized, masks, strict=True)
        ]
    metrics = compute_metrics(scores, labels, resized if has_masks else None, masks if has_masks else None)
    metrics["num_test_images"] = float(len(test))
    if per_image is not None:
        summary = PerImage.from_maps(scores, labels, resized if has_masks else None, masks if has_masks else None)  # type: ignore[arg-type]
        summary.ids = test["image_path"].astype(str).to_numpy()
        summary.save(per_image)

    if output_dir is not None:
        folder = Path(output_dir) / category
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        predictions.to_csv(folder / "predictions.csv", index=False)
        plot_curves(
            folder / "curves.png",
            roc_curve_points(scores, labels),
            pr_curve_points(scores, labels),
            pixel_roc_curve_points(resized, masks) if has_masks else None,
            pixel_pr_curve_points(resized, masks) if has_masks else None,
            title=f"{category}: image AUROC {metrics['image_AUROC']:.3f}",
        )
        overlays: dict[str, Path] = {}
        if num_heatmaps:
            vmax = float(np.quantile(np.stack([m.max() for m in maps]), 0.9))
            overlays = write_heatmaps(predictions, resized, masks, folder / "heatmaps", num_heatmaps, vmax, threshold)
        _write_category_report(folder, category, predictions, threshold, metrics, overlays, model)
    return CategoryEvaluation(category, metrics, predictions, has_masks, time.perf_counter() - started)


def evaluate(
    detector: OneNIPDetector,
    manifest: pd.DataFrame,
    cache: FeatureCache,
    output_dir: str | Path | None = None,
    categories: Sequence[str] | None = None,
    *,
    num_heatmaps: int = 8,
    progress: bool = True,
    model: str = "",
) -> dict[str, CategoryEvaluation]:
    """Evaluate every category the detector knows (or ``categories``); with ``output_dir``, also
    ``metrics.json`` and an ``index.html`` linking each category's report."""
    results = {}
    for category in categories or detector.categories:
        results[category] = evaluate_category(
            detector, manifest, category, cache, output_dir, num_heatmaps=num_heatmaps, progress=progress, model=model,
        )
    if output_dir is not None:
        summary = {c: r.metrics for c, r in results.items()}
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps(summary, indent=2))
        write_index(output_dir, summary, model)
    return results


def _write_category_report(
    folder: Path, category: str, predictions: pd.DataFrame, threshold: float, metrics: dict[str, float], overlays: dict[str, Path],
    model: str,
) -> Path:  # fmt: skip
    items = evaluation_items(predictions["image_path"].astype(str).tolist(), predictions["label_index"].astype(int).tolist(),
                             predictions["pred_score"].astype(float).tolist(), threshold,
                             predictions["defect_type"].astype(str).tolist(), overlays)  # fmt: skip
    shown = {name: f"{metrics[name]:.4f}" for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO") if name in metrics}
    return write_report(folder, items, title=f"{category}: test split", threshold=threshold, model=model or "-",
                        kinds=EVALUATE_KINDS, summary=shown)  # fmt: skip


def write_index(output_dir: str | Path, metrics: dict[str, dict[str, float]], model: str) -> Path:
    """``output_dir/index.html``: one line per category with its metrics and a link to its report."""
    import html

    rows = "".join(
        f'<tr><td><a href="{html.escape(c)}/index.html">{html.escape(c)}</a></td>'
        + "".join(f"<td>{m.get(n, float('nan')):.4f}</td>" for n in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"))
        + "</tr>"
        for c, m in metrics.items()
    )
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Evaluation</title></head><body>"
            f"<h1>Evaluation</h1><p>Model: <code>{html.escape(model or '-')}</code></p><table><tr><th>category</th>"
            f"<th>I-AUROC</th><th>P-AUROC</th><th>AUPRO</th></tr>{rows}</table></body></html>")  # fmt: skip
    path = Path(output_dir) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


@torch.no_grad()
def prompt_sensitivity(
    detector: OneNIPDetector,
    manifest: pd.DataFrame,
    category: str,
    cache: FeatureCache,
    trials: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Image AUROC with ``trials`` random training normals as the prompt instead of the stored one.

    Returns mean and std over the trials and the AUROC of the stored prompt, so the report shows how
    much the choice of the ONE normal image matters. The stored prompt is restored afterwards.
    """
    from onenip.metrics.image import image_auroc

    k = detector.category_index(category)
    rows = manifest[manifest["category"] == category]
    train = rows[(rows["split"] == "train") & (rows["label_index"] == 0)].reset_index(drop=True)
    test = rows[rows["split"] == "test"].reset_index(drop=True)
    labels = test["label_index"].to_numpy()
    geometry = detector.geometry(category)
    valid = content_masks(geometry, test)
    test_features = cache.get(test["image_path"].tolist(), test["sha256"].tolist(), geometry, progress=False)
    stored = detector.prompt(k)
    stored = Features(stored.coarse.clone(), None if stored.fine is None else stored.fine.clone())  # prompt() gives views
    baseline = image_auroc(predict_features(detector, test_features, category, valid=valid)[0], labels)
    choices = np.random.default_rng(seed).choice(len(train), size=min(trials, len(train)), replace=False)
    prompts = cache.get(train["image_path"].iloc[choices].tolist(), train["sha256"].iloc[choices].tolist(), geometry, progress=False)
    aurocs = []
    try:
        for i in range(len(prompts)):
            detector.set_prompt(k, prompts.select([i]).to(detector.device))
            aurocs.append(image_auroc(predict_features(detector, test_features, category, valid=valid)[0], labels))
    finally:
        detector.set_prompt(k, stored)
    return {
        "prompt_image_AUROC_mean": float(np.mean(aurocs)),
        "prompt_image_AUROC_std": float(np.std(aurocs)),
        "prompt_trials": float(len(aurocs)),
        "stored_prompt_image_AUROC": float(baseline),
    }
