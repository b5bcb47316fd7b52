"""Where torch runs: CUDA when present, else CPU (``train.device: auto``)."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        msg = f"Unknown device {device!r}: use auto, cpu or cuda[:N]"
        raise ValueError(msg) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"Device {device!r} requested but CUDA is not available"
        raise ValueError(msg)
    return resolved
