"""On-disk cache of frozen-backbone features, keyed by (image sha256, backbone configuration).

The backbone is frozen, so its features of a given image never change: computing them once and
reusing them across epochs and runs is what makes training affordable on two CPU cores. Features are
stored as float16 safetensors (one file per image, ~100 KB for lite0 at 256 px); the quantisation
error (about 1e-3 relative) is far below the training feature jitter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import BackboneParams
from onenip.data.transforms import load_image, normalize
from onenip.models.backbone import FeatureExtractor


def backbone_key(cfg: BackboneParams) -> str:
    """Short stable id of everything that changes the features of an image."""
    payload = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return f"{cfg.name}-{cfg.input_size}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: Tensor,
    cfg: BackboneParams,
    batch_size: int = 16,
) -> Tensor:
    """(N, 3, S, S) images in [0, 1] -> (N, C, h, w) float32 features, in batches."""
    device = next(extractor.parameters()).device
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = normalize(images[start : start + batch_size].to(device), cfg.mean, cfg.std)
        outputs.append(extractor(batch).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


class FeatureCache:
    """Features of dataset images, computed once per (sha256, backbone config) and kept on disk."""

    def __init__(self, cache_dir: str | Path, extractor: FeatureExtractor, cfg: BackboneParams) -> None:
        self.cfg = cfg
        self.extractor = extractor
        self.root = Path(cache_dir) / "features" / backbone_key(cfg)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.safetensors"

    def get(
        self,
        image_paths: Sequence[str],
        sha256s: Sequence[str],
        *,
        batch_size: int = 16,
        progress: bool = True,
        desc: str = "Backbone features",
    ) -> Tensor:
        """(N, C, h, w) float32 features of the images, computing and storing the missing ones."""
        if len(image_paths) != len(sha256s):
            msg = f"{len(image_paths)} paths but {len(sha256s)} hashes"
            raise ValueError(msg)
        result: list[Tensor | None] = [None] * len(image_paths)
        missing: list[int] = []
        for index, sha in enumerate(sha256s):
            path = self.path_for(sha)
            if path.is_file():
                try:
                    result[index] = load_file(str(path))["features"].float()
                    continue
                except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
                    path.unlink(missing_ok=True)
            missing.append(index)
        bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not progress or not missing)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            images = torch.stack([load_image(image_paths[i], self.cfg.input_size) for i in chunk])
            features = extract_features(self.extractor, images, self.cfg, batch_size=batch_size)
            for index, feature in zip(chunk, features, strict=True):
                atomic_save_safetensors({"features": feature.half()}, self.path_for(sha256s[index]))
                result[index] = feature.half().float()
            bar.update(len(chunk))
        bar.close()
        return torch.stack(result) if result else torch.empty(0)  # type: ignore[arg-type]
