"""InCTRL head (Zhu and Pang, CVPR 2024): in-context residual learning from k normal prompt images.

A generalist scorer: trained once on auxiliary categories, it scores an unseen category from k normal
images without further training. CLIP is not available offline, so the frozen lite backbone's stages
take the place of CLIP's ViT layers, and there is no text prior. Following the reference:

* multi-layer patch residual: per backbone layer, each query patch's residual to its nearest patch
  among ALL k prompts' patches, ``0.5 * (1 - cosine)``; averaged over layers -> the residual map;
* image-level residual: ``mean_k adapter(prompt token) - adapter(query token)``, scored by a small head;
* holistic head: an MLP over the flattened residual map plus the image-level score (broadcast to every
  patch) -> holistic score; final score = mean of the holistic score and the max patch residual
  (training uses it; an onboarded category weighs the two as its onboarding chose, see
  ``onenip.models.generalist``).
  The reference's MLP reads the map in patch order; ``holistic_input="sorted"`` feeds it the same
  residuals in descending order, so its weights describe how residuals are distributed rather than
  where (an option: measured leave-one-category-out it helped kolektor and hurt bottle);
* loss: binary focal loss (alpha 1, gamma 2) on the final score and on the image-level score, with the
  scores passed as logits exactly as the reference does (they are already in [0, 1]; the loss then
  pushes normal scores down and anomalous ones up with bounded gradients).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onenip.models.memory import locally_aware_embedding as neighbourhood_embedding  # noqa: F401  (the generalist's name for it)


TILE_ELEMENTS = 1 << 21
"""A shared-prompt search multiplies this many (query patch, prompt patch) pairs at a time: a similarity
tile of 8 MB that stays in cache while it is reduced. One (4 images x HW, K*h*w) product at once was
memory-bound on 2 cores (lite0, 1024 query patches, k = 8: 60-110 ms a batch of 4 against 20-55 ms
tiled), slower even than a bfloat16 product with a top-k, which this replaced."""


def _tile_rows(prompt_patches: int) -> int:
    return max(64, TILE_ELEMENTS // max(prompt_patches, 1))


def patch_residual(query: Tensor, prompts: Tensor, chunk: int = 4) -> Tensor:
    """(B, C, H, W) query and (K, C, h, w) shared or (B, K, C, h, w) per-query prompts -> (B, H, W):
    for each query patch, ``min over every prompt patch of 0.5 * (1 - cos)``, exact in float32.

    Shared prompts (scoring a category) are searched a tile of query patches at a time
    (``TILE_ELEMENTS``); per-query prompts (training) ``chunk`` queries at a time."""
    batch, channels, height, width = query.shape
    shared = prompts.dim() == 4
    if (shared and prompts.shape[1] != channels) or (not shared and (prompts.shape[0] != batch or prompts.shape[2] != channels)):
        msg = f"prompts {tuple(prompts.shape)} do not match queries {tuple(query.shape)}"
        raise ValueError(msg)
    q = F.normalize(query.flatten(2).transpose(1, 2), dim=-1)  # (B, HW, C)
    if shared:  # normalised once, not once per query
        p = F.normalize(prompts.permute(0, 2, 3, 1).reshape(-1, channels), dim=-1).t().contiguous()  # (C, K*h*w)
        rows, flat = _tile_rows(p.shape[1]), q.reshape(-1, channels)
        best = torch.cat([torch.matmul(flat[i : i + rows], p).amax(dim=-1) for i in range(0, flat.shape[0], rows)])
        return (0.5 * (1 - best)).view(batch, height, width)
    p = F.normalize(prompts.permute(0, 1, 3, 4, 2).reshape(batch, -1, channels), dim=-1)  # (B, K*h*w, C)
    out = []
    for start in range(0, batch, chunk):  # a (chunk, HW, K*h*w) similarity at a time
        best = torch.matmul(q[start : start + chunk], p[start : start + chunk].transpose(1, 2)).amax(dim=-1)
        out.append(0.5 * (1 - best))
    return torch.cat(out).view(batch, height, width)


def multi_layer_residual(query_layers: list[Tensor], prompt_layers: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Mean over layers of ``patch_residual``, each layer's map brought to ``size`` (B, H, W)."""
    maps = []
    for query, prompts in zip(query_layers, prompt_layers, strict=True):
        residual = patch_residual(query, prompts)
        if tuple(residual.shape[-2:]) != tuple(size):
            residual = F.interpolate(residual[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps.append(residual)
    return torch.stack(maps).mean(dim=0)


class Adapter(nn.Module):
    """Linear -> ReLU -> Linear -> ReLU, no biases, bottleneck ``dim // reduction`` (as the reference)."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(), nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class ScoreHead(nn.Module):
    """Linear(d, 128) -> ReLU -> BN -> Linear(128, 64) -> ReLU -> BN -> Linear(64, 1) -> sigmoid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Linear(128, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Linear(64, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x)).squeeze(-1)


HOLISTIC_INPUTS = ("map", "sorted")
"""``map``: an MLP over the residual map in patch order, as the reference (its weights are tied to
positions); ``sorted``: the same values in descending order (position-free). benchmarks/README "Few-shot"
compares them."""


def nearest_patches(query: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) queries and (K, C, h, w) prompts -> ((B, H, W) distances, (B, H, W) indices): each
    query patch's Euclidean distance to its nearest patch among all K prompts' patches (PatchCore's
    memory-bank distance with the k prompts as the bank) and that patch's row in the bank
    (``prompts`` as (K*h*w, C) in (k, y, x) order), searched a tile of query patches at a time
    (``TILE_ELEMENTS``)."""
    batch, channels, height, width = query.shape
    if prompts.dim() != 4 or prompts.shape[1] != channels:
        msg = f"prompts {tuple(prompts.shape)} do not match queries {tuple(query.shape)}"
        raise ValueError(msg)
    bank = patch_bank(prompts)
    # argmin |q - p|^2 = argmax (q.p - |p|^2 / 2): one product with the bank extended by a row
    # -|p|^2 / 2 and the queries by a column of ones
    ranking = torch.cat([bank, -0.5 * bank.pow(2).sum(dim=1, keepdim=True)], dim=1).t().contiguous()  # (C + 1, K*h*w)
    flat = query.flatten(2).transpose(1, 2).reshape(-1, channels)
    rows, distances, indices = _tile_rows(bank.shape[0]), [], []
    for i in range(0, flat.shape[0], rows):
        part = flat[i : i + rows]
        nearest = torch.matmul(F.pad(part, (0, 1), value=1.0), ranking).argmax(dim=-1)
        # the distance to the nearest is computed directly: the expansion cancels to noise near zero
        distances.append((part - bank[nearest]).norm(dim=-1))
        indices.append(nearest)
    return torch.cat(distances).view(batch, height, width), torch.cat(indices).view(batch, height, width)


def nearest_distance(query: Tensor, prompts: Tensor) -> Tensor:
    """The distances of ``nearest_patches``: (B, H, W)."""
    return nearest_patches(query, prompts)[0]


def patch_bank(prompts: Tensor) -> Tensor:
    """(K, C, h, w) prompts -> (K*h*w, C): their patches as one memory bank, in (k, y, x) order."""
    return prompts.permute(0, 2, 3, 1).reshape(-1, prompts.shape[1])


PATCHCORE_NEIGHBOURS = 9
"""anomalib ``PatchcoreModel``'s ``num_neighbors`` default (PatchCore paper, eq. 7)."""


def reweighted_image_score(query: Tensor, bank: Tensor, distances: Tensor, indices: Tensor,
                           neighbours: int = PATCHCORE_NEIGHBOURS) -> Tensor:  # fmt: skip
    """PatchCore's image score (paper eq. 7, as anomalib's ``PatchcoreModel.compute_anomaly_score``):
    the largest patch distance s*, scaled by ``1 - softmax(d)[0]``, where d are the distances from that
    query patch to its nearest bank patch m* and to m*'s other nearest bank patches (``neighbours`` in
    all, m* first). A patch whose nearest normal patch sits in a dense region of the bank counts more
    than one near a rare bank patch; with ``neighbours`` 1 it is the plain maximum.

    ``query`` (B, C, H, W), ``bank`` (N, C), ``distances`` and ``indices`` (B, H, W) from
    ``nearest_patches``."""
    flat = distances.flatten(1)
    score, where = flat.max(dim=1)
    count = min(neighbours, bank.shape[0])
    if count <= 1:
        return score
    rows = torch.arange(flat.shape[0], device=flat.device)
    top = query.flatten(2)[rows, :, where]  # (B, C): each image's most anomalous patch
    nearest = bank[indices.flatten(1)[rows, where]]  # (B, C): its nearest bank patch m*
    # m*'s nearest bank patches, m* itself first (distance 0)
    support = torch.cdist(nearest, bank).topk(count, dim=1, largest=False).indices  # (B, count)
    spread = (top[:, None, :] - bank[support]).norm(dim=-1)  # (B, count)
    return (1 - torch.softmax(spread, dim=1)[:, 0]) * score


class InCTRLOutput(NamedTuple):
    score: Tensor
    """(B,) final image score: mean of the holistic score and the max patch residual."""
    image_score: Tensor
    """(B,) image-level residual score (trained with its own focal term)."""
    residual_map: Tensor
    """(B, H, W) multi-layer patch residual on the head's grid (or the one ``forward`` was given)."""
    holistic_score: Tensor
    """(B,)"""


class InCTRLHead(nn.Module):
    """The trainable part of InCTRL on top of frozen multi-layer patch features and a pooled token.

    Args:
        grid: (H, W) of the residual map the holistic head reads (fixed: it is an MLP over H*W).
        token_dim: channels of the pooled image token.
        holistic_input: what the holistic MLP reads: ``"map"`` the residual map in patch order (the
            reference), ``"sorted"`` the same H*W residuals sorted in descending order, so the head
            sees how the residuals are distributed and not where (see ``HOLISTIC_INPUTS``).
    """

    def __init__(self, grid: tuple[int, int], token_dim: int, reduction: int = 4, holistic_input: str = "map") -> None:
        super().__init__()
        if holistic_input not in HOLISTIC_INPUTS:
            msg = f"holistic_input must be one of {HOLISTIC_INPUTS}, got {holistic_input!r}"
            raise ValueError(msg)
        self.holistic_input = holistic_input
        self.grid = (int(grid[0]), int(grid[1]))
        self.adapter = Adapter(token_dim, reduction)
        self.image_head = ScoreHead(token_dim)
        self.holistic_head = ScoreHead(self.grid[0] * self.grid[1])

    def forward(
        self, query_layers: list[Tensor], prompt_layers: list[Tensor], query_token: Tensor, prompt_tokens: Tensor,
        grid: tuple[int, int] | None = None,
    ) -> InCTRLOutput:
        """``prompt_layers``: per layer (K, C, h, w) shared or (B, K, C, h, w) per query;
        ``prompt_tokens``: (K, D) shared or (B, K, D). ``grid``: the residual map's (H, W) when the
        category's input is not the head's (an onboarded category at its own aspect); the holistic MLP
        then reads the map resampled to the head's grid, as a squashed image would have given it."""
        residual = multi_layer_residual(query_layers, prompt_layers, self.grid if grid is None else grid)
        if prompt_tokens.dim() == 2:
            prompt_tokens = prompt_tokens.unsqueeze(0).expand(query_token.shape[0], *prompt_tokens.shape)
        token_residual = self.adapter(prompt_tokens).mean(dim=1) - self.adapter(query_token)
        image_score = self.image_head(token_residual)
        flat = residual.flatten(1)
        holistic_map = residual if tuple(residual.shape[-2:]) == self.grid else F.interpolate(
            residual[:, None], size=self.grid, mode="bilinear", align_corners=False, antialias=True)[:, 0]  # fmt: skip
        holistic_flat = holistic_map.flatten(1)
        ordered = holistic_flat.sort(dim=1, descending=True).values if self.holistic_input == "sorted" else holistic_flat
        holistic = self.holistic_head(ordered + image_score[:, None])
        score = (holistic + flat.amax(dim=1)) / 2
        return InCTRLOutput(score, image_score, residual, holistic)


def focal_loss(scores: Tensor, targets: Tensor, alpha: float = 1.0, gamma: float = 2.0) -> Tensor:
    """The reference's binary focal loss, applied to the scores as logits (see the module docstring)."""
    bce = F.binary_cross_entropy_with_logits(scores, targets.float(), reduction="none")
    return (alpha * (1 - torch.exp(-bce)) ** gamma * bce).mean()


def inctrl_loss(output: InCTRLOutput, targets: Tensor) -> Tensor:
    """Focal loss on the final score plus focal loss on the image-level score (the reference's sum)."""
    return focal_loss(output.score, targets) + focal_loss(output.image_score, targets)
