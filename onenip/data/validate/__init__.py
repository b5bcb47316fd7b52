"""Validate a dataset manifest with Great Expectations before anything trains on it.

Two steps:

1. **Probe** (pandas + PIL, read only): every image is decoded in full with ``read_image`` and every
   mask with ``read_mask``; the facts land in derived columns of a row table (``decodable``,
   ``mask_size_matches``, ``mask_binary``, ``leaks_across_splits``, ...) and a per-category table
   (``num_train_normal``, ``num_test_normal``, ``num_test_anomalous``).
2. **Expect** (Great Expectations 1.x, ephemeral context): one suite runs on each table with
   ``result_format="COMPLETE"`` and ``unexpected_index_column_names`` so every failure comes back with
   the offending ``image_path`` (or ``category``). Each failure becomes a ``ValidationIssue`` naming
   the expectation, e.g. ``expect_column_values_to_be_in_set(decodable)``, and the files.

Modules: ``probe`` (step 1), ``suite`` (step 2: the expectations and how their failures are reported),
``result`` (``ValidationResult``, ``DataValidationError``) and ``dataset`` (``validate_manifest``,
``validate_dataset``). ``suite`` is the only module of ``onenip`` that imports ``great_expectations``, lazily,
inside its functions: it costs seconds at import, and the CLI should not pay that for other commands.
Validation never writes to the dataset. Everything is re-exported here, so
``from onenip.data.validate import validate_dataset`` keeps working.
"""

from __future__ import annotations

from onenip.data.validate.dataset import (
    DEFAULT_MIN_TRAIN_IMAGES,
    REQUIRED_COLUMNS,
    validate_dataset,
    validate_manifest,
)
from onenip.data.validate.probe import (
    BINARY_MASK_VALUE_SETS,
    PROBE_MAX_WORKERS,
    PROGRESS_MIN_IMAGES,
    REQUIRE_MASKS_OPTIONS,
    RequireMasks,
    probe_manifest,
    summarize_categories,
)
from onenip.data.validate.result import (
    MAX_FILES_IN_MESSAGE,
    CheckOutcome,
    DataValidationError,
    ValidationIssue,
    ValidationResult,
)

__all__ = [
    "BINARY_MASK_VALUE_SETS",
    "DEFAULT_MIN_TRAIN_IMAGES",
    "MAX_FILES_IN_MESSAGE",
    "PROBE_MAX_WORKERS",
    "PROGRESS_MIN_IMAGES",
    "REQUIRED_COLUMNS",
    "REQUIRE_MASKS_OPTIONS",
    "CheckOutcome",
    "DataValidationError",
    "RequireMasks",
    "ValidationIssue",
    "ValidationResult",
    "probe_manifest",
    "summarize_categories",
    "validate_dataset",
    "validate_manifest",
]
