"""A tiny project whose two categories went through the real pipeline once: registered, champion set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.project import make_project


@pytest.fixture(scope="module")
def registered_project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Path]:
    from pipelines.flows import run_retrain

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = make_project(tmp_path_factory.mktemp("registered"))
    outcomes = run_retrain("params.yaml", project_root=root)
    assert {o["status"] for o in outcomes.values()} == {"promoted"}, outcomes
    yield root
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved
