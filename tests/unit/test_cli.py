"""The CLI's shared behaviour without a pipeline run: --set overrides, the project found from below,
nothing created outside a project, the model given once, the help grouped in panels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import pipelines.flows  # noqa: F401  (Prefect sets up its log handlers on import: here, not on a CliRunner's stream that closes)
from onenip.config import ConfigError, load_params
from onenip.overrides import parse_overrides
from pipelines.cli import app
from tests.helpers.trees import make_mvtec_tree

runner = CliRunner()
REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def words(output: str) -> str:
    return " ".join(output.replace("│", " ").split())  # rich wraps and frames long lines


def test_set_overrides_are_typed_nested_and_checked() -> None:
    overrides = parse_overrides(["train.epochs=3", "data.categories=[a, b]", "gates.max_latency_ms=null", "data.name=my parts"])
    assert overrides == {"train": {"epochs": 3}, "data": {"categories": ["a", "b"], "name": "my parts"}, "gates": {"max_latency_ms": None}}
    params = load_params(REPO_PARAMS, overrides)
    assert (params.train.epochs, list(params.data.categories), params.data.name) == (3, ["a", "b"], "my parts")
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        load_params(REPO_PARAMS, parse_overrides(["train.epoch=3"]))
    for bad in ("train.epochs", "=3", "train..epochs=3"):
        with pytest.raises(ConfigError, match="expected section.key=value"):
            parse_overrides([bad])


def test_set_changes_what_a_command_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_mvtec_tree(tmp_path / "tree", n_train=12)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"min_train_images": 5}}))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["data", "validate", str(tree)]).exit_code == 0
    refused = runner.invoke(app, ["data", "validate", str(tree), "--set", "data.min_train_images=50"])
    assert refused.exit_code == 1 and "50" in refused.output  # the overridden floor, not the file's
    typo = runner.invoke(app, ["data", "validate", str(tree), "--set", "data.min_train_image=50"])
    assert typo.exit_code == 1 and "did you mean data.min_train_images?" in words(typo.output)


def test_broken_params_file_is_one_line_naming_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  name: x\ntrain: [epochs: 3\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["registry"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not valid YAML at line 4, column 1: expected ',' or ']'" in lines[0], result.output


def test_project_found_from_below_and_nothing_created_outside_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args in (["run"], ["registry"], ["predict", ".", "--model", "models:/onenip-x-y@champion"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
    assert "No params.yaml in" in words(runner.invoke(app, ["run"]).output)
    assert list(outside.iterdir()) == []  # no mlflow.db, no runs/
    project = tmp_path / "project"
    (project / "a" / "b").mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump({"pipeline": {"tracking_uri": f"sqlite:///{project}/store.db"}}))
    monkeypatch.chdir(project / "a" / "b")
    result = runner.invoke(app, ["registry"])
    assert result.exit_code == 1 and f"sqlite:///{project}/store.db" in words(result.output)  # the project's store, named


def test_model_given_once_as_argument_or_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["export"], ["export", "a", "--model", "b"], ["evaluate"], ["serve"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Give the model once" in words(result.output), (args, result.output)
    missing = runner.invoke(app, ["export", "--model", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "No onenip model at" in words(missing.output)


def test_help_lists_commands_in_panels_in_order() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    panels = [p for p in ("Pipeline", "Model", "Registry and serving", "Few-shot", "Data") if f"─ {p} ─" in result.output]
    assert panels == ["Pipeline", "Model", "Registry and serving", "Few-shot", "Data"]
    assert result.output.index("─ Pipeline ─") < result.output.index(" run ") < result.output.index("─ Model ─")
    predict = runner.invoke(app, ["predict", "--help"])
    assert "models:/NAME@ALIAS" in predict.output and "--set" in predict.output and "``" not in predict.output
