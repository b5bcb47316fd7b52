"""Validate a dataset or its manifest: probe every file, run the expectation suites, gather the result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from onenip.data.manifest import DatasetError, LabelName, Split, discover_categories, make_manifest
from onenip.data.validate.probe import REQUIRE_MASKS_OPTIONS, RequireMasks, probe_manifest, summarize_categories
from onenip.data.validate.result import CheckOutcome, ValidationIssue, ValidationResult, to_builtin
from onenip.data.validate.suite import (
    build_category_checks,
    category_issues,
    build_row_checks,
    row_issues,
    run_suites,
    unexpected_count,
)

REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "category", "split", "label_index", "mask_path", "sha256")
DEFAULT_MIN_TRAIN_IMAGES = 10


def validate_manifest(
    manifest: pd.DataFrame,
    *,
    min_train_images: int = DEFAULT_MIN_TRAIN_IMAGES,
    require_masks: RequireMasks = "auto",
    categories: Sequence[str] | None = None,
    progress: bool = True,
) -> ValidationResult:
    """Probe every file of a manifest and run the Great Expectations suites on the result.

    Args:
        manifest: output of ``make_manifest`` (at least ``REQUIRED_COLUMNS``).
        min_train_images: a category needs this many readable normal train images.
        require_masks: ``"always"``: every anomalous test image needs a mask; ``"never"``: none does;
            ``"auto"``: required in a category once any anomalous test image of it has one (image-level
            datasets such as ELPV have none and pass).
        categories: categories that must be present; one with no rows fails the count checks.
        progress: show a progress bar while decoding (only for large manifests).

    Returns:
        ``ValidationResult``; ``success`` is False when any expectation failed.
    """
    if require_masks not in REQUIRE_MASKS_OPTIONS:
        msg = f"require_masks must be one of {list(REQUIRE_MASKS_OPTIONS)}, got {require_masks!r}"
        raise ValueError(msg)
    if min_train_images < 1:
        msg = f"min_train_images must be >= 1, got {min_train_images}"
        raise ValueError(msg)
    missing = [column for column in REQUIRED_COLUMNS if column not in manifest.columns]
    if missing:
        msg = f"Manifest lacks columns {missing}; expected at least {list(REQUIRED_COLUMNS)} (see make_manifest)"
        raise DatasetError(msg)
    if manifest.empty:
        msg = "Manifest has no rows: nothing to validate"
        raise DatasetError(msg)

    started = time.perf_counter()
    rows = probe_manifest(manifest, require_masks=require_masks, progress=progress)
    summary = summarize_categories(rows, categories=categories)
    probe_seconds = time.perf_counter() - started

    # Timed from here: the first call in a process also pays the great_expectations import (seconds).
    started = time.perf_counter()
    row_checks = build_row_checks()
    category_checks = build_category_checks(min_train_images, with_prompts="is_prompt" in rows.columns)
    row_results, category_results = run_suites(rows, row_checks, summary, category_checks)
    gx_seconds = time.perf_counter() - started

    checks: list[CheckOutcome] = []
    issues: list[ValidationIssue] = []
    for check, result in zip(row_checks, row_results, strict=True):
        checks.append(CheckOutcome(check.name, check.description, result["success"], unexpected_count(result)))
        issues += row_issues(check, result, rows)
    for check, result in zip(category_checks, category_results, strict=True):
        checks.append(CheckOutcome(check.name, check.description, result["success"], unexpected_count(result)))
        issues += category_issues(check, result, summary)

    statistics = _statistics(rows, summary, min_train_images, require_masks, manifest.attrs.get("root"))
    statistics["seconds"] = {"probe": round(probe_seconds, 3), "great_expectations": round(gx_seconds, 3)}
    return ValidationResult(
        success=all(check.success for check in checks),
        issues=issues,
        num_images=len(rows),
        num_categories=len(summary),
        checks=checks,
        statistics=statistics,
    )


def validate_dataset(
    root: str | Path,
    categories: Sequence[str] | None = None,
    *,
    min_train_images: int = DEFAULT_MIN_TRAIN_IMAGES,
    require_masks: RequireMasks = "auto",
    progress: bool = True,
) -> ValidationResult:
    """Scan ``root`` with ``make_manifest`` and validate the manifest (arguments as in ``validate_manifest``).

    Every requested category, or every category folder found under ``root``, must hold images: one that
    has folders but no image files fails the count checks instead of silently dropping out.
    """
    manifest = make_manifest(root, categories, progress=progress)
    expected = list(categories) if categories else discover_categories(root)
    return validate_manifest(
        manifest,
        min_train_images=min_train_images,
        require_masks=require_masks,
        categories=expected,
        progress=progress,
    )


def _statistics(
    rows: pd.DataFrame,
    summary: pd.DataFrame,
    min_train_images: int,
    require_masks: str,
    root: str | None,
) -> dict[str, Any]:
    per_category = {
        str(record["category"]): {key: value for key, value in record.items() if key != "category"}
        for record in summary.to_dict(orient="records")
    }
    return to_builtin(
        {
            "root": root,
            "min_train_images": min_train_images,
            "require_masks": require_masks,
            "num_train": int((rows["split"] == Split.TRAIN.value).sum()),
            "num_test": int((rows["split"] == Split.TEST.value).sum()),
            "num_anomalous": int((rows["label_index"] == int(LabelName.ABNORMAL)).sum()),
            "num_masks": int(rows["has_mask"].astype(bool).sum()),
            "num_unreadable": int((~rows["decodable"].astype(bool)).sum()),
            "per_category": per_category,
        },
    )
