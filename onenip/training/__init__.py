"""Training OneNIP: the data of each category (``data``), the synthetic anomalies it learns to restore
(``pool``), what each step trains on (``schedule``), resuming (``checkpoint``), what is fitted without
gradients (``calibration``) and the loop itself (``loop``: ``train_onenip`` over ``train_epoch`` /
``train_step`` / ``validate_epoch``, with ``TrainCallback`` hooks).

The backbone is frozen, so training runs on cached features (``onenip.features``). Every source of
randomness in an epoch is seeded from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch k
continues exactly as the uninterrupted run would.

See Also:
    ``onenip.models.onenip.OneNIP`` (the torch model), ``onenip.evaluation`` (metrics and images).

Names are re-exported lazily (PEP 562): ``from onenip.training.data import ...`` (what the few-shot code
needs) loads the data module alone, not the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("calibration", "checkpoint", "data", "loop", "pool", "schedule")
_EXPORTS = {
    "BestEpoch": "onenip.training.checkpoint",
    "CategoryData": "onenip.training.data",
    "EpochEnd": "onenip.training.loop",
    "STATISTICS_CHUNK": "onenip.training.calibration",
    "STATISTICS_IMAGES": "onenip.training.calibration",
    "STATISTICS_ONLY": "onenip.training.calibration",
    "StopAfterEpoch": "onenip.training.loop",
    "SyntheticPool": "onenip.training.pool",
    "TrainCallback": "onenip.training.loop",
    "TrainResult": "onenip.training.loop",
    "TrainRun": "onenip.training.loop",
    "build_synthesizer": "onenip.training.pool",
    "add_jittered_normals": "onenip.training.calibration",
    "calibrate_error_statistics": "onenip.training.calibration",
    "calibrate_scales": "onenip.training.calibration",
    "calibrate_threshold": "onenip.training.calibration",
    "choose_geometries": "onenip.training.data",
    "draw_prompt_indices": "onenip.training.schedule",
    "epoch_batches": "onenip.training.schedule",
    "epoch_subset": "onenip.training.schedule",
    "epoch_subsets": "onenip.training.schedule",
    "error_statistics": "onenip.training.calibration",
    "fingerprint_of": "onenip.training.checkpoint",
    "fit_gaussians": "onenip.training.calibration",
    "fit_memory_banks": "onenip.training.calibration",
    "fit_standardization": "onenip.training.calibration",
    "generation_indices": "onenip.training.pool",
    "images_per_epoch": "onenip.training.schedule",
    "keeps": "onenip.training.checkpoint",
    "load_checkpoint": "onenip.training.checkpoint",
    "load_images": "onenip.training.data",
    "lr_at": "onenip.training.schedule",
    "prepare_category_data": "onenip.training.data",
    "save_checkpoint": "onenip.training.checkpoint",
    "scale_refiner": "onenip.training.calibration",
    "select_prompt": "onenip.training.data",
    "select_prompts": "onenip.training.data",
    "split_holdout": "onenip.training.data",
    "fallback_rule": "onenip.training.calibration",
    "train_epoch": "onenip.training.loop",
    "train_networks": "onenip.training.loop",
    "train_onenip": "onenip.training.loop",
    "train_step": "onenip.training.loop",
    "validate": "onenip.training.loop",
    "validate_epoch": "onenip.training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"onenip.training.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    msg = f"module 'onenip.training' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, *_SUBMODULES])
