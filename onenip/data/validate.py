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

This is the only module of ``onenip`` that imports ``great_expectations``. It is imported lazily,
inside ``_run_suite``: it costs seconds at import, and the CLI should not pay that for other commands.
Validation never writes to the dataset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from PIL import ImageFile
from tqdm.auto import tqdm

from onenip.data.manifest import (
    DatasetError,
    ImageReadError,
    LabelName,
    Split,
    discover_categories,
    make_manifest,
    read_image,
    read_mask,
)

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

RequireMasks = Literal["auto", "always", "never"]
REQUIRE_MASKS_OPTIONS: tuple[str, ...] = ("auto", "always", "never")
REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "category", "split", "label_index", "mask_path", "sha256")
BINARY_MASK_VALUE_SETS: tuple[frozenset[int], ...] = (frozenset({0, 255}), frozenset({0, 1}))
DEFAULT_MIN_TRAIN_IMAGES = 10
# Below this many images a progress bar is noise (same threshold as ``make_manifest``).
PROGRESS_MIN_IMAGES = 200
# Decoding is zlib/libjpeg work that releases the GIL, so a few threads overlap it with file reads.
PROBE_MAX_WORKERS = 4
MAX_FILES_IN_MESSAGE = 5


@dataclass
class ValidationIssue:
    """One failed expectation in one category."""

    expectation: str
    """GX expectation type and its column, e.g. ``expect_column_values_to_be_in_set(decodable)``."""
    description: str
    """What the expectation means for the dataset, e.g. ``image decodes fully``."""
    files: list[str]
    """Offending image paths (empty for category-level checks)."""
    category: str | None
    observed: str = ""
    """What was found instead, e.g. ``2 of 40 images`` or ``6 (expected >= 10)``."""
    details: dict[str, str] = field(default_factory=dict)
    """Per-file reason, e.g. the decoder error or ``mask 32x30 vs image 32x32``."""

    def summary(self, max_files: int = MAX_FILES_IN_MESSAGE) -> str:
        where = f" [category {self.category}]" if self.category is not None else ""
        text = f"{self.expectation}{where}: {self.description}"
        if self.observed:
            text += f" ({self.observed})"
        if self.files:
            shown = ", ".join(self.files[:max_files])
            more = f" and {len(self.files) - max_files} more" if len(self.files) > max_files else ""
            text += f": {shown}{more}"
        return text


@dataclass
class CheckOutcome:
    """One expectation as evaluated (passed or not), for the report."""

    expectation: str
    description: str
    success: bool
    unexpected_count: int


@dataclass
class ValidationResult:
    success: bool
    issues: list[ValidationIssue]
    num_images: int
    num_categories: int
    checks: list[CheckOutcome] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    """Counts (overall and ``per_category``), the policy used and timings in seconds."""

    @property
    def failed_expectations(self) -> list[str]:
        return sorted({issue.expectation for issue in self.issues})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (for MLflow / Prefect artifacts)."""
        return _to_builtin(asdict(self))

    def to_markdown(self, max_files: int = 20) -> str:
        """A report a person reads: verdict, counts per category, every check, then each failure's files."""
        stats = self.statistics
        root = stats.get("root")
        verdict = "PASSED" if self.success else "FAILED"
        num_passed = sum(check.success for check in self.checks)
        lines = [
            f"# Dataset validation: {verdict}",
            "",
            f"{self.num_images} images in {self.num_categories} categories"
            + (f" under `{root}`" if root else "")
            + f"; {num_passed} of {len(self.checks)} checks passed"
            + f" (require_masks={stats.get('require_masks')}, min_train_images={stats.get('min_train_images')}).",
            "",
        ]
        per_category = stats.get("per_category", {})
        if per_category:
            lines += [
                "## Categories",
                "",
                "| category | train normal | test normal | test anomalous | masks | masks required |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for name, row in per_category.items():
                masks_required = "yes" if row["masks_required"] else "no"
                lines.append(
                    f"| {_md(name)} | {row['num_train_normal']} | {row['num_test_normal']} "
                    f"| {row['num_test_anomalous']} | {row['num_masks']} | {masks_required} |",
                )
            lines.append("")
        lines += ["## Checks", "", "| result | check | expectation | unexpected |", "|---|---|---|---:|"]
        for check in self.checks:
            result = "pass" if check.success else "**FAIL**"
            lines.append(
                f"| {result} | {_md(check.description)} | `{check.expectation}` | {check.unexpected_count} |",
            )
        lines.append("")
        if self.issues:
            lines += ["## Failures", ""]
            for issue in self.issues:
                where = f" in `{issue.category}`" if issue.category is not None else ""
                lines.append(f"### {_md(issue.description)}{where}")
                lines.append("")
                lines.append(f"`{issue.expectation}` failed" + (f": {_md(issue.observed)}" if issue.observed else "."))
                lines.append("")
                for path in issue.files[:max_files]:
                    reason = issue.details.get(path)
                    if reason and root:
                        reason = reason.replace(str(root).rstrip("/") + "/", "")
                    lines.append(f"- `{_relative(path, root)}`" + (f": {_md(reason)}" if reason else ""))
                if len(issue.files) > max_files:
                    lines.append(f"- ... and {len(issue.files) - max_files} more")
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def raise_for_failure(self) -> ValidationResult:
        """Raise ``DataValidationError`` if any check failed; return ``self`` otherwise (for chaining)."""
        if not self.success:
            raise DataValidationError(self)
        return self


class DataValidationError(DatasetError):
    """The dataset failed validation; ``.result`` holds the full ``ValidationResult``."""

    def __init__(self, result: ValidationResult) -> None:
        self.result = result
        lines = [
            f"Dataset validation failed: {len(result.failed_expectations)} expectation(s) failed "
            f"on {result.num_images} images in {result.num_categories} categories:",
        ]
        lines += [f"- {issue.summary()}" for issue in result.issues]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Check:
    """A GX expectation plus the words used to report it."""

    key: str
    description: str
    expectation: Expectation
    where: str | None = None
    detail_column: str | None = None
    """Row-table column holding a per-file reason for the report."""

    @property
    def name(self) -> str:
        column = getattr(self.expectation, "column", None)
        where = f" where {self.where}" if self.where else ""
        return f"{self.expectation.expectation_type}({column}{where})"


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
    row_checks = _row_checks()
    category_checks = _category_checks(min_train_images, with_prompts="is_prompt" in rows.columns)
    row_results, category_results = _run_suites(rows, row_checks, summary, category_checks)
    gx_seconds = time.perf_counter() - started

    checks: list[CheckOutcome] = []
    issues: list[ValidationIssue] = []
    for check, result in zip(row_checks, row_results, strict=True):
        checks.append(CheckOutcome(check.name, check.description, result["success"], _unexpected_count(result)))
        issues += _row_issues(check, result, rows)
    for check, result in zip(category_checks, category_results, strict=True):
        checks.append(CheckOutcome(check.name, check.description, result["success"], _unexpected_count(result)))
        issues += _category_issues(check, result, summary)

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


# ---------------------------------------------------------------------------------------------- probe


def probe_manifest(
    manifest: pd.DataFrame, *, require_masks: RequireMasks = "auto", progress: bool = True
) -> pd.DataFrame:
    """Decode every image and mask of ``manifest`` and add one column per fact the expectations test.

    Added columns (``None`` where a fact does not apply, which GX map expectations skip):
    ``decodable``, ``decode_error``, ``decoded_width``, ``decoded_height``, ``has_mask``,
    ``mask_readable``, ``mask_size_matches``, ``mask_binary``, ``mask_problem``, ``mask_required``,
    ``leaks_across_splits``, ``leak_partners``.
    """
    rows = manifest.reset_index(drop=True).copy()
    # pandas 3 stores a missing path as NaN in a str column; an object column keeps it None, one value
    # for "no mask" that GX treats as null.
    rows["mask_path"] = pd.Series(
        [None if pd.isna(path) else str(path) for path in rows["mask_path"]], index=rows.index, dtype=object
    )
    for column in ("image_path", "category", "split"):
        rows[column] = rows[column].astype(str).astype(object)

    pairs = list(zip(rows["image_path"], rows["mask_path"], strict=True))
    workers = max(1, min(PROBE_MAX_WORKERS, os.cpu_count() or 1))
    bar = tqdm(
        total=len(pairs), desc="Validating images", unit="img", disable=not progress or len(pairs) < PROGRESS_MIN_IMAGES
    )
    with _strict_decoding(), ThreadPoolExecutor(max_workers=workers) as pool, bar:
        facts = []
        for fact in pool.map(_probe_file, *zip(*pairs, strict=True)):
            facts.append(fact)
            bar.update()
    rows = pd.concat([rows, pd.DataFrame(facts, index=rows.index, dtype=object)], axis=1)

    rows["mask_required"] = _masks_required(rows, require_masks)
    rows["leaks_across_splits"], rows["leak_partners"] = _find_leaks(rows)
    return rows


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files even if some library switched on lenient loading globally.

    ``LOAD_TRUNCATED_IMAGES`` is process-wide, so it is restored right after the probe.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _probe_file(image_path: str, mask_path: str | None) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "decodable": True,
        "decode_error": None,
        "decoded_width": None,
        "decoded_height": None,
        "has_mask": mask_path is not None,
        "mask_readable": None,
        "mask_size_matches": None,
        "mask_binary": None,
        "mask_problem": None,
    }
    try:
        image = read_image(image_path)
        fact["decoded_width"], fact["decoded_height"] = image.size
    except ImageReadError as error:
        fact["decodable"] = False
        fact["decode_error"] = str(error)
    if mask_path is None:
        return fact

    try:
        mask = read_mask(mask_path)
    except ImageReadError as error:
        fact["mask_readable"] = False
        fact["mask_problem"] = str(error)
        return fact
    fact["mask_readable"] = True
    problems = []
    if fact["decodable"]:
        mask_height, mask_width = mask.shape[:2]
        fact["mask_size_matches"] = (mask_width, mask_height) == (fact["decoded_width"], fact["decoded_height"])
        if not fact["mask_size_matches"]:
            problems.append(
                f"mask {mask_width}x{mask_height} vs image {fact['decoded_width']}x{fact['decoded_height']} (WxH)",
            )
    values = frozenset(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
    fact["mask_binary"] = any(values <= allowed for allowed in BINARY_MASK_VALUE_SETS)
    if not fact["mask_binary"]:
        shown = sorted(values)
        listed = ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
        problems.append(f"mask values {{{listed}}} are not only {{0, 255}} or only {{0, 1}}")
    fact["mask_problem"] = "; ".join(problems) or None
    return fact


def _masks_required(rows: pd.DataFrame, require_masks: RequireMasks) -> pd.Series:
    anomalous_test = (rows["split"] == Split.TEST.value) & (rows["label_index"] == int(LabelName.ABNORMAL))
    if require_masks == "never":
        return pd.Series(False, index=rows.index)
    if require_masks == "always":
        return anomalous_test
    with_masks = set(rows.loc[anomalous_test & rows["has_mask"].astype(bool), "category"])
    return anomalous_test & rows["category"].isin(with_masks)


def _find_leaks(rows: pd.DataFrame) -> tuple[list[bool | None], list[str | None]]:
    """Flag readable images whose bytes (sha256) occur in both train and test, with the files they match.

    Checked across categories too: OneNIP is one model for all categories, so a test image that is
    some other category's train image was still seen in training. Unreadable files are left out: all
    empty files share one hash and are already reported as unreadable.
    """
    usable = rows[rows["decodable"].astype(bool) & rows["sha256"].notna()]
    splits_per_hash = usable.groupby("sha256")["split"].agg(lambda s: set(s))
    leaked = {h for h, splits in splits_per_hash.items() if {Split.TRAIN.value, Split.TEST.value} <= splits}
    paths_per_hash: dict[str, list[tuple[str, str]]] = {}
    for path, digest, split in zip(usable["image_path"], usable["sha256"], usable["split"], strict=True):
        if digest in leaked:
            paths_per_hash.setdefault(digest, []).append((path, split))

    flags: list[bool | None] = []
    partners: list[str | None] = []
    for digest, split, decodable in zip(rows["sha256"], rows["split"], rows["decodable"], strict=True):
        if not decodable or pd.isna(digest):
            flags.append(None)
            partners.append(None)
        elif digest in leaked:
            others = sorted(other for other, other_split in paths_per_hash[digest] if other_split != split)
            flags.append(True)
            partners.append(f"same sha256 ({digest[:12]}...) as {', '.join(others)}")
        else:
            flags.append(False)
            partners.append(None)
    return flags, partners


def summarize_categories(rows: pd.DataFrame, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per category with the counts the category checks test (readable images only)."""
    readable = rows[rows["decodable"].astype(bool)]
    is_train = readable["split"] == Split.TRAIN.value
    is_test = readable["split"] == Split.TEST.value
    is_normal = readable["label_index"] == int(LabelName.NORMAL)
    names = sorted(set(rows["category"]) | set(categories or ()))

    def count(mask: pd.Series) -> pd.Series:
        return readable[mask].groupby("category").size().reindex(names, fill_value=0).astype(int)

    summary = pd.DataFrame(
        {
            "category": names,
            "num_images": rows.groupby("category").size().reindex(names, fill_value=0).astype(int).to_numpy(),
            "num_train_normal": count(is_train & is_normal).to_numpy(),
            "num_test_normal": count(is_test & is_normal).to_numpy(),
            "num_test_anomalous": count(is_test & ~is_normal).to_numpy(),
            "num_masks": rows.groupby("category")["has_mask"].sum().reindex(names, fill_value=0).astype(int).to_numpy(),
            "masks_required": rows.groupby("category")["mask_required"]
            .any()
            .reindex(names, fill_value=False)
            .astype(bool)
            .to_numpy(),
        },
    )
    if "is_prompt" in rows.columns:
        prompts = rows["is_prompt"].fillna(False).astype(bool)
        summary["num_prompts"] = (
            rows[prompts].groupby("category").size().reindex(names, fill_value=0).astype(int).to_numpy()
        )
    return summary


# ---------------------------------------------------------------------------------------------- expect


def _row_checks() -> list[_Check]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    normal, abnormal = int(LabelName.NORMAL), int(LabelName.ABNORMAL)
    return [
        _Check(
            "split_known",
            "split is train or test",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[s.value for s in Split]),
        ),
        _Check(
            "label_known",
            "label_index is 0 (normal) or 1 (anomalous)",
            gxe.ExpectColumnValuesToBeInSet(column="label_index", value_set=[normal, abnormal]),
        ),
        _Check("path_unique", "each image is listed once", gxe.ExpectColumnValuesToBeUnique(column="image_path")),
        _Check(
            "decodable",
            "image decodes fully (not empty, truncated or corrupt)",
            gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
            detail_column="decode_error",
        ),
        _Check(
            "train_normal",
            "train images are normal (train/good only)",
            gxe.ExpectColumnValuesToBeInSet(
                column="label_index", value_set=[normal], row_condition=Column("split") == Split.TRAIN.value
            ),
            where=f"split == '{Split.TRAIN.value}'",
            detail_column="defect_type",
        ),
        _Check(
            "mask_present",
            "anomalous test image has a mask (require_masks policy)",
            gxe.ExpectColumnValuesToNotBeNull(column="mask_path", row_condition=Column("mask_required") == True),  # noqa: E712 (builds a GX condition)
            where="mask_required",
        ),
        _Check(
            "mask_readable",
            "mask decodes",
            gxe.ExpectColumnValuesToBeInSet(column="mask_readable", value_set=[True]),
            detail_column="mask_problem",
        ),
        _Check(
            "mask_size",
            "mask has the size of its image",
            gxe.ExpectColumnValuesToBeInSet(column="mask_size_matches", value_set=[True]),
            detail_column="mask_problem",
        ),
        _Check(
            "mask_binary",
            "mask is binary (only 0/255 or only 0/1)",
            gxe.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True]),
            detail_column="mask_problem",
        ),
        _Check(
            "normal_no_mask",
            "normal image has no mask",
            gxe.ExpectColumnValuesToBeNull(column="mask_path", row_condition=Column("label_index") == normal),
            where="label_index == 0",
            detail_column="mask_path",
        ),
        _Check(
            "no_leakage",
            "no image (sha256) is in both train and test",
            gxe.ExpectColumnValuesToBeInSet(column="leaks_across_splits", value_set=[False]),
            detail_column="leak_partners",
        ),
    ]


def _category_checks(min_train_images: int, *, with_prompts: bool) -> list[_Check]:
    import great_expectations.expectations as gxe

    checks = [
        _Check(
            "min_train",
            f"category has at least {min_train_images} readable normal train images",
            gxe.ExpectColumnValuesToBeBetween(column="num_train_normal", min_value=min_train_images),
        ),
        _Check(
            "test_normal",
            "test split has normal images",
            gxe.ExpectColumnValuesToBeBetween(column="num_test_normal", min_value=1),
        ),
        _Check(
            "test_anomalous",
            "test split has anomalous images",
            gxe.ExpectColumnValuesToBeBetween(column="num_test_anomalous", min_value=1),
        ),
    ]
    if with_prompts:
        checks.append(
            _Check(
                "one_prompt",
                "category has exactly one prompt image",
                gxe.ExpectColumnValuesToBeBetween(column="num_prompts", min_value=1, max_value=1),
            ),
        )
    return checks


def _run_suites(
    rows: pd.DataFrame,
    row_checks: list[_Check],
    summary: pd.DataFrame,
    category_checks: list[_Check],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run both suites in one throwaway (ephemeral) context; results come back in check order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("onenip_manifest")
    row_results = _run_suite(context, source, "images", _gx_frame(rows), row_checks, index_column="image_path")
    category_results = _run_suite(context, source, "categories", summary, category_checks, index_column="category")
    return row_results, category_results


def _run_suite(
    context: Any,
    source: Any,
    name: str,
    frame: pd.DataFrame,
    checks: list[_Check],
    *,
    index_column: str,
) -> list[dict[str, Any]]:
    import great_expectations as gx

    batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for check in checks:
        check.expectation.meta = {"check": check.key}
        suite.add_expectation(check.expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    outcome = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
    )
    by_key = {result.expectation_config.meta["check"]: result.to_json_dict() for result in outcome.results}
    return [by_key[check.key] for check in checks]


def _gx_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The row table as GX sees it: plain object columns, so ``None`` stays a null and bools stay bools."""
    columns = [c for c in rows.columns if c not in ("decoded_width", "decoded_height")]
    frame = rows[columns].copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.StringDtype):
            frame[column] = pd.Series(
                [None if pd.isna(v) else v for v in frame[column]], index=frame.index, dtype=object
            )
    return frame


def _unexpected_count(result: dict[str, Any]) -> int:
    return int((result.get("result") or {}).get("unexpected_count") or 0)


def _exception_issue(check: _Check, result: dict[str, Any]) -> ValidationIssue | None:
    info = result.get("exception_info") or {}
    if not info.get("raised_exception"):
        return None
    return ValidationIssue(
        check.name, check.description, [], None, observed=f"could not be evaluated: {info.get('exception_message')}"
    )


def _row_issues(check: _Check, result: dict[str, Any], rows: pd.DataFrame) -> list[ValidationIssue]:
    if result["success"]:
        return []
    raised = _exception_issue(check, result)
    if raised is not None:
        return [raised]
    unexpected = [entry["image_path"] for entry in result["result"].get("unexpected_index_list") or []]
    by_path = rows.set_index("image_path", drop=False)
    issues = []
    for category, group in by_path.loc[unexpected].groupby("category", sort=True):
        files = sorted(group["image_path"])
        details = {}
        if check.detail_column is not None:
            for path, reason in zip(group["image_path"], group[check.detail_column], strict=True):
                if reason is not None and not pd.isna(reason):
                    details[path] = str(reason)
        total = int((rows["category"] == category).sum())
        issues.append(
            ValidationIssue(
                check.name,
                check.description,
                files,
                str(category),
                observed=f"{len(files)} of {total} images",
                details=details,
            ),
        )
    return issues


def _category_issues(check: _Check, result: dict[str, Any], summary: pd.DataFrame) -> list[ValidationIssue]:
    if result["success"]:
        return []
    raised = _exception_issue(check, result)
    if raised is not None:
        return [raised]
    column = check.expectation.column
    expected = _bounds(check.expectation)
    issues = []
    for entry in result["result"].get("unexpected_index_list") or []:
        category = entry["category"]
        value = int(summary.loc[summary["category"] == category, column].iloc[0])
        issues.append(
            ValidationIssue(
                check.name, check.description, [], str(category), observed=f"{column} = {value} (expected {expected})"
            )
        )
    return issues


def _bounds(expectation: Any) -> str:
    # GX stores bounds as floats; counts read better as integers.
    low, high = (
        None if v is None else int(v) if float(v).is_integer() else v
        for v in (expectation.min_value, expectation.max_value)
    )
    if low is not None and high is not None:
        return f"{low}" if low == high else f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


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
    return _to_builtin(
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


def _to_builtin(value: Any) -> Any:
    """numpy scalars -> Python scalars, recursively, so ``json.dumps`` accepts the result."""
    if isinstance(value, dict):
        return {str(key): _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _relative(path: str, root: str | None) -> str:
    if root:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path
