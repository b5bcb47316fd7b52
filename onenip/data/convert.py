"""Convert the datasets users actually have into the MVTec AD layout that ``make_manifest`` reads.

Output layout (the one ``onenip.data.manifest`` documents)::

    <out>/<category>/train/good/*
    <out>/<category>/test/good/*
    <out>/<category>/test/<defect>/*
    <out>/<category>/ground_truth/<defect>/<stem>_mask.png     binary 0/255, same size as the image

Supported sources (``FORMATS``):

- ``mvtec``: already in that layout; files are copied unchanged (identity).
- ``visa``: VisA as downloaded (amazon-science/spot-diff), split by ``split_csv/1cls.csv``. VisA has no
  per-defect folders, so every anomaly gets the defect type ``anomaly``; masks (0 / non-zero) are binarised.
- ``btad``: BTAD (beanTech) ``NN/train/ok``, ``NN/test/ok``, ``NN/test/ko``, ``NN/ground_truth/ko``;
  ``ok`` becomes ``good``, ``ko`` stays the defect type, masks are binarised at mid-grey.
- ``elpv``: the ELPV solar-cell set from the ``elpv-dataset`` package; cell types ``mono``/``poly`` become
  categories, defect probability 0 is normal, 1 anomalous (``defect``), the uncertain 1/3 and 2/3 are left out.

Every converter plans the whole conversion first (so a layout problem is reported before anything is
written), never modifies the source, writes only inside ``out``, and returns a ``ConversionReport``.
Image files whose extension is in ``IMG_EXTENSIONS`` are copied byte for byte; masks and other images are
encoded as PNG with fixed settings, so converting the same source twice gives identical files (and DVC hashes).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from onenip.data.manifest import (
    IMG_EXTENSIONS,
    MASK_SUFFIX,
    NORMAL_DIR,
    DatasetError,
    ImageReadError,
    Split,
    _to_rgb,
    discover_categories,
    is_image_file,
)

FORMATS: tuple[str, ...] = ("mvtec", "visa", "btad", "elpv")

VISA_SPLIT_CSV = "split_csv/1cls.csv"
VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_LABELS: dict[str, bool] = {"normal": False, "anomaly": True}  # label -> is anomalous
VISA_DEFECT_TYPE = "anomaly"

BTAD_NORMAL_DIR = "ok"
# BTAD masks are not all exactly 0/255 (resampling left grey edges); mid-grey splits them.
BTAD_MASK_THRESHOLD = 127

ELPV_DEFECT_TYPE = "defect"
ELPV_LABELS_FILE = "labels.csv"

# Fixed encoder settings: Pillow writes no timestamps into PNGs, so the same pixels always give the same bytes.
_PNG_SAVE_KWARGS: dict[str, Any] = {"format": "PNG", "optimize": False, "compress_level": 6}
_LICENSE_SUFFIXES = (".txt", ".md")

EXCLUDED_TRAIN_ANOMALY = "anomalous image in the train split (MVTec layout trains on normals only)"
EXCLUDED_NO_MASK = "anomalous image without a mask"
EXCLUDED_NOT_IMAGE = "not an image file"
NOTE_MASK_BINARISED = "masks with values other than 0/255 (binarised)"
NOTE_EMPTY_MASK = "anomalous images whose mask is empty after binarising"
NOTE_REENCODED = "images re-encoded as PNG (extension not in IMG_EXTENSIONS)"
NOTE_EXTRA_FILES = "license/readme files copied"


@dataclass
class CategoryCounts:
    """What one category holds after conversion."""

    train_normal: int = 0
    test_normal: int = 0
    test_anomalous: int = 0
    masks: int = 0
    defect_types: dict[str, int] = field(default_factory=dict)  # defect type -> test images

    @property
    def num_images(self) -> int:
        return self.train_normal + self.test_normal + self.test_anomalous


@dataclass
class ConversionReport:
    """Outcome of one conversion: counts per category and what was left out, and why."""

    format: str
    out: Path
    src: Path | None = None
    categories: dict[str, CategoryCounts] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of source images left out
    notes: dict[str, int] = field(default_factory=dict)  # things done to files that were kept
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return sum(counts.num_images for counts in self.categories.values())

    @property
    def num_excluded(self) -> int:
        return sum(self.excluded.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per category: ``train_normal, test_normal, test_anomalous, masks, defect_types``."""
        rows = [
            {
                "category": name,
                "train_normal": counts.train_normal,
                "test_normal": counts.test_normal,
                "test_anomalous": counts.test_anomalous,
                "masks": counts.masks,
                "defect_types": ", ".join(f"{k}={v}" for k, v in sorted(counts.defect_types.items())),
            }
            for name, counts in sorted(self.categories.items())
        ]
        columns = ["category", "train_normal", "test_normal", "test_anomalous", "masks", "defect_types"]
        return pd.DataFrame(rows, columns=columns)

    def __str__(self) -> str:
        num_categories = len(self.categories)
        lines = [
            f"{self.format} -> {self.out}: {self.num_images} images in {num_categories} "
            f"{'category' if num_categories == 1 else 'categories'} ({self.seconds:.1f} s)",
            self.to_frame().to_string(index=False),
        ]
        if self.excluded:
            lines.append(f"excluded ({self.num_excluded}):")
            lines.extend(f"  {reason}: {count}" for reason, count in sorted(self.excluded.items()))
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  {note}: {count}" for note, count in sorted(self.notes.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Planning: every converter turns its source into a list of jobs, checked before anything is written.


class _Job(NamedTuple):
    kind: Literal["image", "mask", "extra"]
    src: Path
    dst: Path  # relative to out
    category: str = ""
    split: str = ""
    defect_type: str = ""
    # Masks only: values above this are foreground; None copies the mask unchanged (MVTec identity).
    threshold: int | None = None
    image_src: Path | None = None  # masks only: the image the mask must match in size


@dataclass
class _Plan:
    jobs: list[_Job] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def add_image(self, src: Path, category: str, split: str, defect_type: str) -> Path:
        """Plan an image; returns its destination (relative to out) so a mask can be named after it."""
        name = src.name if src.suffix.lower() in IMG_EXTENSIONS else f"{src.stem}.png"
        dst = Path(category, split, defect_type, name)
        self.jobs.append(_Job("image", src, dst, category, split, defect_type))
        return dst

    def add_mask(self, src: Path, image_dst: Path, image_src: Path, threshold: int) -> None:
        """Plan a mask binarised at ``threshold`` and named after its image, as ``make_manifest`` looks it up."""
        category, _, defect_type, _ = image_dst.parts
        dst = Path(category, "ground_truth", defect_type, f"{image_dst.stem}{MASK_SUFFIX}.png")
        self.jobs.append(_Job("mask", src, dst, category, Split.TEST.value, defect_type, threshold, image_src))


def _check_src_dir(src: str | Path | None, fmt: str) -> Path:
    if src is None:
        msg = f"A source folder is required for format {fmt!r}"
        raise DatasetError(msg)
    path = Path(src).expanduser()
    if not path.exists():
        msg = f"Source path does not exist: {path}"
        raise DatasetError(msg)
    if not path.is_dir():
        msg = f"Source path is not a directory: {path}"
        raise DatasetError(msg)
    return path.resolve()


def _select_categories(available: Sequence[str], categories: Sequence[str] | None, where: Path) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    if not categories:
        return list(available)
    unknown = sorted(set(categories) - set(available))
    if unknown:
        msg = f"Unknown categories {unknown} in {where}; available: {sorted(available)}"
        raise DatasetError(msg)
    return [name for name in available if name in set(categories)]


def _check_folder_name(name: str, what: str, where: str) -> str:
    """Names from CSV/labels files become folder names; refuse ones that would escape or nest."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        msg = f"Invalid {what} {name!r} in {where}: it must be a plain folder name"
        raise DatasetError(msg)
    return name


def _resolve_under(root: Path, relative: str, where: str) -> Path:
    """A path listed in a CSV, under ``root``; paths that climb out with ``..`` are refused.

    Normalised lexically rather than resolved, so a dataset whose folders are symlinks still converts.
    """
    path = Path(os.path.normpath(root / relative.strip()))
    if not path.is_relative_to(root):
        msg = f"Path {relative!r} in {where} points outside the dataset root {root}"
        raise DatasetError(msg)
    return path


def _image_files(folder: Path, plan: _Plan) -> list[Path]:
    """Image files of a folder, sorted; other visible files are counted as excluded."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    plan.excluded[EXCLUDED_NOT_IMAGE] += len(files) - len(images)
    return images


def _check_plan(plan: _Plan) -> None:
    missing = [job.src for job in plan.jobs if not job.src.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        msg = f"{len(missing)} source files listed by the dataset are missing: {shown}{more}"
        raise DatasetError(msg)
    # One image listed twice (say in train and in test) would leak test data into training.
    sources: dict[Path, Path] = {}
    for job in plan.jobs:
        if job.kind != "image":
            continue
        if job.src in sources:
            msg = f"Image {job.src} is listed twice: as {sources[job.src]} and as {job.dst}"
            raise DatasetError(msg)
        sources[job.src] = job.dst
    seen: dict[Path, Path] = {}
    for job in plan.jobs:
        if job.dst in seen:
            msg = f"Two source files would be written to the same place {job.dst}: {seen[job.dst]} and {job.src}"
            raise DatasetError(msg)
        seen[job.dst] = job.src
    if not any(job.kind == "image" for job in plan.jobs):
        msg = "Nothing to convert: the source holds no usable images for the selected categories"
        raise DatasetError(msg)


# ---------------------------------------------------------------------------------------------------------
# Writing.


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
            return np.asarray(_to_rgb(mask)).max(axis=2)
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


def _write_image(job: _Job, dst: Path, notes: Counter[str]) -> None:
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


def _write_mask(job: _Job, dst: Path, notes: Counter[str]) -> None:
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
    plan: _Plan,
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
    plan: _Plan,
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


def _run(
    plan: _Plan,
    out: str | Path,
    *,
    fmt: str,
    src: Path | None,
    started: float,
    overwrite: bool,
    progress: bool,
) -> ConversionReport:
    _check_plan(plan)
    out_path = _prepare_out(out, src, overwrite=overwrite)
    return _execute(plan, out_path, fmt=fmt, src=src, started=started, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# MVTec AD (identity).


def _plan_extras(folder: Path, dst: Path, plan: _Plan) -> None:
    """License and readme files travel with the data (MVTec AD's licence asks for attribution)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in _LICENSE_SUFFIXES and not path.name.startswith("."):
            plan.jobs.append(_Job("extra", path, dst / path.name))


def convert_mvtec(
    src: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Copy an MVTec AD-layout root (or some of its categories) unchanged into ``out``.

    Image and mask files keep their names and bytes (``shutil.copy2``, never links, so ``out`` can be
    tracked by DVC on its own); ``.txt``/``.md`` files at the root and category level (licences) come too.
    Defect folders under ``train/`` are left out and counted, as MVTec trains on normals only.

    Raises:
        DatasetError: ``src`` is missing or holds no ``<category>/train|test`` folders, a category is
            unknown, or ``out`` is not empty and ``overwrite`` is false.
    """
    started = time.perf_counter()
    root = _check_src_dir(src, "mvtec")
    available = discover_categories(root)
    if not available:
        msg = f"No MVTec AD categories in {root}: expected <src>/<category>/train/good/ and <category>/test/"
        raise DatasetError(msg)
    plan = _Plan()
    _plan_extras(root, Path(), plan)
    for category in _select_categories(available, categories, root):
        category_dir = root / category
        _plan_extras(category_dir, Path(category), plan)
        for split in Split:
            split_dir = category_dir / split.value
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                images = _image_files(defect_dir, plan)
                if split is Split.TRAIN and defect_dir.name != NORMAL_DIR:
                    plan.excluded[EXCLUDED_TRAIN_ANOMALY] += len(images)
                    continue
                for image in images:
                    plan.add_image(image, category, split.value, defect_dir.name)
        gt_dir = category_dir / "ground_truth"
        if gt_dir.is_dir():
            for defect_dir in sorted(d for d in gt_dir.iterdir() if d.is_dir()):
                for mask in _image_files(defect_dir, plan):
                    dst = Path(category, "ground_truth", defect_dir.name, mask.name)
                    plan.jobs.append(_Job("mask", mask, dst, category, Split.TEST.value, defect_dir.name))
    return _run(plan, out, fmt="mvtec", src=root, started=started, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# VisA.


def _read_visa_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    # utf-8-sig: the file may carry a BOM; newline="" lets csv handle the CRLF line ends VisA ships with.
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [name for name in VISA_COLUMNS if name not in header]
        if missing:
            msg = f"{csv_path} lacks columns {missing}; expected header {','.join(VISA_COLUMNS)}"
            raise DatasetError(msg)
        reader.fieldnames = header
        rows = []
        for line, row in enumerate(reader, start=2):
            if not any((value or "").strip() for value in row.values()):
                continue
            rows.append((line, {key: (row.get(key) or "").strip() for key in VISA_COLUMNS}))
    if not rows:
        msg = f"{csv_path} lists no images"
        raise DatasetError(msg)
    return rows


def convert_visa(
    src: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    *,
    split_csv: str | Path = VISA_SPLIT_CSV,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert VisA as downloaded into the MVTec AD layout, following its 1-class split file.

    ``split_csv`` (relative to ``src`` unless absolute) has the columns ``object,split,label,image,mask``
    with ``label`` in ``normal``/``anomaly`` and paths relative to ``src``, e.g.
    ``candle/Data/Images/Normal/0000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``. Normal images go to
    ``train/good`` or ``test/good`` by ``split``; anomalies to ``test/anomaly`` (VisA has no per-defect
    folders) with the mask binarised (non-zero -> 255) as ``ground_truth/anomaly/<stem>_mask.png``.
    Anomalies listed under ``train`` or without a mask are left out and counted in the report.

    Raises:
        DatasetError: ``src`` or the split file is missing or malformed, a listed file is missing, a path
            leaves ``src``, a category is unknown, a mask's size differs from its image, or ``out`` is not empty.
    """
    started = time.perf_counter()
    root = _check_src_dir(src, "visa")
    csv_path = Path(split_csv) if Path(split_csv).is_absolute() else root / split_csv
    if not csv_path.is_file():
        msg = (
            f"VisA split file not found: {csv_path}; expected the VisA download layout "
            f"<src>/{VISA_SPLIT_CSV} next to <src>/<object>/Data/Images/"
        )
        raise DatasetError(msg)
    rows = _read_visa_rows(csv_path)
    where = str(csv_path)
    available = sorted({_check_folder_name(row["object"], "object", f"{where} line {line}") for line, row in rows})
    selected = set(_select_categories(available, categories, csv_path))

    plan = _Plan()
    for line, row in rows:
        category = row["object"]
        if category not in selected:
            continue
        here = f"{where} line {line}"
        split, label = row["split"].lower(), row["label"].lower()
        if split not in {s.value for s in Split}:
            msg = f"Unknown split {row['split']!r} at {here}; expected one of {[s.value for s in Split]}"
            raise DatasetError(msg)
        if label not in VISA_LABELS:
            msg = f"Unknown label {row['label']!r} at {here}; expected one of {list(VISA_LABELS)}"
            raise DatasetError(msg)
        if not row["image"]:
            msg = f"Empty image path at {here}"
            raise DatasetError(msg)
        image = _resolve_under(root, row["image"], here)
        if not VISA_LABELS[label]:
            plan.add_image(image, category, split, NORMAL_DIR)
        elif split == Split.TRAIN.value:
            plan.excluded[EXCLUDED_TRAIN_ANOMALY] += 1
        elif not row["mask"]:
            plan.excluded[EXCLUDED_NO_MASK] += 1
        else:
            mask = _resolve_under(root, row["mask"], here)
            image_dst = plan.add_image(image, category, split, VISA_DEFECT_TYPE)
            plan.add_mask(mask, image_dst, image, threshold=0)
    return _run(plan, out, fmt="visa", src=root, started=started, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# BTAD.


def _find_btad_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + MASK_SUFFIX):
        for ext in IMG_EXTENSIONS:
            for candidate in (gt_dir / f"{name}{ext}", gt_dir / f"{name}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def convert_btad(
    src: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert BTAD (``NN/train/ok``, ``NN/test/ok``, ``NN/test/ko``, ``NN/ground_truth/ko``) to MVTec AD.

    ``ok`` becomes ``good``; every other test folder (``ko``) keeps its name as the defect type. A mask is the
    file in ``ground_truth/<defect>/`` with the image's stem (any image extension; BTAD mixes ``.png`` and
    ``.bmp``), binarised at ``BTAD_MASK_THRESHOLD`` (masks holding only 0/1 count any non-zero value) and
    written as ``<stem>_mask.png``. Images keep their bytes and extension.

    Raises:
        DatasetError: ``src`` is missing or holds no ``<NN>/train/ok`` or ``<NN>/test`` folders, a category
            is unknown, a mask's size differs from its image, or ``out`` is not empty.
    """
    started = time.perf_counter()
    root = _check_src_dir(src, "btad")
    available = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and ((d / Split.TRAIN.value / BTAD_NORMAL_DIR).is_dir() or (d / Split.TEST.value).is_dir())
    )
    if not available:
        msg = f"No BTAD categories in {root}: expected <src>/<NN>/train/ok/, <NN>/test/ok|ko/, <NN>/ground_truth/ko/"
        raise DatasetError(msg)
    plan = _Plan()
    for category in _select_categories(available, categories, root):
        category_dir = root / category
        for split in Split:
            split_dir = category_dir / split.value
            if not split_dir.is_dir():
                continue
            for folder in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                images = _image_files(folder, plan)
                is_normal = folder.name == BTAD_NORMAL_DIR
                if split is Split.TRAIN and not is_normal:
                    plan.excluded[EXCLUDED_TRAIN_ANOMALY] += len(images)
                    continue
                for image in images:
                    if is_normal:
                        plan.add_image(image, category, split.value, NORMAL_DIR)
                        continue
                    mask = _find_btad_mask(category_dir / "ground_truth" / folder.name, image.stem)
                    if mask is None:
                        plan.excluded[EXCLUDED_NO_MASK] += 1
                        continue
                    defect_type = _check_folder_name(folder.name, "defect folder", str(split_dir))
                    image_dst = plan.add_image(image, category, split.value, defect_type)
                    plan.add_mask(mask, image_dst, image, threshold=BTAD_MASK_THRESHOLD)
    return _run(plan, out, fmt="btad", src=root, started=started, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# ELPV.


ELPV_PACKAGE_NAMES = ("elpv-dataset", "elpv_dataset")


class _ElpvRow(NamedTuple):
    path: Path
    probability: float
    cell_type: str


def _elpv_labels_path(source: str | Path | None) -> Path:
    """``labels.csv`` of the installed ``elpv-dataset`` package, or of a given folder/file.

    ``None`` or the package's own name (``elpv-dataset``, as ``params.yaml`` and the CLI say it) mean
    the data shipped in the installed package.
    """
    if source is None or str(source) in ELPV_PACKAGE_NAMES:
        # Locate the package data without importing elpv_dataset.utils, whose loader decodes all 2624 images
        # into one array and drops the file names we keep.
        spec = importlib.util.find_spec("elpv_dataset")
        if spec is None or not spec.submodule_search_locations:
            msg = "ELPV data not found: install it with `pip install elpv-dataset` or pass source=<folder>"
            raise DatasetError(msg)
        return Path(next(iter(spec.submodule_search_locations))) / "data" / ELPV_LABELS_FILE
    path = Path(source).expanduser()
    if not path.exists():
        msg = f"Source path does not exist: {path}"
        raise DatasetError(msg)
    if path.is_dir():
        path = path / ELPV_LABELS_FILE
        if not path.is_file():
            msg = f"ELPV labels file not found: {path}; expected <source>/{ELPV_LABELS_FILE} and <source>/images/"
            raise DatasetError(msg)
    return path.resolve()


def _read_elpv_labels(labels: Path) -> list[_ElpvRow]:
    """Rows of ELPV's ``labels.csv``: whitespace-separated ``images/cellNNNN.png probability type``."""
    root = labels.parent
    rows = []
    for line_number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        here = f"{labels} line {line_number}"
        if len(fields) != 3:
            msg = f"Expected 'path probability type' at {here}, got {line!r}"
            raise DatasetError(msg)
        try:
            probability = float(fields[1])
        except ValueError:
            msg = f"Defect probability {fields[1]!r} at {here} is not a number"
            raise DatasetError(msg) from None
        if not 0.0 <= probability <= 1.0:
            msg = f"Defect probability {probability} at {here} is outside [0, 1]"
            raise DatasetError(msg)
        cell_type = _check_folder_name(fields[2], "cell type", here)
        rows.append(_ElpvRow(_resolve_under(root, fields[0], here), probability, cell_type))
    if not rows:
        msg = f"{labels} lists no images"
        raise DatasetError(msg)
    return rows


def convert_elpv(
    out: str | Path,
    source: str | Path | None = None,
    test_every: int = 5,
    *,
    categories: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert ELPV solar-cell images into the MVTec AD layout, one category per cell type (``mono``, ``poly``).

    ``source`` is a folder holding ELPV's ``labels.csv`` and ``images/`` (or the ``labels.csv`` itself);
    ``None`` uses the data shipped in the installed ``elpv-dataset`` package. Defect probability 0 is normal
    and 1 anomalous (defect type ``defect``, no masks: ELPV has image-level labels only); the uncertain
    1/3 and 2/3 are left out and counted by probability. Within each cell type, every ``test_every``-th
    normal image in the order of ``labels.csv`` goes to ``test/good`` and the rest to ``train/good``.
    Files keep their names (``cell0001.png``) and bytes.

    Raises:
        DatasetError: the package or ``source`` is missing, ``labels.csv`` is malformed or lists a missing
            image, a category is unknown, or ``out`` is not empty and ``overwrite`` is false.
        ValueError: ``test_every`` is not an integer >= 2.
    """
    started = time.perf_counter()
    if isinstance(test_every, bool) or not isinstance(test_every, int) or test_every < 2:
        msg = f"test_every must be an integer >= 2 (every n-th normal image goes to test), got {test_every!r}"
        raise ValueError(msg)
    labels = _elpv_labels_path(source)
    if not labels.is_file():
        msg = f"ELPV labels file not found: {labels}"
        raise DatasetError(msg)
    rows = _read_elpv_labels(labels)
    available = sorted({row.cell_type for row in rows})
    selected = set(_select_categories(available, categories, labels))

    plan = _Plan()
    normals_seen: Counter[str] = Counter()
    for row in rows:
        if row.cell_type not in selected:
            continue
        if row.probability == 0.0:
            normals_seen[row.cell_type] += 1
            to_test = normals_seen[row.cell_type] % test_every == 0
            split = Split.TEST.value if to_test else Split.TRAIN.value
            plan.add_image(row.path, row.cell_type, split, NORMAL_DIR)
        elif row.probability == 1.0:
            plan.add_image(row.path, row.cell_type, Split.TEST.value, ELPV_DEFECT_TYPE)
        else:
            plan.excluded[f"uncertain defect probability {row.probability:.3f}"] += 1
    # ELPV is read from an installed package or a folder the user owns; the output must lie outside it.
    return _run(plan, out, fmt="elpv", src=labels.parent, started=started, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------------------------------------
# Dispatcher.


def convert(format: str, src: str | Path | None, out: str | Path, **kwargs: Any) -> ConversionReport:  # noqa: A002
    """Convert ``src`` in ``format`` (one of ``FORMATS``) into the MVTec AD layout under ``out``.

    ``kwargs`` go to the converter (``categories``, ``overwrite``, ``progress``, and per format
    ``split_csv`` for VisA, ``test_every`` for ELPV). For ``elpv``, ``src`` may be ``None`` to use
    the installed ``elpv-dataset`` package.

    Example:
        >>> report = convert("btad", "~/data/BTAD", "data/industrial_btad")  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    name = str(format).strip().lower()
    if name not in FORMATS:
        msg = f"Unknown dataset format {format!r}; valid formats: {', '.join(FORMATS)}"
        raise DatasetError(msg)
    if name == "elpv":
        return convert_elpv(out, source=src, **kwargs)
    converters = {"mvtec": convert_mvtec, "visa": convert_visa, "btad": convert_btad}
    return converters[name](_check_src_dir(src, name), out, **kwargs)

