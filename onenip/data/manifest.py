"""Read any root in MVTec AD layout into one manifest DataFrame.

Layout (anomalib's ``make_mvtec_ad_dataset`` reads the same)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

The manifest has one row per image with the columns in ``MANIFEST_COLUMNS``. It only reads image
headers and bytes (for sha256); decoding every pixel is left to validation, so a broken file still
gets a row and is reported by name there instead of aborting the scan.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from enum import IntEnum, StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

IMG_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL_DIR = "good"
MASK_SUFFIX = "_mask"

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_path",
    "category",
    "split",
    "defect_type",
    "label",
    "label_index",
    "mask_path",
    "width",
    "height",
    "mode",
    "sha256",
)


class LabelName(IntEnum):
    """Image label, stored as ``label_index`` (anomalib's convention)."""

    NORMAL = 0
    ABNORMAL = 1


class Split(StrEnum):
    TRAIN = "train"
    TEST = "test"


class DatasetError(ValueError):
    """A dataset problem the user can fix (wrong path, empty root, unknown category, bad file)."""


class ImageReadError(DatasetError):
    """An image or mask file that cannot be decoded."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def discover_categories(root: str | Path) -> list[str]:
    """Categories of an MVTec-layout root: sub-folders holding ``train/`` or ``test/``."""
    root = Path(root)
    if not root.exists():
        msg = f"Dataset root does not exist: {root}"
        raise DatasetError(msg)
    if not root.is_dir():
        msg = f"Dataset root is not a directory: {root}"
        raise DatasetError(msg)
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit and float grayscale (``I;16``, ``I``, ``F``) are scaled by their dtype's range rather than by
    the image's own min/max, so brightness means the same thing across images of a line camera.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode.startswith("I;16"):
            scaled = array.astype(np.float32) / 257.0
        elif image.mode == "I":
            top = 65535.0 if array.max(initial=0) > 255 else 255.0
            scaled = array.astype(np.float32) * (255.0 / top)
        else:  # float images are expected in [0, 1]
            scaled = array.astype(np.float32) * 255.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on black: transparent pixels carry no product, and black is what a camera sees there.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


MAX_IMAGE_PIXELS = 64_000_000
"""Larger images are refused before decoding (a 20000 x 20000 upload would need 1.2 GB as RGB)."""
MIN_IMAGE_SIDE = 16
"""Smaller images carry no usable structure at stride 16 and are refused with a clear message."""


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it as 8-bit RGB.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Image file not found: {path}"
        raise ImageReadError(msg)
    if path.stat().st_size == 0:
        msg = f"Image file is empty (0 bytes): {path}"
        raise ImageReadError(msg)
    try:
        with Image.open(path) as image:
            _check_size(image, str(path))
            image.load()
            return to_rgb(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses even the header of giant images
        msg = f"Image {path} is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({error})"
        raise ImageReadError(msg) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode image {path}: {error}"
        raise ImageReadError(msg) from error


def _check_size(image: Image.Image, source: str) -> None:
    """Refuse, from the header alone, images too large to decode safely or too small to score."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        msg = f"Image {source} is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels"
        raise ImageReadError(msg)
    if min(width, height) < MIN_IMAGE_SIDE:
        msg = f"Image {source} is {width}x{height} pixels; both sides must be at least {MIN_IMAGE_SIDE}"
        raise ImageReadError(msg)


def decode_image(data: bytes, source: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, TIFF, BMP...) to 8-bit RGB, with size checks.

    Raises:
        ImageReadError: empty, truncated, not an image, too large or too small; names ``source``.
    """
    if not data:
        msg = f"Image {source} is empty (0 bytes)"
        raise ImageReadError(msg)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_size(image, source)
            image.load()
            return to_rgb(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:
        msg = f"Image {source} is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({error})"
        raise ImageReadError(msg) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode image {source}: {error}"
        raise ImageReadError(msg) from error


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a ``(H, W)`` uint8 array of its raw single-channel values (not binarised)."""
    path = Path(path)
    if not path.is_file():
        msg = f"Mask file not found: {path}"
        raise ImageReadError(msg)
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("L", "1", "P"):
                mask = mask.convert("L")
            return np.asarray(mask.convert("L") if mask.mode == "1" else mask).astype(np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode mask {path}: {error}"
        raise ImageReadError(msg) from error


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _header(path: Path) -> tuple[int | None, int | None, str | None]:
    """Width, height and mode from the header; ``None`` when the header cannot be read."""
    try:
        with Image.open(path) as image:
            return image.width, image.height, image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, None, None


def _find_mask(category_dir: Path, defect_type: str, stem: str) -> Path | None:
    folder = category_dir / "ground_truth" / defect_type
    if not folder.is_dir():
        return None
    for name in (stem + MASK_SUFFIX, stem):
        for ext in IMG_EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _scan_category(root: Path, category: str) -> list[dict]:
    category_dir = root / category
    rows: list[dict] = []
    for split in Split:
        split_dir = category_dir / split.value
        if not split_dir.is_dir():
            continue
        for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            defect_type = defect_dir.name
            label = LabelName.NORMAL if defect_type == NORMAL_DIR else LabelName.ABNORMAL
            for image_path in _list_images(defect_dir):
                mask_path = _find_mask(category_dir, defect_type, image_path.stem)
                rows.append(
                    {
                        "image_path": str(image_path),
                        "category": category,
                        "split": split.value,
                        "defect_type": defect_type,
                        "label": label.name.lower(),
                        "label_index": int(label),
                        "mask_path": str(mask_path) if mask_path is not None else None,
                    },
                )
    return rows


def make_manifest(
    root: str | Path,
    categories: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Scan an MVTec-layout root into a manifest DataFrame (one row per image, sorted by path).

    Args:
        root: dataset root holding one folder per category.
        categories: restrict to these categories; an unknown name raises ``DatasetError``.
        progress: show a progress bar while hashing files.

    Returns:
        DataFrame with ``MANIFEST_COLUMNS``; ``mask_path`` is ``None`` where no mask exists, ``width``,
        ``height`` and ``mode`` are missing where the header cannot be read. ``attrs["root"]`` is the root.
    """
    root = Path(root).expanduser().resolve()
    available = discover_categories(root)
    if not available:
        msg = f"No categories found under {root}: expected <root>/<category>/train/good/ (MVTec AD layout)"
        raise DatasetError(msg)
    if categories:
        unknown = sorted(set(categories) - set(available))
        if unknown:
            msg = f"Unknown categories {unknown} under {root}; available: {available}"
            raise DatasetError(msg)
        selected = [c for c in available if c in set(categories)]
    else:
        selected = available

    rows = [row for category in selected for row in _scan_category(root, category)]
    if not rows:
        msg = f"No images ({', '.join(IMG_EXTENSIONS)}) found under {root} for categories {selected}"
        raise DatasetError(msg)

    for row in tqdm(rows, desc="Scanning images", unit="img", disable=not progress or len(rows) < 200):
        path = Path(row["image_path"])
        row["width"], row["height"], row["mode"] = _header(path)
        row["sha256"] = file_sha256(path)

    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame["width"] = frame["width"].astype("Int64")
    frame["height"] = frame["height"].astype("Int64")
    frame = frame.sort_values("image_path", ignore_index=True)
    frame.attrs["root"] = str(root)
    return frame


def summarize_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per category, split and defect type, with how many images have masks."""
    grouped = manifest.groupby(["category", "split", "defect_type"], sort=True)
    summary = grouped.agg(images=("image_path", "size"), masks=("mask_path", "count")).reset_index()
    return summary


def iter_categories(manifest: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    for category, frame in manifest.groupby("category", sort=True):
        yield str(category), frame
