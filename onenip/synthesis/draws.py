"""Random draws: every one goes through the given CPU generator (reproducible on any device)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from onenip.synthesis.checks import SynthesisError


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """Integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def choice(generator: torch.Generator, weights: Tensor) -> int:
    return int(torch.multinomial(weights, 1, generator=generator).item())


def as_generator(generator: torch.Generator | int | None, default: torch.Generator) -> torch.Generator:
    if generator is None:
        return default
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    if not isinstance(generator, torch.Generator):
        msg = f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}"
        raise SynthesisError(msg)
    if generator.device.type != "cpu":
        # Draws are tiny; keeping them on the CPU makes a seed give the same anomaly on any device.
        msg = f"generator must live on the CPU (random draws are made there), got device {generator.device}"
        raise SynthesisError(msg)
    return generator


def random_point(generator: torch.Generator, foreground: Tensor | None, height: int, width: int) -> tuple[float, float]:
    """A random pixel ``(y, x)`` of the foreground, or anywhere in the image when there is none."""
    if foreground is None:
        return uniform(generator, 0, height - 1), uniform(generator, 0, width - 1)
    candidates = foreground.nonzero()
    y, x = candidates[randint(generator, 0, len(candidates) - 1)].tolist()
    return float(y), float(x)
