"""BTAD (beanTech): ``NN/train/ok``, ``NN/test/ok``, ``NN/test/ko``, ``NN/ground_truth/ko``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from onenip.data.convert.plan import check_folder_name, check_src_dir, image_files, Plan, select_categories
from onenip.data.convert.report import EXCLUDED_NO_MASK, EXCLUDED_TRAIN_ANOMALY, ConversionReport
from onenip.data.convert.write import run
from onenip.data.manifest import IMG_EXTENSIONS, MASK_SUFFIX, NORMAL_DIR, DatasetError, Split

BTAD_NORMAL_DIR = "ok"
# BTAD masks are not all exactly 0/255 (resampling left grey edges); mid-grey splits them.
BTAD_MASK_THRESHOLD = 127


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
    root = check_src_dir(src, "btad")
    available = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and ((d / Split.TRAIN.value / BTAD_NORMAL_DIR).is_dir() or (d / Split.TEST.value).is_dir())
    )
    if not available:
        msg = f"No BTAD categories in {root}: expected <src>/<NN>/train/ok/, <NN>/test/ok|ko/, <NN>/ground_truth/ko/"
        raise DatasetError(msg)
    plan = Plan()
    for category in select_categories(available, categories, root):
        category_dir = root / category
        for split in Split:
            split_dir = category_dir / split.value
            if not split_dir.is_dir():
                continue
            for folder in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                images = image_files(folder, plan)
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
                    defect_type = check_folder_name(folder.name, "defect folder", str(split_dir))
                    image_dst = plan.add_image(image, category, split.value, defect_type)
                    plan.add_mask(mask, image_dst, image, threshold=BTAD_MASK_THRESHOLD)
    return run(plan, out, fmt="btad", src=root, started=started, overwrite=overwrite, progress=progress)
