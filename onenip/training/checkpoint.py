"""Resuming: the per-epoch checkpoint (weights, optimizer, history, the best epoch so far) and the
fingerprint of the params and data it belongs to."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from onenip.config import Params
from onenip.models.features import atomic_save_safetensors
from onenip.models.detector import OneNIPDetector
from onenip.training.data import CategoryData

logger = logging.getLogger(__name__)


CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_WEIGHTS = "last.safetensors"  # the one weights file of checkpoints written before epoch-named files
CHECKPOINT_STATE = "last.json"


def weights_name(epoch: int) -> str:
    """Each epoch's weights get their own file, so the state file always points at a complete one."""
    return f"epoch-{epoch:04d}.safetensors"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as (tensors for safetensors, JSON-able rest): no pickle anywhere."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@dataclass
class BestEpoch:
    """The epoch to keep: its number, validation score and model weights (CPU), and the best
    validation score seen so far."""

    epoch: int
    score: float
    state: dict[str, Tensor]
    top_score: float


def keeps(best: BestEpoch | None, score: float, tolerance: float) -> bool:
    """Whether a newly validated (later) epoch replaces the kept one: when it scores within
    ``tolerance`` of the best score so far. Validation scores move by a couple of points from epoch to
    epoch on a few dozen held-out images; taking the maximum would pick noise (often an early,
    undertrained epoch), so the latest epoch that is as good within the noise is kept."""
    return best is None or score >= max(best.top_score, score) - tolerance

def save_checkpoint(
    folder: Path,
    detector: OneNIPDetector,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    fingerprint: str,
    best: BestEpoch | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Atomic at every instant: this epoch's weights go to a file of their own, then the JSON that
    names them replaces the last one, then older weights are removed. A kill anywhere in between
    leaves the previous (or this) epoch loadable, never weights and state of two epochs.
    ``scaler`` (CUDA AMP): its loss scale and growth tracker, so a resumed run scales and skips steps
    as the uninterrupted one would."""
    folder.mkdir(parents=True, exist_ok=True)
    model_state = {f"model.{k}": v.detach().cpu() for k, v in detector.model.state_dict().items()}
    best_state = {} if best is None else {f"best.{k}": v for k, v in best.state.items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    atomic_save_safetensors(
        {**model_state, **best_state, **optim_tensors}, folder / weights_name(epoch), metadata={"epoch": str(epoch)},
    )
    state = {
        "weights": weights_name(epoch), "epoch": epoch, "history": history, "optimizer": optim_meta, "fingerprint": fingerprint,
        "best": None if best is None else {"epoch": best.epoch, "score": best.score, "top_score": best.top_score},
        "grad_scaler": None if scaler is None else {k: v for k, v in scaler.state_dict().items()},
    }
    tmp = folder / f".{CHECKPOINT_STATE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / CHECKPOINT_STATE)
    for stale in [*folder.glob("epoch-*.safetensors"), folder / CHECKPOINT_WEIGHTS]:
        if stale.name != weights_name(epoch):
            stale.unlink(missing_ok=True)


def load_checkpoint(
    folder: Path, detector: OneNIPDetector, optimizer: torch.optim.Optimizer, fingerprint: str,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, list[dict[str, float]], BestEpoch | None] | None:
    """Restore the last complete epoch (and ``scaler``'s state when it was saved); ``None`` when there
    is no usable checkpoint for this config."""
    meta_path = folder / CHECKPOINT_STATE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, OSError) as error:
        logger.warning("Checkpoint state %s is unreadable (%s); starting over", meta_path, error)
        return None
    weights = folder / Path(str(meta.get("weights", CHECKPOINT_WEIGHTS))).name
    if not weights.is_file():
        logger.warning("Checkpoint weights %s are missing; starting over", weights)
        return None
    if meta.get("fingerprint") != fingerprint:
        logger.warning("Checkpoint in %s is from other params or data; starting over", folder)
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:  # one read: its epoch and its tensors
            weights_epoch = int((handle.metadata() or {}).get("epoch", -1))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        logger.warning("Checkpoint weights %s are unreadable (%s); starting over", weights, error)
        return None
    if weights_epoch != meta["epoch"]:
        # a state file that names weights of another epoch: never mix two epochs
        logger.warning("Checkpoint files in %s disagree on the epoch; starting over", folder)
        return None
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    detector.model.load_state_dict(model_state, strict=True)
    _restore_optimizer(optimizer, tensors, meta["optimizer"])
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    best = None
    if meta.get("best"):
        best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        best = BestEpoch(int(meta["best"]["epoch"]), float(meta["best"]["score"]), best_state, float(meta["best"]["top_score"]))
    return int(meta["epoch"]), list(meta["history"]), best


# -- the loop ---------------------------------------------------------------------------------------


def fingerprint_of(params: Params, data: Sequence[CategoryData]) -> str:
    import hashlib

    from onenip.config import result_params_digest

    payload = {
        "params": result_params_digest(params),
        "fit": {d.name: sorted(d.fit["sha256"].tolist()) for d in data},
        "geometries": {d.name: d.geometry.to_dict() for d in data},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
