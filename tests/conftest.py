"""Shared test setup: thread caps before torch loads, the real-data location, markers."""

from __future__ import annotations

import sys

import os
from collections.abc import Iterator

# One intra-op thread: test tensors are small, and with two threads a second busy process on a
# 2-core machine makes every op wait on spinning threads (measured: BatchNorm 24x slower). Set before
# torch is imported; never use torch.set_num_threads (it breaks batched linalg.inv with this build).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
INDUSTRIAL_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "industrial"


@pytest.fixture(scope="session")
def industrial_root() -> Path:
    """``../shared/datasets/industrial`` (real MVTec-layout data); skips the test when absent."""
    if not (INDUSTRIAL_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"real data not found at {INDUSTRIAL_ROOT} (integration test skipped)")
    return INDUSTRIAL_ROOT


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API (its own database) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
        rebind_prefect_console(sys.__stderr__)


@pytest.fixture(autouse=True)
def prefect_console_outlives_capture() -> Iterator[None]:
    """After each test, Prefect's console handlers write to the process's stderr again, not to the
    stream a test captured with capsys (closed once the test ends)."""
    yield
    if "prefect.logging.handlers" in sys.modules:
        rebind_prefect_console(sys.__stderr__)


def rebind_prefect_console(stream: object) -> None:
    """Point Prefect's console log handlers at ``stream``: each keeps the stream it was created with, and a
    test that captured output (capsys) closes its stream when it ends; the next flow run would log into it."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.stream = stream  # not setStream: it flushes the old, maybe closed, stream
                handler.console.file = stream  # type: ignore[assignment]
