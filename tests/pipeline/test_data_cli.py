"""`onenip data add|validate|summary` and DVC versioning, in a throwaway git + DVC project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onenip.cli import app
from onenip.data.validate import DataValidationError
from onenip.data.versioning import import_dataset, read_data_version
from tests.helpers.faults import tree_hashes
from tests.helpers.trees import make_mvtec_tree

pytestmark = pytest.mark.slow  # spawns git and DVC
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty git repository with ``dvc init`` and analytics off, as the onenip checkout has."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_mvtec_tree(tmp_path / "source", categories=("widget",), n_train=12, n_test_good=3, n_test_bad=3)


def test_add_is_reproducible_and_tracks_changes(project: Path, source: Path) -> None:
    before = tree_hashes(source)
    first = import_dataset(source, "widgets", "mvtec", project)
    assert first.data_version.endswith(".dir")
    assert (project / "data" / "widgets.dvc").is_file()
    assert read_data_version(project / "data" / "widgets.dvc") == first.data_version
    assert tree_hashes(source) == before  # the source is never modified

    again = import_dataset(source, "widgets", "mvtec", project)
    assert again.data_version == first.data_version

    extra = source / "widget" / "train" / "good" / "999.png"
    Image.fromarray(np.full((32, 32, 3), 77, dtype=np.uint8)).save(extra)
    changed = import_dataset(source, "widgets", "mvtec", project)
    assert changed.data_version != first.data_version
    assert (project / "data" / "widgets" / "widget" / "train" / "good" / "999.png").is_file()


def test_failed_validation_keeps_previous_version(project: Path, source: Path) -> None:
    first = import_dataset(source, "widgets", "mvtec", project)
    kept = tree_hashes(project / "data" / "widgets")
    broken = next((source / "widget" / "train" / "good").glob("*.png"))
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataValidationError, match=broken.name):
        import_dataset(source, "widgets", "mvtec", project)
    assert tree_hashes(project / "data" / "widgets") == kept
    assert read_data_version(project / "data" / "widgets.dvc") == first.data_version


def test_push_and_pull_with_local_remote(project: Path, source: Path, tmp_path: Path) -> None:
    from onenip.data.versioning import dvc_pull, dvc_push, run_dvc

    run_dvc(["remote", "add", "-d", "local", str(tmp_path / "storage")], cwd=project)
    import_dataset(source, "widgets", "mvtec", project)
    dvc_push(["data/widgets.dvc"], project)
    shutil.rmtree(project / "data" / "widgets")
    shutil.rmtree(project / ".dvc" / "cache")
    dvc_pull(["data/widgets.dvc"], project)
    assert tree_hashes(project / "data" / "widgets") == tree_hashes(source)


def test_cli_add_summary_validate(project: Path, source: Path) -> None:
    result = runner.invoke(app, ["data", "add", str(source), "--name", "widgets", "--format", "mvtec"])
    assert result.exit_code == 0, result.output
    assert "data version" in result.output
    version = read_data_version(project / "data" / "widgets.dvc")
    assert version in result.output

    result = runner.invoke(app, ["data", "summary", "data/widgets"])
    assert result.exit_code == 0, result.output
    assert "widget" in result.output and "train" in result.output

    result = runner.invoke(app, ["data", "validate", "data/widgets", "--report", "report.json"])
    assert result.exit_code == 0, result.output
    assert (project / "report.json").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "summary", "does/not/exist"], "does not exist"),
        (["data", "add", "nowhere", "--name", "x", "--format", "mvtec"], "nowhere"),
        (["data", "validate", "empty"], "No categories"),
    ],
)
def test_cli_user_errors_are_one_clear_line(project: Path, args: list[str], expected: str) -> None:
    (project / "empty").mkdir()
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_an_unknown_choice_is_refused_before_anything_runs(project: Path) -> None:
    result = runner.invoke(app, ["data", "add", ".", "--name", "x", "--format", "pascal"])
    assert result.exit_code == 2  # click's usage error
    words = " ".join(result.output.replace("│", " ").split())  # the error box wraps and frames lines
    assert "'pascal' is not one of 'mvtec', 'visa', 'btad', 'elpv'" in words
    assert not (project / "data" / "x").exists()


def test_cli_validate_reports_fault_by_name(project: Path, source: Path) -> None:
    bad = next((source / "widget" / "test" / "good").glob("*.png"))
    mask_dir = source / "widget" / "ground_truth" / "good"
    mask_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask_dir / f"{bad.stem}_mask.png")  # normal with a mask
    result = runner.invoke(app, ["data", "validate", str(source)])
    assert result.exit_code == 1
    assert bad.name in result.output
