"""Operators' verdicts back into the data (``onenip feedback apply``, the review page's button for leads).

A reviewed false alarm (verdict ``normal``) becomes a training normal of its category, a confirmed
defect a test anomaly of its type (image-level). The copies go into ``data/<name>/<category>``, Great
Expectations validates the category, and only then is the folder versioned with DVC: a failed check
removes the copies again and nothing is recorded. Nothing is deleted from the data; the earlier data
version stays in DVC, and the scheduled retrain sees the category's new data hash."""

from __future__ import annotations

import fcntl
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
    """Copy the category's unapplied verdicts into its data, validate, version; record each as applied.
    One apply at a time per project (a file lock); anything that fails before the new data version exists
    removes the copies again, so the data is as it was."""
    project_root = Path(project_root)
    folder = project_root / params.data.root / category
    if not folder.is_dir():
        msg = f"no data folder {folder} for category {category!r}"
        raise FeedbackError(msg)
    lock_dir = project_root / "runs" / "feedback"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result, copied, applied = FeedbackResult(category), [], []
        try:
            _stage(log, params, folder, project_root, result, copied, applied)
            if applied:
                result.data_version = _validate_and_version(params, project_root, category, push)
        except Exception as error:
            for path in copied:
                path.unlink(missing_ok=True)
            if isinstance(error, FeedbackError):
                raise
            msg = f"{category}: nothing was added ({type(error).__name__}: {error})"
            raise FeedbackError(msg) from error
        for verdict_id, path in applied:
            log.mark_applied(verdict_id, path, result.data_version, user)
        return result


def _stage(log: PredictionLog, params: Params, folder: Path, project_root: Path, result: FeedbackResult, copied: list[Path],
           applied: list[tuple[int, str]]) -> None:  # fmt: skip
    """Copy each applicable verdict's image (and drawn mask) into the category; ``copied`` lists every new file."""
    from onenip.data.manifest import ImageReadError, decode_image

    # evaluation scores a category with masks on pixels: every test anomaly there needs one
    masked = params.data.require_masks == "always" or any((folder / "ground_truth").glob("*/*"))
    known = _image_hashes(folder)
    for row in log.unapplied(folder.name):
        short = row["id"][:8]
        if not row["image_path"] or log.store is None:
            result.skipped.append(f"{short}: no stored copy")
            continue
        if row["label"] == "defect" and masked and not row["mask_path"]:
            result.skipped.append(f"{short}: {folder.name}'s test anomalies have pixel masks: draw this defect's on the review page")
            continue
        if row["image_sha256"] in known:  # its content is in the data already: nothing to add, nothing left to do
            result.skipped.append(f"{short}: already in the data as {known[row['image_sha256']]}")
            applied.append((row["verdict_id"], str((folder / known[row["image_sha256"]]).relative_to(project_root))))
            continue
        try:
            source = log.store.resolve(row["image_path"])
            decode_image(source.read_bytes(), source=str(source))
        except (ValueError, ImageReadError, OSError) as error:
            result.skipped.append(f"{short}: {error}")
            continue
        where = destination(row["label"], row["defect_type"])
        target = folder / where / f"feedback-{row['image_sha256'][:16]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        copied.append(target)
        shutil.copyfile(source, target)
        if row["label"] == "defect" and row["mask_path"] and masked:  # a mask-less category stays image-level
            mask = folder / "ground_truth" / where.split("/", 1)[1] / f"{target.stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            copied.append(mask)
            _resize_mask(log.store.resolve(row["mask_path"]), source, mask)
        known[row["image_sha256"]] = str(target.relative_to(folder))
        result.added[where] = result.added.get(where, 0) + 1
        applied.append((row["verdict_id"], str(target.relative_to(project_root))))


def _validate_and_version(params: Params, project_root: Path, category: str, push: bool) -> str:
    """Great Expectations on the category with the new files, then a DVC version; its data version."""
    from onenip.jobs import validate_category, version_dataset

    check = validate_category(project_root / params.data.root, category, params, project_root / "runs" / "feedback" / time.strftime("%Y%m%d-%H%M%S"))
    if not check.success:
        msg = f"{category}: the data with the reviewed images failed validation ({check.summary}); nothing was added (report: {check.report_markdown})"
        raise FeedbackError(msg)
    version = version_dataset(params, project_root, push=push)
    return version.category_versions.get(category, version.data_version)


def _image_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the decoded pixels of every image of a category (as the log hashes them) -> its path."""
    import hashlib

    import numpy as np

    from onenip.data.manifest import decode_image, is_image_file
    from onenip.serving.base import as_rgb_uint8

    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if is_image_file(p) and p.parent.parent.name != "ground_truth"):
        try:
            pixels = as_rgb_uint8(decode_image(path.read_bytes(), source=str(path)))
        except Exception:  # noqa: BLE001 - an unreadable file is GX's to report, not a duplicate
            continue
        hashes[hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()] = str(path.relative_to(folder))
    return hashes


def _resize_mask(mask_path: Path, image_path: Path, target: Path) -> None:
    from PIL import Image

    size = Image.open(image_path).size
    Image.open(mask_path).convert("L").resize(size, Image.Resampling.NEAREST).save(target)
