"""`onenip predict`: registry URIs, model folders, mixed image modes and sizes, and a batch with bad
files (corrupt, truncated, zero-byte, wrong extension, tiny, huge): each failure is named, the rest
are scored, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from onenip.cli import app

pytestmark = pytest.mark.slow


def write_inputs(folder: Path, source: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    good = sorted(source.glob("*.png"))[:2]
    rgb = Image.open(good[0]).convert("RGB")
    files = {
        "rgb": folder / "rgb.png",
        "gray": folder / "gray.png",
        "rgba": folder / "rgba.png",
        "gray16": folder / "gray16.tif",
        "large": folder / "large.jpg",
    }
    rgb.save(files["rgb"])
    rgb.convert("L").save(files["gray"])
    rgb.convert("RGBA").save(files["rgba"])
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(files["gray16"])
    rgb.resize((300, 180)).save(files["large"], quality=95)
    bad = {
        "corrupt": folder / "corrupt.png",
        "truncated": folder / "truncated.png",
        "empty": folder / "empty.png",
        "text": folder / "notes.png",
        "tiny": folder / "tiny.png",
        "huge": folder / "huge.png",
    }
    bad["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    data = files["rgb"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image")
    Image.new("RGB", (8, 8)).save(bad["tiny"])
    Image.new("1", (20000, 20000)).save(bad["huge"])
    return files | bad


def test_predict_scores_good_files_and_names_every_bad_one(registered_project: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(registered_project)
    files = write_inputs(tmp_path / "in", registered_project / "data/widgets/plate/test/good")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "--model", "models:/onenip-widgets-plate@champion",
                                      "--out", str(out), "--batch-size", "2"])  # fmt: skip
    assert result.exit_code == 2, result.output  # partial success: some files could not be scored
    frame = pd.read_csv(out / "predictions.csv")
    assert sorted(Path(p).stem for p in frame["image_path"]) == ["gray", "gray16", "large", "rgb", "rgba"]
    assert frame["category"].eq("plate").all() and frame["threshold"].gt(0).all()
    assert all(Path(p).is_file() for p in frame["heatmap"])
    # the image and its overlay side by side at the image's own size (300 x 180), the verdict header and colour bar
    from onenip.plots import BAR_PX, HEADER_PX

    assert Image.open(frame.loc[frame["image_path"].str.endswith("large.jpg"), "heatmap"].iloc[0]).size == (600, HEADER_PX + 180 + BAR_PX)
    summary = json.loads((out / "predictions.json").read_text())
    failures = {Path(f["image_path"]).name: f["error"] for f in summary["failures"]}
    assert set(failures) == {"corrupt.png", "truncated.png", "empty.png", "notes.png", "tiny.png", "huge.png"}
    assert "0 bytes" in failures["empty.png"] and "at least 16" in failures["tiny.png"]
    assert "limit" in failures["huge.png"] or "exceeds" in failures["huge.png"]
    for name in failures:
        assert name in result.output


def test_predict_refuses_another_category_through_a_registered_version(registered_project: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(registered_project)
    image = sorted((registered_project / "data/widgets/widget/test").rglob("*.png"))[0]
    result = CliRunner().invoke(app, ["predict", str(image), "--model", "models:/onenip-widgets-plate@champion",
                                      "--category", "widget", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code != 0
    assert "serves category 'plate' only" in result.output and "onenip-widgets-widget@champion" in result.output
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_predict_model_folder_matches_registry_model(registered_project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(registered_project)
    image = sorted((registered_project / "data/widgets/widget/test").rglob("*.png"))[0]
    runner = CliRunner()
    by_uri = runner.invoke(app, ["predict", str(image), "--model", "models:/onenip-widgets-widget/1", "--out", str(tmp_path / "a")])
    assert by_uri.exit_code == 0, by_uri.output
    run_dir = registered_project / "runs/pipeline/widgets"
    folder = next(p.parent for p in run_dir.glob("*/model/onenip.json") if "widget" in json.loads(p.read_text())["categories"])
    by_folder = runner.invoke(app, ["predict", str(image), "--model", str(folder), "--out", str(tmp_path / "b"), "--no-heatmaps"])
    assert by_folder.exit_code == 0, by_folder.output
    assert (tmp_path / "a" / "heatmaps").is_dir() and not (tmp_path / "b" / "heatmaps").exists()  # no empty folder
    from onenip.config import load_params
    from onenip.registry import resolve_model

    # the registered model carries its category (needed when one unified network serves several)
    resolved = resolve_model("models:/onenip-widgets-widget@champion", load_params(registered_project / "params.yaml"),
                             registered_project)  # fmt: skip
    assert resolved.category == "widget" and resolved.name_pattern == "onenip-widgets-{category}"
    a, b = pd.read_csv(tmp_path / "a/predictions.csv"), pd.read_csv(tmp_path / "b/predictions.csv")
    assert a["score"][0] == pytest.approx(b["score"][0], rel=1e-6)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("models:/onenip-widgets-plate@production", "no version or alias 'production'"),
        ("models:/onenip-nothing@champion", "'onenip-nothing' does not exist"),
        ("models:/onenip-widgets-plate/99", "no version or alias '99'"),
        ("no/such/folder", "No onenip model at no/such/folder"),
    ],
)
def test_unknown_model_alias_or_path_is_one_clear_line(registered_project: Path, tmp_path: Path, model: str, expected: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(registered_project)
    image = next((registered_project / "data/widgets/plate/test/good").glob("*.png"))
    result = CliRunner().invoke(app, ["predict", str(image), "--model", model, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_each_predict_run_gets_its_own_folder(registered_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = sorted((registered_project / "data/widgets/widget/test").rglob("*.png"))[0]
    monkeypatch.chdir(registered_project / "data")  # from a folder inside the project: results land in the project's runs/
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["predict", str(image), "--model", "models:/onenip-widgets-widget@champion", "--no-heatmaps"])
        assert result.exit_code == 0, result.output
    runs = sorted((registered_project / "runs" / "predict").iterdir())
    assert len(runs) == 2 and all((run / "predictions.csv").is_file() for run in runs)
    assert not (registered_project / "data" / "runs").exists()


def test_serve_refuses_what_it_cannot_serve_in_one_line(registered_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(registered_project)
    runner = CliRunner()
    unknown = runner.invoke(app, ["serve", "models:/onenip-nothing@champion"])
    assert unknown.exit_code == 1 and "'onenip-nothing' does not exist" in unknown.output
    folder = runner.invoke(app, ["serve", "runs/pipeline"])
    assert folder.exit_code == 1 and "serve takes a registered model" in folder.output
