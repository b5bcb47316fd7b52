"""Where torch runs: CUDA when present, else CPU (``train.device: auto``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cuda_present() -> bool:
    """Whether CUDA can be used, without importing torch where no GPU driver is present (the served
    exported graphs never import torch on a CPU machine). Driver traces: NVIDIA on Linux, WSL2's
    ``/dev/dxg``, ROCm's ``/dev/kfd``; where one exists torch decides."""
    if not any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    import torch

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
