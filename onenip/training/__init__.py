"""Training OneNIP: the data of each category (``data``), the synthetic anomalies it learns to restore
(``pool``), what each step trains on (``schedule``), resuming (``checkpoint``), what is fitted without
gradients (``calibration``) and the loop itself (``loop``: ``train_onenip`` over ``train_epoch`` /
``train_step`` / ``validate_epoch``, with ``TrainCallback`` hooks).

The backbone is frozen, so training runs on cached features (``onenip.features``). Every source of
randomness in an epoch is seeded from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch k
continues exactly as the uninterrupted run would.

See Also:
    ``onenip.models.onenip.OneNIP`` (the torch model), ``onenip.evaluation`` (metrics and images).
"""

from onenip.training.calibration import (
    STATISTICS_CHUNK,
    STATISTICS_IMAGES,
    STATISTICS_ONLY,
    calibrate_error_statistics,
    calibrate_scales,
    calibrate_threshold,
    error_statistics,
    fit_gaussians,
    fit_memory_banks,
    fit_standardization,
    scale_refiner,
    statistics_rule,
)
from onenip.training.checkpoint import BestEpoch, fingerprint_of, keeps, load_checkpoint, save_checkpoint
from onenip.training.data import CategoryData, choose_geometries, load_images, prepare_category_data, select_prompt, select_prompts, split_holdout
from onenip.training.loop import (
    EpochEnd,
    StopAfterEpoch,
    TrainCallback,
    TrainResult,
    TrainRun,
    train_epoch,
    train_networks,
    train_onenip,
    train_step,
    validate,
    validate_epoch,
)
from onenip.training.pool import SyntheticPool, build_synthesizer, generation_indices
from onenip.training.schedule import draw_prompt_indices, epoch_batches, epoch_subset, epoch_subsets, images_per_epoch, lr_at

__all__ = [
    "STATISTICS_CHUNK", "STATISTICS_IMAGES", "STATISTICS_ONLY", "BestEpoch", "CategoryData", "EpochEnd", "StopAfterEpoch", "SyntheticPool",
    "TrainCallback", "TrainResult", "TrainRun", "build_synthesizer", "calibrate_error_statistics", "calibrate_scales",
    "calibrate_threshold", "choose_geometries", "draw_prompt_indices", "epoch_batches", "epoch_subset", "epoch_subsets",
    "error_statistics", "fingerprint_of", "fit_gaussians", "fit_memory_banks", "fit_standardization", "generation_indices",
    "images_per_epoch", "keeps", "load_checkpoint", "load_images", "lr_at", "prepare_category_data", "save_checkpoint",
    "scale_refiner", "select_prompt", "select_prompts", "split_holdout", "statistics_rule", "train_epoch", "train_networks",
    "train_onenip", "train_step", "validate", "validate_epoch",
]  # fmt: skip
