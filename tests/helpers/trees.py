"""Tiny dataset trees written in code with a seeded RNG, in the layouts the real datasets document.

Normals are a flat colour plus noise; defects add a blob of another colour and its mask (anomalib's
``tests/helpers/data.py`` builds its dummy MVTec trees the same way). Images are small (32x32 by default)
so tests stay fast. The same arguments always give the same pixels.

- ``make_mvtec_tree``: MVTec AD layout (what ``make_manifest`` reads).
- ``make_visa_tree``: VisA as downloaded: ``<object>/Data/Images/{Normal,Anomaly}``, ``<object>/Data/Masks/Anomaly``
  (0 / small non-zero values) and ``split_csv/1cls.csv`` (CRLF line ends, rows not sorted, like the real file).
- ``make_btad_tree``: BTAD: ``NN/train/ok``, ``NN/test/{ok,ko}``, ``NN/ground_truth/ko`` with mixed ``.bmp``/``.png``
  and masks that are not exactly binary (soft grey edges).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# (image extension, mask extension) per BTAD product, mirroring the mix in the real download.
BTAD_EXTENSIONS: dict[str, tuple[str, str]] = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
BTAD_EDGE_INSIDE = 200  # soft-edge grey levels around a BTAD blob: above and below mid-grey
BTAD_EDGE_OUTSIDE = 90


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def normal_image(rng: np.random.Generator, size: int | tuple[int, int], colour: Sequence[int]) -> np.ndarray:
    """``(height, width, 3)`` uint8 (``size`` or ``(height, width)``): a flat colour plus Gaussian noise."""
    noise = rng.normal(0.0, 6.0, size=(*_hw(size), 3))
    return np.clip(np.asarray(colour, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def blob_mask(rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
    """``(height, width)`` bool ellipse at a random place, never empty and never the whole image."""
    height, width = _hw(size)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = rng.uniform(min(height, width) / 10, min(height, width) / 5, size=2)
    centre_y = rng.uniform(height / 4, 3 * height / 4)
    centre_x = rng.uniform(width / 4, 3 * width / 4)
    mask = ((yy - centre_y) / radius[0]) ** 2 + ((xx - centre_x) / radius[1]) ** 2 <= 1.0
    mask[int(centre_y), int(centre_x)] = True
    return mask


def defect_image(rng: np.random.Generator, size: int | tuple[int, int], colour: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with a blob of the complementary colour; returns ``(image, mask)``."""
    image = normal_image(rng, size, colour)
    mask = blob_mask(rng, size)
    image[mask] = 255 - np.asarray(colour, dtype=np.uint8)
    return image, mask


def _category_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(40, 200, size=3))  # type: ignore[return-value]


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec_tree(
    root: str | Path,
    categories: Sequence[str] = ("widget",),
    n_train: int = 12,
    n_test_good: int = 4,
    n_test_bad: int = 4,
    size: int = 32,
    seed: int = 0,
    defect_types: Sequence[str] = ("blob",),
    shapes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Write an MVTec AD-layout tree under ``root`` and return ``root``.

    Per category: ``train/good/000.png``..., ``test/good/``, ``n_test_bad`` defects dealt round-robin over
    ``defect_types`` into ``test/<defect>/`` with ``ground_truth/<defect>/<stem>_mask.png`` (0/255).
    Images are ``size x size``, or ``shapes[category]`` = (height, width) for the categories named there.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in categories:
        shape = (shapes or {}).get(category, size)
        colour = _category_colour(rng)
        category_dir = root / category
        for index in range(n_train):
            _save(normal_image(rng, shape, colour), category_dir / "train" / "good" / f"{index:03d}.png")
        for index in range(n_test_good):
            _save(normal_image(rng, shape, colour), category_dir / "test" / "good" / f"{index:03d}.png")
        counters = dict.fromkeys(defect_types, 0)
        for index in range(n_test_bad):
            defect = defect_types[index % len(defect_types)]
            stem = f"{counters[defect]:03d}"
            counters[defect] += 1
            image, mask = defect_image(rng, shape, colour)
            _save(image, category_dir / "test" / defect / f"{stem}.png")
            _save(np.where(mask, 255, 0).astype(np.uint8), category_dir / "ground_truth" / defect / f"{stem}_mask.png")
    return root


def make_visa_tree(
    root: str | Path,
    objects: Sequence[str] = ("candle", "pcb1"),
    n_train: int = 6,
    n_test_normal: int = 3,
    n_anomaly: int = 3,
    size: int = 32,
    seed: int = 0,
    mask_value: int = 1,
) -> Path:
    """Write a VisA-download tree under ``root`` and return ``root``.

    Per object: normals ``Data/Images/Normal/0000.JPG``... (first ``n_train`` listed as train, the rest as
    test), anomalies ``Data/Images/Anomaly/000.JPG``... with masks ``Data/Masks/Anomaly/000.png`` holding
    0 and ``mask_value``, all listed as test. ``split_csv/1cls.csv`` lists every image, shuffled.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows: list[str] = []
    for name in objects:
        colour = _category_colour(rng)
        for index in range(n_train + n_test_normal):
            relative = f"{name}/Data/Images/Normal/{index:04d}.JPG"
            _save(normal_image(rng, size, colour), root / relative)
            split = "train" if index < n_train else "test"
            rows.append(f"{name},{split},normal,{relative},")
        for index in range(n_anomaly):
            image, mask = defect_image(rng, size, colour)
            relative = f"{name}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{name}/Data/Masks/Anomaly/{index:03d}.png"
            _save(image, root / relative)
            _save(np.where(mask, mask_value, 0).astype(np.uint8), root / mask_relative)
            rows.append(f"{name},test,anomaly,{relative},{mask_relative}")
    order = rng.permutation(len(rows))
    lines = ["object,split,label,image,mask", *(rows[i] for i in order)]
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return root


def make_btad_tree(
    root: str | Path,
    categories: Sequence[str] = ("01", "02", "03"),
    n_train: int = 6,
    n_test_ok: int = 3,
    n_test_ko: int = 3,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a BTAD-download tree under ``root`` and return ``root``.

    Per product: ``train/ok/0000<ext>``..., ``test/ok/``, ``test/ko/`` and ``ground_truth/ko/<stem><mask ext>``
    with extensions from ``BTAD_EXTENSIONS`` (``.png`` for others). Masks are 255 inside the blob, with a
    one-pixel ring of ``BTAD_EDGE_INSIDE`` just inside the edge and ``BTAD_EDGE_OUTSIDE`` just outside it.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in categories:
        image_ext, mask_ext = BTAD_EXTENSIONS.get(category, (".png", ".png"))
        colour = _category_colour(rng)
        category_dir = root / category
        for index in range(n_train):
            _save(normal_image(rng, size, colour), category_dir / "train" / "ok" / f"{index:04d}{image_ext}")
        for index in range(n_test_ok):
            _save(normal_image(rng, size, colour), category_dir / "test" / "ok" / f"{index:04d}{image_ext}")
        for index in range(n_test_ko):
            stem = f"{n_test_ok + index:04d}"
            image, mask = defect_image(rng, size, colour)
            _save(image, category_dir / "test" / "ko" / f"{stem}{image_ext}")
            _save(_soft_edged(mask), category_dir / "ground_truth" / "ko" / f"{stem}{mask_ext}")
    return root


def _soft_edged(mask: np.ndarray) -> np.ndarray:
    """uint8 mask: 255 inside, grey rings on both sides of the edge (a resampled mask looks like this)."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    shrunk = np.ones_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
            grown |= shifted
            shrunk &= shifted
    values = np.zeros(mask.shape, dtype=np.uint8)
    values[grown & ~mask] = BTAD_EDGE_OUTSIDE
    values[mask & ~shrunk] = BTAD_EDGE_INSIDE
    values[shrunk] = 255
    return values
