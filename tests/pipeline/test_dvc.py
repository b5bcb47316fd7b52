"""dvc.yaml: `dvc repro` runs validate -> synthesize -> train -> evaluate per category through the CLI
and reproduces the Prefect flow's numbers for the same params and seed; `dvc exp run -S` works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.project import write_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    completed = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def test_dvc_repro_matches_flow_and_exp_run_works(project: Path, prefect_harness: None) -> None:
    from pipelines.flows import run_retrain

    write_params(project, data={"categories": ["plate", "widget"]})
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    flow = run_retrain("params.yaml", project_root=project)

    dvc(project, "repro")
    metrics = json.loads(dvc(project, "metrics", "show", "--json"))
    shown = next(iter(metrics.values()))["data"]
    for category in ("plate", "widget"):
        by_dvc = shown[f"runs/dvc/{category}/eval/metrics.json"]["data"][category]
        for name in ("image_AUROC", "image_AP", "pixel_AUROC", "pixel_AP", "pixel_AUPRO"):
            assert by_dvc[name] == pytest.approx(flow[category]["metrics"][name], abs=1e-6), (category, name)
    assert (project / "runs/dvc/plate/eval/plate/curves.png").is_file()
    assert "stages and pipelines are up to date" in dvc(project, "status") or "up to date" in dvc(project, "status")

    subprocess.run(["git", "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], cwd=project, check=True)
    output = dvc(project, "exp", "run", "-S", "train.epochs=2")
    assert "Running stage 'train@plate'" in output and "Running stage 'validate@plate'" not in output
    experiments = json.loads(dvc(project, "exp", "show", "--json"))
    assert 2 in set(_epochs_in(experiments)) and 1 in set(_epochs_in(experiments))  # the experiment and the baseline


def _epochs_in(node: object) -> list[int]:
    """Every params.yaml ``train.epochs`` in ``dvc exp show --json`` output."""
    found = []
    if isinstance(node, dict):
        if "params.yaml" in node and isinstance(node["params.yaml"], dict):
            found.append(node["params.yaml"].get("data", {}).get("train", {}).get("epochs"))
        for value in node.values():
            found += _epochs_in(value)
    elif isinstance(node, list):
        for value in node:
            found += _epochs_in(value)
    return found
