"""Scoring image files (``onenip predict``): the folder walker, the batch loop over files with unreadable
ones reported, and what it writes (CSV, JSON, heatmap overlays, the ``index.html`` report)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onenip.serving.base import ImagePredictor


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
    threshold: float | None = None,
    log: Any = None,
    station: str | None = None,
) -> PredictReport:
    """Score image files; write ``predictions.csv``, ``predictions.json``, heatmap overlays and the
    ``index.html`` report (``model`` names the model version on it). Each image is judged against
    ``threshold`` when given, else the predictor's operating point; with ``log`` (a
    ``onenip.monitoring.log.PredictionLog``) every prediction is also appended to the prediction log.

    A file that cannot be read (corrupt, truncated, empty, not an image, too small or too large) is
    reported in ``failures`` with its reason; every other file is still scored.
    """
    import json

    import pandas as pd
    from tqdm.auto import tqdm

    from onenip.data.manifest import ImageReadError, decode_image
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
            predictions = predictor.predict(images, category, return_maps=heatmaps or log is not None, batch_size=batch_size, threshold=threshold)
            if log is not None:
                _log(log, images, predictions, model, station)
            base = len(rows)
            rows.extend(_row(path, image, prediction, base + i, heatmap_dir if heatmaps else None)
                        for i, (path, image, prediction) in enumerate(zip(batch_paths, images, predictions, strict=True)))
        bar.update(len(paths[start : start + batch_size]))
    bar.close()
    csv_path, json_path = out_dir / "predictions.csv", out_dir / "predictions.json"
    for row in rows:
        row["model_version"] = model or None  # what each verdict was judged by, as the served answers say
    pd.DataFrame(rows, columns=["image_path", "category", "score", "threshold", "is_anomaly", "model_version", "width", "height", "heatmap"]).to_csv(
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


def _log(log: Any, images: list[Any], predictions: list[Any], model: str, station: str | None) -> None:
    from onenip.monitoring.log import LoggedPrediction

    log.submit([LoggedPrediction.of(p, image, station=station, model_version=model or None, source="predict")
                for image, p in zip(images, predictions, strict=True)])  # fmt: skip


def _row(path: Path, image: Any, prediction: Any, index: int, heatmap_dir: Path | None) -> dict[str, object]:
    """One image's line of predictions.csv; its heatmap overlay written into ``heatmap_dir`` (None: none)."""
    from onenip.data.resample import resize_chw
    from onenip.plots import prediction_overlay

    row: dict[str, object] = {"image_path": str(path), "category": prediction.category, "score": prediction.score,
                              "threshold": prediction.threshold, "is_anomaly": prediction.is_anomaly, "width": image.width, "height": image.height}  # fmt: skip
    if heatmap_dir is not None and prediction.anomaly_map is not None:
        anomaly_map = resize_chw(prediction.anomaly_map, (image.height, image.width), antialias=False)
        name = f"{index:05d}_{path.stem}_{'anomaly' if prediction.is_anomaly else 'normal'}.png"
        prediction_overlay(image, anomaly_map, prediction.score, prediction.threshold).save(heatmap_dir / name)
        row["heatmap"] = str(heatmap_dir / name)
    return row
