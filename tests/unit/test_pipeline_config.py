"""params.yaml profiles, gate settings, the schedule deployment and per-category data versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onenip.config import ConfigError, load_params
from onenip.data.manifest import make_manifest
from onenip.jobs import cache_key, category_data_versions
from tests.helpers.trees import make_mvtec_tree

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_fast_profile_merges_on_top_and_unknown_profile_is_clear() -> None:
    full, fast = load_params(REPO_PARAMS), load_params(REPO_PARAMS, profile="fast")
    assert fast.train.epochs < full.train.epochs and fast.synthesis.pool_size == 1
    assert fast.model == full.model  # the fast profile trains the same network, for fewer epochs
    with pytest.raises(ConfigError, match="Profile 'turbo' is not defined"):
        load_params(REPO_PARAMS, profile="turbo")


def test_gate_metrics_are_checked_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("gates:\n  minimum:\n    image_auroc: 0.9\n")
    with pytest.raises(ConfigError, match="image_auroc"):
        load_params(bad)


def test_a_dataset_cannot_take_the_onboarded_prompts_folder(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  name: prompts\n")
    with pytest.raises(ConfigError, match="'prompts' is reserved"):
        load_params(bad)


def test_schedule_deployment_uses_cron_from_params() -> None:
    from pipelines.deployments import retrain_deployment

    params = load_params(REPO_PARAMS)
    deployment = retrain_deployment(params, "params.yaml", "fast", project_root=REPO_PARAMS.parent, overrides={"train": {"epochs": 3}})
    schedule = deployment.schedules[0].schedule
    assert schedule.cron == params.pipeline.schedule_cron and schedule.timezone == params.pipeline.schedule_timezone
    # the project and any --set travel with the deployment: a scheduled run trains what `onenip schedule` was given
    assert deployment.parameters == {"params_path": "params.yaml", "profile": "fast", "force": False,
                                     "project_root": str(REPO_PARAMS.parent.resolve()), "overrides": {"train": {"epochs": 3}}}
    assert retrain_deployment(params, "params.yaml", cron="*/5 * * * *").schedules[0].schedule.cron == "*/5 * * * *"


def test_adding_an_image_changes_only_its_category_version(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "d", categories=("plate", "widget"), n_train=6, size=32)
    before = category_data_versions(make_manifest(root, progress=False))
    shutil.copy(root / "plate/train/good/000.png", root / "plate/train/good/copy.png")
    after = category_data_versions(make_manifest(root, progress=False))
    assert after["plate"] != before["plate"] and after["widget"] == before["widget"]
    params = load_params(REPO_PARAMS)
    assert cache_key("per-category", [before["widget"]], params) == cache_key("per-category", [after["widget"]], params)
    changed = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 3})})
    assert cache_key("per-category", [before["widget"]], changed) != cache_key("per-category", [before["widget"]], params)


def test_code_version_covers_result_code_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit files of a temporary copy of the package: result code changes the hash, serving code does not."""
    import shutil

    from onenip import jobs

    copy = tmp_path / "onenip"
    shutil.copytree(jobs.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(jobs, "PACKAGE_DIR", copy)
    original = jobs.code_version()
    assert len(original) == 16 and jobs.code_version() == original

    def changed_by(relative: str) -> bool:
        path = copy / relative
        saved = path.read_bytes()
        path.write_bytes(saved + b"\n# an edit\n")
        try:
            return jobs.code_version() != original
        finally:
            path.write_bytes(saved)

    for result_code in ("models/onenip.py", "training/loop.py", "training/calibration.py", "synthesis/synthesizer.py", "metrics/pixel.py",
                        "data/transforms.py"):  # fmt: skip
        assert changed_by(result_code), result_code
    for serving_code in ("cli.py", "registry.py", "pyfunc.py", "serving/torch_predictor.py", "serving/base.py", "gates.py", "serving/files.py",
                         "report.py", "runtime.py", "data/resample.py"):  # fmt: skip
        assert not changed_by(serving_code), serving_code
    (copy / "models" / "new_head.py").write_text("X = 1\n")  # a new model file counts too
    assert jobs.code_version() != original




def test_one_params_hash_covers_what_changes_results_only() -> None:
    from onenip.config import Params, result_params_digest

    base = result_params_digest(Params())
    changed = {
        "validation": Params.model_validate({"validation": {"weight_step": 0.5}}),
        "model": Params.model_validate({"model": {"embed_dim": 64}}),
        "train": Params.model_validate({"train": {"epochs": 3}}),
    }
    for section, params in changed.items():
        assert result_params_digest(params) != base, section
    unchanged = {
        "prompt_trials": Params.model_validate({"eval": {"prompt_trials": 0}}),
        "cache_dir": Params.model_validate({"train": {"cache_dir": "/elsewhere"}}),
        "gates": Params.model_validate({"gates": {"max_regression": 0.5}}),
        "pipeline": Params.model_validate({"pipeline": {"retries": 7}}),
    }
    for setting, params in unchanged.items():
        assert result_params_digest(params) == base, setting


@pytest.mark.parametrize("strength", ["[0, 1]", "[0.9, 0.5]", "[0.5, 1.2]"])
def test_validation_anomaly_strength_is_checked_at_load(tmp_path: Path, strength: str) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(f"validation:\n  anomaly_strength: {strength}\n")
    with pytest.raises(ConfigError, match="anomaly_strength"):
        load_params(bad)


def test_a_user_error_prints_its_text_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error messages are text, not rich markup: the brackets of a YAML error must survive."""
    from typer.testing import CliRunner

    from onenip.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  categories: [mono, poly\n")
    result = CliRunner().invoke(app, ["registry"])
    assert result.exit_code == 1
    assert "at line 3, column 1: expected ',' or ']', but got '<stream end>'" in result.output  # the brackets survive
    assert not (tmp_path / "mlflow.db").exists()  # failed before touching any store


def test_schema_errors_are_one_line_per_field_with_a_suggestion(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epoch: 3\n  lr: fast\nmodel:\n  backbone:\n    nme: x\n")
    with pytest.raises(ConfigError) as error:
        load_params(params)
    message = str(error.value)
    assert "\n" not in message and "errors.pydantic.dev" not in message
    assert "train.epoch: unknown setting (did you mean train.epochs?)" in message
    assert "model.backbone.nme: unknown setting (did you mean model.backbone.name?)" in message
    assert "train.lr: Input should be a valid number" in message and "(got 'fast')" in message
    params.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"trian: unknown setting \(did you mean train\?\)"):
        load_params(params)


def test_version_flag() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from onenip.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"onenip {version('onenip')}"
