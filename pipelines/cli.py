"""The ``onenip`` console command: the library's CLI (``onenip.cli``) plus the commands that drive
orchestration (``run``, ``schedule``, ``deploy``, ``ui``), which live here so that the library never imports
``pipelines``."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from onenip.cli import (
    FEWSHOT,
    MODEL,
    PIPELINE,
    SERVING,
    DataFormat,
    ParamsOption,
    ProfileOption,
    SetOption,
    app,
    console,
    err_console,
    params_path,
    project_dir,
    user_errors,
)
import onenip.cli_operations  # noqa: F401  (threshold, review, feedback: registered on app)
from onenip.config import DEFAULT_PARAMS_PATH, ConfigError, Params, load_params
from onenip.overrides import deep_merge, parse_overrides

__all__ = ["app"]


def _project_params(params: Path, profile: str | None, sets: list[str] | None, extra: dict[str, Any] | None = None) -> tuple[Path, Path, Params, dict[str, Any]]:
    """(project root, params.yaml, settings, overrides) for a pipeline command, from any folder of the
    project; outside one it says so and creates nothing."""
    path = params_path(params)
    if path is None:
        msg = f"No params.yaml in {Path.cwd()} or any folder above: run this inside an onenip project (a clone of the repository)"
        raise ConfigError(msg)
    overrides = deep_merge(parse_overrides(sets or []), extra or {})
    return project_dir(), path.resolve(), load_params(path, overrides, profile), overrides


def _print_outcomes(outcomes: dict[str, dict[str, Any]]) -> None:
    table = Table(title="Retrain: per-category result")
    for column in ("category", "status", "model version", "I-AUROC", "P-AUROC", "P-AP", "decision"):
        table.add_column(column)
    for category, outcome in outcomes.items():
        metrics = outcome.get("metrics") or {}

        def fmt(name: str, metrics: dict[str, Any] = metrics) -> str:
            value = metrics.get(name)
            return "-" if value is None else f"{value:.4f}"

        version = f"{outcome['model_name']} v{outcome['version']}" if outcome.get("version") else "-"
        reasons = outcome.get("reasons") or []
        # the checks that decided it; all reasons are tags on the version and in the Prefect artifact
        failing = outcome.get("failures") or []
        if outcome["status"] == "promoted":
            decision = "all gates passed"
        elif failing:
            decision = "; ".join(failing)
        else:
            decision = reasons[0] if reasons else "-"
        table.add_row(category, outcome["status"], version, fmt("image_AUROC"), fmt("pixel_AUROC"), fmt("pixel_AP"), decision)
    # model names must not be cut, also in a pipe or a narrow terminal (rich would shrink to 80 columns)
    Console(width=max(console.width, 140)).print(table)


@app.command("run", rich_help_panel=PIPELINE)
@user_errors
def run_pipeline(
    data: Annotated[Path | None, typer.Option("--data", help="Your own dataset folder: import (or re-import) it as data/NAME, then run the pipeline on it.")] = None,
    fmt: Annotated[DataFormat, typer.Option("--format", help="The layout of --data.")] = DataFormat.mvtec,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name for --data (default: the folder's name).")] = None,
    categories: Annotated[list[str] | None, typer.Option("--category", help="Only these categories (repeat).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if data, params and code are unchanged.")] = False,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """The full pipeline (Prefect flow 'retrain') on the configured dataset, or on --data: version (DVC),
    validate (GX), synthesize, cache features, train, evaluate, log (MLflow), register, gate and promote."""
    from onenip.registry import RegistryError
    from pipelines.flows import run_retrain

    extra = None
    if data is not None:
        extra = {"data": {"name": name or data.resolve().name, "source": str(data.resolve()), "format": fmt.value,
                          "categories": list(categories or [])}}  # fmt: skip
    elif name is not None:
        msg = "--name goes with --data (the dataset to import)"
        raise ConfigError(msg)
    root, path, cfg, overrides = _project_params(params, profile, sets, extra)
    if data is not None:
        _import(data, cfg, root)
    try:
        outcomes = run_retrain(path, profile, categories or None, force, root, overrides or None)
    except RegistryError as error:
        raise ConfigError(str(error)) from None
    _print_outcomes(outcomes)
    failed = [c for c, o in outcomes.items() if o["status"] in ("failed", "validation-failed")]
    if failed:
        err_console.print(f"[bold red]Failed categories:[/] {', '.join(failed)}")
        raise typer.Exit(code=1)


def _import(data: Path, cfg: Params, root: Path) -> None:
    """``onenip run --data``: convert, validate and version the folder before the flow runs on it."""
    from onenip.data.versioning import import_dataset

    d = cfg.data
    result = import_dataset(d.source, d.name, d.format, root, min_train_images=d.min_train_images, require_masks=d.require_masks,
                            test_every=d.test_every)  # fmt: skip
    console.print(f"Imported {data} as data/{d.name}: {result.validation.num_images} images, {result.validation.num_categories} "
                  f"categories, data version {result.data_version}")  # fmt: skip


@app.command("schedule", rich_help_panel=PIPELINE)
@user_errors
def schedule(
    cron: Annotated[str | None, typer.Option("--cron", help="Override pipeline.schedule_cron.")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Serve the 'retrain' deployment on its cron schedule (blocks; Ctrl-C stops serving)."""
    from pipelines.deployments import serve_retrain

    root, path, cfg, overrides = _project_params(params, profile, sets)
    serve_retrain(cfg, str(path), profile, cron, root, overrides or None)


@app.command("monitor", rich_help_panel="On the line")
@user_errors
def monitor(
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Drift checks of the logged traffic per category and station (flow 'monitor'): scores and image
    statistics against the calibration normals; exits 1 when a check fires (`onenip schedule` runs it hourly)."""
    from pipelines.flows import DriftDetected
    from pipelines.flows import monitor as monitor_flow

    root, path, _, overrides = _project_params(params, profile, sets)
    try:
        checks = monitor_flow(str(path), profile, str(root), overrides or None)
    except DriftDetected as error:
        err_console.print(f"[bold red]Drift:[/] {error}", highlight=False)
        raise typer.Exit(code=1) from None
    console.print(f"No drift: {len(checks)} checks passed" if checks else "No category had enough logged images in the window to judge.")


@app.command("deploy", rich_help_panel=PIPELINE)
@user_errors
def deploy(
    pool: Annotated[str, typer.Option("--pool", help="Prefect work pool (type process) whose workers run it.")],
    cron: Annotated[str | None, typer.Option("--cron", help="Override pipeline.schedule_cron.")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Register the scheduled 'retrain' and 'monitor' deployments with the Prefect server at PREFECT_API_URL."""
    from pipelines.deployments import DEPLOYMENT_NAME, MONITOR_DEPLOYMENT_NAME, deploy_monitor, deploy_retrain

    root, path, cfg, overrides = _project_params(params, profile, sets)
    deployment_id = deploy_retrain(cfg, str(path), pool, root, profile, cron, overrides or None)
    monitor_id = deploy_monitor(cfg, str(path), pool, root, profile, overrides or None)
    console.print(f"Deployment scheduled-retrain/{DEPLOYMENT_NAME} ({deployment_id}) on work pool {pool!r}, "
                  f"cron {cron or cfg.pipeline.schedule_cron!r}; monitor/{MONITOR_DEPLOYMENT_NAME} ({monitor_id}), "
                  f"cron {cfg.monitoring.schedule_cron!r}. Start a worker: prefect worker start -p {pool}")


@app.command("generalist", rich_help_panel=FEWSHOT)
@user_errors
def train_generalist(
    data: Annotated[Path, typer.Option("--data", help="Dataset root (MVTec AD layout) of the auxiliary categories.")],
    categories: Annotated[list[str], typer.Option("--category", help="An auxiliary category to train on (repeat).")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Train the few-shot generalist (InCTRL head) once on auxiliary categories (flow 'train-generalist')."""
    from pipelines.flows import generalist

    root, path, _, overrides = _project_params(params, profile, sets)
    result = generalist(str(data.resolve()), list(categories), str(path), profile, str(root), overrides or None)
    gate = "passed" if result["passed"] else "FAILED"
    console.print(f"Generalist saved to {result['model_dir']} (MLflow run {result['run_id']}); validation "
                  f"{result['validation'].get('val_image_AUROC', float('nan')):.4f}, gate {gate}; registered as "
                  f"models:/{result['model_name']}/{result['version']} (@{result['alias']})")  # fmt: skip


@app.command("onboard", rich_help_panel=FEWSHOT)
@user_errors
def onboard(
    data: Annotated[Path, typer.Option("--data", help="Dataset root (MVTec AD layout) holding the new category.")],
    category: Annotated[str, typer.Option("--category", help="The new category.")],
    generalist: Annotated[
        str | None, typer.Option("--generalist", help="The generalist: models:/NAME@ALIAS or a model folder (default: generalist.model_name@champion)."),
    ] = None,
    shots: Annotated[int | None, typer.Option("--shots", min=1, help="Normal prompt images (default generalist.shots).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name for the model name (default data.name).")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Onboard a category from k normal images with no training: prompts, threshold, evaluation, gate,
    registered version ('champion' when it passes); predict and serve it like a trained one."""
    from pipelines.flows import onboard_category

    root, path, _, overrides = _project_params(params, profile, sets)
    source = generalist if generalist is None or generalist.startswith(("models:/", "runs:/")) else str(Path(generalist).resolve())
    outcome = onboard_category(str(data.resolve()), category, source, shots, dataset, str(path), profile, str(root), overrides or None)
    _print_outcomes({category: outcome})
    if outcome["status"] == "failed":
        raise typer.Exit(code=1)


@app.command("ui", rich_help_panel=SERVING)
@user_errors
def ui(
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", min=1, max=65535)] = 5000,
    prefect_port: Annotated[int, typer.Option("--prefect-port", min=1, max=65535)] = 4200,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Start the MLflow UI on the project's store (runs, artifacts, registry) and the Prefect UI (flow
    runs, schedules), print both addresses; Ctrl-C stops both."""
    import os
    import subprocess
    import sys

    from onenip import registry

    root, _, cfg, _ = _project_params(params, profile, sets)
    uri = registry.tracking_uri(cfg, root)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    servers = {
        f"MLflow UI ({uri})": ([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                "--port", str(mlflow_port)], f"http://127.0.0.1:{mlflow_port}"),  # fmt: skip
        "Prefect UI": ([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                       f"http://127.0.0.1:{prefect_port}"),  # fmt: skip
    }
    # Ctrl-C and a termination stop both servers with every process they started: each server runs in its
    # own session (its own process group, stopped as a whole), and the signals are handled here even
    # where the shell started this process with SIGINT ignored (a background job)
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [subprocess.Popen(command, cwd=root, env=env, start_new_session=True) for command, _ in servers.values()]
    for name, (_, address) in servers.items():
        console.print(f"{name}: {address}")
    console.print("Ctrl-C stops both.")
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_groups(processes)
    stopped = [name for (name, _), process in zip(servers.items(), processes, strict=True) if process.returncode not in (0, -15)]
    if stopped:
        err_console.print(f"stopped on their own: {', '.join(stopped)}")


def _stop_groups(processes: list[Any]) -> None:
    """SIGTERM to each process's group, SIGKILL to what still runs after 30 s."""
    import os
    import subprocess

    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# `onenip --help` lists its groups in this order (typer orders panels by the commands' registration)
_PANELS = [PIPELINE, MODEL, SERVING, FEWSHOT]
app.registered_commands.sort(key=lambda c: _PANELS.index(c.rich_help_panel) if c.rich_help_panel in _PANELS else len(_PANELS))
