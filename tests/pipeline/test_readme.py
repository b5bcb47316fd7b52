"""The README's Quickstart and "Your own data" commands, parsed from README.md itself and run in order on a
tiny project, so the guide cannot rot: a renamed option, a wrong model name or a broken curl fails here.

What is swapped, and why: the shipped dataset (ELPV ``mono``/``poly``) for a tiny one (``widgets``:
``plate``/``widget``), the example paths for tiny folders; ``make run`` runs ``onenip run --profile fast``
in-process (what the Makefile runs, without creating a venv); ``source .venv/bin/activate`` is a no-op
here (the test runs in the venv); ``onenip ui`` blocks and has its own test (tests/hardening/test_serving.py).
``onenip serve`` is started in the background and the curl that follows it must get predictions."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer

from pipelines.cli import app
from tests.conftest import rebind_prefect_console
from tests.helpers.net import wait_until_up
from tests.helpers.project import write_params
from tests.helpers.trees import make_mvtec_tree

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands(section: str) -> list[str]:
    """The commands of a README section's ```bash blocks, continuation lines joined, comments dropped."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, f"README.md has no section {section!r}"
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", match.group(1), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment (never inside these commands)
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_readme_sections_have_the_commands_a_new_user_needs() -> None:
    quickstart, own = readme_commands("Quickstart"), readme_commands("Your own data")
    assert quickstart[0] == "make run" and "source .venv/bin/activate" in quickstart
    assert any(c.startswith("onenip predict") for c in quickstart) and any(c.startswith("onenip evaluate") for c in quickstart)
    assert any(c.startswith("onenip run --data") for c in own) and any(c.startswith("onenip predict") for c in own)
    serve = readme_commands("Serve")
    assert serve[0].startswith("onenip serve") and serve[1].startswith("curl")


@contextmanager
def served(command: str, project: Path) -> Iterator[None]:
    port = int(re.search(r"--port (\d+)", command).group(1))  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    log = (project / "serve.log").open("w")
    process = subprocess.Popen([str(bin_dir / "onenip"), *shlex.split(command)[1:]], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, {f"http://127.0.0.1:{port}/ping": ""}, project / "serve.log")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def invoke(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``onenip ARGS`` in this process (the Prefect test server applies), output from pytest's capture:
    Prefect's log handler keeps the stream it first saw, which a CliRunner closes after each call."""
    capsys.readouterr()
    rebind_prefect_console(sys.stderr)  # this test's captured stream, not an earlier test's closed one
    try:
        returned = app(args=args, prog_name="onenip", standalone_mode=False)
        code = returned if isinstance(returned, int) else 0  # without standalone mode an exit code is returned
    except SystemExit as stop:
        code = int(stop.code or 0)
    except typer.Exit as stop:
        code = stop.exit_code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_commands(commands: list[str], project: Path, swap: dict[str, str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run README commands in order in ``project``; returns each command's output."""
    outputs = []
    for original in commands:
        command = original
        for old, new in swap.items():
            command = command.replace(old, new)
        if command in ("source .venv/bin/activate",) or command.startswith("onenip ui"):
            continue
        if command == "make run":
            command = "onenip run --profile fast"
        if command.startswith("curl"):
            result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (original, result.stderr)
            outputs.append(result.stdout)
            continue
        assert command.startswith("onenip "), f"README command not covered by this test: {original}"
        code, output = invoke(shlex.split(command)[1:], capsys)
        assert code == 0, (original, output)
        outputs.append(output)
    return outputs


def test_quickstart_and_own_data_as_written(tmp_path: Path, project: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_params(project, profiles={"fast": {"train": {"epochs": 1}}})  # what `make run` asks for: a `fast` profile
    assert raw.is_file()
    # Quickstart on the project's dataset (swapped in for ELPV)
    outputs = run_commands(readme_commands("Quickstart"), project, {"elpv": "widgets", "mono": "plate"}, capsys)
    assert "promoted" in outputs[0]
    assert "onenip-widgets-plate" in outputs[1] and "champion" in outputs[1]  # onenip registry
    reports = [Path(m.replace("file://", "")) for out in outputs for m in re.findall(r"Report: (file://\S+)", out.replace("\n", ""))]
    assert len(reports) == 2 and all(r.is_file() for r in reports)  # predict's and evaluate's pages
    assert "data-kind=" in reports[0].read_text()

    # Serve: the README's server and curl, with a real image of the project
    image = sorted((project / "data/widgets/plate/test/good").glob("*.png"))[0]
    serve = readme_commands("Serve")
    with served(serve[0].replace("elpv", "widgets").replace("mono", "plate"), project):
        answer = run_commands(serve[1:2], project, {"elpv": "widgets", "mono": "plate", "cell0369.png": image.name}, capsys)
    predictions = json.loads(answer[0]).get("predictions") or pytest.fail(answer[0][:2000])
    assert predictions[0]["category"] == "plate" and isinstance(predictions[0]["is_anomaly"], bool)

    # Your own data: a new MVTec-layout folder through `onenip run --data`, then predict with its champion
    parts = make_mvtec_tree(tmp_path / "my_parts", categories=("gear",), n_train=10, n_test_good=3, n_test_bad=3, size=64)
    outputs = run_commands(readme_commands("Your own data"), project,
                           {"/path/to/my_parts": str(parts), "PRODUCT": "gear", "/path/to/new_images": str(parts / "gear" / "test")}, capsys)  # fmt: skip
    assert "Imported" in outputs[0] and "promoted" in outputs[0]
    assert (project / "data" / "my_parts.dvc").is_file()
    assert "Scored 6 of 6 images" in outputs[1]
