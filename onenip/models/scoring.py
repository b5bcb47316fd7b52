"""From OneNIP's component maps to one anomaly map and an image score.

Five maps come out of ``OneNIPDetector.components``: the reconstruction error (the paper's unsupervised
map), the refiner probability (the paper's supervised map), with the fine path the distance of each
fine patch to its nearest prompt patch, the Mahalanobis distance of each patch to its position's
Gaussian on the training normals (``onenip.models.gaussian``), and each patch's distance to its nearest
patch in the category's memory bank (``onenip.models.memory``). The anomaly map is a weighted sum of them, each error map
divided by its typical maximum on held-out training normals of the category (so 1 means "as bad as the
worst normal"), then Gaussian-smoothed; the image score is the maximum of the map average-pooled over
``score_pool_size`` pixels. The paper blends 0.5 / 0.5 and rescales with the *test set's* extremes;
here the rule (weights, sigma, pooling) is chosen per model on validation data made from training
images only (``onenip.scoring_selection``) and stored with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from onenip.models.blur import masked_gaussian_smooth

COMPONENTS: tuple[str, ...] = ("recon", "refiner", "residual", "gaussian", "memory")


def padded_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Weights of all ``COMPONENTS``: rules written before the Gaussian map have three, before the
    memory map four (the maps they lack get 0)."""
    weights = tuple(float(w) for w in weights)
    return weights + (0.0,) * (len(COMPONENTS) - len(weights)) if 3 <= len(weights) < len(COMPONENTS) else weights


@dataclass(frozen=True)
class ScoringRule:
    """Weights of (recon, refiner, residual, gaussian, memory), smoothing sigma in pixels, score pooling window in pixels."""

    weights: tuple[float, ...] = (0.5, 0.5, 0.0, 0.0, 0.0)
    smoothing_sigma: float = 4.0
    score_pool_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", padded_weights(self.weights))
        if len(self.weights) != len(COMPONENTS) or min(self.weights) < 0 or sum(self.weights) <= 0:
            msg = f"weights must be five non-negative numbers ({', '.join(COMPONENTS)}) with a positive sum, got {self.weights}"
            raise ValueError(msg)
        if self.smoothing_sigma < 0 or self.score_pool_size < 1:
            msg = f"need smoothing_sigma >= 0 and score_pool_size >= 1, got {self.smoothing_sigma}, {self.score_pool_size}"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, object]:
        return {"weights": list(self.weights), "smoothing_sigma": self.smoothing_sigma, "score_pool_size": self.score_pool_size}

    @classmethod
    def from_dict(cls, value: dict[str, object]) -> ScoringRule:
        return cls(padded_weights(value["weights"]), float(value["smoothing_sigma"]), int(value["score_pool_size"]))  # type: ignore[arg-type]


def normalised_components(
    recon_map: Tensor, refined_map: Tensor, residual_map: Tensor | None, recon_scale: Tensor | float, residual_scale: Tensor | float,
) -> list[Tensor | None]:
    """[recon / recon_scale, refiner map, residual / residual_scale] (scales: scalar or (B,)); the refiner
    map comes scaled already (``OneNIPDetector.refiner_scale``)."""

    def scaled(maps: Tensor, scale: Tensor | float) -> Tensor:
        scale = torch.as_tensor(scale, dtype=maps.dtype, device=maps.device)
        scale = scale.reshape(-1, 1, 1, 1) if scale.dim() else scale
        return maps / scale.clamp_min(1e-8)

    return [scaled(recon_map, recon_scale), refined_map, None if residual_map is None else scaled(residual_map, residual_scale)]


def blend(components: Sequence[Tensor | None], weights: Sequence[float]) -> Tensor:
    """Weighted sum of the normalised component maps (a missing component must have weight 0)."""
    total: Tensor | None = None
    for maps, weight in zip(components, weights, strict=True):
        if weight == 0:
            continue
        if maps is None:
            msg = f"scoring weights {tuple(weights)} use a component this model does not produce"
            raise ValueError(msg)
        total = maps * weight if total is None else total + maps * weight
    if total is None:
        msg = "scoring weights are all zero"
        raise ValueError(msg)
    return total


def pooled_map(anomaly_map: Tensor, pool_size: int) -> Tensor:
    """The map's ``pool_size`` box mean at every position where the box fits (the side capped at the map's)."""
    size = min(pool_size, *anomaly_map.shape[-2:])
    if size > 1:
        # A k x k box mean is a 1 x k mean of k x 1 means: 2k instead of k^2 reads per pixel.
        anomaly_map = F.avg_pool2d(F.avg_pool2d(anomaly_map, (size, 1), stride=1), (1, size), stride=1)
    return anomaly_map


def image_scores(anomaly_map: Tensor, pool_size: int) -> Tensor:
    """Image score: max of the average-pooled map (robust to single hot pixels)."""
    return pooled_map(anomaly_map, pool_size).flatten(1).amax(dim=1)


def score_maps(components: Sequence[Tensor | None], rule: ScoringRule, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(anomaly map (B, 1, H, W), image score (B,)) under ``rule``; ``valid`` (B or 1, 1, H, W) marks
    letterbox content: the padding is zeroed and left out of the smoothing (``masked_gaussian_smooth``)."""
    anomaly_map = masked_gaussian_smooth(blend(components, rule.weights), rule.smoothing_sigma, valid)
    return anomaly_map, image_scores(anomaly_map, rule.score_pool_size)
