"""OneNIP: prompt-guided feature reconstruction with restoration and a supervised refiner.

Gao, "Learning to Detect Multi-class Anomalies with Just One Normal Image Prompt" (ECCV 2024 / 2025).
The frozen backbone's stride-16 features of a query image are reconstructed by a transformer that is
guided by ONE normal image of the same product (the prompt):

* encoder: self-attention inside each image's tokens (query, synthetic and prompt alike), restricted to
  a neighbourhood window so a token cannot simply copy itself through distant context;
* two-way decoder: prompt tokens attend to the query image's tokens (they gather "what is here"),
  then the image tokens attend to the updated prompt tokens. The reconstruction is read out of the
  *prompt* stream, so it is built from normal content and cannot reproduce a defect;
* restoration: a synthesized anomalous copy of each training query has the clean query's features as
  target, which teaches the network to remove anomalies rather than copy them (Sec. 3.3 of the paper);
* refiner: a small conv head on ``|reconstruction - input|`` predicts a sharp anomaly mask, trained
  with Dice on the synthetic masks (Sec. 3.4).

This module is pure torch and works on features; ``onenip.models.detector`` puts the backbone in front.

Example:
    >>> model = OneNIP(in_features=192, feature_size=(16, 16), embed_dim=64, num_heads=4,
    ...                num_encoder_layers=1, num_decoder_layers=1, image_size=(256, 256))
    >>> query = torch.randn(2, 192, 16, 16); prompt = torch.randn(2, 192, 16, 16)
    >>> model(query, prompt).anomaly_map.shape
    torch.Size([2, 1, 256, 256])

See Also:
    ``onenip.training.train_onenip`` for the training loop, ``onenip.models.loss`` for the losses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onenip.models.refiner import Refiner


class OneNIPOutput(NamedTuple):
    """What ``OneNIP.forward`` returns, the same type in training and evaluation."""

    anomaly_map: Tensor
    """(B, 1, H, W) blend of normalised reconstruction error and refiner probability, smoothed."""
    pred_score: Tensor
    """(B,) max of the average-pooled anomaly map."""
    recon_map: Tensor
    """(B, 1, H, W) L2 reconstruction error, upsampled from the feature grid."""
    refined_map: Tensor
    """(B, 1, H, W) refiner probability."""
    refiner_logits: Tensor
    """(B, 1, H, W) refiner logits (the Dice loss takes their sigmoid)."""
    recon_features: Tensor
    """(B, C, h, w) reconstructed features."""


def neighbor_mask(feature_size: tuple[int, int], neighbor_size: tuple[int, int]) -> Tensor:
    """(h*w, h*w) bool attention mask, True where attention is NOT allowed (outside the window).

    A token at (i, j) may attend to tokens within ``neighbor_size // 2`` rows and columns of itself.
    Built once per grid size (it is a buffer of the model), not on every forward.
    """
    h, w = feature_size
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= neighbor_size[0] // 2
    near_cols = (cols[:, None] - cols[None, :]).abs() <= neighbor_size[1] // 2
    return ~(near_rows & near_cols)


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` with a precomputed additive mask.

    Same maths as ``nn.MultiheadAttention``; calling SDPA directly skips its per-call mask checks and
    merges, and with ``attn_dropout=0`` lets CPU and CUDA use their fused kernels. Dropout on the
    attention weights materialises every (tokens x tokens) matrix and cost a quarter of a training
    step on CPU, so it is off by default (dropout stays on the residual and MLP paths).
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.attn_dropout = attn_dropout

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """(B, N, d) each -> (B, N, d); ``attn_bias`` (N, N) is added to the logits (-inf = blocked)."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(query.shape))


class LearnedPositionEmbedding2d(nn.Module):
    """Row and column embeddings, each ``embed_dim // 2`` wide, concatenated per grid cell."""

    def __init__(self, feature_size: tuple[int, int], embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2:
            msg = f"embed_dim must be even for a 2-D position embedding, got {embed_dim}"
            raise ValueError(msg)
        self.feature_size = feature_size
        self.row_embed = nn.Parameter(torch.rand(feature_size[0], embed_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(feature_size[1], embed_dim // 2))

    def forward(self) -> Tensor:
        """(h*w, embed_dim)."""
        h, w = self.feature_size
        rows = self.row_embed[:, None, :].expand(h, w, -1)
        cols = self.col_embed[None, :, :].expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, -1)


def feed_forward(embed_dim: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear, hidden width ``mlp_ratio * embed_dim`` (paper: 4d)."""
    hidden = int(embed_dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, embed_dim),
    )


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer (DETR/UniAD style) with a masked neighbourhood."""

    def __init__(
        self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1, attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embed_dim, num_heads, attn_dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.mlp = feed_forward(embed_dim, mlp_ratio, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        q = k = tokens + pos
        attended = self.self_attn(q, k, tokens, attn_mask)
        tokens = self.norm1(tokens + self.drop1(attended))
        return self.norm2(tokens + self.drop2(self.mlp(tokens)))


class TwoWayDecoderLayer(nn.Module):
    """Prompt -> image attention, MLP on the prompt tokens, image -> prompt attention.

    The paper's two-way decoder (after SAM's): the prompt stream carries normal content and reads the
    query through cross-attention; the image stream is refreshed from the prompt so the next layer's
    prompt->image attention sees prompt-aligned keys.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1, attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.prompt_to_image = Attention(embed_dim, num_heads, attn_dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.mlp = feed_forward(embed_dim, mlp_ratio, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.image_to_prompt = Attention(embed_dim, num_heads, attn_dropout)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.drop3 = nn.Dropout(dropout)

    def forward(self, prompt: Tensor, image: Tensor, pos: Tensor, attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        # (1) prompt tokens attend to the query image: q = prompt + pos, k = image + pos, v = image.
        attended = self.prompt_to_image(prompt + pos, image + pos, image, attn_mask)
        prompt = self.norm1(prompt + self.drop1(attended))
        # (2) MLP on the prompt tokens.
        prompt = self.norm2(prompt + self.drop2(self.mlp(prompt)))
        # (3) image tokens attend to the prompt tokens and are updated.
        attended = self.image_to_prompt(image + pos, prompt + pos, prompt, attn_mask)
        image = self.norm3(image + self.drop3(attended))
        return prompt, image


class OneNIP(nn.Module):
    """OneNIP reconstructor + refiner on frozen backbone features.

    Args:
        in_features: channels of the backbone feature map (192 for lite0 stages 0-3).
        feature_size: (h, w) of the feature grid (input size / 16).
        image_size: (H, W) the maps are produced at (the backbone's input size).
        embed_dim: hidden width d of the transformer.
        num_heads: attention heads.
        num_encoder_layers / num_decoder_layers: depths (paper: 4 and 4).
        mlp_ratio: FFN width as a multiple of d (paper: 4).
        dropout: dropout on the residual and FFN paths (paper: 0.1).
        attn_dropout: dropout on attention weights (paper: 0.1; 0 by default, see ``Attention``).
        neighbor_size: attention window in grid cells (paper: 7x7 on a 14x14 grid, about half the side).
        feature_jitter_scale / feature_jitter_prob: UniAD feature jitter during training (paper: 20, 1.0).
        refiner_dim: channels of the refiner blocks (paper: 128).
        recon_weight: weight of the normalised reconstruction error in the anomaly map (paper: 0.5).
        smoothing_sigma: Gaussian sigma (pixels) applied to the anomaly map.
        score_pool_size: average-pool window before the max that gives the image score (paper: 16).
    """

    def __init__(
        self,
        in_features: int,
        feature_size: tuple[int, int],
        image_size: tuple[int, int],
        embed_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        neighbor_size: tuple[int, int] = (9, 9),
        feature_jitter_scale: float = 20.0,
        feature_jitter_prob: float = 1.0,
        refiner_dim: int = 128,
        recon_weight: float = 0.5,
        smoothing_sigma: float = 4.0,
        score_pool_size: int = 16,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            raise ValueError(msg)
        if not 0.0 <= recon_weight <= 1.0:
            msg = f"recon_weight must be in [0, 1], got {recon_weight}"
            raise ValueError(msg)
        self.in_features = in_features
        self.feature_size = tuple(feature_size)
        self.image_size = tuple(image_size)
        self.feature_jitter_scale = feature_jitter_scale
        self.feature_jitter_prob = feature_jitter_prob
        self.recon_weight = recon_weight
        self.smoothing_sigma = smoothing_sigma
        self.score_pool_size = score_pool_size

        self.input_proj = nn.Linear(in_features, embed_dim)
        self.pos_embed = LearnedPositionEmbedding2d(self.feature_size, embed_dim)
        self.encoder = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout) for _ in range(num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            TwoWayDecoderLayer(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout) for _ in range(num_decoder_layers)
        )
        self.final_prompt_to_image = Attention(embed_dim, num_heads, attn_dropout)
        self.final_drop = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(embed_dim)
        self.output_proj = nn.Linear(embed_dim, in_features)
        self.refiner = Refiner(in_features, refiner_dim)

        blocked = neighbor_mask(self.feature_size, tuple(neighbor_size))
        self.register_buffer("attn_mask", torch.zeros(blocked.shape).masked_fill(blocked, float("-inf")), persistent=False)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier on every matrix, as the reference initialiser does for the transformer.
        for name, param in self.named_parameters():
            if param.dim() > 1 and not name.startswith(("pos_embed", "refiner")):
                nn.init.xavier_uniform_(param)

    # -- reconstruction ---------------------------------------------------------------------------
    def _jitter(self, tokens: Tensor) -> Tensor:
        """UniAD feature jitter: Gaussian noise scaled by each token's norm / C."""
        if not self.training or self.feature_jitter_scale <= 0:
            return tokens
        if torch.rand((), device=tokens.device) > self.feature_jitter_prob:
            return tokens
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + torch.randn_like(tokens) * norms * self.feature_jitter_scale

    def _tokens(self, features: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, h*w, C)."""
        if tuple(features.shape[-2:]) != self.feature_size:
            msg = f"features have grid {tuple(features.shape[-2:])}, the model was built for {self.feature_size}"
            raise ValueError(msg)
        return features.flatten(2).transpose(1, 2)

    def encode(self, features: Tensor) -> Tensor:
        """Project and self-attend each image's tokens: (B, C, h, w) -> (B, h*w, d)."""
        tokens = self.input_proj(self._jitter(self._tokens(features)))
        pos = self.pos_embed()
        mask = self.attn_mask
        for layer in self.encoder:
            tokens = layer(tokens, pos, mask)
        return tokens

    def decode(self, prompt_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Two-way decoding; returns reconstructed features (B, C, h, w) from the prompt stream."""
        pos = self.pos_embed()
        mask = self.attn_mask
        for layer in self.decoder:
            prompt_tokens, image_tokens = layer(prompt_tokens, image_tokens, pos, mask)
        attended = self.final_prompt_to_image(prompt_tokens + pos, image_tokens + pos, image_tokens, mask)
        prompt_tokens = self.final_norm(prompt_tokens + self.final_drop(attended))
        recon = self.output_proj(prompt_tokens)
        h, w = self.feature_size
        return recon.transpose(1, 2).reshape(recon.shape[0], -1, h, w)

    def reconstruct(self, query_features: Tensor, prompt_features: Tensor, encoded_prompts: Tensor | None = None) -> Tensor:
        """(B, C, h, w) query and prompt features -> (B, C, h, w) reconstructed query features.

        ``prompt_features`` has batch P dividing B; query i is guided by prompt ``i % P``, so a batch
        of queries followed by their synthetic copies shares one encoder pass per prompt.
        ``encoded_prompts`` (P, h*w, d), ``encode(prompt_features)`` computed earlier, skips that pass:
        at inference the prompt of a category never changes (``OneNIPDetector`` caches it).
        """
        batch, num_prompts = query_features.shape[0], prompt_features.shape[0]
        if num_prompts == 0 or batch % num_prompts:
            msg = f"the number of prompts ({num_prompts}) must divide the number of queries ({batch})"
            raise ValueError(msg)
        if encoded_prompts is not None:
            image_tokens, prompt_tokens = self.encode(query_features), encoded_prompts
        else:
            # One encoder pass over queries and prompts together: the layers act per image anyway.
            encoded = self.encode(torch.cat([query_features, prompt_features], dim=0))
            image_tokens, prompt_tokens = encoded[:batch], encoded[batch:]
        if num_prompts != batch:
            prompt_tokens = prompt_tokens.repeat(batch // num_prompts, 1, 1)
        return self.decode(prompt_tokens, image_tokens)

    def reconstruct_and_refine(
        self, query_features: Tensor, prompt_features: Tensor, encoded_prompts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """What the losses need: reconstructed features (B, C, h, w) and refiner logits (B, 1, H, W).

        Training calls this instead of ``forward``, which also builds the smoothed anomaly maps and
        image scores that no loss uses.
        """
        recon = self.reconstruct(query_features, prompt_features, encoded_prompts)
        logits = self.refiner((recon - query_features).abs())
        return recon, F.interpolate(logits, size=self.image_size, mode="bilinear", align_corners=False)

    # -- maps and scores --------------------------------------------------------------------------
    def forward(
        self,
        query_features: Tensor,
        prompt_features: Tensor,
        recon_scale: Tensor | float = 1.0,
        encoded_prompts: Tensor | None = None,
    ) -> OneNIPOutput:
        """Reconstruct the query features and score them.

        Args:
            query_features: (B, C, h, w) backbone features of the query (or synthetic) images.
            prompt_features: (P, C, h, w) backbone features of the normal prompt image(s); P divides B
                and query i uses prompt ``i % P``.
            recon_scale: scalar or (B,) scale of the reconstruction error on held-out training normals
                (see ``blend``); 1.0 before calibration.
            encoded_prompts: optional ``encode(prompt_features)`` computed earlier (see ``reconstruct``).
        """
        recon, refiner_logits = self.reconstruct_and_refine(query_features, prompt_features, encoded_prompts)
        residual = recon - query_features
        refined_map = refiner_logits.sigmoid()
        recon_map = F.interpolate(
            residual.pow(2).sum(dim=1, keepdim=True).sqrt(), size=self.image_size, mode="bilinear", align_corners=False,
        )
        anomaly_map = self.blend(recon_map, refined_map, recon_scale)
        return OneNIPOutput(
            anomaly_map=anomaly_map,
            pred_score=self.score(anomaly_map),
            recon_map=recon_map,
            refined_map=refined_map,
            refiner_logits=refiner_logits,
            recon_features=recon,
        )

    def blend(self, recon_map: Tensor, refined_map: Tensor, recon_scale: Tensor | float = 1.0) -> Tensor:
        """Anomaly map = w * recon / recon_scale + (1 - w) * refiner probability, Gaussian-smoothed.

        The reference code rescales the refiner by the *test set's* (max + min) / 2 of the
        reconstruction error; ``recon_scale`` comes from held-out training normals instead.
        """
        scale = torch.as_tensor(recon_scale, dtype=recon_map.dtype, device=recon_map.device)
        scale = scale.reshape(-1, 1, 1, 1) if scale.dim() else scale
        normalised = recon_map / scale.clamp_min(1e-8)
        blended = self.recon_weight * normalised + (1.0 - self.recon_weight) * refined_map
        return gaussian_smooth(blended, self.smoothing_sigma)

    def score(self, anomaly_map: Tensor) -> Tensor:
        """Image score: max of the average-pooled map (robust to single hot pixels)."""
        size = min(self.score_pool_size, *anomaly_map.shape[-2:])
        if size > 1:
            # A k x k box mean is a 1 x k mean of k x 1 means: 2k instead of k^2 reads per pixel.
            anomaly_map = F.avg_pool2d(F.avg_pool2d(anomaly_map, (size, 1), stride=1), (1, size), stride=1)
        return anomaly_map.flatten(1).amax(dim=1)


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps with reflect padding (kernel radius 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(4 * sigma))
    coords = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))
