"""VisA (amazon-science/spot-diff) as downloaded, split by its ``split_csv/1cls.csv``."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path

from onenip.data.convert.plan import check_folder_name, check_src_dir, Plan, resolve_under, select_categories
from onenip.data.convert.report import EXCLUDED_NO_MASK, EXCLUDED_TRAIN_ANOMALY, ConversionReport
from onenip.data.convert.write import run
from onenip.data.manifest import NORMAL_DIR, DatasetError, Split

VISA_SPLIT_CSV = "split_csv/1cls.csv"
VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_LABELS: dict[str, bool] = {"normal": False, "anomaly": True}  # label -> is anomalous
VISA_DEFECT_TYPE = "anomaly"


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
    root = check_src_dir(src, "visa")
    csv_path = Path(split_csv) if Path(split_csv).is_absolute() else root / split_csv
    if not csv_path.is_file():
        msg = (
            f"VisA split file not found: {csv_path}; expected the VisA download layout "
            f"<src>/{VISA_SPLIT_CSV} next to <src>/<object>/Data/Images/"
        )
        raise DatasetError(msg)
    rows = _read_visa_rows(csv_path)
    where = str(csv_path)
    available = sorted({check_folder_name(row["object"], "object", f"{where} line {line}") for line, row in rows})
    selected = set(select_categories(available, categories, csv_path))

    plan = Plan()
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
        image = resolve_under(root, row["image"], here)
        if not VISA_LABELS[label]:
            plan.add_image(image, category, split, NORMAL_DIR)
        elif split == Split.TRAIN.value:
            plan.excluded[EXCLUDED_TRAIN_ANOMALY] += 1
        elif not row["mask"]:
            plan.excluded[EXCLUDED_NO_MASK] += 1
        else:
            mask = resolve_under(root, row["mask"], here)
            image_dst = plan.add_image(image, category, split, VISA_DEFECT_TYPE)
            plan.add_mask(mask, image_dst, image, threshold=0)
    return run(plan, out, fmt="visa", src=root, started=started, overwrite=overwrite, progress=progress)
