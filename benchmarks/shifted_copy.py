"""A copy of an MVTec-layout root whose test images were taken under other conditions (a robustness proxy).

``photo``: every test image (normal and defective alike) under a seeded random gain and gamma, as if the
line's lighting or exposure drifted after training (``colour``: a white-balance drift; ``sensor``: a
defocused, noisier camera); the training images are linked unchanged, so a
model trained on the original root scores the copy (a map that judges each position by tight
statistics of the training normals should suffer, a nearest-neighbour distance less). ``pose``: every
image, training and test, turned and shifted at random (masks alike): a product that does not sit in
the same place. Masks are linked (photo) or moved with their image (pose). Nothing here is a real
defect: it is a stress test of the maps, reported beside the real test sets, never instead of them.

    .venv/bin/python benchmarks/shifted_copy.py ../shared/datasets/industrial SHIFTED --kind photo
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image


def photometric(image: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Gain in 1 +- 0.25 and gamma in exp(+-0.25), times ``strength``, one draw per image."""
    values = np.asarray(image).astype(np.float32) / 255.0
    gain = 1 + strength * rng.uniform(-0.25, 0.25)
    gamma = float(np.exp(strength * rng.uniform(-0.25, 0.25)))
    return Image.fromarray((np.clip(values**gamma * gain, 0, 1) * 255).round().astype(np.uint8))


def colour_cast(image: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """A white-balance drift: each channel's own gain in exp(+-0.2), times ``strength``, one draw per image
    (a grey image becomes tinted). Not among ``model.statistics_jitter``'s changes, which share one gain."""
    values = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    gains = np.exp(strength * np.array([rng.uniform(-0.2, 0.2) for _ in range(3)], dtype=np.float32))
    return Image.fromarray((np.clip(values * gains, 0, 1) * 255).round().astype(np.uint8))


def sensor(image: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """A defocused, noisier camera: Gaussian blur of radius U(0.3, 1.0) pixels and pixel noise of sigma U(0.01, 0.03),
    times ``strength``, one draw per image (seeded). Not among ``model.statistics_jitter``'s changes."""
    from PIL import ImageFilter

    blurred = image.filter(ImageFilter.GaussianBlur(strength * rng.uniform(0.3, 1.0)))
    values = np.asarray(blurred).astype(np.float32) / 255.0
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, strength * rng.uniform(0.01, 0.03), values.shape)
    return Image.fromarray((np.clip(values + noise, 0, 1) * 255).round().astype(np.uint8))


TEST_ONLY = {"photo": photometric, "colour": colour_cast, "sensor": sensor}
"""Kinds that change the test images only (the training images are linked unchanged)."""


def posed(image: Image.Image, angle: float, shift: tuple[float, float], resample: int) -> Image.Image:
    return image.rotate(angle, resample=resample, translate=shift, fillcolor=0)


def copy_category(source: Path, target: Path, kind: str, rng: random.Random, strength: float) -> int:
    count = 0
    for split in ("train", "test"):
        for path in sorted(p for p in (source / split).rglob("*") if p.is_file()):
            relative = path.relative_to(source)
            out = (target / relative).with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            mask = source / "ground_truth" / relative.relative_to(split).parent / f"{path.stem}_mask.png" if split == "test" else None
            mask_out = None if mask is None else target / mask.relative_to(source)
            if kind in TEST_ONLY and split == "train":
                out = target / relative
                if not out.exists():
                    os.symlink(path.resolve(), out)
                continue
            image = Image.open(path)
            if kind in TEST_ONLY:
                TEST_ONLY[kind](image, rng, strength).save(out)
                if mask is not None and mask.exists():
                    mask_out.parent.mkdir(parents=True, exist_ok=True)
                    if not mask_out.exists():
                        os.symlink(mask.resolve(), mask_out)
            else:
                width, height = image.size
                angle = strength * rng.uniform(-12, 12)
                shift = (strength * rng.uniform(-0.08, 0.08) * width, strength * rng.uniform(-0.08, 0.08) * height)
                posed(image, angle, shift, Image.BILINEAR).save(out)
                if mask is not None and mask.exists():
                    mask_out.parent.mkdir(parents=True, exist_ok=True)
                    posed(Image.open(mask).convert("L"), angle, shift, Image.NEAREST).save(mask_out)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an MVTec-layout root (category/train, test, ground_truth)")
    parser.add_argument("target", type=Path)
    parser.add_argument("--kind", choices=(*TEST_ONLY, "pose"), default="photo")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for category in sorted(p for p in args.source.iterdir() if (p / "test").is_dir()):
        count = copy_category(category, args.target / category.name, args.kind, rng, args.strength)
        print(f"{category.name}: {count} images written to {args.target / category.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
