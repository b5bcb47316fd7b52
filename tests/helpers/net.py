"""Servers a test starts: a free TCP port for one, and a wait until it answers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(process: subprocess.Popen, checks: Mapping[str, str], log: Path, timeout: float = 180) -> None:
    """Poll each URL of ``checks`` until it answers 200 with its expected text in the body ("" for any
    body), once a second. AssertionError with the log's tail when the process exits or time runs out."""
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        for url, expected in list(pending.items()):
            try:
                response = requests.get(url, timeout=2)
                if response.status_code == 200 and expected in response.text:
                    del pending[url]
            except (requests.ConnectionError, requests.Timeout):  # still starting, or too busy to answer within 2 s
                pass
        if pending:
            time.sleep(1)
    assert not pending, f"not up after {timeout:.0f} s: {list(pending)}\n{log.read_text()[-3000:]}"
