"""Copies of logged images and their heatmaps under the project's store, size-capped.

Files are named by what they hold (the image's sha256), under one folder per day; a request never
names a path: the review page asks the log for a prediction's relative path and ``resolve`` refuses
anything outside the store."""

from __future__ import annotations

import io
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


class StoreFull(OSError):
    """The store has reached its size cap: the prediction is logged without its copies."""


class ImageStore:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._used: int | None = None

    def used_bytes(self) -> int:
        with self._lock:
            if self._used is None:
                self._used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0
            return self._used

    def put(self, day: str, sha256: str, image: np.ndarray, heatmap: np.ndarray | None) -> tuple[str, str | None]:
        """Store an (H, W, 3) uint8 image as PNG and its (h, w) heatmap as float16 (``.npy``, zlib); returns
        their paths relative to the store. Raises ``StoreFull`` past the cap, ``OSError`` on a full disk."""
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG", compress_level=1)  # lossless and fast: the copy is written beside a served request
        blobs = {f"{day}/{sha256}.png": png.getvalue()}
        if heatmap is not None:
            buffer = io.BytesIO()
            np.save(buffer, heatmap.astype(np.float16))
            blobs[f"{day}/{sha256}.heatmap.npy.z"] = zlib.compress(buffer.getvalue(), 1)  # level 1: a tenth of savez_compressed's time
        size = sum(len(b) for b in blobs.values())
        if self.used_bytes() + size > self.max_bytes:
            msg = f"image store {self.root} is full ({self.max_bytes / 1e6:.0f} MB cap)"
            raise StoreFull(msg)
        for relative, blob in blobs.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
        with self._lock:
            self._used = (self._used or 0) + size
        names = list(blobs)
        return names[0], (names[1] if heatmap is not None else None)

    def put_mask(self, day: str, name: str, mask: np.ndarray) -> str:
        """A drawn defect mask as a binary PNG (0 / 255); returns its path relative to the store (no cap:
        a verdict is never dropped)."""
        relative = f"{day}/masks/{name}.png"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
        return relative

    def resolve(self, relative: str) -> Path:
        """The file a stored relative path names; ``ValueError`` for anything outside the store."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            msg = f"not a file of the store: {relative!r}"
            raise ValueError(msg)
        return path

    def heatmap(self, relative: str) -> np.ndarray:
        return np.load(io.BytesIO(zlib.decompress(self.resolve(relative).read_bytes()))).astype(np.float32)
