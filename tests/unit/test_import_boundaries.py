"""The library stays a library: Prefect only in pipelines/, MLflow and GX each in one bridge module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "onenip"
BRIDGES = {
    "prefect": set(),
    "mlflow": {"registry.py", "pyfunc.py", "pyfunc_entry.py"},
    "great_expectations": {"data/validate/suite.py"},
    "anomalib": set(),
    "pipelines": set(),  # the library never depends on orchestration
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(BRIDGES))
def test_package_imported_only_in_its_bridge(package: str) -> None:
    offenders = [
        str(path.relative_to(LIBRARY))
        for path in sorted(LIBRARY.rglob("*.py"))
        if package in _imported_modules(path) and str(path.relative_to(LIBRARY)) not in BRIDGES[package]
    ]
    assert not offenders, f"{package} imported outside its bridge module: {offenders}"


def test_importing_onenip_sets_offline_environment() -> None:
    import os

    import onenip  # noqa: F401

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
