"""The library stays a library: Prefect only in pipelines/, MLflow and GX each in one bridge module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "onenip"
BRIDGES = {
    "prefect": set(),
    "mlflow": {"registry.py", "pyfunc.py", "pyfunc_entry.py", "registry_thresholds.py"},
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


def _module_name(path: Path, library: Path) -> str:
    parts = path.relative_to(library.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(library: Path = LIBRARY) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (a late import inside a function counts:
    it is a dependency all the same)."""
    modules = {_module_name(path, library): path for path in library.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # ``from a.b import name``: the module is a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for neighbour in sorted(graph[node]):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_late_import_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import a  # late, still a dependency\n")
    (package / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle_in_the_library() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles (late imports included): {found}"


def test_no_function_over_80_lines_and_no_module_over_600() -> None:
    """Functions that fit on a screen, modules a reader can hold (onenip/ and pipelines/)."""
    long_functions, long_modules = [], []
    for folder in (LIBRARY, LIBRARY.parent / "pipelines"):
        for path in sorted(folder.rglob("*.py")):
            text = path.read_text()
            if len(text.splitlines()) > 600:
                long_modules.append(f"{path.name}: {len(text.splitlines())}")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                    if node.end_lineno - start + 1 > 80:  # type: ignore[operator]
                        long_functions.append(f"{path.name}:{node.lineno} {node.name}")
    assert not long_functions and not long_modules, (long_functions, long_modules)


def test_few_shot_code_does_not_load_the_training_loop() -> None:
    """Onboarding needs training's data preparation, not its loop (lazy re-exports of onenip.training)."""
    import subprocess
    import sys

    # onenip.fewshot and the training modules its functions import (data, pool)
    code = ("import sys, onenip.fewshot, onenip.training.data, onenip.training.pool; "
            "print('onenip.training.loop' in sys.modules, 'onenip.training.data' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=LIBRARY.parent)
    assert result.stdout.split() == ["False", "True"]
