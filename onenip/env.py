"""Process environment that keeps the stack offline and quiet.

Set once at import of ``onenip`` so every entry point (CLI, flows, tests, DVC stages) behaves the same
without the user exporting anything. Values already set by the user win.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    # Prefect's ephemeral server phones home and may wait on a closed network.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    # Great Expectations usage statistics.
    "GX_ANALYTICS_ENABLED": "false",
    # timm / huggingface must never reach a hub; weights come from local packages.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # OpenMP threads yield instead of spinning while they wait. With the default (ACTIVE) a second
    # busy process on a 2-core machine (another training, a test run, a server) made every step wait
    # on spinning threads: measured 20-50x slower (benchmarks/README.md). Export ACTIVE on a machine
    # that does nothing else for up to 2x at batch 1. Must be set before torch starts its threads.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def configure_offline_env(env: dict[str, str] | None = None) -> None:
    """Fill in the offline settings without overriding values the user set."""
    for key, value in (env or OFFLINE_ENV).items():
        os.environ.setdefault(key, value)
