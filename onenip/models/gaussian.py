"""Per-position Gaussian of the training normals' features: PaDiM's statistic as a fourth map.

OneNIP's maps compare a query with ONE prompt (the reconstruction, the prompt residual). The category's
other training normals hold what a single prompt cannot: how much each position varies on normal
images. PaDiM (Defard et al., 2020) models the patch features at each grid position as a Gaussian and
scores a patch by its Mahalanobis distance to it. Measured on validation data made from training
images only (held-out normals + warps, smudges, spots), that map is strongest where the category's
normal images are aligned and vary (magnetic tiles); the validation decides its weight per category,
so where it does not pay it is not used.

Like PaDiM: a seeded random subset of the channels (``model.gaussian_channels``), the full covariance
per position with ``0.01 * I`` added, the distance's square root. Unlike PaDiM's plain mean: letterboxed
cells count only where they hold image content, and each position's mean and covariance are shrunk
towards the ones pooled over all positions by ``prior`` pseudo-images (a position few images cover
gets the pooled statistics instead of a singular covariance).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

RIDGE = 0.01
"""Added to each covariance's diagonal (PaDiM's ``0.01 * I``)."""


def select_channels(num_features: int, count: int, seed: int = 0) -> Tensor:
    """PaDiM's random channel subset: ``count`` of ``num_features`` (all if ``count`` >= it), sorted, seeded."""
    if count >= num_features:
        return torch.arange(num_features)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_features, generator=generator)[:count].sort().values


def fit_position_gaussian(
    chunks: Iterable[tuple[Tensor, Tensor]], prior: float = 10.0, ridge: float = RIDGE,
) -> tuple[Tensor, Tensor]:
    """Mean and precision of each grid position's features.

    Args:
        chunks: ``(features (n, d, h, w), weights (n, 1, h, w))`` pairs, read twice (a list): weight 1
            where a cell holds image content, 0 on letterbox padding.
        prior: pseudo-images pulling each position towards the statistics pooled over positions.
        ridge: added to every covariance's diagonal.

    Returns:
        ``(mean (d, h, w), precision (h * w, d, d))``, float32.
    """
    chunks = list(chunks)
    first = chunks[0][0]
    d, h, w = first.shape[1:]
    weight = torch.zeros(h * w, dtype=torch.float64)
    total = torch.zeros(h * w, d, dtype=torch.float64)
    for features, weights in chunks:
        x = features.double().flatten(2).permute(2, 0, 1)  # (P, n, d)
        wt = weights.double().flatten(2).permute(2, 0, 1)  # (P, n, 1)
        weight += wt.sum(dim=(1, 2))
        total += (x * wt).sum(1)
    pooled_mean = total.sum(0) / weight.sum()
    mean = (total + prior * pooled_mean) / (weight + prior)[:, None]
    scatter = torch.zeros(h * w, d, d, dtype=torch.float64)
    for features, weights in chunks:
        centred = features.double().flatten(2).permute(2, 0, 1) - mean[:, None]  # (P, n, d)
        weighted = centred * weights.double().flatten(2).permute(2, 0, 1).sqrt()
        scatter += weighted.transpose(1, 2) @ weighted
    pooled = scatter.sum(0) / weight.sum()
    covariance = (scatter + prior * pooled) / (weight + prior)[:, None, None]
    covariance += ridge * torch.eye(d, dtype=torch.float64)
    precision = torch.linalg.inv(covariance)
    return mean.t().reshape(d, h, w).float(), precision.float()


def mahalanobis_map(features: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """(B, d, h, w) features -> (B, 1, h, w) Mahalanobis distance of each patch to its position's Gaussian."""
    b, d, h, w = features.shape
    centred = (features - mean.to(features.dtype)).flatten(2).permute(2, 0, 1)  # (P, B, d)
    # batched matmul rather than a three-operand einsum: it exports to ONNX and OpenVINO as MatMul
    projected = torch.matmul(centred, precision.to(features.dtype))
    squared = (projected * centred).sum(-1).clamp_min(0)  # (P, B)
    return squared.sqrt().t().reshape(b, 1, h, w)
