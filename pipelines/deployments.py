"""The scheduled ``retrain`` deployment.

``onenip schedule`` serves it from this process (``flow.serve``): simplest, no work pool. For a
team setup, a Prefect server and a process work pool run it instead (README, "Team setup"):

    prefect server start
    prefect work-pool create onenip --type process
    onenip deploy --pool onenip          # the deployment, on the cron schedule of params.yaml
    prefect worker start -p onenip       # on every machine that should run trainings
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from onenip.config import Params
from pipelines.flows import DEFAULT_PARAMS_PATH, monitor, retrain, run_retrain, task_runner

DEPLOYMENT_NAME = "weekly-retrain"
MONITOR_DEPLOYMENT_NAME = "hourly-monitor"


def retrain_deployment(
    params: Params, params_path: str, profile: str | None = None, cron: str | None = None, project_root: str | Path = ".",
    overrides: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The ``retrain`` flow with the configured task runner on the cron schedule from params.yaml.

    A scheduled run retrains a category only when its data version (or params, or code) differs from
    what its registered versions were trained on; pass ``force=True`` as a run parameter to override.
    """
    from prefect.schedules import Cron

    configured = retrain.with_options(task_runner=task_runner(params))
    return configured.to_deployment(
        name=DEPLOYMENT_NAME,
        schedule=Cron(cron or params.pipeline.schedule_cron, timezone=params.pipeline.schedule_timezone),
        parameters={"params_path": params_path, "profile": profile, "force": False, "project_root": str(Path(project_root).resolve()),
                    "overrides": overrides},
        description="Retrain categories whose data changed; promote only through the metric gates.",
        tags=["onenip", params.data.name],
    )


def monitor_deployment(params: Params, params_path: str, profile: str | None = None, project_root: str | Path = ".",
                       overrides: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """The ``monitor`` flow on ``monitoring.schedule_cron`` (hourly by default): a run fails when a drift check fires."""
    from prefect.schedules import Cron

    return monitor.to_deployment(
        name=MONITOR_DEPLOYMENT_NAME,
        schedule=Cron(params.monitoring.schedule_cron, timezone=params.pipeline.schedule_timezone),
        parameters={"params_path": params_path, "profile": profile, "project_root": str(Path(project_root).resolve()), "overrides": overrides},
        description="Drift of the logged traffic against the calibration normals; fails when a check fires.",
        tags=["onenip", params.data.name, "monitor"],
    )


def serve_retrain(
    params: Params, params_path: str, profile: str | None = None, cron: str | None = None, project_root: str | Path = ".",
    overrides: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Serve the scheduled retrain and the scheduled drift monitor from this process."""
    from prefect import serve

    serve(retrain_deployment(params, params_path, profile, cron, project_root, overrides),
          monitor_deployment(params, params_path, profile, project_root, overrides))  # fmt: skip


@flow(name="scheduled-retrain", log_prints=True)
def scheduled_retrain(
    params_path: str = str(DEFAULT_PARAMS_PATH),
    profile: str | None = None,
    categories: list[str] | None = None,
    force: bool = False,
    project_root: str = ".",
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """What a worker runs: ``retrain`` as a subflow, with the task runner params.yaml asks for (a
    worker loads a flow from its entrypoint, so ``with_options`` must happen inside the run)."""
    return run_retrain(params_path, profile, categories, force, project_root, overrides)


def deploy_retrain(
    params: Params,
    params_path: str,
    work_pool: str,
    project_root: str | Path,
    profile: str | None = None,
    cron: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Register the ``retrain`` deployment with a Prefect server's work pool; returns its id.

    The code is pulled by the worker from this checkout (local storage: workers on other machines
    need the same path, or a git source); the project (data, params, DVC) is ``project_root``.
    """
    from prefect.schedules import Cron

    checkout = Path(__file__).resolve().parents[1]
    source = scheduled_retrain.from_source(source=str(checkout), entrypoint="pipelines/deployments.py:scheduled_retrain")
    deployment_id = source.deploy(
        name=DEPLOYMENT_NAME,
        work_pool_name=work_pool,
        schedule=Cron(cron or params.pipeline.schedule_cron, timezone=params.pipeline.schedule_timezone),
        parameters={"params_path": params_path, "profile": profile, "force": False, "project_root": str(Path(project_root).resolve()),
                    "overrides": overrides},
        description="Retrain categories whose data changed; promote only through the metric gates.",
        tags=["onenip", params.data.name],
        build=False,
        print_next_steps=False,
    )
    return str(deployment_id)


def deploy_monitor(params: Params, params_path: str, work_pool: str, project_root: str | Path, profile: str | None = None,
                   overrides: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Register the hourly ``monitor`` deployment with the same work pool as the retrain; returns its id."""
    from prefect.schedules import Cron

    checkout = Path(__file__).resolve().parents[1]
    source = monitor.from_source(source=str(checkout), entrypoint="pipelines/flows.py:monitor")
    deployment_id = source.deploy(
        name=MONITOR_DEPLOYMENT_NAME,
        work_pool_name=work_pool,
        schedule=Cron(params.monitoring.schedule_cron, timezone=params.pipeline.schedule_timezone),
        parameters={"params_path": params_path, "profile": profile, "project_root": str(Path(project_root).resolve()), "overrides": overrides},
        description="Drift of the logged traffic against the calibration normals; fails when a check fires.",
        tags=["onenip", params.data.name, "monitor"],
        build=False,
        print_next_steps=False,
    )
    return str(deployment_id)
