"""How a finer backbone stage comes onto the stride-16 grid, decided on TRAINING images only.

``model.backbone.pooling``: ``average`` (the mean of each grid cell) or ``bilinear`` (the reference's
UniAD neck: a bilinear resize with aligned corners, one point per cell). The choice was first made on
150 test images; this re-decides it without any test image. Per category: a nearest-neighbour memory
bank of the coarse (stride-16) patches of up to ``--bank-images`` fit images, scored on the category's
validation set (its held-out training normals + seeded anomalies of the validation families, exactly as
training builds it): image AUROC of the maximum patch distance, pixel AUROC and AUPRO of the distance
map at a quarter of the input size. Prints a table and writes JSON:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/backbone_pooling.py --elpv /work/elpv --out R/pooling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
POOLINGS = ("average", "bilinear")


def bank_distances(bank: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w): each patch's Euclidean distance to its nearest bank patch (bank (M, C))."""
    queries = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    distances = []
    for start in range(0, len(queries), 4096):
        distances.append(torch.cdist(queries[start : start + 4096], bank).amin(dim=1))
    n, _, h, w = features.shape
    return torch.cat(distances).reshape(n, 1, h, w)


@torch.no_grad()
def score_category(root: Path, category: str, pooling: str, bank_images: int, params_path: Path) -> dict[str, float]:
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.features import extract_features
    from onenip.models.backbone import build_feature_extractor
    from onenip.training import choose_geometries, load_images, split_holdout
    from onenip.scoring_selection import SELECTION_DOWNSCALE, build_category_validation, rank_auroc
    from onenip.metrics.pixel import pixel_aupro

    params = load_params(params_path, overrides={"model": {"backbone": {"pooling": pooling}}})
    manifest = make_manifest(root, [category], progress=False)
    geometry = choose_geometries(manifest, params, [category])[category]
    train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]
    fit, holdout = split_holdout(train, params.train.holdout_fraction, params.train.min_holdout, params.train.seed)
    extractor = build_feature_extractor(params.model.backbone).eval()
    chosen = np.linspace(0, len(fit) - 1, min(bank_images, len(fit))).round().astype(int)
    images, _ = load_images(fit["image_path"].iloc[chosen].tolist(), geometry)
    bank_features = extract_features(extractor, images.float() / 255, params.model.backbone, 16).coarse.float()
    bank = bank_features.permute(0, 2, 3, 1).reshape(-1, bank_features.shape[1])
    held, valid = load_images(holdout["image_path"].tolist(), geometry)
    validation = build_category_validation(category, held, valid, extractor, params, seed=params.train.seed)
    distance = bank_distances(bank, validation.features.coarse.float())
    labels = validation.labels.numpy()
    maps = F.interpolate(distance, size=tuple(s // SELECTION_DOWNSCALE for s in geometry.size), mode="bilinear", align_corners=False)
    masks = (F.avg_pool2d(validation.masks.float(), SELECTION_DOWNSCALE) >= 0.5)[:, 0].numpy()
    maps = maps[:, 0].numpy()
    return {"image_AUROC": rank_auroc(maps.reshape(len(maps), -1).max(axis=1), labels), "pixel_AUROC": rank_auroc(maps, masks),
            "pixel_AUPRO": float(pixel_aupro(maps, masks)), "validation_images": int(len(labels))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--elpv", type=Path, default=None, help="ELPV in MVTec layout (mono, poly)")
    parser.add_argument("--categories", nargs="+", default=["bottle", "kolektor", "magnetic_tile", "mono", "poly"])
    parser.add_argument("--bank-images", type=int, default=100)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    for category in args.categories:
        root = args.elpv if category in ("mono", "poly") else args.root
        if root is None or not (root / category).is_dir():
            print(f"{category}: no data, skipped", file=sys.stderr)
            continue
        results[category] = {pooling: score_category(root, category, pooling, args.bank_images, args.params) for pooling in POOLINGS}
        print(category, json.dumps(results[category]), flush=True)
    names = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
    print("\n| category | " + " | ".join(f"{p}: I-AUROC / P-AUROC / AUPRO" for p in POOLINGS) + " |\n|---|" + "---|" * len(POOLINGS))
    for category, found in results.items():
        print(f"| {category} | " + " | ".join(" / ".join(f"{found[p][n]:.3f}" for n in names) for p in POOLINGS) + " |")
    means = {p: float(np.mean([np.mean([found[p][n] for n in names]) for found in results.values()])) for p in POOLINGS}
    print(f"| mean of the three, over categories | " + " | ".join(f"{means[p]:.4f}" for p in POOLINGS) + " |")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
