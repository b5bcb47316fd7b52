"""Training glue for OneNIP: cached features, a synthetic-anomaly pool, the loop, calibration.

The backbone is frozen, so training runs on cached features (``onenip.features``). Each training
query also gets a synthesized anomalous copy drawn from a fixed pool of ``pool_size`` copies per
image whose features are computed once (``SyntheticPool``); ``regenerate_every`` refreshes it.
Every source of randomness in an epoch is seeded from ``(seed, epoch)``, so a run resumed from the
checkpoint of epoch k continues exactly as the uninterrupted run would.

See Also:
    ``onenip.models.onenip.OneNIP`` (the torch model), ``onenip.evaluation`` (metrics and images).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import Params, SynthesisParams
from onenip.data.manifest import DatasetError
from onenip.data.transforms import load_image
from onenip.features import FeatureCache, atomic_save_safetensors, extract_features
from onenip.models.detector import OneNIPDetector
from onenip.models.loss import onenip_loss
from onenip.synthesis import AnomalySynthesizer

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_WEIGHTS = "last.safetensors"
CHECKPOINT_STATE = "last.json"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        msg = f"Unknown device {device!r}: use auto, cpu or cuda[:N]"
        raise ValueError(msg) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"Device {device!r} requested but CUDA is not available"
        raise ValueError(msg)
    return resolved


def split_holdout(frame: pd.DataFrame, fraction: float, min_holdout: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training normals into (fit, holdout) per category with a seeded permutation.

    The holdout calibrates the reconstruction scale and the decision threshold, so no test image
    (and no test label) is ever used for either.
    """
    fit_parts, holdout_parts = [], []
    for category, rows in frame.groupby("category", sort=True):
        rows = rows.sort_values("image_path")
        count = len(rows)
        num_holdout = 0 if fraction <= 0 else max(min_holdout, round(count * fraction))
        num_holdout = min(num_holdout, count - 2)  # keep at least two images to draw prompts from
        if num_holdout < 0:
            msg = f"Category {category!r} has {count} training images; at least 2 are needed"
            raise DatasetError(msg)
        order = np.random.default_rng([seed, count]).permutation(count)
        holdout_parts.append(rows.iloc[np.sort(order[:num_holdout])])
        fit_parts.append(rows.iloc[np.sort(order[num_holdout:])])
    return pd.concat(fit_parts, ignore_index=True), pd.concat(holdout_parts, ignore_index=True)


def select_prompt(features: Tensor) -> int:
    """Index of the image nearest (L2 over the whole feature map) to the mean feature map.

    A deterministic, typical normal image: the one least likely to carry an unusual pose or
    lighting that would bias every reconstruction of the category.
    """
    mean = features.mean(dim=0, keepdim=True)
    return int((features - mean).flatten(1).pow(2).sum(dim=1).argmin())


def build_synthesizer(cfg: SynthesisParams, texture_images: Sequence[Tensor] = ()) -> AnomalySynthesizer:
    return AnomalySynthesizer(
        methods=cfg.methods,
        probabilities=cfg.probabilities,
        perlin_threshold=cfg.perlin_threshold,
        min_scale_exp=cfg.min_scale_exp,
        max_scale_exp=cfg.max_scale_exp,
        foreground=cfg.foreground,
        texture_images=list(texture_images) or None,
    )


@dataclass
class SyntheticPool:
    """``pool_size`` synthesized copies per training image: backbone features and masks."""

    features: Tensor  # (N, K, C, h, w) float16
    masks: Tensor  # (N, K, 1, S, S) bool
    generation: int = 0

    @classmethod
    def build(
        cls,
        images: Tensor,
        categories: Sequence[str],
        detector: OneNIPDetector,
        cfg: SynthesisParams,
        seed: int,
        generation: int = 0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> SyntheticPool:
        """Synthesize ``cfg.pool_size`` anomalies per image (uint8 images (N, 3, S, S)).

        Textures for an image come from images of *other* categories when there are any, plus the
        procedural ones, as the paper uses DTD for textures (DTD is not available offline).
        """
        n, k = images.shape[0], cfg.pool_size
        by_category: dict[str, list[int]] = {}
        for index, category in enumerate(categories):
            by_category.setdefault(category, []).append(index)
        synthesizers: dict[str, AnomalySynthesizer] = {}
        for category in by_category:
            others = [i for c, ids in by_category.items() if c != category for i in ids[:: max(1, len(ids) // 8)]]
            synthesizers[category] = build_synthesizer(cfg, [images[i].float() / 255 for i in others[:16]])
        generator = torch.Generator().manual_seed(int(seed) * 7919 + generation)
        features = None
        masks = torch.zeros(n, k, 1, images.shape[-2], images.shape[-1], dtype=torch.bool)
        bar = tqdm(total=n * k, desc="Synthetic anomalies", unit="img", disable=not progress)
        pending_images: list[Tensor] = []
        pending_slots: list[tuple[int, int]] = []

        def flush() -> None:
            nonlocal features
            batch = torch.stack(pending_images)
            out = extract_features(detector.feature_extractor, batch, detector.cfg.backbone, batch_size)
            if features is None:
                features = torch.zeros(n, k, *out.shape[1:], dtype=torch.float16)
            for (i, j), feature in zip(pending_slots, out, strict=True):
                features[i, j] = feature.half()
            bar.update(len(pending_slots))
            pending_images.clear()
            pending_slots.clear()

        for i in range(n):
            image = images[i].float() / 255
            synthesizer = synthesizers[categories[i]]
            for j in range(k):
                result = synthesizer(image, generator)
                pending_images.append(result.image)
                pending_slots.append((i, j))
                masks[i, j] = result.mask > 0.5
                if len(pending_images) == batch_size:
                    flush()
        if pending_images:
            flush()
        bar.close()
        assert features is not None
        return cls(features=features, masks=masks, generation=generation)


@dataclass
class TrainingData:
    """Everything the loop needs, on the CPU: features, images for synthesis, indices per category."""

    categories: list[str]
    fit: pd.DataFrame
    holdout: pd.DataFrame
    fit_features: Tensor  # (N, C, h, w)
    holdout_features: Tensor  # (M, C, h, w)
    fit_images: Tensor  # (N, 3, S, S) uint8, for synthesis
    fit_category_index: Tensor  # (N,)
    holdout_category_index: Tensor  # (M,)

    def indices_of(self, category_index: int) -> Tensor:
        return torch.nonzero(self.fit_category_index == category_index).flatten()


def prepare_training_data(
    manifest: pd.DataFrame,
    params: Params,
    cache: FeatureCache,
    categories: Sequence[str],
    progress: bool = True,
) -> TrainingData:
    train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]
    train = train[train["category"].isin(categories)]
    missing = sorted(set(categories) - set(train["category"]))
    if missing:
        msg = f"No normal training images for categories {missing}"
        raise DatasetError(msg)
    fit, holdout = split_holdout(train, params.train.holdout_fraction, params.train.min_holdout, params.train.seed)
    kwargs = {"batch_size": params.train.feature_batch_size, "progress": progress}
    fit_features = cache.get(fit["image_path"].tolist(), fit["sha256"].tolist(), **kwargs)
    holdout_features = (
        cache.get(holdout["image_path"].tolist(), holdout["sha256"].tolist(), **kwargs)
        if len(holdout)
        else fit_features[:0]
    )
    size = params.model.backbone.input_size
    fit_images = torch.stack(
        [
            (load_image(path, size) * 255).round().to(torch.uint8)
            for path in tqdm(fit["image_path"], desc="Loading images", unit="img", disable=not progress)
        ],
    )
    index = {c: i for i, c in enumerate(categories)}
    return TrainingData(
        categories=list(categories),
        fit=fit,
        holdout=holdout,
        fit_features=fit_features,
        holdout_features=holdout_features,
        fit_images=fit_images,
        fit_category_index=torch.tensor([index[c] for c in fit["category"]], dtype=torch.long),
        holdout_category_index=torch.tensor([index[c] for c in holdout["category"]], dtype=torch.long),
    )


# -- checkpoints ------------------------------------------------------------------------------------
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


def save_checkpoint(
    folder: Path,
    detector: OneNIPDetector,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    fingerprint: str,
) -> None:
    """Atomic: the weights file is renamed into place before the JSON that points at its epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    model_state = {f"model.{k}": v.detach().cpu() for k, v in detector.model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    atomic_save_safetensors({**model_state, **optim_tensors}, folder / CHECKPOINT_WEIGHTS, metadata={"epoch": str(epoch)})
    state = {"epoch": epoch, "history": history, "optimizer": optim_meta, "fingerprint": fingerprint}
    tmp = folder / f".{CHECKPOINT_STATE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / CHECKPOINT_STATE)


def load_checkpoint(
    folder: Path, detector: OneNIPDetector, optimizer: torch.optim.Optimizer, fingerprint: str,
) -> tuple[int, list[dict[str, float]]] | None:
    """Restore the last complete epoch; ``None`` when there is no usable checkpoint for this config."""
    weights, meta_path = folder / CHECKPOINT_WEIGHTS, folder / CHECKPOINT_STATE
    if not weights.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, OSError) as error:
        logger.warning("Checkpoint state %s is unreadable (%s); starting over", meta_path, error)
        return None
    if meta.get("fingerprint") != fingerprint:
        logger.warning("Checkpoint in %s is from other params or data; starting over", folder)
        return None
    from safetensors import SafetensorError, safe_open

    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as handle:
            weights_epoch = int((handle.metadata() or {}).get("epoch", -1))
    except (SafetensorError, OSError, ValueError) as error:
        logger.warning("Checkpoint weights %s are unreadable (%s); starting over", weights, error)
        return None
    if weights_epoch != meta["epoch"]:
        # killed between the two renames of save_checkpoint: never mix weights and state of two epochs
        logger.warning("Checkpoint files in %s disagree on the epoch; starting over", folder)
        return None
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    detector.model.load_state_dict(model_state, strict=True)
    _restore_optimizer(optimizer, tensors, meta["optimizer"])
    return int(meta["epoch"]), list(meta["history"])


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    detector: OneNIPDetector
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    prompt_paths: dict[str, str] = field(default_factory=dict)
    output_dir: Path | None = None


def _lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def draw_prompt_indices(query_idx: Tensor, category_index: Tensor, generator: torch.Generator) -> Tensor:
    """For each query index a random other index with the same category (never the query itself)."""
    prompts = torch.empty_like(query_idx)
    for position, index in enumerate(query_idx.tolist()):
        same = torch.nonzero(category_index == category_index[index]).flatten()
        others = same[same != index]
        prompts[position] = others[torch.randint(len(others), (1,), generator=generator)]
    return prompts


def fingerprint_of(params: Params, data: TrainingData) -> str:
    import hashlib

    payload = {
        "model": params.model.model_dump(mode="json"),
        "synthesis": params.synthesis.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude={"device", "feature_batch_size", "cache_dir"}),
        "fit": sorted(data.fit["sha256"].tolist()),
        "categories": data.categories,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_onenip(
    manifest: pd.DataFrame,
    params: Params,
    output_dir: str | Path,
    categories: Sequence[str] | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one OneNIP network on the training normals of ``categories`` (all in the manifest if None).

    Args:
        manifest: from ``onenip.data.manifest.make_manifest``.
        params: the whole configuration (``model``, ``synthesis``, ``train`` sections are read).
        output_dir: receives ``checkpoint/`` (per epoch) and the final ``model/``.
        resume: continue from ``output_dir/checkpoint`` when it matches these params and data.
        stop_after_epoch: stop (as an interruption would) after this epoch; used by tests.
        on_epoch_end: callback ``(epoch, losses)``, e.g. to log to MLflow.

    Returns:
        ``TrainResult`` with the calibrated detector, saved to ``output_dir/model``.
    """
    output_dir = Path(output_dir)
    categories = sorted(categories or manifest["category"].unique().tolist())
    cfg = params.train
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    detector = OneNIPDetector(params.model, categories, pretrained=True)
    detector.feature_extractor.to(device)
    cache = FeatureCache(cfg.cache_dir, detector.feature_extractor, params.model.backbone)
    data = prepare_training_data(manifest, params, cache, categories, progress)

    # The fixed test-time prompt of each category (saved with the model).
    prompt_paths: dict[str, str] = {}
    for k, category in enumerate(categories):
        idx = data.indices_of(k)
        best = int(idx[select_prompt(data.fit_features[idx])])
        detector.prompt_features[k] = data.fit_features[best]
        prompt_paths[category] = str(data.fit["image_path"].iloc[best])

    model = detector.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = fingerprint_of(params, data)
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    start_epoch, history = 0, []
    if resume:
        restored = load_checkpoint(checkpoint_dir, detector, optimizer, fingerprint)
        if restored is not None:
            start_epoch, history = restored
            logger.info("Resuming from epoch %d in %s", start_epoch, checkpoint_dir)

    n = data.fit_features.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    pool: SyntheticPool | None = None
    started = time.perf_counter()
    train_seconds = sum(h.get("seconds", 0.0) for h in history)

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        generation = epoch // params.synthesis.regenerate_every if params.synthesis.regenerate_every else 0
        if pool is None or pool.generation != generation:
            pool = SyntheticPool.build(
                data.fit_images, data.fit["category"].tolist(), detector, params.synthesis,
                seed=cfg.seed, generation=generation, batch_size=cfg.feature_batch_size, progress=progress,
            )
        # Everything random in this epoch derives from (seed, epoch): resume == uninterrupted.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        model.train()
        totals = {"loss": 0.0, "feature_mse": 0.0, "dice": 0.0}
        bar = tqdm(range(steps_per_epoch), desc=f"Epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
        for step_in_epoch in bar:
            step = epoch * steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            idx = order[step_in_epoch * cfg.batch_size : (step_in_epoch + 1) * cfg.batch_size]
            variant = torch.randint(params.synthesis.pool_size, (len(idx),), generator=generator)
            prompt_idx = draw_prompt_indices(idx, data.fit_category_index, generator)
            query = data.fit_features[idx]
            synthetic = pool.features[idx, variant].float()
            masks = pool.masks[idx, variant].float()
            inputs = torch.cat([query, synthetic]).to(device)
            targets = torch.cat([query, query]).to(device)
            all_masks = torch.cat([torch.zeros_like(masks), masks]).to(device)
            prompts = data.fit_features[prompt_idx].to(device)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with autocast:
                recon, refiner_logits = model.reconstruct_and_refine(inputs, prompts)
                losses = onenip_loss(recon.float(), targets, refiner_logits.float(), all_masks, cfg.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(losses.total).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                losses.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                optimizer.step()
            totals["loss"] += losses.total.item()
            totals["feature_mse"] += losses.feature_mse.item()
            totals["dice"] += losses.dice.item()
            bar.set_postfix(loss=f"{losses.total.item():.4f}")
        record = {key: value / steps_per_epoch for key, value in totals.items()}
        record["epoch"] = epoch + 1
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["seconds"] = time.perf_counter() - epoch_start
        history.append(record)
        train_seconds += record["seconds"]
        save_checkpoint(checkpoint_dir, detector, optimizer, epoch + 1, history, fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return TrainResult(detector, history, train_seconds, prompt_paths, None)

    calibrate(detector, data, params.eval.threshold_quantile, device)
    model_dir = detector.save(
        output_dir / "model",
        metadata={
            "prompt_paths": prompt_paths,
            "threshold_rule": f"quantile {params.eval.threshold_quantile} of held-out training-normal image scores",
            "holdout_images": {c: int((data.holdout_category_index == k).sum()) for k, c in enumerate(categories)},
            "train_seconds": train_seconds,
            "epochs": cfg.epochs,
        },
    )
    logger.info("Saved model to %s (%.1f s since start)", model_dir, time.perf_counter() - started)
    return TrainResult(detector, history, train_seconds, prompt_paths, output_dir)


@torch.no_grad()
def calibrate(detector: OneNIPDetector, data: TrainingData, threshold_quantile: float, device: torch.device) -> None:
    """Set ``recon_scale`` and ``score_threshold`` per category from held-out training normals.

    recon_scale = max of the reconstruction-error map over the held-out normals (the reference code
    uses the test set's (max + min) / 2; we never look at test data). The decision threshold is the
    ``threshold_quantile`` of the held-out normals' image scores. With no holdout (fraction 0), the
    fit images are used, which is optimistic and documented as such.
    """
    detector.eval()
    features = data.holdout_features if len(data.holdout_features) else data.fit_features
    category_index = data.holdout_category_index if len(data.holdout_features) else data.fit_category_index
    for k in range(len(detector.categories)):
        selected = features[category_index == k]
        if not len(selected):
            selected = data.fit_features[data.fit_category_index == k]
        prompt = detector.prompt_features[k : k + 1].to(device)
        recon_max = 0.0
        for start in range(0, len(selected), 16):
            out = detector.model(selected[start : start + 16].to(device), prompt, 1.0)
            recon_max = max(recon_max, float(out.recon_map.max()))
        detector.recon_scale[k] = max(recon_max, 1e-6)
        scores = []
        for start in range(0, len(selected), 16):
            out = detector.model(selected[start : start + 16].to(device), prompt, detector.recon_scale[k])
            scores.append(out.pred_score.cpu())
        detector.score_threshold[k] = float(torch.quantile(torch.cat(scores), threshold_quantile))


def train_models(
    manifest: pd.DataFrame,
    params: Params,
    output_dir: str | Path,
    categories: Sequence[str] | None = None,
    *,
    mode: str | None = None,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[str, int, dict[str, float]], None] | None = None,
) -> dict[str, TrainResult]:
    """Train in ``unified`` mode (one network, folder ``output_dir/unified``) or ``per-category``
    (one network per category, ``output_dir/<category>``). Returns results keyed by that folder name."""
    mode = mode or params.model.mode
    categories = sorted(categories or manifest["category"].unique().tolist())
    if mode == "unified":
        groups = {"unified": categories}
    elif mode == "per-category":
        groups = {category: [category] for category in categories}
    else:
        msg = f"Unknown mode {mode!r}: use unified or per-category"
        raise ValueError(msg)
    results = {}
    for name, group in groups.items():
        callback = None if on_epoch_end is None else (lambda epoch, record, _n=name: on_epoch_end(_n, epoch, record))
        results[name] = train_onenip(
            manifest, params, Path(output_dir) / name, group, resume=resume, progress=progress, on_epoch_end=callback,
        )
    return results
