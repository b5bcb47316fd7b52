"""OneNIP: prompt-guided feature reconstruction with restoration and a supervised refiner.

Gao, "Learning to Detect Multi-class Anomalies with Just One Normal Image Prompt" (ECCV 2024 / 2025).
The frozen backbone's stride-16 features of a query image are reconstructed by a transformer that is
guided by ONE normal image of the same product (the prompt):

* encoder: self-attention inside each image's tokens (query, synthetic and prompt alike) with the
  reference's neighbour mask: the window AROUND each token, the token itself included, is blocked and
  every token outside it is visible. A token can therefore never copy itself or its neighbours (the
  "identical shortcut" of UniAD), so an anomaly cannot be reconstructed from itself;
* two-way decoder: prompt tokens attend to the query image's tokens (they gather "what is here"),
  then the image tokens attend to the updated prompt tokens, both with the same blocked window; a final
  prompt -> image attention is unmasked, as in the reference. The reconstruction is read out of the
  *prompt* stream, so it is built from normal content and cannot reproduce a defect;
* restoration: a synthesized anomalous copy of each training query has the clean query's features as
  target, which teaches the network to remove anomalies rather than copy them (Sec. 3.3 of the paper);
* refiner: a small conv head on ``|reconstruction - input|`` predicts a sharp anomaly mask, trained
  with Dice on the synthetic masks (Sec. 3.4). Beside the paper's input it can take a fine skip path
  (``fine_features > 0``): at stride 8, each query patch's residual to its nearest prompt patch
  (``prompt_residual``), so it can draw defects thinner than a stride-16 cell.

Grids need not be square (a category keeps its aspect, ``onenip.data.geometry``): the position
embedding is interpolated to each grid and the neighbour mask is built per grid.

This module is pure torch and works on features; ``onenip.models.detector`` puts the backbone in front
and blends the component maps (``onenip.models.scoring``).

Example:
    >>> model = OneNIP(in_features=192, max_grid=(16, 16), embed_dim=64, num_heads=4,
    ...                num_encoder_layers=1, num_decoder_layers=1)
    >>> query = torch.randn(2, 192, 10, 16); prompt = torch.randn(1, 192, 10, 16)
    >>> model(query, prompt, image_size=(160, 256)).recon_map.shape
    torch.Size([2, 1, 160, 256])

See Also:
    ``onenip.training.train_onenip`` for the training loop, ``onenip.models.loss`` for the losses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onenip.models.refiner import Refiner


class OneNIPOutput(NamedTuple):
    """The component maps of ``OneNIP.forward``, all at the requested image size."""

    recon_map: Tensor
    """(B, 1, H, W) L2 reconstruction error, upsampled from the feature grid."""
    refined_map: Tensor
    """(B, 1, H, W) refiner probability."""
    residual_map: Tensor | None
    """(B, 1, H, W) distance of each fine query patch to its nearest prompt patch (None without fine path)."""
    refiner_logits: Tensor
    """(B, 1, 4h, 4w) refiner logits at the refiner's own resolution (the Dice loss takes their sigmoid)."""
    recon_features: Tensor
    """(B, C, h, w) reconstructed features."""
    fine_residual: Tensor | None = None
    """(B, C_fine, 2h, 2w) per-channel ``|query - nearest prompt patch|`` (None without fine path)."""


def neighbor_mask(feature_size: tuple[int, int], neighbor_size: tuple[int, int]) -> Tensor:
    """(h*w, h*w) bool attention mask, True where attention is BLOCKED: the window around each token.

    As the reference's ``generate_mask``: token (i, j) may not attend to any token within
    ``neighbor_size // 2`` rows and columns of itself (itself included); everything outside that
    window is visible. Raises ``ValueError`` when some token would see nothing (its attention row would
    be all -inf, which gives NaN).
    """
    h, w = feature_size
    check_neighbor_size(feature_size, neighbor_size)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= neighbor_size[0] // 2
    near_cols = (cols[:, None] - cols[None, :]).abs() <= neighbor_size[1] // 2
    return near_rows & near_cols


def check_neighbor_size(feature_size: tuple[int, int], neighbor_size: tuple[int, int]) -> None:
    """A window that covers the whole grid from some token blocks that token's every key: refuse it.

    The window of token (i, j) spans rows ``i +- n_h // 2``; it covers all ``h`` rows from the middle
    row exactly when ``2 * (n_h // 2) + 1 >= h``, and likewise for columns.
    """
    (h, w), (nh, nw) = feature_size, neighbor_size
    if nh < 1 or nw < 1:
        msg = f"neighbor_size must be positive, got {tuple(neighbor_size)}"
        raise ValueError(msg)
    if 2 * (nh // 2) + 1 >= h and 2 * (nw // 2) + 1 >= w:
        msg = (
            f"neighbor_size {tuple(neighbor_size)} blocks the whole {h}x{w} feature grid for its middle token "
            f"(it would attend to nothing); use a window smaller than the grid in at least one direction, "
            f"e.g. about half of it"
        )
        raise ValueError(msg)


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
    """Row and column embeddings, each ``embed_dim // 2`` wide, concatenated per grid cell.

    Learned at ``max_grid``; a smaller (or other) grid gets them linearly interpolated along each axis,
    so one network serves categories whose inputs have different aspects.
    """

    def __init__(self, max_grid: tuple[int, int], embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2:
            msg = f"embed_dim must be even for a 2-D position embedding, got {embed_dim}"
            raise ValueError(msg)
        self.max_grid = tuple(max_grid)
        self.row_embed = nn.Parameter(torch.rand(max_grid[0], embed_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(max_grid[1], embed_dim // 2))

    @staticmethod
    def _resample(table: Tensor, length: int) -> Tensor:
        if table.shape[0] == length:
            return table
        return F.interpolate(table.t()[None], size=length, mode="linear", align_corners=False)[0].t()

    def forward(self, grid: tuple[int, int]) -> Tensor:
        """(h*w, embed_dim) for an ``h x w`` grid."""
        h, w = grid
        rows = self._resample(self.row_embed, h)[:, None, :].expand(h, w, -1)
        cols = self._resample(self.col_embed, w)[None, :, :].expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, -1)


def feed_forward(embed_dim: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear, hidden width ``mlp_ratio * embed_dim`` (paper: 4d)."""
    hidden = int(embed_dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, embed_dim),
    )


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer (DETR/UniAD style) with a blocked neighbourhood."""

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
    prompt->image attention sees prompt-aligned keys. Both attentions use the blocked window: prompt
    token i never reads the query tokens around position i.
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


def prompt_residual(
    query: Tensor, prompt: Tensor, *, aggregate: int = 3, window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Each query patch's residual to its nearest prompt patch (PatchCore's memory bank = one prompt).

    Args:
        query: (B, C, h, w) fine features of the queries.
        prompt: (P, C, h, w) fine features of the prompts; P divides B and query i uses prompt ``i % P``.
        aggregate: patches are averaged over ``aggregate x aggregate`` neighbourhoods first (PatchCore: 3).
        window: only prompt patches within ``window // 2`` cells of the query patch count (None: all).

    Returns:
        ``(distance (B, 1, h, w), residual (B, C, h, w))``: the Euclidean distance to the nearest prompt
        patch and the per-channel ``|query - nearest|`` (what the refiner reads).
    """
    batch, num_prompts = query.shape[0], prompt.shape[0]
    if num_prompts == 0 or batch % num_prompts:
        msg = f"the number of prompts ({num_prompts}) must divide the number of queries ({batch})"
        raise ValueError(msg)
    if aggregate > 1:
        pool = dict(kernel_size=aggregate, stride=1, padding=aggregate // 2, count_include_pad=False)
        query, prompt = F.avg_pool2d(query, **pool), F.avg_pool2d(prompt, **pool)
    _, channels, h, w = query.shape
    repeats = batch // num_prompts
    # query i uses prompt i % P: the queries of each prompt as one row block, (P, repeats*N, C), so
    # every prompt is searched by one matmul without copying it per query
    q = query.flatten(2).transpose(1, 2).reshape(repeats, num_prompts, h * w, channels).transpose(0, 1)
    q = q.reshape(num_prompts, repeats * h * w, channels)
    p = prompt.flatten(2).transpose(1, 2)  # (P, N, C)
    # argmin |q - p|^2 = argmin (|p|^2 - 2 q.p): one fused batched matmul, |q|^2 is the same for a row
    ranking = torch.baddbmm((p * p).sum(-1)[:, None, :], q, p.transpose(1, 2), alpha=-2)
    if window is not None:
        ranking = ranking.view(num_prompts, repeats, h * w, h * w)
        ranking = ranking.masked_fill(~_window_mask((h, w), window, ranking.device), float("inf"))
        ranking = ranking.view(num_prompts, repeats * h * w, h * w)
    nearest = ranking.argmin(dim=-1)  # (P, repeats*N)
    difference = q - torch.gather(p, 1, nearest[..., None].expand(-1, -1, channels))
    # back to query order (B, C, h, w)
    difference = difference.view(num_prompts, repeats, h * w, channels).transpose(0, 1).reshape(batch, h * w, channels)
    residual = difference.abs().transpose(1, 2).reshape(batch, channels, h, w)
    # the distance from the difference itself: the expansion above cancels to noise near zero
    distance = difference.norm(dim=-1).reshape(batch, 1, h, w)
    return distance, residual


def _window_mask(grid: tuple[int, int], window: int, device: torch.device) -> Tensor:
    """(N, N) bool: True where prompt patch j lies within ``window // 2`` cells of query patch i."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return ((rows[:, None] - rows[None, :]).abs() <= window // 2) & ((cols[:, None] - cols[None, :]).abs() <= window // 2)


class OneNIP(nn.Module):
    """OneNIP reconstructor + refiner on frozen backbone features.

    Args:
        in_features: channels of the backbone feature map (192 for lite0 stages 0-3).
        max_grid: (h, w) the position embedding is learned at (the largest grid of the categories).
        embed_dim: hidden width d of the transformer.
        num_heads: attention heads.
        num_encoder_layers / num_decoder_layers: depths (paper: 4 and 4).
        mlp_ratio: FFN width as a multiple of d (paper: 4).
        dropout: dropout on the residual and FFN paths (paper: 0.1).
        attn_dropout: dropout on attention weights (paper: 0.1; 0 by default, see ``Attention``).
        neighbor_size: (rows, cols) of the blocked attention window in grid cells (paper: 7x7 on 14x14).
        feature_jitter_scale / feature_jitter_prob: UniAD feature jitter during training (paper: 20, 1.0).
        refiner_dim: channels of the refiner blocks (paper: 128).
        fine_features: channels of the fine (stride 8) features for the refiner's skip path; 0 = the
            paper's refiner on the reconstruction residual alone.
        residual_window: ``prompt_residual`` window in fine cells (None: the whole prompt).
        final_attention_mask: block the neighbour window in the decoder's final prompt -> image attention
            too. The reference leaves it unmasked, so prompt token i reads query token i directly and the
            reconstruction can copy the query (measured: it ignores its prompt); masked, the content at i
            must come from the prompt stream.
    """

    def __init__(
        self,
        in_features: int,
        max_grid: tuple[int, int],
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
        fine_features: int = 0,
        residual_window: int | None = None,
        final_attention_mask: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            raise ValueError(msg)
        self.in_features = in_features
        self.max_grid = tuple(max_grid)
        self.neighbor_size = tuple(neighbor_size)
        check_neighbor_size(self.max_grid, self.neighbor_size)
        self.feature_jitter_scale = feature_jitter_scale
        self.feature_jitter_prob = feature_jitter_prob
        self.fine_features = fine_features
        self.residual_window = residual_window
        self.final_attention_mask = final_attention_mask

        self.input_proj = nn.Linear(in_features, embed_dim)
        self.pos_embed = LearnedPositionEmbedding2d(self.max_grid, embed_dim)
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
        self.refiner = Refiner(in_features, refiner_dim, fine_features=fine_features)
        self._masks: dict[tuple, Tensor] = {}
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier on every matrix, as the reference initialiser does for the transformer.
        for name, param in self.named_parameters():
            if param.dim() > 1 and not name.startswith(("pos_embed", "refiner")):
                nn.init.xavier_uniform_(param)

    def attention_bias(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """(h*w, h*w) additive mask, -inf on the blocked window; built once per grid and device."""
        key = (tuple(grid), str(device))
        bias = self._masks.get(key)
        if bias is None:
            blocked = neighbor_mask(tuple(grid), self.neighbor_size)
            bias = torch.zeros(blocked.shape).masked_fill(blocked, float("-inf")).to(device)
            self._masks[key] = bias
        return bias

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
        if features.ndim != 4 or features.shape[1] != self.in_features:
            msg = f"features must be (B, {self.in_features}, h, w), got {tuple(features.shape)}"
            raise ValueError(msg)
        return features.flatten(2).transpose(1, 2)

    def encode(self, features: Tensor) -> Tensor:
        """Project and self-attend each image's tokens: (B, C, h, w) -> (B, h*w, d)."""
        grid = tuple(features.shape[-2:])
        tokens = self.input_proj(self._jitter(self._tokens(features)))
        pos = self.pos_embed(grid)
        mask = self.attention_bias(grid, tokens.device)
        for layer in self.encoder:
            tokens = layer(tokens, pos, mask)
        return tokens

    def decode(self, prompt_tokens: Tensor, image_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Two-way decoding; returns reconstructed features (B, C, h, w) from the prompt stream."""
        pos = self.pos_embed(grid)
        mask = self.attention_bias(grid, image_tokens.device)
        for layer in self.decoder:
            prompt_tokens, image_tokens = layer(prompt_tokens, image_tokens, pos, mask)
        # The reference's final prompt -> image attention has no mask (final_attention_mask adds it).
        final_mask = mask if self.final_attention_mask else None
        attended = self.final_prompt_to_image(prompt_tokens + pos, image_tokens + pos, image_tokens, final_mask)
        prompt_tokens = self.final_norm(prompt_tokens + self.final_drop(attended))
        recon = self.output_proj(prompt_tokens)
        return recon.transpose(1, 2).reshape(recon.shape[0], -1, *grid)

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
        if prompt_features.shape[1:] != query_features.shape[1:]:
            msg = f"prompt features {tuple(prompt_features.shape[1:])} differ from query features {tuple(query_features.shape[1:])}"
            raise ValueError(msg)
        grid = tuple(query_features.shape[-2:])
        if encoded_prompts is not None:
            image_tokens, prompt_tokens = self.encode(query_features), encoded_prompts
        else:
            # One encoder pass over queries and prompts together: the layers act per image anyway.
            encoded = self.encode(torch.cat([query_features, prompt_features], dim=0))
            image_tokens, prompt_tokens = encoded[:batch], encoded[batch:]
        if num_prompts != batch:
            prompt_tokens = prompt_tokens.repeat(batch // num_prompts, 1, 1)
        return self.decode(prompt_tokens, image_tokens, grid)

    def reconstruct_and_refine(
        self,
        query_features: Tensor,
        prompt_features: Tensor,
        query_fine: Tensor | None = None,
        prompt_fine: Tensor | None = None,
        encoded_prompts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the losses need: reconstructed features (B, C, h, w), refiner logits (B, 1, 4h, 4w) at
        the refiner's own resolution, and the fine prompt distance (B, 1, 2h, 2w) or None.

        Training calls this instead of ``forward``, which also upsamples every map to the image size.
        """
        return self._reconstruct_refine(query_features, prompt_features, query_fine, prompt_fine, encoded_prompts)[:3]

    def _reconstruct_refine(
        self,
        query_features: Tensor,
        prompt_features: Tensor,
        query_fine: Tensor | None,
        prompt_fine: Tensor | None,
        encoded_prompts: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        recon = self.reconstruct(query_features, prompt_features, encoded_prompts)
        distance, residual, fine_input = None, None, None
        if self.fine_features:
            if query_fine is None or prompt_fine is None:
                msg = "this model has a fine path: pass query_fine and prompt_fine (stride-8 features)"
                raise ValueError(msg)
            expected = (query_features.shape[-2] * 2, query_features.shape[-1] * 2)
            if tuple(query_fine.shape[-2:]) != expected:
                msg = f"fine features have grid {tuple(query_fine.shape[-2:])}, expected {expected} (twice the coarse grid)"
                raise ValueError(msg)
            distance, residual = prompt_residual(query_fine, prompt_fine, window=self.residual_window)
            fine_input = torch.cat([residual, distance], dim=1)
        logits = self.refiner((recon - query_features).abs(), fine_input)
        return recon, logits, distance, residual

    def forward(
        self,
        query_features: Tensor,
        prompt_features: Tensor,
        query_fine: Tensor | None = None,
        prompt_fine: Tensor | None = None,
        *,
        image_size: tuple[int, int] | None = None,
        encoded_prompts: Tensor | None = None,
    ) -> OneNIPOutput:
        """Reconstruct the query features and return the component maps at ``image_size``.

        Args:
            query_features: (B, C, h, w) backbone features of the query (or synthetic) images.
            prompt_features: (P, C, h, w) backbone features of the normal prompt image(s); P divides B
                and query i uses prompt ``i % P``.
            query_fine / prompt_fine: (B / P, C_fine, 2h, 2w) stride-8 features (models with a fine path).
            image_size: (H, W) of the maps; default 16 x the grid.
            encoded_prompts: optional ``encode(prompt_features)`` computed earlier (see ``reconstruct``).
        """
        size = image_size or (query_features.shape[-2] * 16, query_features.shape[-1] * 16)
        recon, logits, distance, residual = self._reconstruct_refine(
            query_features, prompt_features, query_fine, prompt_fine, encoded_prompts,
        )

        def up(maps: Tensor) -> Tensor:
            return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)

        recon_map = up((recon - query_features).pow(2).sum(dim=1, keepdim=True).sqrt())
        return OneNIPOutput(
            recon_map=recon_map,
            refined_map=up(logits).sigmoid(),
            residual_map=None if distance is None else up(distance),
            refiner_logits=logits,
            recon_features=recon,
            fine_residual=residual,
        )
