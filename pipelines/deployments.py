"""The scheduled ``retrain`` deployment.

``onenip schedule`` serves it from this process (``flow.serve``): simplest, no work pool. For a
team setup, run a Prefect server and a process work pool instead (README, "Scheduled retraining"):

    prefect server start
    prefect work-pool create onenip --type process
    prefect deploy pipelines/flows.py:retrain -n weekly -p onenip --cron "0 3 * * 1"
    prefect worker start -p onenip
"""

from __future__ import annotations

from typing import Any

from onenip.config import Params
from pipelines.flows import retrain, task_runner

DEPLOYMENT_NAME = "weekly-retrain"


def retrain_deployment(params: Params, params_path: str, profile: str | None = None, cron: str | None = None) -> Any:
    """The ``retrain`` flow with the configured task runner on the cron schedule from params.yaml.

    A scheduled run retrains a category only when its data version (or params, or code) differs from
    what its registered versions were trained on; pass ``force=True`` as a run parameter to override.
    """
    from prefect.schedules import Cron

    configured = retrain.with_options(task_runner=task_runner(params))
    return configured.to_deployment(
        name=DEPLOYMENT_NAME,
        schedule=Cron(cron or params.pipeline.schedule_cron, timezone=params.pipeline.schedule_timezone),
        parameters={"params_path": params_path, "profile": profile, "force": False},
        description="Retrain categories whose data changed; promote only through the metric gates.",
        tags=["onenip", params.data.name],
    )


def serve_retrain(params: Params, params_path: str, profile: str | None = None, cron: str | None = None) -> None:
    from prefect import serve

    serve(retrain_deployment(params, params_path, profile, cron))
