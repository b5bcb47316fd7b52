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

Modules: one per format (``mvtec``, ``visa``, ``btad``, ``elpv``), the shared steps ``plan`` (jobs and their
checks), ``write`` (files and the report) and ``report`` (``ConversionReport``), and ``dispatch``
(``FORMATS``, ``convert``). Everything is re-exported here, so ``from onenip.data.convert import convert``
keeps working.
"""

from __future__ import annotations

from onenip.data.convert.btad import BTAD_MASK_THRESHOLD, BTAD_NORMAL_DIR, convert_btad
from onenip.data.convert.dispatch import FORMATS, convert
from onenip.data.convert.elpv import ELPV_DEFECT_TYPE, ELPV_LABELS_FILE, ELPV_PACKAGE_NAMES, convert_elpv
from onenip.data.convert.mvtec import convert_mvtec
from onenip.data.convert.report import (
    EXCLUDED_NO_MASK,
    EXCLUDED_NOT_IMAGE,
    EXCLUDED_TRAIN_ANOMALY,
    NOTE_EMPTY_MASK,
    NOTE_EXTRA_FILES,
    NOTE_MASK_BINARISED,
    NOTE_REENCODED,
    CategoryCounts,
    ConversionReport,
)
from onenip.data.convert.visa import VISA_COLUMNS, VISA_DEFECT_TYPE, VISA_LABELS, VISA_SPLIT_CSV, convert_visa

__all__ = [
    "BTAD_MASK_THRESHOLD",
    "BTAD_NORMAL_DIR",
    "ELPV_DEFECT_TYPE",
    "ELPV_LABELS_FILE",
    "ELPV_PACKAGE_NAMES",
    "EXCLUDED_NOT_IMAGE",
    "EXCLUDED_NO_MASK",
    "EXCLUDED_TRAIN_ANOMALY",
    "FORMATS",
    "NOTE_EMPTY_MASK",
    "NOTE_EXTRA_FILES",
    "NOTE_MASK_BINARISED",
    "NOTE_REENCODED",
    "VISA_COLUMNS",
    "VISA_DEFECT_TYPE",
    "VISA_LABELS",
    "VISA_SPLIT_CSV",
    "CategoryCounts",
    "ConversionReport",
    "convert",
    "convert_btad",
    "convert_elpv",
    "convert_mvtec",
    "convert_visa",
]
