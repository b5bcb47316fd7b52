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


def test_schedule_deployment_uses_cron_from_params() -> None:
    from pipelines.deployments import retrain_deployment

    params = load_params(REPO_PARAMS)
    deployment = retrain_deployment(params, "params.yaml", "fast")
    schedule = deployment.schedules[0].schedule
    assert schedule.cron == params.pipeline.schedule_cron and schedule.timezone == params.pipeline.schedule_timezone
    assert deployment.parameters == {"params_path": "params.yaml", "profile": "fast", "force": False}
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


def test_code_version_covers_result_code_only() -> None:
    from onenip import jobs

    hashed = {str(p.relative_to(jobs.PACKAGE_DIR)) for p in jobs.PACKAGE_DIR.rglob("*.py")} - jobs.NOT_RESULT_CODE
    assert {"models/onenip.py", "training.py", "synthesis.py", "metrics.py", "data/transforms.py"} <= hashed
    assert "cli.py" not in hashed and len(jobs.code_version()) == 16
