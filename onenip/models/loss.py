"""OneNIP training losses: feature MSE (reconstruction + restoration) and Dice for the refiner."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class OneNIPLoss(NamedTuple):
    total: Tensor
    feature_mse: Tensor
    dice: Tensor


def dice_loss(probabilities: Tensor, masks: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice with squared denominators (V-Net), averaged over the batch.

    ``1 - (2 sum(p t) + s) / (sum p^2 + sum t^2 + s)``. The reference code drops the factor 2, which
    leaves the optimum in place but makes a perfect prediction cost 0.5; we keep the textbook form.
    With an empty mask the loss is ``1 - 1 / (sum p^2 + 1)``, which drives a normal image's
    prediction to zero; that is how normal queries supervise the refiner.
    """
    p = probabilities.flatten(1)
    t = masks.flatten(1).to(p.dtype)
    numerator = 2 * (p * t).sum(dim=1) + smooth
    denominator = (p.pow(2) + t.pow(2)).sum(dim=1) + smooth
    return (1.0 - numerator / denominator).mean()


def area_pool_masks(masks: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """(N, 1, H, W) masks -> (N, 1, h, w): the anomalous fraction of each cell (exact when H, W are
    multiples of h, w, as image / refiner sizes are)."""
    size = tuple(size)
    if tuple(masks.shape[-2:]) == size:
        return masks.float()
    return F.adaptive_avg_pool2d(masks.float(), size)


def onenip_loss(
    recon_features: Tensor,
    target_features: Tensor,
    refiner_logits: Tensor,
    masks: Tensor,
    dice_weight: float = 0.5,
    image_pixels: int | None = None,
) -> OneNIPLoss:
    """Feature MSE against the CLEAN query features + ``dice_weight`` x Dice on the refiner.

    Args:
        recon_features: (N, C, h, w) reconstructions of normal queries and their synthetic copies.
        target_features: (N, C, h, w) clean query features (the same target for a query and its copy).
        refiner_logits: (N, 1, h', w') refiner logits at the refiner's own resolution (4x the grid).
        masks: (N, 1, H, W) zeros for normal queries, synthetic masks for anomalous copies, at image
            resolution; area-pooled to the logits' grid (soft targets: the fraction of each cell that is
            anomalous), so the loss never upsamples logits to the image size.
        dice_weight: 0.5 in the paper's config.
        image_pixels: H * W of the images when ``masks`` come already pooled to the logits' grid.
    """
    full_pixels = image_pixels or masks.shape[-2] * masks.shape[-1]
    masks = area_pool_masks(masks, refiner_logits.shape[-2:])
    feature_mse = F.mse_loss(recon_features, target_features)
    # Sums over the coarse grid are (grid / image) times the full-resolution sums of an upsampled map;
    # scaling the smoothing term alike keeps the reference's loss (smooth = 1 at full resolution).
    smooth = refiner_logits.shape[-2] * refiner_logits.shape[-1] / full_pixels
    dice = dice_loss(torch.sigmoid(refiner_logits), masks, smooth=smooth)
    return OneNIPLoss(total=feature_mse + dice_weight * dice, feature_mse=feature_mse, dice=dice)
