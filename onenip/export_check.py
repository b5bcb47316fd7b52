"""Does a category's exported graph score like torch, and how fast does it answer? The two figures the
promotion gate reads on top of the quality metrics (``onenip.gates.decide``).

At registration the category's scoring graph is exported (ONNX, and OpenVINO IR where OpenVINO is
installed); ``check_export`` then scores the same images with the torch model and with the export on
each runtime, compares image scores, anomaly maps and verdicts, and times each runtime answering one
image at a time (resize + graph, as a served request after decoding) on this machine. The version is
served by the fastest runtime whose export agrees with torch. Scores and maps are compared in units of the category's threshold
(the scores are normalised so that the threshold sits near 1): a difference of ``tolerance`` means
"a thousandth of the way to an alarm" at the default. A verdict that flips counts only when the torch
score lies farther than that tolerance from the threshold (a score on the threshold may fall either
side of it in any float arithmetic).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from onenip.serving import ExportedPredictor, Prediction

LATENCY_WARMUP = 3
"""Requests answered before timing (first-call allocations, thread pools)."""


@dataclass(frozen=True)
class ExportCheck:
    """What ``check_export`` measured for one category of a model folder."""

    category: str
    runtime: str
    """The served runtime checked (onnx, openvino); torch when nothing is exported (no parity to check)."""
    images: int
    tolerance: float
    max_score_diff: float | None
    """Largest |export - torch| image score over the images, in threshold units (None: torch serves)."""
    max_map_diff: float | None
    """Largest |export - torch| anomaly-map pixel over the images, in threshold units."""
    flipped: int
    """Images whose verdict differs while the torch score is farther than ``tolerance`` from the threshold."""
    p50_ms: float
    """Median milliseconds of the served runtime answering one image (resize + scoring graph)."""
    others: tuple[tuple[str, bool | None, float], ...] = ()
    """The other exported runtimes measured at the same time: (runtime, parity, p50 ms)."""

    @property
    def parity(self) -> bool | None:
        """True when export and torch agree within tolerance; None when torch serves (nothing to compare)."""
        if self.max_score_diff is None or self.max_map_diff is None:
            return None
        return self.max_score_diff <= self.tolerance and self.max_map_diff <= self.tolerance and self.flipped == 0

    def describe(self) -> str:
        """One line: the parity verdict and its figures."""
        if self.parity is None:
            return f"no export to check (served by {self.runtime})"
        verdict = "agrees with torch" if self.parity else "DISAGREES with torch"
        others = "".join(
            f"; {runtime} {p50:.1f} ms{'' if parity else ' (disagrees with torch)'}" for runtime, parity, p50 in self.others
        )
        return (
            f"{self.runtime} export {verdict} on {self.images} images: max |score diff| {self.max_score_diff:.2e}, "
            f"max |map diff| {self.max_map_diff:.2e} (threshold units, tolerance {self.tolerance:g}), {self.flipped} verdicts flipped; "
            f"p50 {self.p50_ms:.1f} ms{others}"
        )

    def tags(self) -> dict[str, str]:
        """Model-version tags (``onenip.`` prefixed by the registry)."""
        parity = {None: "n/a", True: "passed", False: "failed"}[self.parity]
        return {"export_parity": parity, "export_parity_detail": self.describe(), "export_p50_ms": f"{self.p50_ms:.1f}"}


def _threshold_units(threshold: float) -> float:
    return max(abs(threshold), 1e-6)


def compare_predictions(reference: Sequence[Prediction], candidate: Sequence[Prediction], tolerance: float) -> tuple[float, float, int]:
    """(max score diff, max map diff, flipped verdicts) of ``candidate`` against ``reference``, in threshold units."""
    if len(reference) != len(candidate):
        msg = f"compare_predictions needs as many candidate as reference predictions, got {len(candidate)} and {len(reference)}"
        raise ValueError(msg)
    score_diff, map_diff, flipped = 0.0, 0.0, 0

    def gap(difference: float) -> float:
        # a NaN must fail the check, and max() with a NaN keeps whichever argument came first
        return difference if np.isfinite(difference) else float("inf")

    for ref, cand in zip(reference, candidate, strict=True):
        unit = _threshold_units(ref.threshold)
        score_diff = max(score_diff, gap(abs(cand.score - ref.score) / unit))
        if ref.anomaly_map is not None and cand.anomaly_map is not None:
            if ref.anomaly_map.shape != cand.anomaly_map.shape:
                map_diff = float("inf")
            else:
                map_diff = max(map_diff, gap(float(np.abs(cand.anomaly_map - ref.anomaly_map).max()) / unit))
        if cand.is_anomaly != ref.is_anomaly and abs(ref.score - ref.threshold) / unit > tolerance:
            flipped += 1
    return score_diff, map_diff, flipped


def median_latency_ms(predictor: object, images: Sequence[Image.Image], category: str, repeats: int) -> float:
    """Median milliseconds of ``predictor.predict([image])`` over ``repeats`` requests (images cycled)."""
    for image in images[:LATENCY_WARMUP]:
        predictor.predict([image], category, batch_size=1)  # type: ignore[attr-defined]
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        predictor.predict([images[i % len(images)]], category, batch_size=1)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def check_export(
    model_dir: str | Path, category: str, images: Sequence[Image.Image], *, runtime: str | Sequence[str] = "onnx",
    tolerance: float = 1e-3, latency_repeats: int = 20,
) -> ExportCheck:  # fmt: skip
    """Score ``images`` with the torch model and with ``category``'s export under ``model_dir/export``
    on each of ``runtime`` (one name or several); time each. Returns the check of the runtime that
    should serve: the fastest whose export agrees with torch (the others in ``others``); when none
    agrees, the first one's failed check; torch's own latency when nothing is exported."""
    from onenip.serving.torch_predictor import TorchPredictor

    if not images:
        msg = f"check_export needs at least one image of category {category!r}"
        raise ValueError(msg)
    runtimes = [runtime] if isinstance(runtime, str) else list(runtime)
    torch_predictor = TorchPredictor.load(model_dir, category, runtime="torch")
    reference = torch_predictor.predict(images, category, return_maps=True, batch_size=1)
    checks = []
    for name in (r for r in runtimes if r != "torch"):
        exported = ExportedPredictor.from_folder(model_dir, name, [category], default_category=category)
        if exported is None:
            continue
        candidate = exported.predict(images, category, return_maps=True, batch_size=1)
        score_diff, map_diff, flipped = compare_predictions(reference, candidate, tolerance)
        p50 = median_latency_ms(exported, images, category, latency_repeats)
        checks.append(ExportCheck(category, exported.runtime, len(images), tolerance, score_diff, map_diff, flipped, p50))
    if not checks:
        p50 = median_latency_ms(torch_predictor, images, category, latency_repeats)
        return ExportCheck(category, "torch", len(images), tolerance, None, None, 0, p50)
    agreeing = sorted((c for c in checks if c.parity), key=lambda c: c.p50_ms)
    chosen = agreeing[0] if agreeing else checks[0]
    others = tuple((c.runtime, c.parity, c.p50_ms) for c in checks if c is not chosen)
    return replace(chosen, others=others)


def spread_sample(paths: Sequence[Path], count: int) -> list[Path]:
    """At most ``count`` of ``paths`` (sorted), evenly spread over the list: normals and defects alike
    when the folder names sort them into groups."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    return [paths[round(i * (len(paths) - 1) / (count - 1))] for i in range(count)] if count > 1 else paths[:1]
