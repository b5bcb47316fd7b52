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


CANDIDATES = 4
"""Nearest-prompt candidates a bfloat16 search keeps per query patch; their exact cosines decide."""


def _bf16_search_pays(device: torch.device, prompt_patches: int) -> bool:
    # A bfloat16 GEMM runs ~2.5x faster than float32 only where the CPU has native bfloat16 (AVX512-BF16 /
    # AMX); elsewhere it is emulated and slower. Small searches are not worth the extra top-k.
    if device.type != "cpu" or prompt_patches < 1024:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def patch_residual(query: Tensor, prompts: Tensor, chunk: int = 4, search: str = "auto") -> Tensor:
    """(B, C, H, W) query and (K, C, h, w) shared or (B, K, C, h, w) per-query prompts -> (B, H, W):
    for each query patch, ``min over every prompt patch of 0.5 * (1 - cos)``.

    ``search="exact"`` takes the maximum of the float32 similarities. ``"bf16"`` finds the ``CANDIDATES``
    most similar prompt patches with a bfloat16 similarity and takes the maximum of their exact float32
    cosines: the same value unless the true nearest patch falls outside the candidates (near-ties within
    bfloat16's ~3 significant digits). On real lite0 features about 1 patch in 10^4 differs, by at most
    1.4e-3; onboarding metrics were identical to 4 decimals. ``"auto"`` uses it on CPUs with native
    bfloat16 for searches of 1024+ prompt patches (onboarding magnetic_tile at k = 8: 39 s -> 29 s)."""
    batch, channels, height, width = query.shape
    shared = prompts.dim() == 4
    if (shared and prompts.shape[1] != channels) or (not shared and (prompts.shape[0] != batch or prompts.shape[2] != channels)):
        msg = f"prompts {tuple(prompts.shape)} do not match queries {tuple(query.shape)}"
        raise ValueError(msg)
    if search not in ("auto", "exact", "bf16"):
        msg = f"search must be 'auto', 'exact' or 'bf16', got {search!r}"
        raise ValueError(msg)
    q = F.normalize(query.flatten(2).transpose(1, 2), dim=-1)  # (B, HW, C)
    if shared:  # normalised once, not once per query
        p = F.normalize(prompts.permute(0, 2, 3, 1).reshape(1, -1, channels), dim=-1)  # (1, K*h*w, C)
    else:
        p = F.normalize(prompts.permute(0, 1, 3, 4, 2).reshape(batch, -1, channels), dim=-1)  # (B, K*h*w, C)
    if search == "auto":
        search = "bf16" if _bf16_search_pays(query.device, p.shape[1]) and p.shape[1] > CANDIDATES else "exact"
    p_low = p.to(torch.bfloat16) if search == "bf16" else None
    out = []
    for start in range(0, batch, chunk):  # a (chunk, HW, K*h*w) similarity at a time
        q_chunk = q[start : start + chunk]
        p_chunk = p if shared else p[start : start + chunk]
        if p_low is None:
            best = torch.matmul(q_chunk, p_chunk.transpose(1, 2)).amax(dim=-1)
        else:
            low = p_low if shared else p_low[start : start + chunk]
            top = torch.matmul(q_chunk.to(torch.bfloat16), low.transpose(1, 2)).topk(CANDIDATES, dim=-1).indices  # (b, HW, n)
            if shared:
                candidates = p_chunk[0][top]  # (b, HW, n, C)
            else:
                candidates = torch.gather(p_chunk[:, None].expand(-1, top.shape[1], -1, -1), 2,
                                          top[..., None].expand(-1, -1, -1, channels))  # fmt: skip
            best = (candidates * q_chunk[:, :, None]).sum(dim=-1).amax(dim=-1)
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


def neighbourhood_embedding(layers: list[Tensor], size: tuple[int, int]) -> Tensor:
    """PatchCore's locally aware patch features: each layer (B, C_i, h_i, w_i) averaged over 3x3
    neighbourhoods on its own grid, brought to ``size`` bilinearly, concatenated -> (B, sum C_i, *size)."""
    parts = []
    for layer in layers:
        pooled = F.avg_pool2d(layer, kernel_size=3, stride=1, padding=1)
        if tuple(pooled.shape[-2:]) != tuple(size):
            pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        parts.append(pooled)
    return torch.cat(parts, dim=1)


def nearest_distance(query: Tensor, prompts: Tensor, chunk: int = 4) -> Tensor:
    """(B, C, H, W) queries and (K, C, h, w) prompts -> (B, H, W): each query patch's Euclidean
    distance to its nearest patch among all K prompts' patches (PatchCore's memory-bank distance with
    the k prompts as the bank)."""
    batch, channels, height, width = query.shape
    if prompts.dim() != 4 or prompts.shape[1] != channels:
        msg = f"prompts {tuple(prompts.shape)} do not match queries {tuple(query.shape)}"
        raise ValueError(msg)
    bank = prompts.permute(0, 2, 3, 1).reshape(-1, channels)  # (K*h*w, C)
    bank_sq = bank.pow(2).sum(dim=1)
    q = query.flatten(2).transpose(1, 2)  # (B, HW, C)
    out = []
    for start in range(0, batch, chunk):
        part = q[start : start + chunk]
        # |p|^2 - 2 q.p ranks the prompt patches (|q|^2 is the same for all); the distance to the
        # nearest is then computed directly: the expansion cancels to noise of ~1e-2 near zero
        nearest = (bank_sq - 2 * torch.matmul(part, bank.t())).argmin(dim=-1)  # (b, HW)
        out.append((part - bank[nearest]).norm(dim=-1))
    return torch.cat(out).view(batch, height, width)


class InCTRLOutput(NamedTuple):
    score: Tensor
    """(B,) final image score: mean of the holistic score and the max patch residual."""
    image_score: Tensor
    """(B,) image-level residual score (trained with its own focal term)."""
    residual_map: Tensor
    """(B, H, W) multi-layer patch residual on the head's grid."""
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
    ) -> InCTRLOutput:
        """``prompt_layers``: per layer (K, C, h, w) shared or (B, K, C, h, w) per query;
        ``prompt_tokens``: (K, D) shared or (B, K, D)."""
        residual = multi_layer_residual(query_layers, prompt_layers, self.grid)
        if prompt_tokens.dim() == 2:
            prompt_tokens = prompt_tokens.unsqueeze(0).expand(query_token.shape[0], *prompt_tokens.shape)
        token_residual = self.adapter(prompt_tokens).mean(dim=1) - self.adapter(query_token)
        image_score = self.image_head(token_residual)
        flat = residual.flatten(1)
        ordered = flat.sort(dim=1, descending=True).values if self.holistic_input == "sorted" else flat
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
