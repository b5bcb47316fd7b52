"""What a validation returns: ``ValidationResult`` (issues, every check's outcome, statistics) as JSON or a
Markdown report, and ``DataValidationError`` to stop on failure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onenip.data.manifest import DatasetError

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
        return to_builtin(asdict(self))

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


def to_builtin(value: Any) -> Any:
    """numpy scalars -> Python scalars, recursively, so ``json.dumps`` accepts the result."""
    if isinstance(value, dict):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(item) for item in value]
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
