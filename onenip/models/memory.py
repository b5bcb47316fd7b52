"""PatchCore's memory bank as a fifth map: each patch's distance to its nearest normal patch.

OneNIP compares a query with ONE prompt; the per-position Gaussian (``onenip.models.gaussian``) models how
each position varies. Neither holds the normal patches themselves: a defect that is locally unlike any
normal patch, wherever it sits, is what PatchCore (Roth et al., 2022) finds with a memory bank of the
training normals' locally aware patch features and the distance to the nearest of them. On a product
where a single prompt cannot show the normal variety, that map localises defects the frozen features
already separate. Like the other maps, validation (held-out normals + unseen-family anomalies) decides
its weight per category, so where it does not pay it is not used.

As PatchCore: the stride-8 and stride-16 stages, each averaged over 3x3 neighbourhoods on its own grid,
brought to the stride-8 grid and concatenated (``patchcore_layers``, ``locally_aware_embedding``); a
coreset chosen by k-center greedy (``kcenter_greedy``); Euclidean distance to the nearest bank patch.
Unlike anomalib's PatchCore: a fixed bank size per category (``model.memory_patches``), so the cost of a
map is known in advance, chosen among a seeded random sample of the patches (letterbox padding
excluded); and no image-score reweighting: the image score comes from the blended map like every map's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAIRS_PER_BLOCK = 1 << 20
"""``nearest_bank_distance`` compares at most this many (query patch, bank patch) pairs at a time in
eager mode: 4 MB of distances, which stay in cache while they are reduced (2 cores, a batch of 16
against 4096 bank patches: 0.18 s, against 0.37 s with 64 MB blocks)."""


def patchcore_layers(features_fine: Tensor | None, features_coarse: Tensor, extractor: object) -> list[Tensor]:
    """The stages PatchCore reads, each on its own grid where the cached features hold it there.

    The fine stack holds every fine stage brought to the fine stride; a stage whose own stride is the
    coarse one is read from the coarse stack instead (PatchCore pools a stage before upsampling it).
    Without fine stages, the coarse stack alone."""
    if features_fine is None:
        return [features_coarse]
    parts = torch.split(features_fine, list(extractor.fine_dims), dim=1)  # type: ignore[attr-defined]
    starts = [sum(extractor.out_dims[:j]) for j in range(len(extractor.out_dims))]  # type: ignore[attr-defined]
    layers = []
    for index, reduction, part in zip(extractor.fine_indices, extractor.fine_reductions, parts, strict=True):  # type: ignore[attr-defined]
        if reduction == extractor.feature_stride and index in extractor.out_indices:  # type: ignore[attr-defined]
            j = extractor.out_indices.index(index)  # type: ignore[attr-defined]
            layers.append(features_coarse[:, starts[j] : starts[j] + extractor.out_dims[j]])  # type: ignore[attr-defined]
        else:
            layers.append(part)
    return layers


def locally_aware_embedding(layers: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """PatchCore's locally aware patch features: each layer (B, C_i, h_i, w_i) averaged over 3x3
    neighbourhoods on its own grid, brought to ``size`` bilinearly, concatenated -> (B, sum C_i, *size)."""
    parts = []
    for layer in layers:
        pooled = F.avg_pool2d(layer, kernel_size=3, stride=1, padding=1)
        if tuple(pooled.shape[-2:]) != tuple(size):
            pooled = F.interpolate(pooled, size=tuple(size), mode="bilinear", align_corners=False)
        parts.append(pooled)
    return torch.cat(parts, dim=1)


PROJECTION_DIM = 64
"""k-center greedy measures distances in a seeded Gaussian random projection to this many dimensions
(as anomalib's coreset does with a sparse one): 65536 candidates of lite0's 152 channels then fit in
cache, 4096 patches chosen in about 5 s on 2 cores against 26 s unprojected."""


def kcenter_greedy(points: Tensor, count: int, generator: torch.Generator | None = None, projection_dim: int = PROJECTION_DIM) -> Tensor:
    """Indices of ``count`` rows of ``points`` (N, C) by k-center greedy (PatchCore's coreset): from a
    random start, each next row is the one farthest from all chosen so far, distances taken after a
    random projection to ``projection_dim`` when C is larger (Johnson-Lindenstrauss: about the same
    ranking). With ``count`` >= N every row, each once, in that order."""
    total = points.shape[0]
    if total == 0 or count <= 0:
        msg = f"kcenter_greedy needs points and a positive count, got {total} points and count {count}"
        raise ValueError(msg)
    points = points.float()
    if points.shape[1] > projection_dim:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        points = points @ projection
    squared_norms = points.pow(2).sum(dim=1)
    chosen = torch.empty(min(count, total), dtype=torch.long)
    current = int(torch.randint(total, (1,), generator=generator))
    nearest = torch.full((total,), float("inf"))
    for i in range(len(chosen)):
        chosen[i] = current
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix-vector product per chosen row, no (N, C) temporary
        distance = squared_norms - 2 * (points @ points[current]) + squared_norms[current]
        nearest = torch.minimum(nearest, distance.clamp_min(0))
        nearest[current] = 0.0  # and it stays 0: rounding never makes a chosen row the farthest again
        current = int(nearest.argmax())
    return chosen


def nearest_bank_distance(embedding: Tensor, bank: Tensor) -> Tensor:
    """(B, C, h, w) patch features and a (M, C) bank -> (B, 1, h, w): each patch's Euclidean distance
    to its nearest bank patch. Blocks of ``PAIRS_PER_BLOCK`` pairs in eager mode (bounded memory); one
    product when traced for export, so the exported graph keeps a dynamic batch."""
    batch, channels, height, width = embedding.shape
    bank = bank.to(embedding.dtype)
    queries = embedding.flatten(2).transpose(1, 2).reshape(-1, channels)  # (B*h*w, C)
    bank_norms = bank.pow(2).sum(dim=1)

    def squared(rows: Tensor) -> Tensor:
        # |q - b|^2 = |q|^2 + (|b|^2 - 2 q.b): the query's norm is the same for every bank patch, so it
        # is added after the minimum, and the rest is one fused multiply-add
        return torch.addmm(bank_norms, rows, bank.t(), alpha=-2).amin(dim=1) + rows.pow(2).sum(dim=1)

    if torch.jit.is_tracing():
        best = squared(queries)
    else:
        step = max(1, PAIRS_PER_BLOCK // max(bank.shape[0], 1))
        best = torch.cat([squared(queries[i : i + step]) for i in range(0, queries.shape[0], step)])
    return best.clamp_min(0).sqrt().view(batch, 1, height, width)
