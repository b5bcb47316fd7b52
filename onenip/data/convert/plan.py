"""Planning: every converter turns its source into a list of jobs, checked before anything is written; and
the checks of source folders, category selections and paths read from label files that the plans rely on."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from onenip.data.convert.report import EXCLUDED_NOT_IMAGE
from onenip.data.manifest import IMG_EXTENSIONS, MASK_SUFFIX, DatasetError, Split, is_image_file


class Job(NamedTuple):
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
class Plan:
    jobs: list[Job] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def add_image(self, src: Path, category: str, split: str, defect_type: str) -> Path:
        """Plan an image; returns its destination (relative to out) so a mask can be named after it."""
        name = src.name if src.suffix.lower() in IMG_EXTENSIONS else f"{src.stem}.png"
        dst = Path(category, split, defect_type, name)
        self.jobs.append(Job("image", src, dst, category, split, defect_type))
        return dst

    def add_mask(self, src: Path, image_dst: Path, image_src: Path, threshold: int) -> None:
        """Plan a mask binarised at ``threshold`` and named after its image, as ``make_manifest`` looks it up."""
        category, _, defect_type, _ = image_dst.parts
        dst = Path(category, "ground_truth", defect_type, f"{image_dst.stem}{MASK_SUFFIX}.png")
        self.jobs.append(Job("mask", src, dst, category, Split.TEST.value, defect_type, threshold, image_src))


def check_src_dir(src: str | Path | None, fmt: str) -> Path:
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


def select_categories(available: Sequence[str], categories: Sequence[str] | None, where: Path) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    if not categories:
        return list(available)
    unknown = sorted(set(categories) - set(available))
    if unknown:
        msg = f"Unknown categories {unknown} in {where}; available: {sorted(available)}"
        raise DatasetError(msg)
    return [name for name in available if name in set(categories)]


def check_folder_name(name: str, what: str, where: str) -> str:
    """Names from CSV/labels files become folder names; refuse ones that would escape or nest."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        msg = f"Invalid {what} {name!r} in {where}: it must be a plain folder name"
        raise DatasetError(msg)
    return name


def resolve_under(root: Path, relative: str, where: str) -> Path:
    """A path listed in a CSV, under ``root``; paths that climb out with ``..`` are refused.

    Normalised lexically rather than resolved, so a dataset whose folders are symlinks still converts.
    """
    path = Path(os.path.normpath(root / relative.strip()))
    if not path.is_relative_to(root):
        msg = f"Path {relative!r} in {where} points outside the dataset root {root}"
        raise DatasetError(msg)
    return path


def image_files(folder: Path, plan: Plan) -> list[Path]:
    """Image files of a folder, sorted; other visible files are counted as excluded."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    plan.excluded[EXCLUDED_NOT_IMAGE] += len(files) - len(images)
    return images


def check_plan(plan: Plan) -> None:
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
