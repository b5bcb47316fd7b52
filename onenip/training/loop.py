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

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import Params
from onenip.data.manifest import DatasetError
from onenip.device import resolve_device
from onenip.features import FeatureCache
from onenip.models.features import Features
from onenip.models.detector import OneNIPDetector
from onenip.models.loss import onenip_loss
from onenip.models.scoring import ScoringRule, padded_weights
from onenip.synthesis.synthesizer import AnomalySynthesizer
from onenip.training.calibration import (
    STATISTICS_ONLY,
    add_jittered_normals,
    calibrate_error_statistics,
    calibrate_scales,
    calibrate_threshold,
    fit_gaussians,
    fit_memory_banks,
    fit_standardization,
    scale_refiner,
    fallback_rule,
)
from onenip.training.checkpoint import CHECKPOINT_DIR, BestEpoch, fingerprint_of, keeps, load_checkpoint, save_checkpoint
from onenip.training.data import CategoryData, choose_geometries, prepare_category_data, select_prompts, texture_sources
from onenip.training.pool import SyntheticPool, build_synthesizer, generation_indices
from onenip.training.schedule import draw_prompt_indices, epoch_batches, epoch_subsets, images_per_epoch, lr_at
from onenip.scoring_selection import (
    build_category_validation,
    CategoryValidation,
    check_validation_methods,
    restricted_selections,
    select_scoring,
    Selection,
    validation_components,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    detector: OneNIPDetector
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    prompt_paths: dict[str, list[str]] = field(default_factory=dict)
    output_dir: Path | None = None
    selection: Selection | None = None


class TrainCallback:
    """Hooks into a training run (the shape of Lightning's callbacks); subclass and override what you need.
    ``train_onenip(..., callbacks=[...])`` calls them in order."""

    def on_stage(self, name: str) -> AbstractContextManager[None]:
        """Entered around each stage of the run ("prepare data", "fit statistics", "validation set",
        "synthetic pool", "training steps", "validation", "checkpoint", "threshold", "save")."""
        return nullcontext()

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> bool:
        """After epoch ``epoch`` (1-based) and its checkpoint; return True to stop the run there, as an
        interruption would (``train_onenip`` then returns without a saved model)."""
        return False


class StopAfterEpoch(TrainCallback):
    """Stop after ``epoch`` epochs: an interruption at a known point (tests of resuming)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> bool:
        return epoch >= self.epoch


class EpochEnd(TrainCallback):
    """A plain function of ``(epoch, record)`` as a callback (for example to log to MLflow)."""

    def __init__(self, function: Callable[[int, dict[str, float]], None]) -> None:
        self.function = function

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> bool:
        self.function(epoch, record)
        return False


@dataclass
class TrainRun:
    """What one run carries from step to step: the data, the detector and its optimiser, the resumable
    state (history, best epoch) and the synthetic pools of the current generation."""

    params: Params
    output_dir: Path
    device: torch.device
    data: list[CategoryData]
    detector: OneNIPDetector
    prompt_paths: dict[str, list[str]]
    validations: list[CategoryValidation]
    callbacks: Sequence[TrainCallback] = ()
    optimizer: torch.optim.Optimizer | None = None
    scaler: Any = None
    fingerprint: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    best: BestEpoch | None = None
    start_epoch: int = 0
    train_seconds: float = 0.0
    pools: dict[str, SyntheticPool] = field(default_factory=dict)
    synthesizers: dict[str, AnomalySynthesizer] = field(default_factory=dict)
    final_selection: Selection | None = None
    """The last epoch's validation, reused when that epoch is kept."""
    network_probe: dict[str, Any] | None = None
    """``train.network: auto``: the first validation's epoch, what the network added there per category,
    and whether it was left out (training stopped, statistics only)."""

    @property
    def epochs(self) -> int:
        return 0 if self.params.train.network == "none" else self.params.train.epochs

    @property
    def statistics_only(self) -> bool:
        """No network map may be read: ``train.network: none``, or ``auto`` having left the network out."""
        return self.epochs == 0 or bool(self.network_probe and self.network_probe["left_out"])

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    @property
    def steps_per_epoch(self) -> int:
        cfg = self.params.train
        return sum(math.ceil(images_per_epoch(len(item.fit_images), cfg.max_images_per_epoch) / cfg.batch_size) for item in self.data)

    def stage(self, name: str) -> ExitStack:
        stack = ExitStack()
        for callback in self.callbacks:
            stack.enter_context(callback.on_stage(name))
        return stack


def train_onenip(
    manifest: pd.DataFrame,
    params: Params,
    output_dir: str | Path,
    categories: Sequence[str] | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Train one OneNIP network on the training normals of ``categories`` (all in the manifest if None):
    the reference's ``main``, as a list of steps over ``train_epoch`` / ``validate_epoch``.

    Args:
        manifest: from ``onenip.data.manifest.make_manifest``.
        params: the whole configuration (``model``, ``synthesis``, ``train``, ``validation`` are read).
        output_dir: receives ``checkpoint/`` (per epoch) and the final ``model/``.
        resume: continue from ``output_dir/checkpoint`` when it matches these params and data.
        callbacks: ``TrainCallback`` hooks (stages, end of each epoch; one may stop the run).

    Returns:
        ``TrainResult`` with the calibrated detector, saved to ``output_dir/model``.
    """
    started = time.perf_counter()
    run = prepare_run(manifest, params, Path(output_dir), categories, progress, callbacks)
    start_optimizer(run, resume)
    for epoch in range(run.start_epoch, run.epochs):
        if run.statistics_only:  # ``auto`` left the network out (also before a resume): no step can change the model
            break
        epoch_start = time.perf_counter()
        synthesis_seconds = refresh_pools(run, epoch, progress)
        record = train_epoch(run, epoch, progress)
        record |= {"synthesis_seconds": synthesis_seconds, "train_seconds": time.perf_counter() - epoch_start - synthesis_seconds}
        validate_epoch(run, epoch, record)
        record["seconds"] = time.perf_counter() - epoch_start
        with run.stage("checkpoint"):
            run.history.append(record)
            run.train_seconds += record["seconds"]
            save_checkpoint(run.checkpoint_dir, run.detector, run.optimizer, epoch + 1, run.history, run.fingerprint, run.best, run.scaler)
        stop = [callback.on_epoch_end(epoch + 1, record) for callback in callbacks]
        if any(stop) and epoch + 1 < run.epochs:
            return TrainResult(run.detector, run.history, run.train_seconds, run.prompt_paths, None)
    selection = keep_best_and_select(run)
    with run.stage("threshold"):  # a selection has just calibrated the maps of these very weights
        calibration = calibrate_threshold(run.detector, run.data, params.eval.threshold_quantile, run.device, calibrated=selection is not None)
    with run.stage("save"):
        metadata = {**model_metadata(run, selection), "calibration_scores": calibration}
        model_dir = run.detector.save(run.output_dir / "model", metadata=metadata)
    logger.info("Saved model to %s (%.1f s since start)", model_dir, time.perf_counter() - started)
    return TrainResult(run.detector, run.history, run.train_seconds, run.prompt_paths, run.output_dir, selection)


def prepare_run(
    manifest: pd.DataFrame, params: Params, output_dir: Path, categories: Sequence[str] | None, progress: bool,
    callbacks: Sequence[TrainCallback],
) -> TrainRun:  # fmt: skip
    """The detector, each category's data and fixed prompts, the statistics that need no training, and
    the validation set (held-out normals + unseen-family anomalies, fixed for the whole run)."""
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
    stages = TrainRun(params, output_dir, device, [], detector, {}, [], callbacks)
    with stages.stage("prepare data"):
        cache = FeatureCache(cfg.cache_dir, detector.feature_extractor, params.model.backbone)
        data = [prepare_category_data(manifest, params, cache, c, k, geometries[c], progress) for k, c in enumerate(categories)]
    prompt_paths: dict[str, list[str]] = {}
    for item in data:  # the fixed test-time prompts of each category (saved with the model)
        chosen = select_prompts(item.fit_features.coarse.float(), params.model.prompts)
        detector.set_prompt(item.index, item.fit_features.select(chosen).float())
        prompt_paths[item.name] = [str(item.fit["image_path"].iloc[i]) for i in chosen]
    with stages.stage("fit statistics"):  # frozen features only: fitted once, before any epoch
        add_jittered_normals(detector, data, params.model.statistics_jitter, cfg.seed, params.model.statistics_colour_jitter)
        fit_gaussians(detector, data)
        fit_memory_banks(detector, data, cfg.seed)
        fit_standardization(detector, data)
    with stages.stage("validation set"):
        validations = [
            build_category_validation(item.name, item.holdout_images, item.holdout_valid, detector.feature_extractor, params, seed=cfg.seed + item.index)
            for item in data if len(item.holdout_images)
        ] if params.validation.select else []  # fmt: skip
    return TrainRun(params, output_dir, device, data, detector, prompt_paths, validations, callbacks)


def start_optimizer(run: TrainRun, resume: bool) -> None:
    """AdamW (and the AMP scaler on CUDA); the checkpoint's state when resuming a matching run."""
    cfg = run.params.train
    model = run.detector.model.to(run.device)
    run.detector.to(run.device)
    run.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" else None
    run.fingerprint = fingerprint_of(run.params, run.data)
    run.synthesizers = {item.name: build_synthesizer(run.params.synthesis, texture_sources(run.data, item)) for item in run.data}
    if resume:
        restored = load_checkpoint(run.checkpoint_dir, run.detector, run.optimizer, run.fingerprint, run.scaler)
        if restored is not None:
            run.start_epoch, run.history, run.best = restored
            run.network_probe = next((h["network_probe"] for h in run.history if "network_probe" in h), None)
            logger.info("Resuming from epoch %d in %s", run.start_epoch, run.checkpoint_dir)
    run.train_seconds = sum(h.get("seconds", 0.0) for h in run.history)


def refresh_pools(run: TrainRun, epoch: int, progress: bool) -> float:
    """The synthetic pool of this epoch's generation for each category (the old one freed first: never
    two of a category in memory); returns the seconds it took."""
    started = time.perf_counter()
    params, cfg = run.params, run.params.train
    generation = epoch // params.synthesis.regenerate_every if params.synthesis.regenerate_every else 0
    with run.stage("synthetic pool"):
        for item in run.data:
            pool = run.pools.get(item.name)
            if pool is None or pool.generation != generation:
                run.pools.pop(item.name, None)
                del pool
                needed = generation_indices(
                    len(item.fit_images), item.index, cfg.max_images_per_epoch, cfg.seed, generation, params.synthesis.regenerate_every, cfg.epochs,
                )  # fmt: skip
                run.pools[item.name] = SyntheticPool.build(
                    item, run.synthesizers[item.name], run.detector.feature_extractor, params,
                    seed=cfg.seed, generation=generation, progress=progress, indices=needed,
                )  # fmt: skip
    return time.perf_counter() - started


def train_epoch(run: TrainRun, epoch: int, progress: bool) -> dict[str, float]:
    """One epoch of steps (the reference's ``train_one_epoch``); its mean losses and the last learning rate."""
    cfg = run.params.train
    # Everything random in this epoch derives from (seed, epoch): resume == uninterrupted.
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    sizes = [len(item.fit_images) for item in run.data]
    batches = epoch_batches(sizes, cfg.batch_size, generator, epoch_subsets(sizes, cfg.max_images_per_epoch, cfg.seed, epoch))
    run.detector.model.train()
    totals = {"loss": 0.0, "feature_mse": 0.0, "dice": 0.0}
    steps, total_steps = run.steps_per_epoch, run.steps_per_epoch * cfg.epochs
    with run.stage("training steps"):
        bar = tqdm(batches, desc=f"Epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
        for step_in_epoch, (position, idx) in enumerate(bar):
            for group in run.optimizer.param_groups:  # type: ignore[union-attr]
                group["lr"] = lr_at(epoch * steps + step_in_epoch, total_steps, cfg.warmup_epochs * steps, cfg.lr)
            losses = train_step(run, run.data[position], idx, generator)
            for key in totals:
                totals[key] += losses[key]
            bar.set_postfix(loss=f"{losses['loss']:.4f}")
    record = {key: value / max(1, len(batches)) for key, value in totals.items()}
    record |= {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}  # type: ignore[union-attr]
    return record


def train_step(run: TrainRun, item: CategoryData, idx: Tensor, generator: torch.Generator) -> dict[str, float]:
    """One optimiser step on a batch of one category: each query and its synthetic copy, each against a
    random other normal image as its prompt; both restored to the query's clean features."""
    cfg, detector, device = run.params.train, run.detector, run.device
    pool = run.pools[item.name]
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
    with torch.autocast("cuda", dtype=torch.float16) if run.scaler is not None else nullcontext():
        recon, refiner_logits, _ = detector.model.reconstruct_and_refine(
            detector.network_input(item.index, inputs.coarse), detector.network_input(item.index, prompts.coarse), inputs.fine, prompts.fine,
        )
        losses = onenip_loss(recon.float(), targets, refiner_logits.float(), all_masks, cfg.dice_weight,
                             image_pixels=item.geometry.height * item.geometry.width)  # fmt: skip
    optimizer, scaler, parameters = run.optimizer, run.scaler, detector.model.parameters()
    optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
    (losses.total if scaler is None else scaler.scale(losses.total)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, cfg.clip_grad_norm)
    if scaler is None:
        optimizer.step()  # type: ignore[union-attr]
    else:
        scaler.step(optimizer)
        scaler.update()
    return {"loss": losses.total.item(), "feature_mse": losses.feature_mse.item(), "dice": losses.dice.item()}


def validate_epoch(run: TrainRun, epoch: int, record: dict[str, float]) -> None:
    """Every ``validation.every_epochs`` epochs and the last: choose the scoring rule on validation data,
    and keep these weights when they are the best so far (within ``validation.epoch_tolerance``)."""
    params = run.params
    last = epoch + 1 == params.train.epochs
    if not run.validations or not ((epoch + 1) % params.validation.every_epochs == 0 or last):
        return
    started = time.perf_counter()
    probe = params.train.network == "auto" and run.network_probe is None and not last
    with run.stage("validation"):
        selection = validate(run.detector, run.data, run.validations, params, run.device, final=last or probe)
    if probe:
        run.network_probe = network_probe(selection, epoch + 1, params.validation.refiner_margin_se)
        record["network_probe"] = run.network_probe  # type: ignore[assignment]  # resuming reads it back
        logger.info("train.network auto, epoch %d: %s", epoch + 1, run.network_probe)
    record["val_score"] = selection.score
    record["validation_seconds"] = time.perf_counter() - started
    run.final_selection = selection if last else None
    if keeps(run.best, selection.score, params.validation.epoch_tolerance):
        top = selection.score if run.best is None else max(run.best.top_score, selection.score)
        state = {k: v.detach().cpu().clone() for k, v in run.detector.model.state_dict().items()}
        run.best = BestEpoch(epoch + 1, selection.score, state, top)
    elif run.best is not None:
        run.best.top_score = max(run.best.top_score, selection.score)


def network_probe(selection: Selection, epoch: int, margin_se: float) -> dict[str, Any]:
    """``auto``'s verdict at a validation: the network is left out when on no category the chosen rule
    gives its TRAINED maps (reconstruction error, refiner) weight and beats statistics only by more than
    ``margin_se`` standard errors. The prompt residual needs no training, so a gain that is its alone
    earns no epochs; a category without validation anomalies gives no evidence for the network."""
    adds = {c: {**a, "trained_weight": float(sum(selection.rules[c].weights[:2]))} for c, a in selection.network_adds.items()}
    earns = [a["difference"] > margin_se * a["standard_error"] and a["trained_weight"] > 0 for a in adds.values()]
    return {"epoch": epoch, "margin_se": margin_se, "network_adds": adds, "left_out": not any(earns)}


def keep_best_and_select(run: TrainRun) -> Selection | None:
    """The kept weights (the best epoch's when it is not the last) and the scoring rule chosen for them;
    a statistics-only model's rules never read the untrained network."""
    params, detector = run.params, run.detector
    selection = run.final_selection  # when the last epoch is kept, its validation already chose for these weights
    if run.best is not None and run.best.epoch != params.train.epochs and not run.statistics_only:
        detector.model.load_state_dict(run.best.state)
        selection = None  # the kept weights need their own calibration and selection
    if (selection is None or run.statistics_only) and run.validations:
        with run.stage("validation"):
            selection = validate(detector, run.data, run.validations, params, run.device, final=True, statistics_only=run.statistics_only)
    if run.statistics_only:  # not even the default of a category too small to validate may read the network
        fallback = fallback_rule(detector, params, statistics_only=True)
        detector.scoring = {item.name: fallback for item in run.data} if selection is None else {
            name: rule if sum(rule.weights[:3]) == 0 else fallback for name, rule in selection.rules.items()}  # fmt: skip
    elif selection is not None:
        detector.scoring = dict(selection.rules)
    return selection


def model_metadata(run: TrainRun, selection: Selection | None) -> dict[str, Any]:
    params = run.params
    kept_epoch = 0 if run.statistics_only else run.epochs if run.best is None or run.best.epoch == params.train.epochs else run.best.epoch
    return {
        "prompt_paths": run.prompt_paths,
        "threshold_rule": f"quantile {params.eval.threshold_quantile} of held-out training-normal image scores",
        "holdout_images": {item.name: len(item.holdout) for item in run.data},
        "train_seconds": run.train_seconds,
        "epochs": run.network_probe["epoch"] if run.statistics_only and run.network_probe else run.epochs,  # trained
        "kept_epoch": kept_epoch,
        "network": params.train.network,
        "network_probe": run.network_probe,
        "selection": None if selection is None else {
            "rules": {c: r.to_dict() for c, r in selection.rules.items()}, "score": selection.score,
            "metrics": selection.metrics,
            "validation_methods": list(params.validation.methods),
            "validation_anomaly_strength": list(params.validation.anomaly_strength),
            "validation_images": {v.category: len(v.labels) for v in run.validations},
            "restricted": selection.restricted,
            "network_adds": selection.network_adds,
        },
    }  # fmt: skip


def validate(
    detector: OneNIPDetector, data: Sequence[CategoryData], validations: Sequence[CategoryValidation], params: Params, device: torch.device,
    *, final: bool = False, statistics_only: bool | None = None,
) -> Selection:
    """Calibrate the maps on training normals, then choose the scoring rule on validation data (among the
    statistics' maps only for a statistics-only model, whose network is never computed). ``final``: also
    the rules among the network's maps alone and the statistics' alone, and what the network adds
    (``restricted_selections``), for the weights that will be kept. ``statistics_only`` defaults to
    ``train.network: none``."""
    statistics_only = params.train.network == "none" if statistics_only is None else statistics_only
    needed = [float(ok) for ok in STATISTICS_ONLY] if statistics_only else None
    if not statistics_only:
        calibrate_error_statistics(detector, data, device)
    calibrate_scales(detector, data, device, needed)
    per_category = [(v, validation_components(detector, v, weights=needed)) for v in validations]
    if not statistics_only and params.model.refiner_scale == "recon_range":
        per_category = [(v, scale_refiner(detector, v.category, components)) for v, components in per_category]
    scoring = params.model.scoring
    selection = select_scoring(per_category, params.validation, fallback_rule(detector, params, statistics_only),
                               STATISTICS_ONLY if statistics_only else None)  # fmt: skip
    if final and not statistics_only:
        paper = ScoringRule(padded_weights(scoring.weights), scoring.smoothing_sigma, scoring.score_pool_size)
        network = paper if sum(paper.weights[3:]) == 0 else ScoringRule((0.5, 0.5, 0.0, 0.0, 0.0), scoring.smoothing_sigma, scoring.score_pool_size)
        restricted_selections(per_category, params.validation, {"network": network, "statistics": fallback_rule(detector, params, True)}, selection)
    return selection


def train_networks(
    manifest: pd.DataFrame,
    params: Params,
    output_dir: str | Path,
    categories: Sequence[str] | None = None,
    *,
    mode: str | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[TrainCallback] = (),
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
        results[name] = train_onenip(manifest, params, Path(output_dir) / name, group, resume=resume, progress=progress, callbacks=callbacks)
    return results
