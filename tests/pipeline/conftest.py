"""Fixtures for pipeline tests: a throwaway project per test (the Prefect harness is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.project import make_project, write_params  # noqa: F401  (write_params used by tests)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root
