"""A throwaway onenip project: git + DVC + a tiny MVTec tree + tiny params (a complete params.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.tiny import TINY_MODEL
from tests.helpers.trees import make_mvtec_tree

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TINY_PIPELINE_PARAMS = {
    "data": {"name": "widgets", "format": "mvtec", "min_train_images": 5, "categories": []},
    "model": TINY_MODEL | {"mode": "per-category"},
    "synthesis": {"pool_size": 1},
    "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0},
    "eval": {"num_heatmaps": 1, "prompt_trials": 0},
    "gates": {"minimum": {"image_AUROC": 0.0, "pixel_AUROC": 0.0, "pixel_AP": 0.0}, "max_regression": 0.01},
}


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def write_params(project: Path, **sections: dict) -> Path:
    """Update ``project/params.yaml`` (created from the tiny params) section by section."""
    path = project / "params.yaml"
    if path.is_file():
        raw = yaml.safe_load(path.read_text())
    else:  # every key of the repository's params.yaml (dvc.yaml needs them), tiny sizes on top
        raw = yaml.safe_load(REPO_PARAMS.read_text())
        raw.pop("profiles", None)
        for name, values in TINY_PIPELINE_PARAMS.items():
            raw[name] = _merge(raw.get(name, {}), values)
    for name, values in sections.items():
        raw[name] = _merge(raw.get(name, {}), values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_project(tmp_path: Path) -> Path:
    """git + ``dvc init`` + a local DVC remote + a source tree with two categories + tiny params."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for args in (["init", "-q"], ["config", "core.analytics", "false"], ["remote", "add", "-d", "local", str(tmp_path / "storage")]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True)
    source = make_mvtec_tree(tmp_path / "source", categories=("plate", "widget"), n_train=10, n_test_good=3, n_test_bad=3, size=64)
    write_params(root, data={"source": str(source)}, train={"cache_dir": str(tmp_path / "cache")})
    return root
