"""GeneralistDetector: the frozen backbone + an InCTRL head, and per onboarded category its k prompts.

The same interface as ``OneNIPDetector`` where ``onenip.serving.torch_predictor.TorchPredictor`` needs it (categories,
geometry, ``score_threshold``, ``forward(images, k, valid)`` -> ``DetectorOutput``, save / load), so an
onboarded category is predicted and served exactly like a trained one.

Layers of the patch residual (the lite backbone in place of CLIP's ViT layers 7/9/11): each fine stage
(lite0: 40 channels at stride 8, 112 channels brought to stride 8) and the coarse stride-16 stack; the
residual map lives on the fine grid; the image token is the coarse grid's mean.

An onboarded category scores with one of ``RESIDUALS``, chosen at onboarding on its own training data:
``inctrl`` (the map above, image score blended with the holistic head by ``head_weight``) or
``neighbourhood``: PatchCore's locally aware patch features (the fine stages, each averaged over 3x3
neighbourhoods on its own grid) and each patch's Euclidean distance to its nearest prompt patch, the
image score PatchCore's (the maximum reweighted as its paper's eq. 7, ``reweighted_image_score``): it is
PatchCore with the k prompts as memory bank. The second has no trained part; it is there for categories whose texture the
head and the per-patch cosine do not carry over to (magnetic_tile in the leave-one-out benchmark).
An onboarded category may keep its own aspect (``generalist.keep_aspect``, the input a trained OneNIP
model of it gets, never letterboxed): both residuals are searches that take any grid, and the head,
trained on square inputs, reads that category's residual map resampled to its own grid.
``neighbourhood_rotated`` is the same with each prompt also seen turned by 180 degrees (its backbone features
stored beside the prompts): k images show few of the orientations a surface's normal patches come in, and a
half turn keeps handedness, so a mirrored part still differs from every bank patch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from onenip.categories import CategoryIndex
from onenip.config import BackboneParams
from onenip.data.geometry import InputGeometry, square_geometry
from onenip.data.transforms import normalize
from onenip.models.features import Features
from onenip.models.backbone import build_feature_extractor
from onenip.models.detector import CONFIG_FILE, WEIGHTS_FILE, DetectorOutput, ModelLoadError
from onenip.models.inctrl import (
    PATCHCORE_NEIGHBOURS, InCTRLHead, InCTRLOutput, nearest_patches, neighbourhood_embedding, patch_bank, reweighted_image_score,
)
from onenip.models.memory import patchcore_layers
from onenip.models.blur import masked_gaussian_smooth

KIND = "inctrl"
FORMAT_VERSION = 2
"""2: an onboarded category may have its own (non-square) input; a model whose inputs are all the
generalist's square is still written as 1, so code from before reads it."""
READABLE_FORMATS = (1, 2)
INCTRL_HEAD_WEIGHT = 0.5
"""The holistic head's share of the image score in InCTRL: the mean of the head and the max residual."""
RESIDUALS = ("inctrl", "neighbourhood", "neighbourhood_rotated")
"""What an onboarded category's map and score are made of (see the module docstring)."""


def layers_of(features: Features, fine_dims: Sequence[int]) -> list[Tensor]:
    """The residual's layers: each fine stage's channels, then the coarse stack."""
    if features.fine is None:
        msg = "the generalist needs fine backbone stages (model.backbone.fine_indices)"
        raise ValueError(msg)
    return [*torch.split(features.fine, list(fine_dims), dim=1), features.coarse]


def _fine_grid_of(features: Features) -> tuple[int, int]:
    if features.fine is None:
        msg = "the generalist needs fine backbone stages (model.backbone.fine_indices)"
        raise ValueError(msg)
    return (int(features.fine.shape[-2]), int(features.fine.shape[-1]))


def token_of(features: Features) -> Tensor:
    return features.coarse.mean(dim=(-2, -1))


class GeneralistDetector(CategoryIndex, nn.Module):
    """Scores any category from its stored k normal prompts; trained once on auxiliary categories."""

    kind = KIND

    def __init__(self, backbone: BackboneParams, categories: Sequence[str] = (), shots: Sequence[int] = (), *,
                 pretrained: bool = True, smoothing_sigma: float = 4.0, holistic_input: str = "map",
                 geometries: Sequence[InputGeometry | None] = ()) -> None:  # fmt: skip
        super().__init__()
        self.backbone_cfg = backbone
        self.feature_extractor = build_feature_extractor(backbone, pretrained=pretrained)
        extractor = self.feature_extractor
        if not extractor.num_fine_features:
            msg = "the generalist needs fine backbone stages: set model.backbone.fine_indices"
            raise ValueError(msg)
        self.geometry_ = square_geometry(backbone.input_size)
        self.grid = self.fine_grid(self.geometry_)  # the head's: it was trained on square inputs
        self.head = InCTRLHead(self.grid, extractor.num_features, holistic_input=holistic_input)
        self.smoothing_sigma = float(smoothing_sigma)
        # the neighbourhood residual's image score: PatchCore's reweighting over this many bank patches
        # (1: the plain maximum, what models saved before the reweighting scored with)
        self.neighbourhood_neighbours = PATCHCORE_NEIGHBOURS
        self.categories: list[str] = []
        self.geometries: list[InputGeometry] = []
        """Each onboarded category's input (its own aspect, or ``geometry_``)."""
        self.metadata: dict[str, Any] = {}
        self.register_buffer("score_threshold", torch.zeros(0))
        self.register_buffer("head_weight", torch.zeros(0))
        self.register_buffer("residual_kind", torch.zeros(0, dtype=torch.long))  # index into RESIDUALS
        geometries = list(geometries) or [None] * len(categories)
        for category, k, geometry in zip(categories, shots, geometries, strict=True):
            geometry = geometry or self.geometry_
            self.add_category(category, torch.zeros(k, extractor.num_features, *geometry.grid(backbone.feature_stride)),
                              torch.zeros(k, extractor.num_fine_features, *self.fine_grid(geometry)), geometry=geometry)  # fmt: skip

    # -- the interface Predictor uses --------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.score_threshold.device

    def geometry(self, category: str | int) -> InputGeometry:
        index = self.category_index(category) if isinstance(category, str) else int(category)
        if not 0 <= index < len(self.geometries):
            msg = f"Category index {index} is out of range; this model knows {self.categories}"
            raise ValueError(msg)
        return self.geometries[index]

    def fine_grid(self, geometry: InputGeometry) -> tuple[int, int]:
        """The residual map's (H, W) for inputs of ``geometry``: the fine stages' grid."""
        coarse = geometry.grid(self.backbone_cfg.feature_stride)
        ratio = self.backbone_cfg.feature_stride // self.feature_extractor.fine_stride
        return (coarse[0] * ratio, coarse[1] * ratio)

    def prompt(self, k: int) -> Features:
        return Features(getattr(self, f"prompt_{k}"), getattr(self, f"prompt_fine_{k}"))

    def add_category(self, category: str, coarse: Tensor, fine: Tensor, threshold: float = float("inf"),
                     head_weight: float = INCTRL_HEAD_WEIGHT, residual: str = "inctrl", geometry: InputGeometry | None = None) -> int:  # fmt: skip
        """Store a category's k prompt features (onboarding), taken at ``geometry`` (default the
        generalist's square input; never letterboxed); returns its index."""
        if category in self.categories:
            msg = f"category {category!r} is already onboarded"
            raise ValueError(msg)
        if residual not in RESIDUALS:
            msg = f"residual must be one of {RESIDUALS}, got {residual!r}"
            raise ValueError(msg)
        geometry = geometry or self.geometry_
        if geometry.letterbox:
            # padding would be compared with padding by the nearest-patch residuals
            msg = f"category {category!r}: the generalist takes no letterboxed input ({geometry.key()})"
            raise ValueError(msg)
        if tuple(coarse.shape[-2:]) != geometry.grid(self.backbone_cfg.feature_stride) or tuple(fine.shape[-2:]) != self.fine_grid(geometry):
            msg = f"category {category!r}: prompt features {tuple(coarse.shape)} are not of its input {geometry.key()}"
            raise ValueError(msg)
        k = len(self.categories)
        self.categories.append(category)
        self.geometries.append(geometry)
        device = self.score_threshold.device  # where the detector is (the features may come from a CPU cache)
        self.register_buffer(f"prompt_{k}", coarse.detach().float().clone().to(device))
        self.register_buffer(f"prompt_fine_{k}", fine.detach().float().clone().to(device))
        self.set_rotated_prompts(k, Features(coarse[:0], fine[:0]))
        self.score_threshold = torch.cat([self.score_threshold, torch.tensor([threshold], device=self.score_threshold.device)])
        self.head_weight = torch.cat([self.head_weight, torch.tensor([float(head_weight)], device=self.head_weight.device)])
        kind = torch.tensor([RESIDUALS.index(residual)], dtype=torch.long, device=self.residual_kind.device)
        self.residual_kind = torch.cat([self.residual_kind, kind])
        return k

    def rotated_prompts(self, k: int) -> Features:
        """The category's prompts turned by 180 degrees (their own backbone features); empty unless
        its residual is ``neighbourhood_rotated``."""
        return Features(getattr(self, f"rotated_{k}"), getattr(self, f"rotated_fine_{k}"))

    def set_rotated_prompts(self, k: int, rotated: Features) -> None:
        if rotated.fine is None:
            msg = "rotated prompts need their fine backbone stages"
            raise ValueError(msg)
        device = self.score_threshold.device
        self.register_buffer(f"rotated_{k}", rotated.coarse.detach().float().clone().to(device))
        self.register_buffer(f"rotated_fine_{k}", rotated.fine.detach().float().clone().to(device))

    def neighbourhood_bank(self, category: int) -> Features:
        """The memory bank of the category's neighbourhood residual: its prompts, and with
        ``neighbourhood_rotated`` their half turns too."""
        prompts = self.prompt(int(category))
        if self.residual(category) != "neighbourhood_rotated":
            return prompts
        rotated = self.rotated_prompts(int(category))
        if not len(rotated.coarse):
            msg = f"category {self.categories[int(category)]!r} scores with rotated prompts but has none stored"
            raise ValueError(msg)
        return Features.cat([prompts, rotated])

    def residual(self, category: int) -> str:
        return RESIDUALS[int(self.residual_kind[int(category)])]

    def set_residual(self, category: int, residual: str) -> None:
        if residual not in RESIDUALS:
            msg = f"residual must be one of {RESIDUALS}, got {residual!r}"
            raise ValueError(msg)
        self.residual_kind[int(category)] = RESIDUALS.index(residual)

    def extract(self, images: Tensor) -> Features:
        coarse, fine = self.feature_extractor.forward_pyramid(normalize(images, self.backbone_cfg.mean, self.backbone_cfg.std))
        return Features(coarse, fine)

    def score_features(self, features: Features, prompts: Features) -> InCTRLOutput:
        """Queries (B, ...) against k prompts shared by all queries (K, ...) or per query (B, K, ...)."""
        fine_dims = self.feature_extractor.fine_dims
        if prompts.coarse.dim() == 4:
            prompt_layers = layers_of(prompts, fine_dims)
            prompt_tokens = token_of(prompts)
        else:  # (B, K, C, h, w): flatten to split channels, then restore
            b, k = prompts.coarse.shape[:2]
            flat = Features(prompts.coarse.flatten(0, 1), prompts.fine.flatten(0, 1))  # type: ignore[union-attr]
            prompt_layers = [layer.view(b, k, *layer.shape[1:]) for layer in layers_of(flat, fine_dims)]
            prompt_tokens = token_of(flat).view(b, k, -1)
        grid = _fine_grid_of(features)
        return self.head(layers_of(features, fine_dims), prompt_layers, token_of(features), prompt_tokens,
                         grid=None if grid == self.grid else grid)  # fmt: skip

    def neighbourhood_layers(self, features: Features) -> list[Tensor]:
        """The fine stages as PatchCore reads them (``onenip.models.memory.patchcore_layers``)."""
        if features.fine is None:
            msg = "the neighbourhood residual needs fine backbone stages (model.backbone.fine_indices)"
            raise ValueError(msg)
        return patchcore_layers(features.fine, features.coarse, self.feature_extractor)

    def neighbourhood_residual(self, features: Features, prompts: Features) -> tuple[Tensor, Tensor]:
        """PatchCore with the (K, ...) prompts as its memory bank: ((B, H, W) each query patch's distance
        to the nearest prompt patch in PatchCore's 3x3-neighbourhood features, on the fine grid; (B,) its
        image score, the largest distance reweighted as PatchCore does (``reweighted_image_score``))."""
        grid = _fine_grid_of(features)
        query = neighbourhood_embedding(self.neighbourhood_layers(features), grid)
        prompt_embedding = neighbourhood_embedding(self.neighbourhood_layers(prompts), grid)
        distances, indices = nearest_patches(query, prompt_embedding)
        bank = patch_bank(prompt_embedding)
        return distances, reweighted_image_score(query, bank, distances, indices, self.neighbourhood_neighbours)

    def category_scores(self, features: Features, category: int, prompts: Features | None = None) -> tuple[Tensor, Tensor]:
        """(residual map (B, H, W) on the fine grid, image score (B,)) as the category's residual scores
        them, against its stored prompts (and their half turns) or ``prompts`` (K, ...) alone."""
        if self.residual(category) != "inctrl":
            return self.neighbourhood_residual(features, self.neighbourhood_bank(category) if prompts is None else prompts)
        prompts = self.prompt(int(category)) if prompts is None else prompts
        out = self.score_features(features, prompts)
        return out.residual_map, self.image_score(out, category)

    def image_score(self, out: InCTRLOutput, category: int) -> Tensor:
        """The category's image score: its ``head_weight`` between the holistic head and the max residual."""
        weight = self.head_weight[int(category)]
        return weight * out.holistic_score + (1 - weight) * out.residual_map.flatten(1).amax(dim=1)

    def forward_features(self, features: Features, category: int, valid: Tensor | None = None) -> DetectorOutput:
        residual, score = self.category_scores(features, category)
        size = self.geometry(category).size
        anomaly_map = nn.functional.interpolate(residual[:, None], size=size, mode="bilinear", align_corners=False)
        anomaly_map = masked_gaussian_smooth(anomaly_map, self.smoothing_sigma, valid)
        return DetectorOutput(anomaly_map, score, [None, None, anomaly_map])

    def forward(self, images: Tensor, category: int, valid: Tensor | None = None) -> DetectorOutput:
        return self.forward_features(self.extract(images), category, valid)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        from onenip.models.features import atomic_save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors({k: v.detach().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)
        if metadata is not None:
            self.metadata = dict(metadata)
        config = {
            "kind": KIND,
            "format_version": FORMAT_VERSION if any(g != self.geometry_ for g in self.geometries) else 1,
            "backbone": self.backbone_cfg.model_dump(mode="json"),
            "categories": self.categories,
            "geometries": [g.to_dict() for g in self.geometries],
            "shots": [int(getattr(self, f"prompt_{k}").shape[0]) for k in range(len(self.categories))],
            "rotated_shots": [int(self.rotated_prompts(k).coarse.shape[0]) for k in range(len(self.categories))],
            "smoothing_sigma": self.smoothing_sigma,
            "holistic_input": self.head.holistic_input,
            "neighbourhood_neighbours": self.neighbourhood_neighbours,
            "metadata": self.metadata,
        }
        tmp = folder / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> GeneralistDetector:
        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("kind") != KIND or config.get("format_version") not in READABLE_FORMATS:
            msg = f"{folder} is not a generalist (InCTRL) model of a format this version reads ({READABLE_FORMATS})"
            raise ModelLoadError(msg)
        detector = cls(BackboneParams.model_validate(config["backbone"]), config["categories"], config["shots"],
                       pretrained=False, smoothing_sigma=config.get("smoothing_sigma", 4.0),
                       holistic_input=config.get("holistic_input", "map"),
                       # models onboarded before per-category inputs: the generalist's square
                       geometries=[InputGeometry.from_dict(g) for g in config.get("geometries", [])])  # fmt: skip
        for k, count in enumerate(config.get("rotated_shots", [])):
            prompt = detector.prompt(k)
            shape = (int(count),)
            detector.set_rotated_prompts(k, Features(prompt.coarse.new_zeros(shape + prompt.coarse.shape[1:]),
                                                     prompt.fine.new_zeros(shape + prompt.fine.shape[1:])))  # type: ignore[union-attr]  # fmt: skip
        state = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
        for k in range(len(config["categories"])):  # models onboarded before rotated prompts: none
            prompt = detector.prompt(k)
            state.setdefault(f"rotated_{k}", prompt.coarse[:0].to(map_location))
            state.setdefault(f"rotated_fine_{k}", prompt.fine[:0].to(map_location))  # type: ignore[index]
        # models onboarded before head_weight existed scored with InCTRL's mean
        state.setdefault("head_weight", torch.full((len(config["categories"]),), INCTRL_HEAD_WEIGHT))
        state.setdefault("residual_kind", torch.zeros(len(config["categories"]), dtype=torch.long))  # before the choice: InCTRL's
        detector.load_state_dict(state, strict=True)
        detector.metadata = config.get("metadata", {})
        # categories onboarded before the reweighting were calibrated on the plain maximum; a generalist
        # saved before it (no categories yet) onboards new ones with PatchCore's reweighting
        legacy = 1 if config["categories"] else PATCHCORE_NEIGHBOURS
        detector.neighbourhood_neighbours = int(config.get("neighbourhood_neighbours", legacy))
        return detector.to(map_location).eval()


def load_any_detector(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A saved model folder -> ``OneNIPDetector`` or ``GeneralistDetector``, by its ``onenip.json``."""
    from onenip.models.detector import OneNIPDetector

    config_path = Path(folder) / CONFIG_FILE
    if config_path.is_file():
        try:
            kind = json.loads(config_path.read_text()).get("kind")
        except json.JSONDecodeError:
            kind = None
        if kind == KIND:
            return GeneralistDetector.load(folder, map_location)
    return OneNIPDetector.load(folder, map_location)
