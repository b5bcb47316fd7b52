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


def onenip_loss(
    recon_features: Tensor,
    target_features: Tensor,
    refiner_logits: Tensor,
    masks: Tensor,
    dice_weight: float = 0.5,
) -> OneNIPLoss:
    """Feature MSE against the CLEAN query features + ``dice_weight`` x Dice on the refiner.

    Args:
        recon_features: (N, C, h, w) reconstructions of normal queries and their synthetic copies.
        target_features: (N, C, h, w) clean query features (the same target for a query and its copy).
        refiner_logits: (N, 1, H, W) refiner logits at mask resolution.
        masks: (N, 1, H, W) zeros for normal queries, synthetic masks for anomalous copies.
        dice_weight: 0.5 in the paper's config.
    """
    if masks.shape[-2:] != refiner_logits.shape[-2:]:
        masks = F.interpolate(masks.float(), size=refiner_logits.shape[-2:], mode="nearest")
    feature_mse = F.mse_loss(recon_features, target_features)
    dice = dice_loss(torch.sigmoid(refiner_logits), masks)
    return OneNIPLoss(total=feature_mse + dice_weight * dice, feature_mse=feature_mse, dice=dice)
