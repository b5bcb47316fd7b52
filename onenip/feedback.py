"""Operators' verdicts back into the data (``onenip feedback apply``, the review page's button for leads).

A reviewed false alarm (verdict ``normal``) becomes a training normal of its category, a confirmed
defect a test anomaly of its type (image-level). The copies go into ``data/<name>/<category>``, Great
Expectations validates the category, and only then is the folder versioned with DVC: a failed check
removes the copies again and nothing is recorded. Nothing is deleted from the data; the earlier data
version stays in DVC, and the scheduled retrain sees the category's new data hash."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from onenip.config import Params
from onenip.monitoring.log import PredictionLog


class FeedbackError(ValueError):
    """Verdicts that cannot be applied (the data failed validation, no data folder)."""


@dataclass
class FeedbackResult:
    category: str
    added: dict[str, int] = field(default_factory=dict)
    """Images added per destination (``train/good``, ``test/<type>``)."""
    skipped: list[str] = field(default_factory=list)
    data_version: str | None = None

    def summary(self) -> str:
        if not self.added:
            return f"{self.category}: nothing to apply" + (f" ({'; '.join(self.skipped)})" if self.skipped else "")
        added = ", ".join(f"{n} to {where}" for where, n in sorted(self.added.items()))
        skipped = f"; skipped: {'; '.join(self.skipped)}" if self.skipped else ""
        return f"{self.category}: added {added}; data version {self.data_version}{skipped}"


def destination(label: str, defect_type: str | None) -> str:
    if label == "normal":
        return "train/good"
    kind = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (defect_type or "defect").strip().lower()) or "defect"
    return f"test/{'defect' if kind == 'good' else kind}"


def apply_verdicts(log: PredictionLog, params: Params, project_root: str | Path, category: str, user: str, *, push: bool = True) -> FeedbackResult:
    """Copy the category's unapplied verdicts into its data, validate, version; record each as applied."""
    from onenip.data.manifest import ImageReadError, decode_image
    from onenip.jobs import validate_category, version_dataset

    project_root = Path(project_root)
    folder = project_root / params.data.root / category
    if not folder.is_dir():
        msg = f"no data folder {folder} for category {category!r}"
        raise FeedbackError(msg)
    # evaluation scores a category with masks on pixels: every test anomaly there needs one
    masked = params.data.require_masks == "always" or any((folder / "ground_truth").glob("*/*"))
    result, copied, applied = FeedbackResult(category), [], []
    for row in log.unapplied(category):
        if not row["image_path"] or log.store is None:
            result.skipped.append(f"{row['id'][:8]}: no stored copy")
            continue
        if row["label"] == "defect" and masked:
            result.skipped.append(f"{row['id'][:8]}: {category}'s test anomalies have pixel masks and this defect has none")
            continue
        source = log.store.resolve(row["image_path"])
        try:
            decode_image(source.read_bytes(), source=str(source))
        except (ImageReadError, OSError) as error:
            result.skipped.append(f"{row['id'][:8]}: {error}")
            continue
        where = destination(row["label"], row["defect_type"])
        target = folder / where / f"feedback-{row['image_sha256'][:16]}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(target)
        result.added[where] = result.added.get(where, 0) + 1
        applied.append((row["verdict_id"], str(target.relative_to(project_root))))
    if not applied:
        return result
    check = validate_category(project_root / params.data.root, category, params, project_root / "runs" / "feedback" / time.strftime("%Y%m%d-%H%M%S"))
    if not check.success:
        for path in copied:
            path.unlink(missing_ok=True)
        msg = f"{category}: the data with the reviewed images failed validation ({check.summary}); nothing was added (report: {check.report_markdown})"
        raise FeedbackError(msg)
    version = version_dataset(params, project_root, push=push)
    result.data_version = version.category_versions.get(category, version.data_version)
    for verdict_id, path in applied:
        log.mark_applied(verdict_id, path, result.data_version, user)
    return result
