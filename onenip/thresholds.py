"""Setting a registered version's operating point (``onenip threshold`` and the review page's form for
leads): the registry's record (``onenip.registry``) and the model's calibration scores
(``onenip.operating_points``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from onenip.operating_points import OperatingPoint, OperatingPointError, calibration_scores, changed, threshold_for_fpr

def current_and_set(
    params: Any, project_root: str | Path, model: str, *, fpr: float | None = None, value: float | None = None, user: str = "",
) -> tuple[str, OperatingPoint]:  # fmt: skip
    """A registered version's operating point (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), after
    setting it from ``fpr`` or ``value`` when one is given (recorded in the registry with ``user`` and the
    time). Returns the pinned ``models:/NAME/VERSION`` and the point. ``OperatingPointError`` for what a
    user must change."""
    from onenip import registry

    if not model.startswith("models:/"):
        msg = f"a threshold belongs to a registered version (models:/NAME@champion or models:/NAME/VERSION), got {model!r}"
        raise OperatingPointError(msg)
    if fpr is not None and value is not None:
        raise OperatingPointError("give a false-alarm rate or a value, not both")
    resolved = registry.resolve_model(model, params, project_root)
    name, version = registry.split_model_uri(resolved.version)
    client = registry.connect(params, project_root, existing=True)
    scores = calibration_scores(resolved.folder, resolved.category)
    point = registry.operating_point(client.get_model_version(name, version), trained_threshold(resolved.folder, resolved.category), scores)
    if fpr is None and value is None:
        return resolved.version, point
    if fpr is not None and scores is None:
        msg = f"{resolved.version} was trained before calibration scores were kept: set the threshold with a value"
        raise OperatingPointError(msg)
    new = threshold_for_fpr(scores, fpr) if fpr is not None else float(value)  # type: ignore[arg-type]
    if not math.isfinite(new):
        msg = f"a threshold must be a finite number, got {value}"
        raise OperatingPointError(msg)
    point = changed(point, new, f"fpr {fpr:g}" if fpr is not None else "value", user, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), scores)
    registry.set_operating_point(client, name, version, point)
    return resolved.version, point


def trained_threshold(folder: str | Path, category: str | None) -> float:
    """The threshold calibrated at training, read from the weights without building the model."""
    from safetensors import safe_open

    categories = json.loads((Path(folder) / "onenip.json").read_text())["categories"]
    with safe_open(str(Path(folder) / "model.safetensors"), framework="numpy") as weights:
        return float(weights.get_tensor("score_threshold")[categories.index(category or categories[0])])
