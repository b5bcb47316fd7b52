"""ELPV solar cells (the ``elpv-dataset`` package or a folder with its ``labels.csv``): one category per cell
type, image-level labels only."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from onenip.data.convert.plan import check_folder_name, Plan, resolve_under, select_categories
from onenip.data.convert.report import ConversionReport
from onenip.data.convert.write import run
from onenip.data.manifest import NORMAL_DIR, DatasetError, Split

ELPV_DEFECT_TYPE = "defect"
ELPV_LABELS_FILE = "labels.csv"
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
        cell_type = check_folder_name(fields[2], "cell type", here)
        rows.append(_ElpvRow(resolve_under(root, fields[0], here), probability, cell_type))
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
    selected = set(select_categories(available, categories, labels))

    plan = Plan()
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
    return run(plan, out, fmt="elpv", src=labels.parent, started=started, overwrite=overwrite, progress=progress)
