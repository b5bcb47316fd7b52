"""OneNIPDetector: backbone + OneNIP + one stored prompt per category, from images to anomaly maps.

Each category has its own input geometry (``onenip.data.geometry``: height x width, squashed or
letterboxed), its ONE normal prompt (coarse and fine features), the scales that normalise its error
maps, its scoring rule (blend weights, smoothing, pooling) and its decision threshold. Saved as ``model.safetensors`` (state dict only) + ``onenip.json`` (model and backbone params,
categories, geometries, scoring rules, prompt provenance, calibration rule). Loading never unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from onenip.categories import CategoryIndex
from onenip.config import ModelParams
from onenip.data.geometry import InputGeometry, square_geometry
from onenip.data.transforms import normalize
from onenip.models.features import Features
from onenip.models.backbone import FeatureExtractor, build_feature_extractor
from onenip.models.gaussian import mahalanobis_map, select_channels
from onenip.models.memory import locally_aware_embedding, nearest_bank_distance, patchcore_layers
from onenip.models.onenip import OneNIP, check_neighbor_size
from onenip.models.scoring import ScoringRule, normalised_components, padded_weights, score_maps

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "onenip.json"
FORMAT_VERSION = 2


class ModelLoadError(ValueError):
    """A saved model folder is missing, incomplete or from an incompatible version."""


class DetectorOutput(NamedTuple):
    anomaly_map: Tensor
    """(B, 1, H, W) at the category's input size: the scoring rule's blend, smoothed."""
    pred_score: Tensor
    """(B,) image scores."""
    components: list[Tensor | None]
    """Normalised [recon, refiner, residual, gaussian, memory] maps (B, 1, H, W), before smoothing (residual
    None without fine path, gaussian and memory None where no Gaussian or bank is fitted; None too where
    the scoring rule gives a map weight 0, which is then not computed)."""


def build_onenip(cfg: ModelParams, in_features: int, fine_features: int, max_grid: tuple[int, int]) -> OneNIP:
    """Map the ``model`` section of params.yaml onto OneNIP's constructor."""
    return OneNIP(
        in_features=in_features,
        max_grid=max_grid,
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
        neighbor_size=cfg.neighbor_window,
        feature_jitter_scale=cfg.feature_jitter_scale,
        feature_jitter_prob=cfg.feature_jitter_prob,
        refiner_dim=cfg.refiner_dim,
        fine_features=fine_features,
        residual_window=cfg.residual_window,
        final_attention_mask=cfg.final_attention_mask,
    )


def _z_norm(residual: Tensor, mean: Tensor, whitening: Tensor, std: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """L2 norm over channels of ``whitening @ (residual - mean) / std``, upsampled to ``size``."""
    centred = torch.einsum("ij,bjhw->bihw", whitening.to(residual.dtype), residual - mean)
    norm = (centred / std).pow(2).sum(dim=1, keepdim=True).sqrt()
    return F.interpolate(norm, size=tuple(size), mode="bilinear", align_corners=False)


def _needs(weights: Sequence[float] | None, start: int, stop: int) -> bool:
    """Whether any of the components ``start:stop`` is needed (``weights`` None: all are)."""
    return weights is None or any(w != 0 for w in weights[start:stop])


def nearest_prompt(queries: Tensor, prompts: Tensor) -> Tensor:
    """(B,) index of the prompt whose grid-mean feature is most similar (cosine) to each query's."""
    q = F.normalize(queries.mean(dim=(-2, -1)), dim=1)
    p = F.normalize(prompts.mean(dim=(-2, -1)), dim=1)
    return (q @ p.t()).argmax(dim=1)


def checked_grids(geometries: Mapping[str, InputGeometry], stride: int, window: Any) -> dict[str, tuple[int, int]]:
    """Each category's feature grid, after checking its input is a multiple of the stride and that the
    neighbour window leaves every grid position something to attend to (one clear error otherwise)."""
    grids = {c: g.grid(stride) for c, g in geometries.items()}
    for category, geometry in geometries.items():
        if geometry.height % stride or geometry.width % stride:
            msg = f"input size {geometry.size} of {category!r} must be a multiple of the feature stride {stride}"
            raise ValueError(msg)
        try:
            check_neighbor_size(grids[category], window)
        except ValueError as error:
            msg = f"category {category!r} (input {geometry.height}x{geometry.width}): {error}"
            raise ValueError(msg) from None
    return grids


class OneNIPDetector(CategoryIndex, nn.Module):
    """Images of one category (B, 3, H, W) in [0, 1] -> ``DetectorOutput``.

    Buffers (saved in the state dict): ``prompt_<k>`` (P, C, h, w) and ``prompt_fine_<k>`` of category
    k's normal prompts (P = ``model.prompts``, 1 by default: the paper's one prompt; with more, each
    query is reconstructed from the ONE most similar of them); ``recon_scale``, ``residual_scale`` and
    ``score_threshold`` (categories,), calibrated on held-out training normals.
    """

    def __init__(
        self,
        cfg: ModelParams,
        categories: Sequence[str],
        geometries: Mapping[str, InputGeometry] | None = None,
        *,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if not categories:
            msg = "a detector needs at least one category"
            raise ValueError(msg)
        self.cfg = cfg
        self.categories = list(categories)
        default = square_geometry(cfg.backbone.input_size)
        self.geometries = {c: (geometries or {}).get(c, default) for c in self.categories}
        self.feature_extractor: FeatureExtractor = build_feature_extractor(cfg.backbone, pretrained=pretrained)
        stride = cfg.backbone.feature_stride
        grids = checked_grids(self.geometries, stride, cfg.neighbor_window)
        max_grid = (max(g[0] for g in grids.values()), max(g[1] for g in grids.values()))
        extractor = self.feature_extractor
        self.model = build_onenip(cfg, extractor.num_features, extractor.num_fine_features, max_grid)
        ratio = stride // extractor.fine_stride if extractor.num_fine_features else 1
        bank = cfg.prompts
        for k, category in enumerate(self.categories):
            h, w = grids[category]
            self.register_buffer(f"prompt_{k}", torch.zeros(bank, extractor.num_features, h, w))
            # statistics of the error maps' residuals on training normals (mean 0, std 1: the raw errors)
            # per-channel standardisation of the coarse features the network reads (identity unless fitted)
            mean_grid = (h, w) if cfg.feature_standardization == "position" else (1, 1)
            self.register_buffer(f"coarse_mean_{k}", torch.zeros(extractor.num_features, *mean_grid))
            self.register_buffer(f"coarse_std_{k}", torch.ones(extractor.num_features, 1, 1))
            self.register_buffer(f"recon_mean_{k}", torch.zeros(extractor.num_features, h, w))
            self.register_buffer(f"recon_whiten_{k}", torch.eye(extractor.num_features))
            self.register_buffer(f"recon_std_{k}", torch.ones(extractor.num_features, h, w))
            if extractor.num_fine_features:
                fine_shape = (extractor.num_fine_features, h * ratio, w * ratio)
                self.register_buffer(f"fine_mean_{k}", torch.zeros(fine_shape))
                self.register_buffer(f"fine_whiten_{k}", torch.eye(extractor.num_fine_features))
                self.register_buffer(f"fine_std_{k}", torch.ones(fine_shape))
            if extractor.num_fine_features:
                self.register_buffer(f"prompt_fine_{k}", torch.zeros(bank, extractor.num_fine_features, h * ratio, w * ratio))
        count = len(self.categories)
        if cfg.gaussian_channels:
            # on the fine grid where there is one (PaDiM's strides 8 and 16), else the coarse grid
            source = extractor.num_fine_features or extractor.num_features
            channels = select_channels(source, cfg.gaussian_channels)
            self.register_buffer("gaussian_channels", channels)
            grid_ratio = ratio if extractor.num_fine_features else 1
            for k, category in enumerate(self.categories):
                h, w = grids[category]
                d = len(channels)
                self.register_buffer(f"gaussian_mean_{k}", torch.zeros(d, h * grid_ratio, w * grid_ratio))
                self.register_buffer(f"gaussian_precision_{k}", torch.eye(d).repeat(h * grid_ratio * w * grid_ratio, 1, 1))
        if cfg.memory_patches:
            # PatchCore's bank on the fine grid's locally aware features (the coarse stack without one)
            channels = extractor.num_fine_features or extractor.num_features
            for k in range(count):
                self.register_buffer(f"memory_bank_{k}", torch.zeros(cfg.memory_patches, channels))
        self.register_buffer("memory_fitted", torch.zeros(count, dtype=torch.bool))
        self.register_buffer("memory_scale", torch.ones(count))
        self.register_buffer("gaussian_fitted", torch.zeros(count, dtype=torch.bool))
        self.register_buffer("gaussian_scale", torch.ones(count))
        self.register_buffer("recon_scale", torch.ones(count))
        self.register_buffer("residual_scale", torch.ones(count))
        # the refiner's probability times the midpoint of the reconstruction error's range, as the reference
        # blends them (there on the test set; here on the validation set, training images only)
        self.register_buffer("refiner_scale", torch.ones(count))
        self.register_buffer("score_threshold", torch.full((count,), float("inf")))
        default_rule = ScoringRule(padded_weights(cfg.scoring.weights), cfg.scoring.smoothing_sigma, cfg.scoring.score_pool_size)
        self.scoring: dict[str, ScoringRule] = dict.fromkeys(self.categories, default_rule)
        """Per category, how its maps are blended and scored (chosen on validation data in training)."""
        self.metadata: dict[str, Any] = {}
        self._prompt_cache: dict[int, tuple[tuple, Tensor]] = {}

    @property
    def has_fine(self) -> bool:
        return self.feature_extractor.num_fine_features > 0

    @property
    def device(self) -> torch.device:
        return self.recon_scale.device

    def geometry(self, category: str | int) -> InputGeometry:
        name = self.categories[category] if isinstance(category, int) else category
        self.category_index(name)
        return self.geometries[name]

    def prompt(self, k: int) -> Features:
        """Category k's stored prompts (``model.prompts`` normal images; one by default), as views."""
        fine = getattr(self, f"prompt_fine_{k}") if self.has_fine else None
        return Features(getattr(self, f"prompt_{k}"), fine)

    def set_prompt(self, k: int, prompt: Features) -> None:
        """Store the features of ``model.prompts`` normal images as category k's prompts."""
        getattr(self, f"prompt_{k}").copy_(prompt.coarse)
        if self.has_fine:
            getattr(self, f"prompt_fine_{k}").copy_(prompt.fine)  # type: ignore[arg-type]

    def choose_prompts(self, features: Features, k: int) -> Features:
        """Per query, the ONE stored prompt of category k whose global feature (mean over the grid)
        is most similar (cosine) to the query's; with a single stored prompt, that prompt."""
        bank = self.prompt(k)
        if bank.coarse.shape[0] == 1:
            return bank
        index = nearest_prompt(features.coarse, bank.coarse)
        return bank.select(index)

    def extract(self, images: Tensor) -> Features:
        """(B, 3, H, W) in [0, 1] -> backbone features."""
        coarse, fine = self.feature_extractor.forward_pyramid(normalize(images, self.cfg.backbone.mean, self.cfg.backbone.std))
        return Features(coarse, fine)

    def components(
        self, features: Features, k: int, prompt: Features | None = None, weights: Sequence[float] | None = None,
    ) -> list[Tensor | None]:
        """Normalised [recon, refiner, residual, gaussian, memory] maps of one category's queries at its input size.

        ``prompt`` replaces the stored prompt (prompt sensitivity, training-time validation). With
        ``weights`` (a scoring rule's), maps of weight 0 are not computed (None): a rule without the
        network's maps never runs the network, one without the memory map never searches the bank."""
        if prompt is not None:
            return self.prompted_components(features, k, prompt.to(features.coarse.device), None, weights)
        bank = self.prompt(k)
        encoded = self._encoded_prompt(k, bank.coarse) if _needs(weights, 0, 3) else None
        return self.bank_components(features, k, bank, encoded, weights)

    def bank_components(
        self, features: Features, k: int, bank: Features, encoded: Tensor | None, weights: Sequence[float] | None = None,
    ) -> list[Tensor | None]:
        """``components`` against a prompt bank: each query uses its nearest prompt of the bank
        (``model.prompt_reduction: nearest``) or every prompt (``min``, ``min_over_prompts``).

        ``encoded`` is ``model.encode(bank.coarse)`` when known (inference, export), else None."""
        if bank.coarse.shape[0] > 1 and self.cfg.prompt_reduction == "min":
            return self.min_over_prompts(features, k, bank, encoded, weights)
        if bank.coarse.shape[0] > 1:
            index = nearest_prompt(features.coarse, bank.coarse)
            bank = bank.select(index)
            encoded = None if encoded is None else encoded[index]
        return self.prompted_components(features, k, bank, encoded, weights)

    def min_over_prompts(
        self, features: Features, k: int, bank: Features, encoded: Tensor | None, weights: Sequence[float] | None = None,
    ) -> list[Tensor | None]:
        """``components`` with every query scored against each prompt of the bank in turn, the network's
        maps (recon, refiner, residual) taking their minimum over the prompts per pixel: a patch is
        anomalous only when no stored normal image explains it (``model.prompt_reduction: min``)."""
        network: list[Tensor | None] = [None, None, None]
        if _needs(weights, 0, 3):
            for p in range(bank.coarse.shape[0]):
                prompt = bank.select([p])
                maps = self.network_components(features, k, prompt, None if encoded is None else encoded[p : p + 1])
                network = maps if p == 0 else [None if a is None else torch.minimum(a, b) for a, b in zip(network, maps, strict=True)]
        return [*network, *self.statistics_components(features, k, weights)]

    def prompted_components(
        self, features: Features, k: int, prompt: Features, encoded: Tensor | None, weights: Sequence[float] | None = None,
    ) -> list[Tensor | None]:
        """``components`` with one prompt per query (or one for all)."""
        network = self.network_components(features, k, prompt, encoded) if _needs(weights, 0, 3) else [None, None, None]
        return [*network, *self.statistics_components(features, k, weights)]

    def statistics_components(self, features: Features, k: int, weights: Sequence[float] | None = None) -> list[Tensor | None]:
        """[gaussian, memory] maps at the category's input size (None where not fitted or not needed)."""
        size = self.geometries[self.categories[k]].size
        gaussian = self.gaussian_map(features, k, size) if _needs(weights, 3, 4) else None
        memory = self.memory_map(features, k, size) if _needs(weights, 4, 5) else None
        return [gaussian, memory]

    def network_input(self, k: int, coarse: Tensor) -> Tensor:
        """Coarse features as the network reads them: standardised per channel (and centred per position)
        with category k's statistics (``model.feature_standardization``; the identity otherwise)."""
        mean, std = getattr(self, f"coarse_mean_{k}"), getattr(self, f"coarse_std_{k}")
        return (coarse - mean.to(coarse.dtype)) / std.to(coarse.dtype)

    def set_standardization(self, k: int, mean: Tensor, std: Tensor) -> None:
        buffer = getattr(self, f"coarse_mean_{k}")  # (C, 1, 1), or (C, h, w) centred per position
        buffer.copy_(mean.reshape(buffer.shape))
        getattr(self, f"coarse_std_{k}").copy_(std.reshape(-1, 1, 1))

    def encode_prompt(self, k: int, prompt: Tensor) -> Tensor:
        """``model.encode`` of category k's prompt features (standardised as the network reads them)."""
        return self.model.encode(self.network_input(k, prompt))

    def network_components(self, features: Features, k: int, prompt: Features, encoded: Tensor | None) -> list[Tensor | None]:
        """The network's normalised [recon, refiner, residual] maps with one prompt per query (or one for all)."""
        query = self.network_input(k, features.coarse)
        out = self.model(
            query,
            self.network_input(k, prompt.coarse),
            features.fine,
            prompt.fine,
            image_size=self.geometries[self.categories[k]].size,
            encoded_prompts=encoded,
        )
        recon_map, residual_map = out.recon_map, out.residual_map
        if self.cfg.error_normalization != "none":
            # the residuals as z-scores of their per-position, per-channel statistics on training normals
            size = out.recon_map.shape[-2:]
            recon_map = _z_norm(out.recon_features - query, *self.error_statistics(k, "recon"), size)
            if out.fine_residual is not None:
                residual_map = _z_norm(out.fine_residual, *self.error_statistics(k, "fine"), size)
        return normalised_components(recon_map, out.refined_map * self.refiner_scale[k], residual_map, self.recon_scale[k],
                                     self.residual_scale[k])  # fmt: skip

    @property
    def has_gaussian(self) -> bool:
        return hasattr(self, "gaussian_channels")

    def gaussian_source(self, features: Features) -> Tensor:
        """The features the Gaussian models: the channel subset of the fine grid (coarse without one)."""
        source = features.fine if features.fine is not None else features.coarse
        return source.index_select(1, self.gaussian_channels.to(source.device))

    def gaussian_map(self, features: Features, k: int, size: tuple[int, int] | torch.Size) -> Tensor | None:
        """Category k's Mahalanobis map at ``size``, divided by ``gaussian_scale``; None when not fitted."""
        if not self.has_gaussian or not bool(self.gaussian_fitted[k]):
            return None
        mean, precision = getattr(self, f"gaussian_mean_{k}"), getattr(self, f"gaussian_precision_{k}")
        distance = mahalanobis_map(self.gaussian_source(features).to(mean.dtype), mean, precision)
        distance = F.interpolate(distance, size=tuple(size), mode="bilinear", align_corners=False)
        return distance / self.gaussian_scale[k].clamp_min(1e-8)

    @property
    def has_memory(self) -> bool:
        return bool(self.cfg.memory_patches)

    def memory_embedding(self, features: Features) -> Tensor:
        """PatchCore's locally aware features (``onenip.models.memory``) on the fine grid (coarse without one)."""
        grid = (features.fine if features.fine is not None else features.coarse).shape[-2:]
        layers = patchcore_layers(features.fine, features.coarse, self.feature_extractor)
        return locally_aware_embedding(layers, (int(grid[0]), int(grid[1])))

    def memory_map(self, features: Features, k: int, size: tuple[int, int] | torch.Size) -> Tensor | None:
        """Category k's distance to its memory bank at ``size``, divided by ``memory_scale``; None when not fitted."""
        if not self.has_memory or not bool(self.memory_fitted[k]):
            return None
        bank = getattr(self, f"memory_bank_{k}")
        distance = nearest_bank_distance(self.memory_embedding(features).to(bank.dtype), bank)
        distance = F.interpolate(distance, size=tuple(size), mode="bilinear", align_corners=False)
        return distance / self.memory_scale[k].clamp_min(1e-8)

    def set_memory(self, k: int, bank: Tensor) -> None:
        getattr(self, f"memory_bank_{k}").copy_(bank)
        self.memory_fitted[k] = True

    def set_gaussian(self, k: int, mean: Tensor, precision: Tensor) -> None:
        getattr(self, f"gaussian_mean_{k}").copy_(mean)
        getattr(self, f"gaussian_precision_{k}").copy_(precision)
        self.gaussian_fitted[k] = True

    def error_statistics(self, k: int, which: str) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, whitening, std) of category k's ``recon`` or ``fine`` residual (see ``training.error_statistics``)."""
        return tuple(getattr(self, f"{which}_{part}_{k}") for part in ("mean", "whiten", "std"))  # type: ignore[return-value]

    def set_error_statistics(self, k: int, which: str, mean: Tensor, whitening: Tensor, std: Tensor) -> None:
        for part, value in (("mean", mean), ("whiten", whitening), ("std", std)):
            getattr(self, f"{which}_{part}_{k}").copy_(value)

    def forward_features(self, features: Features, category: int, valid: Tensor | None = None) -> DetectorOutput:
        """Score cached features of category index ``category`` with its stored prompt and the scoring rule
        (the maps it gives weight 0 are not computed: None in ``components``)."""
        rule = self.scoring[self.categories[int(category)]]
        components = self.components(features, int(category), weights=rule.weights)
        anomaly_map, scores = score_maps(components, rule, valid)
        return DetectorOutput(anomaly_map, scores, components)

    def forward(self, images: Tensor, category: int, valid: Tensor | None = None) -> DetectorOutput:
        """(B, 3, H, W) images of one category at its input geometry; ``valid`` (B, 1, H, W) marks letterbox content."""
        return self.forward_features(self.extract(images), category, valid)

    def _encoded_prompt(self, k: int, prompt: Tensor) -> Tensor | None:
        """The encoder output of category k's prompt, computed once per prompt at inference.

        Keyed on the version counters of the prompt buffer and of the weights, so replacing a prompt or
        updating weights in place (calibration, prompt sensitivity, an optimizer step,
        ``load_state_dict``) recomputes it; never used in training (dropout, jitter).
        """
        if self.model.training or torch.is_grad_enabled():
            return None
        weights_version = sum(param._version for param in self.model.parameters())
        buffer = getattr(self, f"prompt_{k}")
        key = (k, buffer._version, weights_version, str(prompt.device), prompt.dtype, torch.is_autocast_enabled(prompt.device.type))
        cached = self._prompt_cache.get(k)
        if cached is None or cached[0] != key:
            cached = (key, self.encode_prompt(k, prompt))
            self._prompt_cache[k] = cached
        return cached[1]

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` + ``onenip.json`` atomically into ``folder``."""
        from onenip.models.features import atomic_save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, folder / WEIGHTS_FILE)
        if metadata is not None:
            self.metadata = dict(metadata)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.cfg.model_dump(mode="json"),
            "categories": self.categories,
            "geometries": {c: g.to_dict() for c, g in self.geometries.items()},
            "scoring": {category: rule.to_dict() for category, rule in self.scoring.items()},
            "metadata": self.metadata,
        }
        tmp = folder / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> OneNIPDetector:
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                msg = f"Not a saved onenip model: {path} is missing"
                raise ModelLoadError(msg)
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            msg = f"Model config {config_path} is not valid JSON: {error}"
            raise ModelLoadError(msg) from error
        if config.get("format_version") != FORMAT_VERSION:
            msg = (
                f"Model {folder} has format {config.get('format_version')}, this onenip reads {FORMAT_VERSION}; "
                f"retrain it with this version (onenip train)"
            )
            raise ModelLoadError(msg)
        geometries = {c: InputGeometry.from_dict(g) for c, g in config["geometries"].items()}
        # a model saved before these settings existed had its statistics fitted without jitter, at a prior of 10
        before = {"statistics_prior": 10.0, "statistics_jitter": 0.0, "statistics_colour_jitter": 0.0}
        model_params = ModelParams.model_validate(before | config["model"])
        detector = cls(model_params, config["categories"], geometries, pretrained=False)
        state = load_file(str(weights_path), device=str(map_location))
        expected = detector.state_dict()
        # models saved before the Gaussian, the memory map, the standardisation or the refiner's scale existed
        # load without them (their rules never weight those maps; their network read raw features and
        # their refiner map was the bare probability: identity statistics, scale 1)
        for key in expected.keys() - state.keys():
            if key.startswith(("gaussian_", "memory_", "coarse_mean_", "coarse_std_", "refiner_scale")):
                state[key] = expected[key]
        detector.load_state_dict(state, strict=True)
        detector.scoring = {category: ScoringRule.from_dict(rule) for category, rule in config["scoring"].items()}
        detector.metadata = config.get("metadata", {})
        return detector.to(map_location).eval()
