"""Training glue for OneNIP: cached features, a synthetic-anomaly pool, the loop, calibration.

The backbone is frozen, so training runs on cached features (``onenip.features``). Each training
query also gets a synthesized anomalous copy drawn from a fixed pool of ``pool_size`` copies per
image whose features are computed once (``SyntheticPool``); ``regenerate_every`` refreshes it.
``max_images_per_epoch`` lets an epoch of a large category train on a seeded subset (and the pool
synthesize only that subset).
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
from onenip.data.geometry import InputGeometry, aspects_vary, choose_geometry
from onenip.device import resolve_device
from onenip.data.manifest import DatasetError
from onenip.features import FeatureCache, Features, atomic_save_safetensors, extract_features
from onenip.models.detector import OneNIPDetector
from onenip.models.loss import area_pool_masks, onenip_loss
from onenip.models.gaussian import fit_position_gaussian
from onenip.models.memory import CANDIDATES_PER_PATCH, kcenter_greedy
from onenip.models.scoring import ScoringRule, padded_weights
from onenip.synthesis.synthesizer import AnomalySynthesizer
from onenip.validation import (
    CategoryValidation,
    Selection,
    build_category_validation,
    check_validation_methods,
    restricted_selections,
    select_scoring,
    validation_components,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_WEIGHTS = "last.safetensors"
CHECKPOINT_STATE = "last.json"


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


def select_prompts(features: Tensor, count: int) -> list[int]:
    """``count`` prompt indices: the typical image (``select_prompt``), then k-center greedy on the
    grid-mean features (each next prompt is the image farthest from those chosen), so the stored
    prompts cover the category's variety (lighting, pose, crop); deterministic."""
    first = select_prompt(features)
    chosen = [first]
    if count <= 1:
        return chosen
    descriptors = torch.nn.functional.normalize(features.mean(dim=(-2, -1)), dim=1)
    distance = 1 - descriptors @ descriptors[first]
    for _ in range(min(count, len(features)) - 1):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = torch.minimum(distance, 1 - descriptors @ descriptors[nxt])
    while len(chosen) < count:  # fewer images than prompts: repeat the typical one
        chosen.append(first)
    return chosen


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


def choose_geometries(manifest: pd.DataFrame, params: Params, categories: Sequence[str]) -> dict[str, InputGeometry]:
    """Each category's input geometry: ``model.input_sizes`` where given, else from its training images."""
    cfg = params.model
    stride = cfg.backbone.feature_stride
    geometries = {}
    for category in categories:
        train = manifest[(manifest["category"] == category) & (manifest["split"] == "train")]
        if category in cfg.input_sizes:
            height, width = cfg.input_sizes[category]
            if height % stride or width % stride:
                msg = f"model.input_sizes[{category!r}] = {[height, width]} must be multiples of the feature stride {stride}"
                raise DatasetError(msg)
            aspects = (train["width"] / train["height"]).dropna().to_numpy(dtype=float)
            geometries[category] = InputGeometry(int(height), int(width), aspects_vary(aspects))
            continue
        known = train.dropna(subset=["width", "height"])
        geometries[category] = choose_geometry(
            known["height"].astype(int).tolist(), known["width"].astype(int).tolist(), cfg.backbone.input_size,
            multiple=stride, keep_aspect=cfg.keep_aspect,
        )
    return geometries


def load_images(paths: Sequence[str], geometry: InputGeometry, progress: bool = False, desc: str = "Loading images") -> tuple[Tensor, Tensor | None]:
    """uint8 (N, 3, H, W) images at the geometry, and (N, 1, H, W) content masks when letterboxed."""
    from onenip.data.manifest import read_image
    from onenip.data.transforms import image_to_tensor

    images, valids = [], []
    for path in tqdm(paths, desc=desc, unit="img", disable=not progress):
        picture = image_to_tensor(read_image(path))
        images.append((geometry.apply(picture) * 255).round().to(torch.uint8))
        if geometry.letterbox:
            valids.append(geometry.valid_mask(picture.shape[-2], picture.shape[-1])[None])
    if not images:
        return torch.zeros(0, 3, *geometry.size, dtype=torch.uint8), None
    return torch.stack(images), (torch.stack(valids) if valids else None)


@dataclass
class CategoryData:
    """One category's training data on the CPU: features, images for synthesis, the holdout."""

    name: str
    index: int
    geometry: InputGeometry
    fit: pd.DataFrame
    holdout: pd.DataFrame
    fit_features: Features
    holdout_features: Features
    fit_images: Tensor  # (N, 3, H, W) uint8, for synthesis
    fit_valid: Tensor | None  # (N, 1, H, W) bool where letterboxed
    holdout_images: Tensor
    holdout_valid: Tensor | None


@dataclass
class SyntheticPool:
    """``pool_size`` synthesized copies of training images of one category: features and masks.

    Masks are stored area-pooled to the refiner's resolution (what the Dice loss compares with).
    ``rows`` maps an image index to its first row (-1: not synthesized), so a pool may hold only the
    images an epoch uses (``train.max_images_per_epoch``)."""

    features: Features  # (M * K, ...) float16, copy j of the image in pool slot s at s * K + j
    masks: Tensor  # (M * K, 1, 4h, 4w) float16
    pool_size: int
    generation: int = 0
    rows: Tensor | None = None  # (N,) long: image index -> pool slot; None: slot == image index

    def positions(self, idx: Tensor, variant: Tensor) -> Tensor:
        """Rows of copy ``variant`` of images ``idx`` (indices into the category's fit images)."""
        slots = idx if self.rows is None else self.rows[idx]
        if bool((slots < 0).any()):
            msg = f"images {idx[slots < 0].tolist()} were not synthesized in this pool"
            raise IndexError(msg)
        return slots * self.pool_size + variant

    @classmethod
    def build(
        cls,
        data: CategoryData,
        synthesizer: AnomalySynthesizer,
        extractor: torch.nn.Module,
        params: Params,
        *,
        seed: int,
        generation: int = 0,
        progress: bool = True,
        indices: Tensor | None = None,
    ) -> SyntheticPool:
        """Synthesize ``pool_size`` copies of each fit image, or of the images ``indices`` only."""
        k = params.synthesis.pool_size
        batch_size = params.train.feature_batch_size
        generator = torch.Generator().manual_seed(int(seed) * 7919 + generation * 104729 + data.index)
        grid = data.geometry.grid(params.model.backbone.feature_stride)
        refiner_size = (grid[0] * 4, grid[1] * 4)
        chosen = list(range(len(data.fit_images))) if indices is None else sorted(set(indices.tolist()))
        rows = None
        if indices is not None:
            rows = torch.full((len(data.fit_images),), -1, dtype=torch.long)
            rows[torch.tensor(chosen, dtype=torch.long)] = torch.arange(len(chosen))
        parts: list[Features] = []
        masks: list[Tensor] = []
        pending: list[Tensor] = []
        bar = tqdm(total=len(chosen) * k, desc=f"Synthetic anomalies ({data.name})", unit="img", disable=not progress)

        def flush() -> None:
            out = extract_features(extractor, torch.stack(pending), params.model.backbone, batch_size)
            parts.append(Features(out.coarse.half(), None if out.fine is None else out.fine.half()))
            bar.update(len(pending))
            pending.clear()

        for i in chosen:
            image = data.fit_images[i].float() / 255
            foreground = None if data.fit_valid is None else data.fit_valid[i, 0]
            for _ in range(k):
                # a letterboxed image's anomaly is made on its content, sized as on an unpadded image
                result = synthesizer(image, generator) if foreground is None else synthesizer.on_content(image, generator, foreground)
                pending.append(result.image)
                masks.append(area_pool_masks(result.mask[None], refiner_size)[0].half())
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        bar.close()
        return cls(Features.cat(parts), torch.stack(masks), k, generation, rows)


def prepare_category_data(
    manifest: pd.DataFrame, params: Params, cache: FeatureCache, category: str, index: int, geometry: InputGeometry, progress: bool,
) -> CategoryData:
    train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0) & (manifest["category"] == category)]
    if train.empty:
        msg = f"No normal training images for category {category!r}"
        raise DatasetError(msg)
    fit, holdout = split_holdout(train, params.train.holdout_fraction, params.train.min_holdout, params.train.seed)
    kwargs = {"batch_size": params.train.feature_batch_size, "progress": progress}
    # Kept as float16 (the cache's precision, half the memory); batches are converted to float32.
    kwargs["dtype"] = torch.float16
    fit_features = cache.get(fit["image_path"].tolist(), fit["sha256"].tolist(), geometry, **kwargs)
    holdout_features = (
        cache.get(holdout["image_path"].tolist(), holdout["sha256"].tolist(), geometry, **kwargs)
        if len(holdout)
        else fit_features.select(slice(0, 0))
    )
    fit_images, fit_valid = load_images(fit["image_path"].tolist(), geometry, progress, f"Loading images ({category})")
    holdout_images, holdout_valid = load_images(holdout["image_path"].tolist(), geometry)
    return CategoryData(
        category, index, geometry, fit.reset_index(drop=True), holdout.reset_index(drop=True),
        fit_features, holdout_features, fit_images, fit_valid, holdout_images, holdout_valid,
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
    """Atomic: the weights file is renamed into place before the JSON that points at its epoch.
    ``scaler`` (CUDA AMP): its loss scale and growth tracker, so a resumed run scales and skips steps
    as the uninterrupted one would."""
    folder.mkdir(parents=True, exist_ok=True)
    model_state = {f"model.{k}": v.detach().cpu() for k, v in detector.model.state_dict().items()}
    best_state = {} if best is None else {f"best.{k}": v for k, v in best.state.items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    atomic_save_safetensors(
        {**model_state, **best_state, **optim_tensors}, folder / CHECKPOINT_WEIGHTS, metadata={"epoch": str(epoch)},
    )
    state = {
        "epoch": epoch, "history": history, "optimizer": optim_meta, "fingerprint": fingerprint,
        "best": None if best is None else {"epoch": best.epoch, "score": best.score, "top_score": best.top_score},
        "grad_scaler": None if scaler is None else {k: v for k, v in scaler.state_dict().items()},
    }
    tmp = folder / f".{CHECKPOINT_STATE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / CHECKPOINT_STATE)


def load_checkpoint(
    folder: Path, detector: OneNIPDetector, optimizer: torch.optim.Optimizer, fingerprint: str,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, list[dict[str, float]], BestEpoch | None] | None:
    """Restore the last complete epoch (and ``scaler``'s state when it was saved); ``None`` when there
    is no usable checkpoint for this config."""
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
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    best = None
    if meta.get("best"):
        best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        best = BestEpoch(int(meta["best"]["epoch"]), float(meta["best"]["score"]), best_state, float(meta["best"]["top_score"]))
    return int(meta["epoch"]), list(meta["history"]), best


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    detector: OneNIPDetector
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    prompt_paths: dict[str, list[str]] = field(default_factory=dict)
    output_dir: Path | None = None
    selection: Selection | None = None


def _lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def draw_prompt_indices(query_idx: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """For each query index (into ``count`` images of one category) a random other index, never itself."""
    if count < 2:
        msg = "a category needs at least two training images to draw prompts from"
        raise DatasetError(msg)
    offsets = torch.randint(1, count, (len(query_idx),), generator=generator)
    return (query_idx + offsets) % count


def epoch_subset(size: int, cap: int | None, seed: int, epoch: int, position: int) -> Tensor | None:
    """The (sorted) images of category ``position`` that epoch ``epoch`` trains on: a seeded random
    ``cap`` of its ``size`` images where it has more (``None``: all). Seeded by (seed, epoch, category)
    alone, so resuming, and building the synthetic pool ahead of the epochs, see the same subset."""
    if cap is None or size <= cap:
        return None
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7_919 + position)
    return torch.randperm(size, generator=generator)[:cap].sort().values


def epoch_subsets(sizes: Sequence[int], cap: int | None, seed: int, epoch: int) -> list[Tensor | None]:
    return [epoch_subset(size, cap, seed, epoch, position) for position, size in enumerate(sizes)]


def epoch_batches(
    sizes: Sequence[int], batch_size: int, generator: torch.Generator, subsets: Sequence[Tensor | None] | None = None,
) -> list[tuple[int, Tensor]]:
    """One epoch of (category position, image indices) batches: every image once (of ``subsets[p]``
    where given), each batch from one category (images of a batch share a grid), categories
    interleaved in random order."""
    batches = []
    for position, size in enumerate(sizes):
        subset = None if subsets is None else subsets[position]
        order = torch.randperm(size, generator=generator) if subset is None else subset[torch.randperm(len(subset), generator=generator)]
        batches += [(position, order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def images_per_epoch(size: int, cap: int | None) -> int:
    return size if cap is None else min(size, cap)


def generation_indices(
    size: int, position: int, cap: int | None, seed: int, generation: int, regenerate_every: int, epochs: int,
) -> Tensor | None:
    """The images a pool generation must synthesize: the union of the subsets of its epochs
    (``None``: all images, when there is no cap, the category is under it, or one pool serves the run)."""
    if cap is None or size <= cap or regenerate_every == 0:
        return None
    first = generation * regenerate_every
    epochs_of_generation = range(first, min(first + regenerate_every, epochs))
    used = [epoch_subset(size, cap, seed, epoch, position) for epoch in epochs_of_generation]
    return torch.unique(torch.cat(used))  # type: ignore[arg-type]


def fingerprint_of(params: Params, data: Sequence[CategoryData]) -> str:
    import hashlib

    from onenip.config import result_params_digest

    payload = {
        "params": result_params_digest(params),
        "fit": {d.name: sorted(d.fit["sha256"].tolist()) for d in data},
        "geometries": {d.name: d.geometry.to_dict() for d in data},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _texture_sources(data: Sequence[CategoryData], category: CategoryData) -> list[Tensor]:
    """Textures for a category's synthesis: images of the OTHER categories (the paper uses DTD, not
    available offline), up to 16 spread over them; procedural textures are always available too."""
    others = [d for d in data if d is not category]
    picked: list[Tensor] = []
    for other in others:
        step = max(1, len(other.fit_images) // 8)
        picked += [other.fit_images[i].float() / 255 for i in range(0, len(other.fit_images), step)][:8]
    return picked[:16]


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
        params: the whole configuration (``model``, ``synthesis``, ``train``, ``validation`` are read).
        output_dir: receives ``checkpoint/`` (per epoch) and the final ``model/``.
        resume: continue from ``output_dir/checkpoint`` when it matches these params and data.
        stop_after_epoch: stop (as an interruption would) after this epoch; used by tests.
        on_epoch_end: callback ``(epoch, record)``, e.g. to log to MLflow.

    Returns:
        ``TrainResult`` with the calibrated detector, saved to ``output_dir/model``.
    """
    output_dir = Path(output_dir)
    categories = sorted(categories or manifest["category"].unique().tolist())
    cfg = params.train
    check_validation_methods(params)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    geometries = choose_geometries(manifest, params, categories)
    try:
        detector = OneNIPDetector(params.model, categories, geometries, pretrained=True)
    except ValueError as error:  # a neighbour window that blocks a whole grid, a bad input size
        raise DatasetError(str(error)) from None
    detector.feature_extractor.to(device)
    cache = FeatureCache(cfg.cache_dir, detector.feature_extractor, params.model.backbone)
    data = [
        prepare_category_data(manifest, params, cache, category, k, geometries[category], progress)
        for k, category in enumerate(categories)
    ]

    # The fixed test-time prompt of each category (saved with the model).
    prompt_paths: dict[str, list[str]] = {}
    for item in data:
        chosen = select_prompts(item.fit_features.coarse.float(), params.model.prompts)
        detector.set_prompt(item.index, item.fit_features.select(chosen).float())
        prompt_paths[item.name] = [str(item.fit["image_path"].iloc[i]) for i in chosen]

    # The per-position Gaussians and the memory banks depend on the frozen features only: fitted once, before any epoch.
    fit_gaussians(detector, data)
    fit_memory_banks(detector, data, cfg.seed)
    fit_standardization(detector, data)

    # Validation images: held-out normals + unseen-family anomalies, fixed for the whole run.
    validations = [
        build_category_validation(
            item.name, item.holdout_images, item.holdout_valid, detector.feature_extractor, params, seed=cfg.seed + item.index,
        )
        for item in data
        if len(item.holdout_images)
    ] if params.validation.select else []

    model = detector.model.to(device)
    detector.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = fingerprint_of(params, data)
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    start_epoch, history, best = 0, [], None
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    if resume:
        restored = load_checkpoint(checkpoint_dir, detector, optimizer, fingerprint, scaler)
        if restored is not None:
            start_epoch, history, best = restored
            logger.info("Resuming from epoch %d in %s", start_epoch, checkpoint_dir)

    cap = cfg.max_images_per_epoch
    steps_per_epoch = sum(math.ceil(images_per_epoch(len(item.fit_images), cap) / cfg.batch_size) for item in data)
    total_steps = steps_per_epoch * cfg.epochs
    synthesizers = {item.name: build_synthesizer(params.synthesis, _texture_sources(data, item)) for item in data}
    pools: dict[str, SyntheticPool] = {}
    started = time.perf_counter()
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    final_selection: Selection | None = None  # the last epoch's validation, reused when that epoch is kept

    statistics_only = cfg.network == "none"
    for epoch in range(start_epoch, 0 if statistics_only else cfg.epochs):
        epoch_start = time.perf_counter()
        generation = epoch // params.synthesis.regenerate_every if params.synthesis.regenerate_every else 0
        synthesis_start = time.perf_counter()
        for item in data:
            pool = pools.get(item.name)
            if pool is None or pool.generation != generation:
                pools.pop(item.name, None)  # free the old pool first: never two of a category in memory
                del pool
                needed = generation_indices(
                    len(item.fit_images), item.index, cap, cfg.seed, generation, params.synthesis.regenerate_every, cfg.epochs,
                )
                pools[item.name] = SyntheticPool.build(
                    item, synthesizers[item.name], detector.feature_extractor, params,
                    seed=cfg.seed, generation=generation, progress=progress, indices=needed,
                )
        synthesis_seconds = time.perf_counter() - synthesis_start
        # Everything random in this epoch derives from (seed, epoch): resume == uninterrupted.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        sizes = [len(item.fit_images) for item in data]
        batches = epoch_batches(sizes, cfg.batch_size, generator, epoch_subsets(sizes, cap, cfg.seed, epoch))
        model.train()
        totals = {"loss": 0.0, "feature_mse": 0.0, "dice": 0.0}
        bar = tqdm(batches, desc=f"Epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
        for step_in_epoch, (position, idx) in enumerate(bar):
            item, pool = data[position], pools[data[position].name]
            step = epoch * steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            variant = torch.randint(pool.pool_size, (len(idx),), generator=generator)
            prompt_idx = draw_prompt_indices(idx, len(item.fit_images), generator)
            query = item.fit_features.select(idx).float()
            rows = pool.positions(idx, variant)
            synthetic = pool.features.select(rows).float()
            masks = pool.masks[rows].float()
            inputs = Features.cat([query, synthetic]).to(device)
            targets = detector.network_input(item.index, torch.cat([query.coarse, query.coarse]).to(device))
            all_masks = torch.cat([torch.zeros_like(masks), masks]).to(device)
            prompts = item.fit_features.select(prompt_idx).float().to(device)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with autocast:
                recon, refiner_logits, _ = model.reconstruct_and_refine(
                    detector.network_input(item.index, inputs.coarse), detector.network_input(item.index, prompts.coarse), inputs.fine, prompts.fine,
                )
                losses = onenip_loss(
                    recon.float(), targets, refiner_logits.float(), all_masks, cfg.dice_weight,
                    image_pixels=item.geometry.height * item.geometry.width,
                )
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
        record = {key: value / max(1, len(batches)) for key, value in totals.items()}
        record["epoch"] = epoch + 1
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["synthesis_seconds"] = synthesis_seconds
        record["train_seconds"] = time.perf_counter() - epoch_start - synthesis_seconds
        last = epoch + 1 == cfg.epochs
        if validations and ((epoch + 1) % params.validation.every_epochs == 0 or last):
            validation_start = time.perf_counter()
            selection = validate(detector, data, validations, params, device, final=last)
            record["val_score"] = selection.score
            record["validation_seconds"] = time.perf_counter() - validation_start
            final_selection = selection if last else None
            if keeps(best, selection.score, params.validation.epoch_tolerance):
                top = selection.score if best is None else max(best.top_score, selection.score)
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = BestEpoch(epoch + 1, selection.score, state, top)
            elif best is not None:
                best.top_score = max(best.top_score, selection.score)
        record["seconds"] = time.perf_counter() - epoch_start
        history.append(record)
        train_seconds += record["seconds"]
        save_checkpoint(checkpoint_dir, detector, optimizer, epoch + 1, history, fingerprint, best, scaler)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return TrainResult(detector, history, train_seconds, prompt_paths, None)

    kept_epoch = 0 if statistics_only else cfg.epochs
    if best is not None and best.epoch != cfg.epochs:
        model.load_state_dict(best.state)
        kept_epoch = best.epoch
        final_selection = None  # the kept weights need their own calibration and selection
    # When the last epoch is kept, its validation already calibrated these weights and chose the rule:
    # running it again would repeat the same computation (about 30 s on magnetic_tile).
    selection = final_selection
    if selection is None and validations:
        selection = validate(detector, data, validations, params, device, final=True)
    if statistics_only:  # no rule may read the untrained network, not even the default of a category too small to validate
        fallback = statistics_rule(detector, params)
        rules = {item.name: fallback for item in data} if selection is None else {
            name: rule if sum(rule.weights[:3]) == 0 else fallback for name, rule in selection.rules.items()}
        detector.scoring = rules
    elif selection is not None:
        detector.scoring = dict(selection.rules)
    # a selection has just calibrated the maps of these very weights
    calibrate_threshold(detector, data, params.eval.threshold_quantile, device, calibrated=selection is not None)
    model_dir = detector.save(
        output_dir / "model",
        metadata={
            "prompt_paths": prompt_paths,
            "threshold_rule": f"quantile {params.eval.threshold_quantile} of held-out training-normal image scores",
            "holdout_images": {item.name: len(item.holdout) for item in data},
            "train_seconds": train_seconds,
            "epochs": 0 if statistics_only else cfg.epochs,
            "kept_epoch": kept_epoch,
            "network": cfg.network,
            "selection": None if selection is None else {
                "rules": {c: r.to_dict() for c, r in selection.rules.items()}, "score": selection.score,
                "metrics": selection.metrics,
                "validation_methods": list(params.validation.methods),
                "validation_anomaly_strength": list(params.validation.anomaly_strength),
                "validation_images": {v.category: len(v.labels) for v in validations},
                "restricted": selection.restricted,
                "network_adds": selection.network_adds,
            },
        },
    )
    logger.info("Saved model to %s (%.1f s since start)", model_dir, time.perf_counter() - started)
    return TrainResult(detector, history, train_seconds, prompt_paths, output_dir, selection)


STATISTICS_IMAGES = 256
"""Training normals per category that the residual statistics are estimated on (evenly spread)."""
STATISTICS_CHUNK = 16
"""Images per chunk when the residual statistics are summed (bounds the float64 temporaries)."""
STATISTICS_PRIOR = 10.0
"""Pseudo-count pulling each position's statistics towards the channel's (few images at a position)."""


def error_statistics(
    residuals: Tensor, weights: Tensor, prior: float = 10.0, whiten: bool = True, ridge: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:
    """Statistics that turn a residual map into z-scores: ``(mean (C, h, w), whitening (C, C), std (C, h, w))``.

    ``mean``: per position and channel, weighted by ``weights`` (N, 1, h, w: 1 where the cell holds image
    content), shrunk towards the channel's mean by ``prior`` pseudo-images (a position few images
    cover gets the channel's statistics). ``whitening``: ``L^-1`` of the Cholesky factor of the
    channels' covariance of the centred residual, pooled over positions, with a ``ridge`` of the mean
    variance on the diagonal (identity when ``whiten`` is false): correlated channels (neighbouring
    backbone channels often move together) then count once. ``std``: per position and channel of the
    whitened residual, shrunk alike. The z-score is ``whitening @ (r - mean) / std``.
    """
    # Three passes over chunks of images, sums in float64: the residuals stay in their own dtype, so
    # memory is the input plus one chunk (a whole-batch float64 copy of the stride-8 residuals of 256
    # images was over a gigabyte, several times over in temporaries).
    channels = residuals.shape[1]
    chunks = [slice(start, start + STATISTICS_CHUNK) for start in range(0, len(residuals), STATISTICS_CHUNK)]

    def part(index: slice) -> tuple[Tensor, Tensor]:
        return residuals[index].double(), weights[index].double()

    weight = weights.double().sum(0)  # (1, h, w)
    total_weight = weight.sum()
    weighted = sum((r * w).sum(0) for r, w in map(part, chunks))  # (C, h, w)
    channel_mean = weighted.sum(dim=(1, 2)) / total_weight

    def shrunk(total: Tensor, channel: Tensor) -> Tensor:
        return (total + prior * channel[:, None, None]) / (weight + prior)

    mean = shrunk(weighted, channel_mean)
    if whiten:
        covariance = torch.zeros(channels, channels, dtype=torch.float64)
        for r, w in map(part, chunks):
            flat = ((r - mean) * w.sqrt()).permute(0, 2, 3, 1).reshape(-1, channels)
            covariance += flat.t() @ flat
        covariance /= total_weight
        covariance += ridge * covariance.diagonal().mean() * torch.eye(channels, dtype=covariance.dtype)
        whitening = torch.linalg.inv(torch.linalg.cholesky(covariance))
    else:
        whitening = torch.eye(channels, dtype=torch.float64)
    squares = torch.zeros_like(mean)
    for r, w in map(part, chunks):
        centred = r - mean
        if whiten:
            centred = torch.einsum("ij,njhw->nihw", whitening, centred)
        squares += (centred.pow(2) * w).sum(0)
    channel_sq = squares.sum(dim=(1, 2)) / total_weight
    second = shrunk(squares, channel_sq)
    floor = 1e-3 * float(channel_sq.mean().clamp_min(0).sqrt()) + 1e-6
    return mean.float(), whitening.float(), second.clamp_min(0).sqrt().clamp_min(floor).float()


@torch.no_grad()
def calibrate_error_statistics(detector: OneNIPDetector, data: Sequence[CategoryData], device: torch.device) -> None:
    """Per category, the z-score statistics (``error_statistics``) of the reconstruction residual and of
    the fine prompt residual on up to ``STATISTICS_IMAGES`` fit images (``model.error_normalization``),
    counting a grid cell only where it holds image content (letterboxing). Fit images, not the held-out
    ones: those stay for calibration and validation."""
    from onenip.models.onenip import prompt_residual

    if detector.cfg.error_normalization == "none":
        return
    whiten = detector.cfg.error_normalization == "whitened"
    detector.eval()
    stride = detector.cfg.backbone.feature_stride
    for item in data:
        count = len(item.fit_features)
        index = torch.linspace(0, count - 1, min(count, STATISTICS_IMAGES)).round().long().unique()
        recon, recon_w, fine, fine_w = [], [], [], []
        for start in range(0, len(index), 16):
            chosen = index[start : start + 16]
            features = item.fit_features.select(chosen).float().to(device)
            prompt = detector.choose_prompts(features, item.index)
            query = detector.network_input(item.index, features.coarse)
            residual = detector.model.reconstruct(query, detector.network_input(item.index, prompt.coarse)) - query
            valid = None if item.fit_valid is None else item.fit_valid[chosen].float().to(device)
            recon.append(residual.half().cpu())
            recon_w.append(_cell_weight(valid, residual.shape[-2:], stride, len(chosen), device).cpu())
            if features.fine is not None:
                _, fine_residual = prompt_residual(features.fine, prompt.fine, window=detector.model.residual_window)
                fine.append(fine_residual.half().cpu())
                fine_w.append(_cell_weight(valid, fine_residual.shape[-2:], stride // 2, len(chosen), device).cpu())
        stats = error_statistics(torch.cat(recon), torch.cat(recon_w), STATISTICS_PRIOR, whiten)
        detector.set_error_statistics(item.index, "recon", *stats)
        if fine:
            stats = error_statistics(torch.cat(fine), torch.cat(fine_w), STATISTICS_PRIOR, whiten)
            detector.set_error_statistics(item.index, "fine", *stats)


@torch.no_grad()
def fit_standardization(detector: OneNIPDetector, data: Sequence[CategoryData]) -> None:
    """Per category, the mean and standard deviation of each coarse channel over its fit images (content
    cells only) that the network's inputs and targets are standardised with
    (``model.feature_standardization: category``); nothing to do otherwise."""
    if detector.cfg.feature_standardization == "none":
        return
    stride = detector.cfg.backbone.feature_stride
    for item in data:
        total = torch.zeros((), dtype=torch.float64)
        sums = squares = None
        for start in range(0, len(item.fit_features), STATISTICS_CHUNK):
            coarse = item.fit_features.coarse[start : start + STATISTICS_CHUNK].double()
            valid = None if item.fit_valid is None else item.fit_valid[start : start + STATISTICS_CHUNK].float()
            weight = _cell_weight(valid, coarse.shape[-2:], stride, len(coarse), torch.device("cpu")).double()
            part, part_sq = (coarse * weight).sum(dim=(0, 2, 3)), (coarse.pow(2) * weight).sum(dim=(0, 2, 3))
            sums, squares = (part, part_sq) if sums is None else (sums + part, squares + part_sq)
            total = total + weight.sum()
        mean = sums / total
        std = (squares / total - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3 * float(mean.abs().mean()) + 1e-6)
        detector.set_standardization(item.index, mean.float().to(detector.device), std.float().to(detector.device))


@torch.no_grad()
def fit_gaussians(detector: OneNIPDetector, data: Sequence[CategoryData]) -> None:
    """Per category, the per-position Gaussian (``onenip.models.gaussian``) of ALL its fit images'
    features (PaDiM's full covariance needs many images: on magnetic_tile's validation data 256 of
    its 685 gave image AUROC 0.90, all of them 0.95), a letterboxed cell counting where it holds
    image content. Nothing to do when ``model.gaussian_channels`` is 0."""
    if not detector.has_gaussian:
        return
    backbone = detector.cfg.backbone
    stride = backbone.fine_stride if detector.has_fine else backbone.feature_stride
    for item in data:
        chunks = []
        for start in range(0, len(item.fit_features), STATISTICS_CHUNK):
            index = slice(start, start + STATISTICS_CHUNK)
            source = detector.gaussian_source(item.fit_features.select(index))
            valid = None if item.fit_valid is None else item.fit_valid[index].float()
            chunks.append((source, _cell_weight(valid, source.shape[-2:], stride, len(source), torch.device("cpu"))))
        mean, precision = fit_position_gaussian(chunks, STATISTICS_PRIOR)
        detector.set_gaussian(item.index, mean.to(detector.device), precision.to(detector.device))


@torch.no_grad()
def fit_memory_banks(detector: OneNIPDetector, data: Sequence[CategoryData], seed: int) -> None:
    """Per category, PatchCore's memory bank (``onenip.models.memory``) of its fit images: k-center
    greedy picks ``model.memory_patches`` of a seeded uniform sample (at most ``CANDIDATES_PER_PATCH``
    per bank patch) of all their locally aware patches, letterbox padding excluded. A category with
    fewer patches than the bank keeps every patch (repeated to fill it). Nothing to do when
    ``model.memory_patches`` is 0."""
    if not detector.has_memory:
        return
    size = detector.cfg.memory_patches
    backbone = detector.cfg.backbone
    stride = backbone.fine_stride if detector.has_fine else backbone.feature_stride
    for item in data:
        starts = range(0, len(item.fit_features), STATISTICS_CHUNK)

        def cells(start: int) -> Tensor:  # (n, h*w) bool: the chunk's patches that hold image content
            chunk = item.fit_features.select(slice(start, start + STATISTICS_CHUNK))
            grid = (chunk.fine if chunk.fine is not None else chunk.coarse).shape[-2:]
            valid = None if item.fit_valid is None else item.fit_valid[start : start + STATISTICS_CHUNK].float()
            return _cell_weight(valid, grid, stride, len(chunk), torch.device("cpu")).flatten(1) > 0.5

        counts = [int(cells(start).sum()) for start in starts]
        total = sum(counts)
        generator = torch.Generator().manual_seed(seed * 7919 + item.index)
        sample = torch.randperm(total, generator=generator)[: size * CANDIDATES_PER_PATCH].sort().values
        candidates, offset = [], 0
        for start, count in zip(starts, counts, strict=True):
            chunk = item.fit_features.select(slice(start, start + STATISTICS_CHUNK)).float()
            embedding = detector.memory_embedding(chunk.to(detector.device)).cpu()
            patches = embedding.flatten(2).transpose(1, 2)[cells(start)]  # (count, C) in image, row, column order
            lo, hi = torch.searchsorted(sample, torch.tensor([offset, offset + count]))
            candidates.append(patches[sample[lo:hi] - offset])
            offset += count
        points = torch.cat(candidates)
        chosen = kcenter_greedy(points, size, generator)
        bank = points[chosen.repeat(-(-size // len(chosen)))[:size]]
        detector.set_memory(item.index, bank.to(detector.device))


def _cell_weight(valid: Tensor | None, grid: tuple[int, int] | torch.Size, stride: int, count: int, device: torch.device) -> Tensor:
    """(N, 1, h, w): 1 where a grid cell is mostly image content (always, without letterboxing)."""
    if valid is None:
        return torch.ones(count, 1, *grid, device=device)
    return (torch.nn.functional.avg_pool2d(valid, stride) >= 0.5).float()


@torch.no_grad()
def calibrate_scales(
    detector: OneNIPDetector, data: Sequence[CategoryData], device: torch.device, weights: Sequence[float] | None = None,
) -> None:
    """Per category, the typical maximum of each error map on held-out training normals.

    ``recon_scale`` / ``residual_scale`` / ``gaussian_scale`` / ``memory_scale`` = the mean over held-out
    normals of each image's maximum of the reconstruction-error / prompt-residual / Gaussian-distance /
    memory-distance map, so after division a normal image peaks near 1.
    The reference code uses the *test set's* (max + min) / 2; we never look at test data. With no
    holdout (fraction 0) the fit images are used, which is optimistic and documented as such.
    """
    detector.eval()
    for item in data:
        features = item.holdout_features if len(item.holdout_features) else item.fit_features
        detector.recon_scale[item.index] = 1.0
        detector.residual_scale[item.index] = 1.0
        detector.gaussian_scale[item.index] = 1.0
        detector.memory_scale[item.index] = 1.0
        recon_max, residual_max, gaussian_max, memory_max = [], [], [], []
        valid = item.holdout_valid if len(item.holdout_features) else item.fit_valid
        for start in range(0, len(features), 16):
            chunk = features.select(slice(start, start + 16)).float().to(device)
            recon, _, residual, gaussian, memory = detector.components(chunk, item.index, weights=weights)
            mask = None if valid is None else valid[start : start + 16].to(device)
            if recon is not None:
                recon_max.append(_masked_max(recon, mask))
            if residual is not None:
                residual_max.append(_masked_max(residual, mask))
            if gaussian is not None:
                gaussian_max.append(_masked_max(gaussian, mask))
            if memory is not None:
                memory_max.append(_masked_max(memory, mask))
        if recon_max:
            detector.recon_scale[item.index] = float(torch.cat(recon_max).mean().clamp_min(1e-6))
        if residual_max:
            detector.residual_scale[item.index] = float(torch.cat(residual_max).mean().clamp_min(1e-6))
        if gaussian_max:
            detector.gaussian_scale[item.index] = float(torch.cat(gaussian_max).mean().clamp_min(1e-6))
        if memory_max:
            detector.memory_scale[item.index] = float(torch.cat(memory_max).mean().clamp_min(1e-6))


def _masked_max(maps: Tensor, valid: Tensor | None) -> Tensor:
    if valid is not None:
        maps = maps * valid.to(maps.dtype)
    return maps.flatten(1).amax(dim=1).cpu()


def scale_refiner(detector: OneNIPDetector, category: str, components: list[Tensor | None]) -> list[Tensor | None]:
    """Set category's ``refiner_scale`` to the midpoint of its normalised reconstruction error's range on
    its validation images, as the reference scales the refiner's probability before blending (it takes
    the TEST set's (max + min) / 2; validation images are training data), and scale the validation
    refiner map alike. Maxima and minima of the quarter-size maps, as validation sees them."""
    k = detector.category_index(category)
    recon, refiner = components[0], components[1]
    if recon is None or refiner is None:
        return components
    previous = float(detector.refiner_scale[k])
    scale = float((recon.amax() + recon.amin()) / 2)
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    detector.refiner_scale[k] = scale
    return [components[0], refiner * (scale / previous), *components[2:]]


STATISTICS_ONLY = (False, False, False, True, True)
"""The maps a statistics-only model (``train.network: none``) may use: the Gaussian and the memory bank."""


def statistics_rule(detector: OneNIPDetector, params: Params) -> ScoringRule:
    """A statistics-only model's rule where validation cannot choose: the memory bank alone (the Gaussian
    without a bank), with the configured smoothing and pooling."""
    weights = (0.0, 0.0, 0.0, 0.0, 1.0) if detector.has_memory else (0.0, 0.0, 0.0, 1.0, 0.0)
    return ScoringRule(weights, params.model.scoring.smoothing_sigma, params.model.scoring.score_pool_size)


def validate(
    detector: OneNIPDetector, data: Sequence[CategoryData], validations: Sequence[CategoryValidation], params: Params, device: torch.device,
    *, final: bool = False,
) -> Selection:
    """Calibrate the maps on training normals, then choose the scoring rule on validation data (among the
    statistics' maps only for a statistics-only model, whose network is never computed). ``final``: also
    the rules among the network's maps alone and the statistics' alone, and what the network adds
    (``restricted_selections``), for the weights that will be kept."""
    statistics_only = params.train.network == "none"
    needed = [float(ok) for ok in STATISTICS_ONLY] if statistics_only else None
    if not statistics_only:
        calibrate_error_statistics(detector, data, device)
    calibrate_scales(detector, data, device, needed)
    per_category = [(v, validation_components(detector, v, weights=needed)) for v in validations]
    if not statistics_only and params.model.refiner_scale == "recon_range":
        per_category = [(v, scale_refiner(detector, v.category, components)) for v, components in per_category]
    default = ScoringRule(padded_weights(params.model.scoring.weights), params.model.scoring.smoothing_sigma, params.model.scoring.score_pool_size)
    selection = select_scoring(per_category, params.validation, default, STATISTICS_ONLY if statistics_only else None)
    if final and not statistics_only:
        restricted_selections(per_category, params.validation, default, selection)
    return selection


@torch.no_grad()
def calibrate_threshold(
    detector: OneNIPDetector, data: Sequence[CategoryData], threshold_quantile: float, device: torch.device, *, calibrated: bool = False,
) -> None:
    """Map statistics and scales (unless ``calibrated``: ``validate`` has just set them for the current
    weights), then the decision threshold per category: the ``threshold_quantile`` of the held-out
    training normals' image scores under the model's scoring rule."""
    if not calibrated:
        calibrate_error_statistics(detector, data, device)
        calibrate_scales(detector, data, device)
    for item in data:
        holdout = len(item.holdout_features) > 0
        features = item.holdout_features if holdout else item.fit_features
        valid = item.holdout_valid if holdout else item.fit_valid
        scores = []
        for start in range(0, len(features), 16):
            chunk = features.select(slice(start, start + 16)).float().to(device)
            mask = None if valid is None else valid[start : start + 16].to(device)
            scores.append(detector.forward_features(chunk, item.index, mask).pred_score.float().cpu())
        detector.score_threshold[item.index] = float(torch.quantile(torch.cat(scores), threshold_quantile))


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
