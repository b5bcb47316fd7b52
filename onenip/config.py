"""``params.yaml`` -> typed, frozen sections. The only module that reads the YAML.

The CLI, the Prefect flows and the ``dvc.yaml`` stages all call ``load_params``: one configuration.
Unknown keys fail at load (``extra="forbid"``): a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from onenip.overrides import ConfigError, deep_merge

DEFAULT_PARAMS_PATH = Path("params.yaml")


class _Section(BaseModel, extra="forbid", frozen=True):
    pass


class DataParams(_Section):
    """Which dataset the default job uses and how datasets are validated."""

    name: str = "elpv"
    """Dataset name: it lives in ``data/<name>`` and is tracked by ``data/<name>.dvc``."""
    source: str = "elpv-dataset"
    """Where ``make run`` imports it from: a folder, or ``elpv-dataset`` (the PyPI package)."""
    format: Literal["mvtec", "visa", "btad", "elpv"] = "elpv"
    categories: tuple[str, ...] = ()
    """Restrict to these categories; empty means every category found."""
    min_train_images: int = Field(10, ge=1)
    require_masks: Literal["auto", "always", "never"] = "auto"
    """``auto``: a category needs masks for its anomalous test images once any of them has one;
    image-level datasets (ELPV) have none and are checked for labels only."""
    test_every: int = Field(5, ge=2)
    """Converters without a given split send every n-th normal image (sorted order) to test."""

    @field_validator("name")
    @classmethod
    def _not_the_prompts_folder(cls, value: str) -> str:
        if value == "prompts":  # data/prompts holds onboarded categories' prompt images (onenip.jobs.track_prompts)
            msg = "data.name 'prompts' is reserved: data/prompts versions onboarded categories' prompt images"
            raise ValueError(msg)
        return value

    @property
    def root(self) -> Path:
        return Path("data") / self.name


class BackboneParams(_Section):
    """Frozen feature extractor (see ``onenip.models.backbone``)."""

    name: Literal["tf_efficientnet_lite0", "tf_efficientnet_lite2"] = "tf_efficientnet_lite0"
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    """timm feature stages; for lite0 these are the 16/24/40/112-channel blocks at strides 2/4/8/16."""
    feature_stride: int = 16
    """Every stage is resized to this stride and concatenated."""
    input_size: int = Field(256, ge=32)
    """Side of a square input; a category with another aspect gets about the same area at its own
    aspect (``model.keep_aspect``, ``onenip.data.geometry``)."""
    fine_indices: tuple[int, ...] = (2, 3)
    """Stages of the fine features (the refiner's skip path and the prompt residual): lite0 stages 2
    and 3 (40 + 112 channels) at ``fine_stride``, the layers anomalib's PatchCore uses. Empty: no fine path."""
    fine_stride: int = 8
    pooling: Literal["average", "bilinear"] = "average"
    """How a finer stage comes onto a coarser grid: ``average``, the mean of each grid cell; ``bilinear``,
    the reference's (UniAD's MFCN) bilinear resize with aligned corners, which reads one point per cell.
    Chosen on training data only: ``benchmarks/backbone_pooling.py``."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """TF EfficientNet-Lite weights expect inputs in [-1, 1] (timm's ``tf_efficientnet_lite*`` config);
    ``tests/unit/test_backbone.py`` checks it by classifying real photos."""

    @field_validator("out_indices")
    @classmethod
    def _sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or list(value) != sorted(set(value)):
            msg = f"out_indices must be non-empty, sorted and unique, got {list(value)}"
            raise ValueError(msg)
        return value

    @field_validator("fine_indices")
    @classmethod
    def _fine_sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if list(value) != sorted(set(value)):
            msg = f"fine_indices must be sorted and unique, got {list(value)}"
            raise ValueError(msg)
        return value


class ScoringParams(_Section):
    """How the component maps become the anomaly map and the image score (``onenip.models.scoring``).

    These are the defaults (the paper's blend); with ``validation.select`` the rule is chosen per model
    on validation data made from training images, and stored in the model."""

    weights: tuple[float, float, float] | tuple[float, float, float, float] | tuple[float, float, float, float, float] = (0.5, 0.5, 0.0, 0.0, 0.0)
    """Weights of the normalised reconstruction error, the refiner probability, the prompt residual,
    the per-position Gaussian's distance and the memory bank's distance (fewer numbers: the later maps get 0)."""
    smoothing_sigma: float = Field(4.0, ge=0)
    score_pool_size: int = Field(16, ge=1)
    """Image score = max of the map average-pooled with this window (paper: 16)."""


class ModelParams(_Section):
    """OneNIP sizes. Defaults marked "paper" are the OneNIP reference config (onenip_config.yaml);
    the others were chosen by measurement on 2 CPU cores (benchmarks/README.md)."""

    backbone: BackboneParams = BackboneParams()
    embed_dim: int = Field(128, ge=8)
    """Transformer width d (paper: 256)."""
    num_heads: int = Field(8, ge=1)
    num_encoder_layers: int = Field(2, ge=0)  # paper: 4
    num_decoder_layers: int = Field(2, ge=1)  # paper: 4
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    neighbor_size: int | tuple[int, int] = 9
    """BLOCKED attention window around each token, in grid cells (rows, cols; one number: square), as the
    reference's neighbour mask: a token never attends to this window around itself, itself included. Paper:
    7 on 14x14; ``n // 2`` cells each side are blocked. Smaller than the grid in at least one direction."""
    final_attention_mask: bool = False  # the decoder's last prompt->image attention blocks it too (reference: not)
    feature_jitter_scale: float = Field(20.0, ge=0)
    feature_jitter_prob: float = Field(1.0, ge=0, le=1)
    refiner_dim: int = Field(128, ge=1)
    prompts: int = Field(1, ge=1)
    """Normal prompts stored per category (paper: 1). With more, each query is reconstructed from the
    ONE stored prompt most similar to it (cosine of grid-mean features); chosen to cover the category's
    variety (k-center greedy from the most typical image)."""
    feature_standardization: Literal["none", "category", "position"] = "none"
    """``category``: the network reads and reconstructs each category's coarse features standardised per
    channel (mean and standard deviation over its fit images); ``position``: less each grid position's
    mean, so an output of zero is the per-position mean; the paper's network reads raw features."""
    refiner_scale: Literal["probability", "recon_range"] = "probability"
    """The refiner map as blended: ``probability``, its probability; ``recon_range``, times the midpoint of
    the normalised reconstruction error's range, as the reference blends them (there over the test set,
    here over the validation set: training images only)."""
    prompt_reduction: Literal["nearest", "min"] = "nearest"
    """With several stored prompts: ``nearest``, each query is scored against the ONE prompt whose global
    feature is most similar; ``min``, against every prompt, each network map keeping its per-pixel
    minimum over them (costs one decoder pass per prompt)."""
    error_normalization: Literal["none", "position", "whitened"] = "whitened"
    """Error maps (reconstruction error, prompt residual): ``none``, the residual's L2 norm (the paper's);
    ``position``, the norm of its z-scores per position and channel on the training normals (shrunk by
    ``statistics_prior``); ``whitened``, the same with the channels decorrelated (covariance pooled over positions)."""
    whitening_ridge: float = Field(0.01, gt=0)  # ``whitened``: ridge on the residual covariance, a fraction of its mean variance
    error_std_floor: float = Field(1e-3, gt=0)  # error z-scores: each spread >= this fraction of the channels' RMS
    residual_window: int | None = None
    """Prompt residual: only prompt patches within this many fine cells (window side) count; None: all."""
    statistics_prior: float = Field(40.0, ge=0)  # pseudo-images pulling per-position statistics to the pooled ones
    statistics_jitter: float = Field(0.25, ge=0)  # those statistics also see fit images under gain and gamma exp(+-this)
    statistics_colour_jitter: float = Field(0.2, ge=0)  # ... and colour fit images under per-channel gains exp(+-this)
    gaussian_channels: int = Field(100, ge=0)
    """Per-position Gaussian of the training normals' fine features (PaDiM's statistic,
    ``onenip.models.gaussian``): channels of its seeded random subset (PaDiM: 100); 0: no Gaussian map."""
    memory_patches: int = Field(4096, ge=0)
    """PatchCore's memory bank (``onenip.models.memory``): patches of the training normals' locally aware stride-8
    features kept per category by k-center greedy, a fifth map (each patch's distance to the nearest); 0: none."""
    memory_jitter: bool = False  # the bank's candidates include the jittered copies' patches (lighting, white balance)
    memory_candidates: int = Field(16, ge=1)  # k-center greedy's seeded sample: at most this many patches per bank patch
    scoring: ScoringParams = ScoringParams()
    keep_aspect: bool = True
    """Each category's input keeps the aspect of its training images (about ``input_size**2`` pixels);
    false squashes every image to ``input_size x input_size``."""
    input_sizes: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """Per-category input ``[height, width]`` (multiples of the feature stride), overriding the choice
    made from the training images."""
    mode: Literal["unified", "per-category"] = "unified"
    """unified: one network for all categories of a root (the paper's setting)."""

    @field_validator("neighbor_size")
    @classmethod
    def _positive_window(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = (value, value) if isinstance(value, int) else tuple(value)
        if len(sizes) != 2 or min(sizes) < 1:
            msg = f"neighbor_size must be a positive number or [rows, cols], got {value}"
            raise ValueError(msg)
        return value

    @property
    def neighbor_window(self) -> tuple[int, int]:
        size = self.neighbor_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class SynthesisParams(_Section):
    """Anomaly synthesis for restoration and refiner training (``onenip.synthesis``)."""

    methods: tuple[str, ...] = ("perlin", "cutpaste_patch", "cutpaste_scar", "crack", "brightness")
    probabilities: tuple[float, ...] | None = None
    perlin_threshold: float = Field(0.5, gt=0, lt=1)
    min_scale_exp: int = Field(1, ge=0)
    max_scale_exp: int = Field(5, ge=0)
    foreground: Literal["none", "auto"] = "none"
    pool_size: int = Field(1, ge=1)  # synthetic copies per training image whose features are kept for an epoch
    regenerate_every: int = Field(1, ge=0)
    """Epochs between pool regenerations (0: never): 1 gives fresh anomalies every epoch."""
    jittered_fraction: float = Field(0.0, ge=0, le=1)
    """Synthetic copies made on the image under the statistics' lighting / white-balance jitter (still restored to its clean features)."""


class TrainParams(_Section):
    seed: int = 0
    network: Literal["onenip", "none", "auto"] = "onenip"
    """``onenip``: train the network, whose maps the rule may use beside the statistics; ``none``: statistics
    only in about a minute (Gaussian and memory bank fitted, the rule chosen among them, no network step);
    ``auto``: train, but ship statistics only from the first validation that is not the last when on no
    category a rule weighting trained maps beats them by over ``validation.refiner_margin_se`` SEs."""
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(4e-4, gt=0)
    """AdamW learning rate (paper: 1e-4 for 1000 epochs on GPUs)."""
    weight_decay: float = Field(1e-4, ge=0)
    clip_grad_norm: float = Field(0.1, gt=0)  # paper: 0.1
    warmup_epochs: int = Field(1, ge=0)
    dice_weight: float = Field(0.5, ge=0)  # paper: 0.5
    holdout_fraction: float = Field(0.1, ge=0, lt=1)
    """Training normals held out for calibration (recon scale, threshold); never test images."""
    min_holdout: int = Field(2, ge=1)
    device: str = "auto"
    """auto: CUDA (with AMP) when present, else CPU."""
    feature_batch_size: int = Field(16, ge=1)
    max_images_per_epoch: int | None = Field(None, ge=1)
    """Each epoch trains on a fresh seeded random subset of this many fit images of a category that
    has more (None: all). Bounds a large category's epoch (time) and its weight in a unified model;
    the Gaussians, statistics and validation still use every image."""
    cache_dir: str = ".cache/onenip"
    """Backbone features per (image sha256, backbone, input size)."""


class ValidationParams(_Section):
    """Validation data from training images only: held-out training normals plus anomalies of families
    the model never trains on (``onenip.scoring_selection``). It chooses the scoring rule and the epoch to keep."""

    select: bool = True
    """Choose the scoring rule (blend weights, smoothing, pooling) and the epoch on validation data;
    false keeps ``model.scoring`` and the last epoch."""
    methods: tuple[str, ...] = ("warp", "smudge", "spots")
    """Synthesis families of the validation anomalies; none of them may be in ``synthesis.methods``."""
    anomalies_per_image: int = Field(4, ge=1)
    anomaly_strength: tuple[float, float] = (0.3, 1.0)
    """Each validation anomaly is faded towards its normal image by a factor drawn uniformly from this
    range (``AcceptanceSettings(strength=...)``; the mask is kept). At full strength every rule found
    them (validation pixel AUROC 0.99 on magnetic_tile, where real defects reach 0.82), so the scores
    hardly told the rules apart; faint ones are where the maps differ. ``[1, 1]``: full strength.
    OneNIP's choice only: the generalist's onboarding and gate keep full strength, where its validation
    AUROCs (about 0.8 with k prompts) are far from that ceiling."""
    jittered_normals: bool = False
    """Each held-out normal also under the statistics' lighting (and, colour images, white-balance) jitter, as a normal:
    a map that fires on a drifted normal loses. ``model.statistics_jitter`` / ``statistics_colour_jitter`` set the strength."""
    every_epochs: int = Field(2, ge=1)
    """Validate after every n-th epoch (and the last); validation does not change training (every epoch reseeds)."""
    epoch_tolerance: float = Field(0.02, ge=0)
    """The latest validated epoch scoring within this of the best is kept (the noisy maximum favours an early epoch)."""
    weight_step: float = Field(0.25, gt=0, le=1)
    """Candidate blend weights: the simplex of (recon, refiner, residual) in steps of this size."""
    max_refiner_weight: float = Field(0.5, ge=0, le=1)
    """The refiner's weight is at most this (the paper's blend gives it 0.5). The refiner learns
    synthetic anomalies, and validation anomalies are synthetic too, if of other families: it scores
    optimistically on them. On a real held-out category the refiner map alone reached P-AUROC 0.714
    against the reconstruction error's 0.923 (issue "OneNIP quality"), so validation may not hand it
    the whole map."""
    refiner_margin_se: float = Field(1.0, ge=0)
    """A rule with more refiner weight is chosen over the best rule with less only when its validation
    score is higher by more than this many standard errors of the paired difference (bootstrap over
    the validation images): as for the generalist's trained head (``generalist.trained_margin_se``),
    the part trained on synthetic anomalies must win beyond the noise. 0: the plain highest score."""
    refiner_every_family: bool = False
    """That rule must also score at least as high on each validation family alone (``generalist.trained_every_family``)."""
    refiner_bootstrap: int = Field(50, ge=2)
    """Bootstrap resamples for that standard error (and the anchor's)."""
    anchor: Literal["memory", "none"] = "memory"
    """The safe rule that wins ties: ``memory``, the memory bank alone (PatchCore inside the model);
    a rule with more maps is chosen over it only when it wins beyond the noise (``anchor_margin_se``,
    ``anchor_rule``). ``none``: the plain highest score."""
    anchor_margin_se: float = Field(2.0, ge=0)
    """Paired bootstrap standard errors by which a richer rule must beat the anchor."""
    anchor_rule: Literal["both", "score"] = "score"
    """``both``: beat the anchor on localisation (mean of pixel AUROC and AUPRO) AND on image AUROC;
    ``score``: on the selection score, and lose on neither of the two beyond the margin."""
    smoothing_sigmas: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0)
    score_pool_sizes: tuple[int, ...] = (1, 8, 16, 32)
    min_normals: int = Field(4, ge=1)
    """With fewer held-out normals in a category, validation cannot choose: ``small_category_weights`` hold."""
    small_category_weights: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.5, 0.5)
    """That rule (``model.scoring``'s sigma and pool; maps a model lacks drop out, none left: ``model.scoring``), LOCO on 18-image cuts."""

    @field_validator("anomaly_strength")
    @classmethod
    def _strength_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            msg = f"anomaly_strength must be [low, high] with 0 < low <= high <= 1, got {list(value)}"
            raise ValueError(msg)
        return value


class EvalParams(_Section):
    threshold_quantile: float = Field(0.99, gt=0, le=1)
    """Decision threshold = this quantile of held-out training-normal image scores."""
    num_heatmaps: int = Field(8, ge=0)
    """Heatmap overlays written per category."""
    prompt_trials: int = Field(5, ge=0)
    """Random prompts for the prompt-sensitivity report (0: skip)."""


GATE_METRICS = ("image_AUROC", "image_AP", "image_F1max", "pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")


class GateParams(_Section):
    """When a newly trained model may become the ``champion`` (``onenip.gates``)."""

    minimum: dict[str, float] = Field(
        default_factory=lambda: {"image_AUROC": 0.7, "pixel_AUROC": 0.8, "pixel_AP": 0.1},
    )
    """Absolute floor per metric. Pixel metrics only apply where the category has masks."""
    max_regression: float = Field(0.01, ge=0)
    """No-regression rule: each ``compare`` metric may fall at most this much below the champion's."""
    compare: tuple[str, ...] = ("image_AUROC", "pixel_AUROC", "pixel_AP")
    export_tolerance: float = Field(1e-3, gt=0)
    """The exported graph must reproduce torch's image scores and maps within this, in units of the
    category's threshold, and flip no verdict farther than this from it (``onenip.export_check``)."""
    export_check_images: int = Field(24, ge=1)
    """Test images (spread over the split) scored by torch and by the export at registration."""
    max_latency_ms: float | dict[str, float] | None = None
    """Served p50 milliseconds for one image (resize + graph) at registration; a slower version is not
    promoted. One number for every category or one per category; None: not checked."""

    def latency_limit(self, category: str) -> float | None:
        """``max_latency_ms`` for ``category`` (None: no limit)."""
        if isinstance(self.max_latency_ms, dict):
            return self.max_latency_ms.get(category)
        return self.max_latency_ms

    @field_validator("max_latency_ms")
    @classmethod
    def _positive_latency(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        limits = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(limit <= 0 for limit in limits):
            msg = f"max_latency_ms must be positive milliseconds (or one per category), got {value}"
            raise ValueError(msg)
        return value

    @field_validator("minimum")
    @classmethod
    def _known_minimum(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(GATE_METRICS))
        if unknown:
            msg = f"unknown gate metrics {unknown}; known: {list(GATE_METRICS)}"
            raise ValueError(msg)
        return value

    @field_validator("compare")
    @classmethod
    def _known_compare(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(GATE_METRICS))
        if unknown:
            msg = f"unknown gate metrics {unknown}; known: {list(GATE_METRICS)}"
            raise ValueError(msg)
        return value


class PipelineParams(_Section):
    """Prefect flows, MLflow tracking/registry and DVC remote (``pipelines/``, ``onenip.registry``)."""

    tracking_uri: str | None = None
    """MLflow tracking store; ``MLFLOW_TRACKING_URI`` wins, default ``sqlite:///<project>/mlflow.db``."""
    artifact_root: str = "mlruns"
    """Artifact location of new experiments (a folder in the project, or s3://... for a shared store)."""
    model_name: str = "onenip-{dataset}-{category}"
    """Registered model per category; ``{dataset}`` and ``{category}`` are filled in."""
    experiment: str = "onenip-{dataset}"
    runs_dir: str = "runs/pipeline"
    """Models, evaluations and reports of pipeline runs, one folder per training fingerprint."""
    dvc_remote: str | None = None
    """Remote the version step pushes to (None: the repository's default remote; "": do not push)."""
    task_runner: Literal["local", "dask"] = "local"
    max_workers: int = Field(1, ge=1)
    """Local runner: categories trained at once (threads)."""
    dask_address: str | None = None
    """Dask runner: an existing scheduler (tcp://host:8786); None starts a LocalCluster."""
    dask_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    """Torch/OpenMP threads per Dask worker (set before workers import torch)."""
    retries: int = Field(2, ge=0)
    """Retries of the data-versioning task on transient DVC failures (a lock held by another run, a remote hiccup)."""
    retry_delay_seconds: float = Field(5.0, ge=0)
    schedule_cron: str = "0 3 * * 1"
    """``onenip schedule``: when the ``retrain`` deployment runs (default Mondays 03:00)."""
    schedule_timezone: str = "UTC"


class GeneralistParams(_Section):
    """The few-shot generalist (InCTRL head on the frozen backbone): trained once on auxiliary
    categories, it scores a new category from k normal prompt images without training."""

    train_shots: tuple[int, ...] = (1, 2, 4, 8)
    """k drawn per training step from these (the prompts of each query come from its own category)."""
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    real_anomalies: bool = False
    """Also train on the auxiliary categories' real test anomalies (only when the user allows it)."""
    smoothing_sigma: float = Field(4.0, ge=0)
    holistic_input: Literal["map", "sorted"] = "map"
    """What the holistic head reads: the residual map in patch order (``map``, the reference) or sorted in
    descending order (``sorted``, position-free; with real anomalies better on kolektor, far worse on
    bottle at k >= 4: benchmarks/README "Few-shot")."""
    shots: int = Field(4, ge=1)
    """Onboarding default: normal prompt images per new category."""
    head_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Onboarding chooses the holistic head's share of the image score among these (0: the max patch
    residual alone; 0.5: InCTRL's mean) on the category's own normals plus synthetic anomalies of the
    validation families, never on test; ties go to the one nearest 0.5. One value fixes it."""
    residuals: tuple[Literal["inctrl", "neighbourhood", "neighbourhood_rotated"], ...] = ("inctrl", "neighbourhood")
    """What onboarding may score a category with, chosen on the same data as the head weight: ``inctrl``
    (the multi-layer cosine residual, with the head), ``neighbourhood`` (PatchCore's 3x3-neighbourhood
    features, Euclidean distance to the nearest prompt patch, no trained part) and
    ``neighbourhood_rotated`` (the same, the bank also holding each prompt turned by 180 degrees; opt-in,
    for products whose normal look has no fixed orientation: measured, it was rarely chosen and made
    onboarding dearer, benchmarks/README "Few-shot: a rotated prompt bank"). Ties go to the earlier of these."""
    keep_aspect: bool = True
    """Onboard a category at its own aspect (the input a trained OneNIP model of it gets: its
    ``model.input_sizes`` entry, else its normal training images' aspect at about the generalist's input
    size squared pixels) instead of the generalist's square; a category whose
    images' aspects vary stays square (letterboxing would make the nearest-patch residuals compare
    padding with padding). The generalist itself always trains on squares. Chosen on validation data:
    on kolektor left out, the same anomalies scored higher at its own aspect than squashed
    (benchmarks/README "Few-shot: onboarding at the category's own aspect")."""
    trained_margin_se: float = Field(1.0, ge=0)
    """``inctrl`` (trained) is chosen over the best untrained residual only when its validation AUROC is
    higher by more than this many standard errors of the paired difference (DeLong): the validation
    anomalies are synthetic, as were those the head learned from, and the best of several head weights is
    an optimistic estimate, so a lead within the noise goes to the map with no trained part (the
    one-standard-error rule of model selection). 0: the highest AUROC wins, ties to ``inctrl``."""
    trained_every_family: bool = True
    """``inctrl`` must moreover score at least as high as the untrained residual on each validation family
    alone (normals against that family's anomalies): real defects are a family nobody synthesised, and a
    lead on the mix that one family carries need not carry over to them. Chosen on validation data only:
    holding each validation family out in turn, this rule's choices scored higher on the held-out family
    than the pooled margin's (benchmarks/README "Few-shot: the trained residual must win on every family")."""
    rotated_bank_images: int = Field(8, ge=0)
    """``neighbourhood_rotated`` is offered while its bank (2k images) holds at most this many: it doubles
    the nearest-patch search, and onboarding must stay under a minute on 2 cores (k <= 4 by default)."""
    validation_images: int = Field(32, ge=1)
    """Normal images (not prompts) that get a synthetic anomaly for choosing the head weight."""
    calibration_images: int = Field(256, ge=1)
    """At most this many normal images (not prompts, evenly spaced) score the threshold and the head
    weight's normal side: a quantile needs no more, and each costs a k-prompt residual."""

    @field_validator("head_weights")
    @classmethod
    def _weights_in_unit_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 <= w <= 1 for w in value):
            msg = f"generalist.head_weights must be non-empty values in [0, 1], got {list(value)}"
            raise ValueError(msg)
        return value

    @field_validator("residuals")
    @classmethod
    def _some_residual(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            msg = "generalist.residuals needs at least one of inctrl, neighbourhood, neighbourhood_rotated"
            raise ValueError(msg)
        return value
    model_name: str = "onenip-generalist"
    """The registered model of the generalist; its ``champion`` onboards new categories."""


class MonitoringParams(_Section):
    """The prediction log, review page and drift checks (``onenip.monitoring``, ``onenip.review``; params.yaml says what each is)."""

    log_serve: bool = True
    log_predict: bool = False
    database: str | None = None
    """A SQLAlchemy URL; null: ``sqlite:///<project>/predictions.db``. ``ONENIP_PREDICTION_LOG`` wins."""
    store: str = "store/predictions"
    store_max_mb: float = Field(2048.0, ge=0)
    users_file: str = "reviewers.yaml"
    drift_window_hours: float = Field(24.0, gt=0)
    drift_min_images: int = Field(20, ge=2)
    drift_p_value: float = Field(0.001, gt=0, lt=1)
    drift_alarm_factor: float = Field(3.0, ge=1)
    drift_min_shift: float = Field(0.5, ge=0)
    schedule_cron: str = "0 * * * *"


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    synthesis: SynthesisParams = SynthesisParams()
    train: TrainParams = TrainParams()
    validation: ValidationParams = ValidationParams()
    eval: EvalParams = EvalParams()
    gates: GateParams = GateParams()
    pipeline: PipelineParams = PipelineParams()
    generalist: GeneralistParams = GeneralistParams()
    monitoring: MonitoringParams = MonitoringParams()


def find_project_root(start: str | Path) -> Path | None:
    """The nearest folder holding ``params.yaml``, from ``start`` up (as git and dvc find their roots)."""
    start = Path(start).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / DEFAULT_PARAMS_PATH.name).is_file()), None)


def load_params(
    path: str | Path | None = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None, profile: str | None = None,
) -> Params:
    """Read ``params.yaml`` into ``Params`` (``path`` None: the built-in defaults).

    ``profile`` merges ``profiles.<name>`` of the same file on top (for example ``fast`` for
    ``make run``); ``overrides`` (nested dicts, ``parse_overrides``) are merged last.
    """
    raw = {} if path is None else _read_params(Path(path))
    profiles = raw.pop("profiles", None) or {}
    if profile:
        if profile not in profiles:
            msg = f"Profile {profile!r} is not defined in {path or 'the built-in defaults (no params.yaml)'} (profiles: {sorted(profiles) or 'none'})"
            raise ConfigError(msg)
        raw = deep_merge(raw, profiles[profile])
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        where = f"Params file {path}" if path is not None else "Params"
        msg = f"{where} {'with --set ' if overrides else ''}is invalid: " + "; ".join(_describe_error(e) for e in error.errors())
        raise ConfigError(msg) from None


def _read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = f"Params file not found: {path}"
        raise ConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:  # one line: where, and what the parser expected
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        msg = f"Params file {path} is not valid YAML{where}: {problem}"
        raise ConfigError(msg) from error
    if not isinstance(raw, dict):
        msg = f"Params file {path} must hold a mapping of sections, got {type(raw).__name__}"
        raise ConfigError(msg)
    return raw


def _describe_error(error: Any) -> str:
    """One pydantic error as ``section.key: what is wrong``, with a "did you mean" for a misspelt key."""
    import difflib

    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section: Any = Params
        for part in error["loc"][:-1]:
            field = getattr(section, "model_fields", {}).get(part)
            section = field.annotation if field is not None else None
        known = list(getattr(section, "model_fields", {}))
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        prefix = ".".join(str(part) for part in error["loc"][:-1])
        hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
        return f"{where}: unknown setting{hint}"
    return f"{where or 'file'}: {error['msg']} (got {error.get('input')!r})"


def flatten_params(params: Params) -> dict[str, Any]:
    """Dotted keys mirroring params.yaml (for MLflow params and DVC)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple) else value

    walk("", params.model_dump(mode="json"))
    return flat


def result_params_digest(params: Params) -> str:
    """Hash of every setting that changes a trained model or its test metrics: the model, synthesis,
    validation, training and evaluation sections, without paths, devices, batch sizes of feature
    extraction, heatmap counts and prompt-sensitivity trials (reporting only). The one params hash:
    the pipeline's cache key and the training fingerprint both use it."""
    import hashlib
    import json

    payload = {
        "model": params.model.model_dump(mode="json"),
        "synthesis": params.synthesis.model_dump(mode="json"),
        "validation": params.validation.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude={"device", "cache_dir", "feature_batch_size"}),
        "eval": params.eval.model_dump(mode="json", exclude={"num_heatmaps", "prompt_trials"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
