"""What each step trains on: the learning rate, the epoch's batches and image subsets, the prompts
drawn for each query. Everything random derives from ``(seed, epoch)``, so a resumed run continues
exactly as the uninterrupted one would."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from onenip.data.manifest import DatasetError

def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def draw_prompt_indices(query_idx: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """For each query index (into ``count`` images of one category) a random other index, never itself."""
    if count < 2:
        msg = "a category needs at least two training images to draw prompts from"
        raise DatasetError(msg)
    offsets = torch.randint(1, count, (len(query_idx),), generator=generator)
    return (query_idx + offsets) % count


def epoch_subset(size: int, cap: int | None, seed: int, epoch: int, position: int) -> Tensor | None:
    """The (sorted) images of category ``position`` that epoch ``epoch`` trains on: a seeded random
    ``cap`` of its ``size`` images where it has more (``None``: all). Seeded by (seed, epoch, category)
    alone, so resuming, and building the synthetic pool ahead of the epochs, see the same subset."""
    if cap is None or size <= cap:
        return None
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7_919 + position)
    return torch.randperm(size, generator=generator)[:cap].sort().values


def epoch_subsets(sizes: Sequence[int], cap: int | None, seed: int, epoch: int) -> list[Tensor | None]:
    return [epoch_subset(size, cap, seed, epoch, position) for position, size in enumerate(sizes)]


def epoch_batches(
    sizes: Sequence[int], batch_size: int, generator: torch.Generator, subsets: Sequence[Tensor | None] | None = None,
) -> list[tuple[int, Tensor]]:
    """One epoch of (category position, image indices) batches: every image once (of ``subsets[p]``
    where given), each batch from one category (images of a batch share a grid), categories
    interleaved in random order."""
    batches = []
    for position, size in enumerate(sizes):
        subset = None if subsets is None else subsets[position]
        order = torch.randperm(size, generator=generator) if subset is None else subset[torch.randperm(len(subset), generator=generator)]
        batches += [(position, order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def images_per_epoch(size: int, cap: int | None) -> int:
    return size if cap is None else min(size, cap)
