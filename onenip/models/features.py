"""Backbone features of a batch of images (``Features``: the coarse grid OneNIP reconstructs and the
optional fine grid) and the crash-safe safetensors write every saved tensor file goes through. Pure torch:
the models, the training loop and the on-disk cache (``onenip.features``) all import it from here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class Features(NamedTuple):
    """Backbone features of N images: the coarse grid OneNIP reconstructs and the optional fine grid."""

    coarse: Tensor
    """(N, C, h, w) at ``feature_stride``."""
    fine: Tensor | None
    """(N, C_fine, h * r, w * r) at ``fine_stride`` (r = feature_stride / fine_stride), or None."""

    def __len__(self) -> int:
        return self.coarse.shape[0]

    def select(self, index: Tensor | slice | list[int]) -> Features:
        return Features(self.coarse[index], None if self.fine is None else self.fine[index])

    def half(self) -> Features:
        return Features(self.coarse.half(), None if self.fine is None else self.fine.half())

    def float(self) -> Features:
        return Features(self.coarse.float(), None if self.fine is None else self.fine.float())

    def to(self, *args: object, **kwargs: object) -> Features:
        return Features(self.coarse.to(*args, **kwargs), None if self.fine is None else self.fine.to(*args, **kwargs))

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        fine = None if parts[0].fine is None else torch.cat([p.fine for p in parts])  # type: ignore[misc]
        return Features(torch.cat([p.coarse for p in parts]), fine)
