"""On-disk cache of frozen-backbone features, keyed by (image sha256, backbone configuration, input geometry).

The backbone is frozen, so its features of a given image never change: computing them once and
reusing them across epochs and runs is what makes training affordable on two CPU cores. Features are
stored as float16 safetensors (one file per image: ~100 KB of stride-16 and ~300 KB of stride-8
features for lite0 at 256 px); the quantisation
error (about 1e-3 relative) is far below the training feature jitter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import BackboneParams
from onenip.data.geometry import InputGeometry
from onenip.data.transforms import as_geometry, load_image, normalize
from onenip.models.backbone import FeatureExtractor
from onenip.models.features import Features, atomic_save_safetensors


def backbone_key(cfg: BackboneParams) -> str:
    """Short stable id of everything that changes the features of an image."""
    dumped = cfg.model_dump(mode="json")
    if dumped.get("pooling") == "average":  # the features before the option existed: caches stay valid
        del dumped["pooling"]
    payload = json.dumps(dumped, sort_keys=True)
    return f"{cfg.name}-{cfg.input_size}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: Tensor,
    cfg: BackboneParams,
    batch_size: int = 16,
) -> Features:
    """(N, 3, H, W) images in [0, 1] -> float32 ``Features``, in batches."""
    device = next(extractor.parameters()).device
    coarse, fine = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = normalize(images[start : start + batch_size].to(device), cfg.mean, cfg.std)
        out_coarse, out_fine = extractor.forward_pyramid(batch)
        coarse.append(out_coarse.float().cpu())
        if out_fine is not None:
            fine.append(out_fine.float().cpu())
    if not coarse:
        return Features(torch.empty(0), None)
    return Features(torch.cat(coarse), torch.cat(fine) if fine else None)


class FeatureCache:
    """Features of dataset images, computed once per (sha256, backbone config, input geometry) and kept on disk."""

    def __init__(self, cache_dir: str | Path, extractor: FeatureExtractor, cfg: BackboneParams) -> None:
        self.cfg = cfg
        self.extractor = extractor
        self.root = Path(cache_dir) / "features" / backbone_key(cfg)

    def path_for(self, sha256: str, geometry: InputGeometry) -> Path:
        return self.root / geometry.key() / sha256[:2] / f"{sha256}.safetensors"

    def get(
        self,
        image_paths: Sequence[str],
        sha256s: Sequence[str],
        geometry: InputGeometry | int,
        *,
        batch_size: int = 16,
        progress: bool = True,
        desc: str = "Backbone features",
        dtype: torch.dtype = torch.float32,
    ) -> Features:
        """Features of the images at ``geometry`` (float32, or ``dtype``), computing and storing the missing ones."""
        if len(image_paths) != len(sha256s):
            msg = f"{len(image_paths)} paths but {len(sha256s)} hashes"
            raise ValueError(msg)
        geometry = as_geometry(geometry)
        result: list[Features | None] = [None] * len(image_paths)
        missing: list[int] = []
        for index, sha in enumerate(sha256s):
            path = self.path_for(sha, geometry)
            if path.is_file():
                try:
                    stored = load_file(str(path))
                    fine = stored.get("fine")
                    result[index] = Features(stored["features"][None], None if fine is None else fine[None])
                    continue
                except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
                    path.unlink(missing_ok=True)
            missing.append(index)
        bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not progress or not missing)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            images = torch.stack([load_image(image_paths[i], geometry) for i in chunk])
            features = extract_features(self.extractor, images, self.cfg, batch_size=batch_size)
            for offset, index in enumerate(chunk):
                # stored as float16; what training sees is the float16 value, cached or not
                item = features.select([offset])
                tensors = {"features": item.coarse[0].half()}
                if item.fine is not None:
                    tensors["fine"] = item.fine[0].half()
                atomic_save_safetensors(tensors, self.path_for(sha256s[index], geometry))
                result[index] = item.half()
            bar.update(len(chunk))
        bar.close()
        if not result:
            return Features(torch.empty(0), None)
        out = Features.cat(result)  # type: ignore[arg-type]
        return out.half() if dtype == torch.float16 else out.float()
