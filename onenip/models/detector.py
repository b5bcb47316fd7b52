"""OneNIPDetector: backbone + OneNIP + one stored prompt per category, from images to anomaly maps.

Saved as ``model.safetensors`` (state dict only) + ``onenip.json`` (the model and backbone params,
categories, prompt provenance, calibration rule). Loading never unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from onenip.config import ModelParams
from onenip.data.transforms import normalize
from onenip.models.backbone import FeatureExtractor, build_feature_extractor
from onenip.models.onenip import OneNIP, OneNIPOutput

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "onenip.json"
FORMAT_VERSION = 1


class ModelLoadError(ValueError):
    """A saved model folder is missing, incomplete or from an incompatible version."""


def build_onenip(cfg: ModelParams, in_features: int) -> OneNIP:
    """Map the ``model`` section of params.yaml onto OneNIP's constructor."""
    grid = cfg.backbone.input_size // cfg.backbone.feature_stride
    return OneNIP(
        in_features=in_features,
        feature_size=(grid, grid),
        image_size=(cfg.backbone.input_size, cfg.backbone.input_size),
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
        neighbor_size=(cfg.neighbor_size, cfg.neighbor_size),
        feature_jitter_scale=cfg.feature_jitter_scale,
        feature_jitter_prob=cfg.feature_jitter_prob,
        refiner_dim=cfg.refiner_dim,
        recon_weight=cfg.recon_weight,
        smoothing_sigma=cfg.smoothing_sigma,
        score_pool_size=cfg.score_pool_size,
    )


class OneNIPDetector(nn.Module):
    """Images (B, 3, S, S) in [0, 1] + category indices -> ``OneNIPOutput``.

    Buffers (saved in the state dict): ``prompt_features`` (K, C, h, w), the one normal prompt per
    category; ``recon_scale`` (K,) and ``score_threshold`` (K,), calibrated on held-out training normals.
    """

    def __init__(self, cfg: ModelParams, categories: Sequence[str], *, pretrained: bool = True) -> None:
        super().__init__()
        if not categories:
            msg = "a detector needs at least one category"
            raise ValueError(msg)
        self.cfg = cfg
        self.categories = list(categories)
        self.feature_extractor: FeatureExtractor = build_feature_extractor(cfg.backbone, pretrained=pretrained)
        self.model = build_onenip(cfg, self.feature_extractor.num_features)
        grid = cfg.backbone.input_size // cfg.backbone.feature_stride
        k = len(self.categories)
        self.register_buffer("prompt_features", torch.zeros(k, self.feature_extractor.num_features, grid, grid))
        self.register_buffer("recon_scale", torch.ones(k))
        self.register_buffer("score_threshold", torch.full((k,), float("inf")))
        self._prompt_cache: dict[int, tuple[tuple, Tensor]] = {}

    @property
    def input_size(self) -> int:
        return self.cfg.backbone.input_size

    def category_index(self, category: str) -> int:
        try:
            return self.categories.index(category)
        except ValueError:
            msg = f"Unknown category {category!r}; this model knows {self.categories}"
            raise ValueError(msg) from None

    def extract(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> backbone features (B, C, h, w)."""
        return self.feature_extractor(normalize(images, self.cfg.backbone.mean, self.cfg.backbone.std))

    def forward_features(self, features: Tensor, category_indices: Tensor) -> OneNIPOutput:
        """Score cached features; each query uses its category's stored prompt and scale."""
        category_indices = category_indices.to(self.prompt_features.device).long()
        unique = category_indices.unique()
        if unique.numel() == 1:
            k = int(unique)
            prompt = self.prompt_features[k : k + 1]
            return self.model(features, prompt, self.recon_scale[k], self._encoded_prompt(k, prompt))
        # Mixed categories: one prompt per query (prompt i goes with query i).
        return self.model(features, self.prompt_features[category_indices], self.recon_scale[category_indices])

    def _encoded_prompt(self, k: int, prompt: Tensor) -> Tensor | None:
        """The encoder output of category k's prompt, computed once per prompt at inference.

        Keyed on the version counters of the prompt buffer and of the weights, so replacing a prompt or
        updating weights in place (calibration, prompt sensitivity, an optimizer step,
        ``load_state_dict``) recomputes it; never used in training (dropout, jitter).
        """
        if self.model.training or torch.is_grad_enabled():
            return None
        weights_version = sum(param._version for param in self.model.parameters())
        key = (k, self.prompt_features._version, weights_version, str(prompt.device), prompt.dtype)
        cached = self._prompt_cache.get(k)
        if cached is None or cached[0] != key:
            cached = (key, self.model.encode(prompt))
            self._prompt_cache[k] = cached
        return cached[1]

    def forward(self, images: Tensor, category_indices: Tensor) -> OneNIPOutput:
        return self.forward_features(self.extract(images), category_indices)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` + ``onenip.json`` atomically into ``folder``."""
        from onenip.features import atomic_save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, folder / WEIGHTS_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.cfg.model_dump(mode="json"),
            "categories": self.categories,
            "metadata": metadata or {},
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
            msg = f"Model {folder} has format {config.get('format_version')}, this onenip reads {FORMAT_VERSION}"
            raise ModelLoadError(msg)
        detector = cls(ModelParams.model_validate(config["model"]), config["categories"], pretrained=False)
        state = load_file(str(weights_path), device=str(map_location))
        detector.load_state_dict(state, strict=True)
        detector.metadata = config.get("metadata", {})
        return detector.to(map_location).eval()
