"""MVTec AD: already in the target layout, so the conversion is a copy (identity)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from onenip.data.convert.plan import check_src_dir, image_files, Job, Plan, select_categories
from onenip.data.convert.report import EXCLUDED_TRAIN_ANOMALY, ConversionReport
from onenip.data.convert.write import run
from onenip.data.manifest import NORMAL_DIR, DatasetError, Split, discover_categories

_LICENSE_SUFFIXES = (".txt", ".md")


def _plan_extras(folder: Path, dst: Path, plan: Plan) -> None:
    """License and readme files travel with the data (MVTec AD's licence asks for attribution)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in _LICENSE_SUFFIXES and not path.name.startswith("."):
            plan.jobs.append(Job("extra", path, dst / path.name))


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
    root = check_src_dir(src, "mvtec")
    available = discover_categories(root)
    if not available:
        msg = f"No MVTec AD categories in {root}: expected <src>/<category>/train/good/ and <category>/test/"
        raise DatasetError(msg)
    plan = Plan()
    _plan_extras(root, Path(), plan)
    for category in select_categories(available, categories, root):
        category_dir = root / category
        _plan_extras(category_dir, Path(category), plan)
        for split in Split:
            split_dir = category_dir / split.value
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                images = image_files(defect_dir, plan)
                if split is Split.TRAIN and defect_dir.name != NORMAL_DIR:
                    plan.excluded[EXCLUDED_TRAIN_ANOMALY] += len(images)
                    continue
                for image in images:
                    plan.add_image(image, category, split.value, defect_dir.name)
        gt_dir = category_dir / "ground_truth"
        if gt_dir.is_dir():
            for defect_dir in sorted(d for d in gt_dir.iterdir() if d.is_dir()):
                for mask in image_files(defect_dir, plan):
                    dst = Path(category, "ground_truth", defect_dir.name, mask.name)
                    plan.jobs.append(Job("mask", mask, dst, category, Split.TEST.value, defect_dir.name))
    return run(plan, out, fmt="mvtec", src=root, started=started, overwrite=overwrite, progress=progress)
