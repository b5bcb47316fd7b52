"""SIGTERM in the middle of training: the next run resumes from the last complete epoch and ends
with the same weights as an uninterrupted run; a damaged checkpoint is never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.helpers.trees import make_mvtec_tree
from tests.unit.test_training import TINY

pytestmark = pytest.mark.slow


def train_command(data: Path, out: Path, params: Path) -> list[str]:
    return [sys.executable, "-c", "from onenip.cli import app; app()", "train", "--data", str(data), "--out", str(out),
            "--params", str(params), "--no-evaluate"]  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    data = make_mvtec_tree(tmp_path / "data", categories=("widget",), n_train=24, n_test_good=2, n_test_bad=2, size=64)
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"].update({"epochs": 6, "batch_size": 2, "cache_dir": str(tmp_path / "cache")})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    return data, params


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, params = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full = subprocess.run(train_command(data, tmp_path / "full", params), env=env, capture_output=True, text=True, check=False)
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "interrupted"
    state = out / "unified" / "checkpoint" / "last.json"
    process = subprocess.Popen(train_command(data, out, params), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (state.is_file() and json.loads(state.read_text())["epoch"] >= 2):
        assert process.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0
    stopped_at = json.loads(state.read_text())["epoch"]
    assert 2 <= stopped_at < 6
    assert not (out / "unified" / "model").exists()  # no model from a run that did not finish

    resumed = subprocess.run(train_command(data, out, params), env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from epoch {stopped_at}" in resumed.stderr
    a = load_file(str(tmp_path / "full" / "unified" / "model" / "model.safetensors"))
    b = load_file(str(out / "unified" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"


def test_damaged_or_mismatched_checkpoint_is_never_loaded(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.training import StopAfterEpoch, train_onenip

    data, params_path = setup
    params = load_params(params_path, overrides={"train": {"epochs": 2}})
    manifest = make_manifest(data, progress=False)
    out = tmp_path / "run"
    train_onenip(manifest, params, out, progress=False, callbacks=[StopAfterEpoch(1)])
    checkpoint = out / "checkpoint"
    weights = checkpoint / json.loads((checkpoint / "last.json").read_text())["weights"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated by a crash or a full disk
    result = train_onenip(manifest, params, out, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]  # started over, did not load the half file
    (checkpoint / "last.json").write_text('{"epoch": 1, "hist')  # half-written state file
    result = train_onenip(manifest, params, out, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
