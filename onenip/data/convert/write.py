"""Writing a checked plan into the output folder: images copied byte for byte (or re-encoded as PNG), masks
binarised and encoded with fixed settings, then the ``ConversionReport``. A failure leaves ``out`` empty."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from onenip.data.convert.plan import check_plan, Job, Plan
from onenip.data.convert.report import (
    NOTE_EMPTY_MASK,
    NOTE_EXTRA_FILES,
    NOTE_MASK_BINARISED,
    NOTE_REENCODED,
    CategoryCounts,
    ConversionReport,
)
from onenip.data.manifest import IMG_EXTENSIONS, NORMAL_DIR, DatasetError, ImageReadError, Split, to_rgb

# Fixed encoder settings: Pillow writes no timestamps into PNGs, so the same pixels always give the same bytes.
_PNG_SAVE_KWARGS: dict[str, Any] = {"format": "PNG", "optimize": False, "compress_level": 6}


def _prepare_out(out: str | Path, src: Path | None, *, overwrite: bool) -> Path:
    out = Path(out).expanduser().resolve()
    if src is not None and (out == src or out.is_relative_to(src) or src.is_relative_to(out)):
        msg = f"Output folder {out} overlaps the source {src}; choose a folder outside it"
        raise DatasetError(msg)
    if out.exists() and not out.is_dir():
        msg = f"Output path exists and is not a directory: {out}"
        raise DatasetError(msg)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            msg = f"Output folder is not empty: {out}; pass overwrite=True to replace its contents"
            raise DatasetError(msg)
        # Stale files from an earlier conversion would silently join the new dataset, so clear it all.
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _save_png(image: Image.Image, path: Path) -> None:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    image.save(path, **_PNG_SAVE_KWARGS)


def _mask_values(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 strength of a mask of any mode; colour masks count any non-black channel."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("L", "1"):
                return np.asarray(mask.convert("L"))
            return np.asarray(to_rgb(mask)).max(axis=2)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode mask {path}: {error}"
        raise ImageReadError(msg) from error


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode image {path}: {error}"
        raise ImageReadError(msg) from error


def _write_image(job: Job, dst: Path, notes: Counter[str]) -> None:
    if job.src.suffix.lower() in IMG_EXTENSIONS:
        shutil.copy2(job.src, dst)
        return
    try:
        with Image.open(job.src) as image:
            image.load()
            _save_png(image, dst)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"Cannot decode image {job.src}: {error}"
        raise ImageReadError(msg) from error
    notes[NOTE_REENCODED] += 1


def _write_mask(job: Job, dst: Path, notes: Counter[str]) -> None:
    if job.threshold is None:
        shutil.copy2(job.src, dst)
        return
    values = _mask_values(job.src)
    if job.image_src is not None:
        width, height = _image_size(job.image_src)
        if values.shape != (height, width):
            msg = (
                f"Mask {job.src} is {values.shape[1]}x{values.shape[0]} but its image {job.image_src} "
                f"is {width}x{height}"
            )
            raise DatasetError(msg)
    # Masks stored as 0/1 labels would vanish under a mid-grey threshold; any non-zero marks them.
    threshold = 0 if values.max(initial=0) <= 1 else job.threshold
    foreground = values > threshold
    if not np.isin(values, (0, 255)).all():
        notes[NOTE_MASK_BINARISED] += 1
    if not foreground.any():
        notes[NOTE_EMPTY_MASK] += 1
    _save_png(Image.fromarray(np.where(foreground, 255, 0).astype(np.uint8)), dst)


def _execute(
    plan: Plan,
    out: Path,
    *,
    fmt: str,
    src: Path | None,
    started: float,
    progress: bool,
) -> ConversionReport:
    notes: Counter[str] = Counter(plan.notes)
    try:
        quiet = not progress or len(plan.jobs) < 200
        for job in tqdm(plan.jobs, desc=f"Converting {fmt}", unit="file", disable=quiet):
            dst = out / job.dst
            dst.parent.mkdir(parents=True, exist_ok=True)
            if job.kind == "mask":
                _write_mask(job, dst, notes)
            elif job.kind == "image":
                _write_image(job, dst, notes)
            else:
                shutil.copy2(job.src, dst)
                notes[NOTE_EXTRA_FILES] += 1
    except BaseException:
        # ``out`` was empty when we started, so emptying it again leaves no half-converted dataset behind.
        _clear(out)
        raise
    return _report(plan, out, fmt=fmt, src=src, notes=notes, seconds=time.perf_counter() - started)


def _report(
    plan: Plan,
    out: Path,
    *,
    fmt: str,
    src: Path | None,
    notes: Counter[str],
    seconds: float,
) -> ConversionReport:
    categories: dict[str, CategoryCounts] = {}
    for job in plan.jobs:
        if job.kind == "extra":
            continue
        counts = categories.setdefault(job.category, CategoryCounts())
        if job.kind == "mask":
            counts.masks += 1
        elif job.split == Split.TRAIN.value:
            counts.train_normal += 1
        elif job.defect_type == NORMAL_DIR:
            counts.test_normal += 1
        else:
            counts.test_anomalous += 1
            counts.defect_types[job.defect_type] = counts.defect_types.get(job.defect_type, 0) + 1
    return ConversionReport(
        format=fmt,
        out=out,
        src=src,
        categories=dict(sorted(categories.items())),
        excluded=dict(sorted((k, v) for k, v in plan.excluded.items() if v)),
        notes=dict(sorted((k, v) for k, v in notes.items() if v)),
        seconds=seconds,
    )


def run(
    plan: Plan,
    out: str | Path,
    *,
    fmt: str,
    src: Path | None,
    started: float,
    overwrite: bool,
    progress: bool,
) -> ConversionReport:
    check_plan(plan)
    out_path = _prepare_out(out, src, overwrite=overwrite)
    return _execute(plan, out_path, fmt=fmt, src=src, started=started, progress=progress)
