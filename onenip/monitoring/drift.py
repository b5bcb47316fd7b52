"""Drift checks over the prediction log (``onenip monitor``): per category and station, the recent
traffic against what the model was calibrated on.

- ``alarm_rate``: the share of images above their threshold against the false-alarm rate expected from
  the calibration normals (fires when it is ``drift_alarm_factor`` times that rate AND a one-sided
  binomial test says it is beyond chance);
- ``size``: the share of images with a size no training image has (fires above ``SIZE_SHARE``);
- ``score``, ``brightness``, ``contrast``, ``sharpness``: a two-sample Kolmogorov-Smirnov test (scipy) of
  the recent values against the reference (calibration normals' scores; the category's training
  images' statistics), firing only when the p-value is below ``drift_p_value`` AND the median moved by
  more than ``drift_min_shift`` reference standard deviations (a large log makes tiny, harmless
  differences significant)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from onenip.config import MonitoringParams
from onenip.monitoring.log import PredictionLog, image_statistics, now

IMAGE_STATISTICS = ("brightness", "contrast", "sharpness")
SIZE_SHARE = 0.05
"""The ``size`` check fires when more than this share of recent images has a size no training image has."""
REFERENCE_IMAGES = 100
"""Training images per category whose statistics are the reference (evenly spread)."""

ReferenceScores = Callable[[str, str], "np.ndarray | None"]
"""(model version, category) -> the calibration normals' scores of that version (None: unknown)."""


def reference_image_statistics(train_images: Sequence[Path]) -> dict[str, np.ndarray]:
    """Brightness, contrast, sharpness (and ``size``: (width, height) rows) of up to ``REFERENCE_IMAGES`` training images."""
    from onenip.data.manifest import decode_image

    chosen = [train_images[int(i)] for i in np.linspace(0, len(train_images) - 1, min(len(train_images), REFERENCE_IMAGES)).round()] if train_images else []
    pictures = [np.asarray(decode_image(p.read_bytes(), source=str(p)).convert("RGB")) for p in chosen]
    values = [image_statistics(picture) for picture in pictures]
    return {**{k: np.asarray([v[k] for v in values]) for k in IMAGE_STATISTICS}, "size": np.asarray([(p.shape[1], p.shape[0]) for p in pictures])}


def size_test(rows: Sequence[dict[str, Any]], reference_sizes: np.ndarray, cfg: MonitoringParams) -> dict[str, Any]:
    """The share of recent images whose size no reference image has (a new camera, a changed crop)."""
    known = {tuple(int(v) for v in size) for size in reference_sizes}
    unknown = [r for r in rows if (r["width"], r["height"]) not in known]
    share = len(unknown) / len(rows)
    detail = {"unknown_sizes": sorted({f"{r['width']}x{r['height']}" for r in unknown})[:5], "reference_sizes": sorted(f"{w}x{h}" for w, h in known)[:5]}
    return {"check": "size", "value": share, "limit": SIZE_SHARE, "fired": share > SIZE_SHARE, "detail": json.dumps(detail)}


def shift_test(name: str, recent: np.ndarray, reference: np.ndarray, cfg: MonitoringParams) -> dict[str, Any]:
    """KS test + effect size of one quantity; ``value`` is the p-value, ``limit`` the p-value limit."""
    spread = float(np.std(reference)) or 1e-9
    shift = float(np.median(recent) - np.median(reference)) / spread
    p_value = float(stats.ks_2samp(recent, reference).pvalue)
    fired = p_value < cfg.drift_p_value and abs(shift) > cfg.drift_min_shift
    detail = {"p_value": p_value, "median_shift_in_std": round(shift, 3), "recent_median": float(np.median(recent)),
              "reference_median": float(np.median(reference)), "n": len(recent), "reference_n": len(reference)}  # fmt: skip
    return {"check": name, "value": p_value, "limit": cfg.drift_p_value, "fired": fired, "detail": json.dumps(detail)}


def alarm_rate_test(rows: Sequence[dict[str, Any]], calibration: np.ndarray, cfg: MonitoringParams) -> dict[str, Any]:
    alarms = sum(bool(r["is_anomaly"]) for r in rows)
    threshold = float(np.median([r["threshold"] for r in rows]))
    expected = max(float(np.mean(calibration > threshold)), 1.0 / max(len(calibration), 1))
    rate = alarms / len(rows)
    p_value = float(stats.binomtest(alarms, len(rows), min(expected, 1.0), alternative="greater").pvalue)
    fired = rate > cfg.drift_alarm_factor * expected and p_value < cfg.drift_p_value
    detail = {"alarms": alarms, "n": len(rows), "expected_false_alarm_rate": expected, "p_value": p_value, "threshold": threshold}
    return {"check": "alarm_rate", "value": rate, "limit": cfg.drift_alarm_factor * expected, "fired": fired, "detail": json.dumps(detail)}


def check_drift(
    log: PredictionLog, cfg: MonitoringParams, reference_scores: ReferenceScores, train_images: Callable[[str], Sequence[Path]],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every check of every (category, station) with enough logged images in the window; each a row of
    ``drift_checks`` (``category``, ``station``, ``check``, ``value``, ``limit``, ``fired``, ``detail``)."""
    rows = log.predictions(since=now() - timedelta(hours=cfg.drift_window_hours))
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["category"], row["station"]), []).append(row)
    image_reference: dict[str, dict[str, np.ndarray]] = {}
    checks = []
    for (category, station), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if len(group) < cfg.drift_min_images:
            continue
        versions = [r["model_version"] for r in group if r["model_version"]]
        version = max(set(versions), key=versions.count) if versions else ""
        calibration = reference_scores(version, category)
        found = []
        if calibration is not None and len(calibration):
            found.append(alarm_rate_test(group, calibration, cfg))
            found.append(shift_test("score", np.asarray([r["score"] for r in group]), calibration, cfg))
        if category not in image_reference:
            image_reference[category] = reference_image_statistics(train_images(category))
        for name in IMAGE_STATISTICS:
            reference = image_reference[category][name]
            if len(reference) >= 2:
                found.append(shift_test(name, np.asarray([r[name] for r in group], dtype=np.float64), reference, cfg))
        if len(image_reference[category]["size"]):
            found.append(size_test(group, image_reference[category]["size"], cfg))
        checks.extend({"category": category, "station": station, **check} for check in found)
    return checks


def drift_markdown(checks: Sequence[dict[str, Any]], window_hours: float) -> str:
    fired = [c for c in checks if c["fired"]]
    head = f"# Drift: {len(fired)} of {len(checks)} checks fired (last {window_hours:g} h)\n\n"
    table = "| category | station | check | value | limit | fired | detail |\n|---|---|---|---|---|---|---|\n"
    table += "".join(f"| {c['category']} | {c['station'] or '-'} | {c['check']} | {c['value']:.4g} | {c['limit']:.4g} | "
                     f"{'**FIRED**' if c['fired'] else 'ok'} | {c['detail']} |\n" for c in checks)  # fmt: skip
    return head + (table if checks else "No category had enough logged images in the window.\n")
