"""Dataset versioning with DVC: import a dataset into ``data/<name>``, track it, return its content hash.

DVC is driven through its command line (``python -m dvc`` of this interpreter) rather than its Python
internals, which are not a public API; the content hash is read back from the ``.dvc`` file that
``dvc add`` writes, so it is exactly the version DVC itself records and pushes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from onenip.data.convert.dispatch import convert
from onenip.data.convert.report import ConversionReport
from onenip.data.manifest import DatasetError
from onenip.data.validate.dataset import validate_dataset
from onenip.data.validate.result import ValidationResult

STAGING_DIR = ".onenip-staging"
"""Git- and DVC-ignored folder where an import is converted and validated before it replaces data/."""

# `dvc` holds a repository lock while it works; a second process gets this message and exits 1.
_LOCK_MESSAGES = ("Unable to acquire lock", "is busy", "lock")


class DVCError(RuntimeError):
    """A DVC command failed; the message carries the command and DVC's own output."""


@dataclass(frozen=True)
class ImportResult:
    name: str
    path: Path
    data_version: str
    """DVC content hash of ``data/<name>`` (``<md5>.dir``): the data version recorded on every model."""
    conversion: ConversionReport
    validation: ValidationResult


def find_project_root(start: str | Path = ".") -> Path:
    """The nearest folder at or above ``start`` holding ``.dvc/`` (a DVC project)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    msg = f"No DVC project (.dvc/) at or above {start}; run from the onenip checkout or `dvc init` first"
    raise DatasetError(msg)


def run_dvc(args: list[str], cwd: Path, *, retries: int = 5, retry_delay: float = 2.0) -> str:
    """Run ``dvc <args>`` in ``cwd``; retry while another process holds DVC's repository lock."""
    command = [sys.executable, "-m", "dvc", *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for attempt in range(retries + 1):
        completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if completed.returncode == 0:
            return completed.stdout
        output = (completed.stdout + completed.stderr).strip()
        if attempt < retries and any(text in output for text in _LOCK_MESSAGES):
            time.sleep(retry_delay * (attempt + 1))
            continue
        msg = f"`dvc {' '.join(args)}` failed in {cwd} (exit {completed.returncode}):\n{output}"
        raise DVCError(msg)
    raise AssertionError("unreachable")


def read_data_version(dvc_file: str | Path) -> str:
    """The content hash (``md5`` of the tracked output) stored in a ``.dvc`` file."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        msg = f"DVC file not found: {dvc_file} (has the dataset been added with `onenip data add`?)"
        raise DatasetError(msg)
    content = yaml.safe_load(dvc_file.read_text()) or {}
    outs = content.get("outs") or []
    if not outs or "md5" not in outs[0]:
        msg = f"DVC file {dvc_file} has no output hash"
        raise DatasetError(msg)
    return str(outs[0]["md5"])


def dvc_add(path: str | Path, project_root: str | Path) -> str:
    """``dvc add`` a folder and return its content hash. Unchanged content gives the same hash."""
    project_root = Path(project_root).resolve()
    path = Path(path).resolve()
    relative = path.relative_to(project_root)
    run_dvc(["add", str(relative)], cwd=project_root)
    return read_data_version(path.with_name(path.name + ".dvc"))


def dvc_push(targets: list[str | Path], project_root: str | Path, remote: str | None = None) -> None:
    args = ["push", *(str(t) for t in targets)]
    if remote:
        args += ["--remote", remote]
    run_dvc(args, cwd=Path(project_root))


def dvc_pull(targets: list[str | Path], project_root: str | Path, remote: str | None = None) -> None:
    args = ["pull", *(str(t) for t in targets)]
    if remote:
        args += ["--remote", remote]
    run_dvc(args, cwd=Path(project_root))


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target`` so that a failure never leaves target half-written."""
    backup = target.with_name(f".{target.name}.previous")
    if backup.exists():
        shutil.rmtree(backup)
    if target.exists():
        target.rename(backup)
    try:
        new.rename(target)
    except OSError:
        if backup.exists():
            backup.rename(target)
        raise
    if backup.exists():
        shutil.rmtree(backup)


def import_dataset(
    source: str | Path,
    name: str,
    fmt: str,
    project_root: str | Path = ".",
    *,
    min_train_images: int = 10,
    require_masks: str = "auto",
    test_every: int = 5,
    track: bool = True,
) -> ImportResult:
    """Convert ``source`` into ``data/<name>``, validate it, ``dvc add`` it and return its data version.

    The conversion goes to a staging folder first; only a dataset that passes validation replaces
    ``data/<name>``, so a bad import never destroys the previous version.

    Raises:
        DataValidationError: the converted data fails validation (``data/<name>`` is left as it was).
        DatasetError: wrong path, unknown format, empty source.
    """
    if not name or "/" in name or name.startswith("."):
        msg = f"Invalid dataset name {name!r}: use a plain folder name such as 'bottle' or 'elpv'"
        raise DatasetError(msg)
    project_root = find_project_root(project_root) if track else Path(project_root).resolve()
    staging = project_root / STAGING_DIR / name
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        kwargs = {"test_every": test_every} if fmt == "elpv" else {}
        conversion = convert(fmt, source, staging, **kwargs)
        validation = validate_dataset(staging, min_train_images=min_train_images, require_masks=require_masks)
        validation.raise_for_failure()
        target = project_root / "data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(staging, target)
        conversion.out = target  # the report names where the data now lives, not the staging folder
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    data_version = dvc_add(target, project_root) if track else ""
    return ImportResult(name, target, data_version, conversion, validation)
