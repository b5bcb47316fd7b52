"""Operating points: a category's decision threshold, set after training without retraining.

A registered version's threshold lives in the registry beside it (``onenip.registry.operating_point``,
model version tags), not in its graph or weights: ``onenip threshold`` changes it, and ``onenip
predict``, the served model and the report page read it. Without one, the threshold calibrated at
training (a quantile of the held-out training normals' scores) holds. Those scores are saved with the
model (``metadata.calibration_scores`` in ``onenip.json``), so a false-alarm rate translates into a
threshold here, torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_LIMIT = 40
"""Changes kept in a version's history tag (MLflow tag values hold 5,000 characters)."""


class OperatingPointError(ValueError):
    """A threshold that cannot be set as asked (no calibration scores, a rate out of range)."""


@dataclass
class OperatingPoint:
    threshold: float
    how: str
    """``calibration`` (set at training), ``fpr 0.01`` or ``value``."""
    expected_fpr: float | None = None
    """Share of the held-out training normals scoring above ``threshold``."""
    set_by: str = ""
    set_at: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier changes, oldest first: ``{"at", "by", "old", "new", "how"}``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_scores(model_dir: str | Path, category: str) -> np.ndarray | None:
    """The held-out training normals' image scores a model was calibrated on (None: saved before they were kept)."""
    config = json.loads((Path(model_dir) / "onenip.json").read_text())
    scores = (config.get("metadata") or {}).get("calibration_scores", {}).get(category)
    return None if not scores else np.asarray(scores, dtype=np.float64)


def threshold_for_fpr(scores: np.ndarray, fpr: float) -> float:
    """The threshold at which ``fpr`` of the calibration normals score above it (the ``1 - fpr``
    quantile, interpolated as the training calibration does)."""
    if not 0.0 <= fpr < 1.0:
        msg = f"--fpr must be in [0, 1), got {fpr}"
        raise OperatingPointError(msg)
    if len(scores) == 0:
        msg = "no calibration scores to set a false-alarm rate from"
        raise OperatingPointError(msg)
    return float(np.quantile(scores, 1.0 - fpr))


def expected_fpr(scores: np.ndarray | None, threshold: float) -> float | None:
    """Share of the calibration normals above ``threshold`` (what an operator should expect on normal parts)."""
    if scores is None or len(scores) == 0:
        return None
    return float(np.mean(scores > threshold))


def changed(current: OperatingPoint, threshold: float, how: str, user: str, at: str, scores: np.ndarray | None) -> OperatingPoint:
    """The operating point after a change from ``current``: the old value goes into the history."""
    entry = {"at": at, "by": user, "old": current.threshold, "new": threshold, "how": how}
    history = [*current.history, entry][-HISTORY_LIMIT:]
    return OperatingPoint(threshold, how, expected_fpr(scores, threshold), user, at, history)

