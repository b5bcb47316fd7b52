"""Expect (Great Expectations 1.x, ephemeral context): the expectations on the probed tables, run as two
suites, and their failures turned into ``ValidationIssue``s naming the offending files or categories.

The only module of ``onenip`` that imports ``great_expectations``. It is imported lazily, inside the
functions: it costs seconds at import, and the CLI should not pay that for other commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from onenip.data.manifest import LabelName, Split
from onenip.data.validate.result import ValidationIssue

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


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


def build_row_checks() -> list[_Check]:
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


def build_category_checks(min_train_images: int, *, with_prompts: bool) -> list[_Check]:
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


def run_suites(
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


def unexpected_count(result: dict[str, Any]) -> int:
    return int((result.get("result") or {}).get("unexpected_count") or 0)


def _exception_issue(check: _Check, result: dict[str, Any]) -> ValidationIssue | None:
    info = result.get("exception_info") or {}
    if not info.get("raised_exception"):
        return None
    return ValidationIssue(
        check.name, check.description, [], None, observed=f"could not be evaluated: {info.get('exception_message')}"
    )


def row_issues(check: _Check, result: dict[str, Any], rows: pd.DataFrame) -> list[ValidationIssue]:
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


def category_issues(check: _Check, result: dict[str, Any], summary: pd.DataFrame) -> list[ValidationIssue]:
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
