"""Prefect flows: ``retrain`` (every category of the configured dataset, fanned out) and
``train_category`` (one). Thin by design: each task calls one ``onenip.jobs`` function; the steps
that are not one job (what to retrain, the MLflow run, registration and gating, typed outcomes) are
``onenip.retrain`` functions; MLflow is reached only through ``onenip.registry``.

    version -> validate -> synthesize -> cache features -> train -> evaluate -> log -> register -> gate

A category whose (data version, params, code version) key already has a registered version is
skipped (the weekly schedule retrains only what changed); ``force=True`` retrains anyway. Train and
evaluate also use Prefect's task cache with the same key, so a run that failed after training (for
example the registry was unreachable) does not train again.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from onenip import jobs, registry
from onenip import retrain as steps
from onenip.config import DEFAULT_PARAMS_PATH, Params, load_params

CACHE_EXPIRATION = timedelta(days=90)


def _key_from_argument(context: Any, parameters: dict[str, Any]) -> str:
    # One key per (task, output folder, data version, params, code version): train and evaluate must
    # not share one, and another checkout (its own runs/ folder) must not reuse this one's results.
    import hashlib

    folder = hashlib.sha256(str(Path(parameters["out_dir"]).resolve()).encode()).hexdigest()[:8]
    return f"onenip-{context.task.name}-{folder}-{parameters['cache_key']}"


def _cached(step: Any, out_dir: Path) -> Any:
    """The task, refreshing its cached result when the files it wrote were deleted since."""
    return step.with_options(refresh_cache=not jobs.outputs_present(step.name, out_dir))


# -- tasks (each one library call) ----------------------------------------------------------------
def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry DVC failures (a repository lock held by another run, a remote hiccup), never user errors."""
    from onenip.data.manifest import DatasetError

    error = state.result(raise_on_failure=False)
    return isinstance(error, Exception) and not isinstance(error, DatasetError)


@task(name="version data", cache_policy=NO_CACHE, retry_condition_fn=_transient)
def version_data(params: Params, project_root: str) -> jobs.DatasetVersion:
    return jobs.version_dataset(params, project_root)


@task(name="validate", cache_policy=NO_CACHE, task_run_name="validate {category}")
def validate(root: Path, category: str, params: Params, out_dir: Path) -> jobs.ValidationOutcome:
    return jobs.validate_category(root, category, params, out_dir)


@task(name="synthesize", cache_policy=NO_CACHE, task_run_name="synthesize {category}")
def synthesize(root: Path, category: str, params: Params, out_path: Path) -> Path:
    return jobs.synthesis_preview(root, category, params, out_path)


@task(name="cache features", cache_policy=NO_CACHE)
def cache_features(root: Path, categories: list[str], params: Params) -> int:
    return jobs.cache_features(root, categories, params)


@task(name="train", cache_key_fn=_key_from_argument, cache_expiration=CACHE_EXPIRATION, persist_result=True,
      task_run_name="train {name}")  # fmt: skip
def train(root: Path, name: str, categories: list[str], params: Params, out_dir: Path, cache_key: str) -> jobs.TrainedModel:
    """Reconstructor and refiner, trained jointly as the paper does (one loss, one optimizer)."""
    return jobs.train_model(root, categories, params, out_dir, progress=True)  # bar with the loss on stderr


@task(name="evaluate", cache_key_fn=_key_from_argument, cache_expiration=CACHE_EXPIRATION, persist_result=True,
      task_run_name="evaluate {name}")  # fmt: skip
def evaluate(model_dir: Path, root: Path, name: str, categories: list[str], params: Params, out_dir: Path,
             cache_key: str) -> dict[str, jobs.CategoryReport]:  # fmt: skip
    return jobs.evaluate_model(model_dir, root, categories, params, out_dir)


@task(name="register", cache_policy=NO_CACHE, task_run_name="register {category}")
def register(
    client: Any, tracking: steps.Tracking, params: Params, dataset: jobs.DatasetVersion, category: str, network: str,
    cache_key: str, trained: jobs.TrainedModel, report: jobs.CategoryReport, preview: Path | None, validation_report: Path,
) -> steps.CategoryOutcome:  # fmt: skip
    """Log the category's run, register its version and gate it (one at a time: the flow waits on each)."""
    return steps.register_category(client, tracking, params, dataset, network, cache_key, trained, report, preview, validation_report)


# -- flow -----------------------------------------------------------------------------------------
def _flow_run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # noqa: BLE001 - outside a flow run there is no id
        return "none"


def _artifact_key(dataset: str, category: str) -> str:
    raw = f"onenip-{dataset}-{category}".lower()
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in raw)


def _markdown(key: str, markdown: str, description: str) -> None:
    try:
        create_markdown_artifact(key=key, markdown=markdown, description=description)
    except Exception:  # noqa: BLE001 - artifacts are reporting; never fail a category over one
        get_run_logger().warning("Could not write the Prefect artifact %s", key)


def _settle(futures: dict[str, Any]) -> dict[str, Any]:
    """Each future's result, or the exception it raised (reported per category, the others go on)."""
    settled: dict[str, Any] = {}
    for name, future in futures.items():
        try:
            settled[name] = future.result()
        except Exception as error:  # noqa: BLE001
            settled[name] = error
    return settled


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = str(DEFAULT_PARAMS_PATH),
    profile: str | None = None,
    categories: list[str] | None = None,
    force: bool = False,
    project_root: str = ".",
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Version the data, then retrain, evaluate, register and gate every category that changed
    (``overrides``: nested settings merged over params.yaml and the profile, as ``--set`` gives them)."""
    root_dir, params = _setup(params_path, profile, project_root, overrides)
    retry = {"retries": params.pipeline.retries, "retry_delay_seconds": params.pipeline.retry_delay_seconds}
    dataset = version_data.with_options(**retry)(params, str(root_dir))
    client = registry.connect(params, root_dir)
    plan = steps.plan_retrain(client, params, dataset, categories, force=force)
    outcomes = plan.outcomes
    if not plan.todo:
        return steps.as_dicts(outcomes)
    tracking = steps.start_tracking(client, params, dataset, root_dir, params_path, _flow_run_id())
    runs = tracking.runs_dir

    checks = _settle({c: validate.submit(dataset.root, c, params, runs / "validation" / c) for c in plan.categories})
    for c, result in checks.items():
        if isinstance(result, Exception):
            outcomes[c] = steps.CategoryOutcome(c, steps.Status.FAILED, reasons=[f"validation crashed: {result}"])
        elif not result.success:
            outcomes[c] = steps.record_validation_failure(client, tracking, result)
            _markdown(_artifact_key(dataset.name, c) + "-validation", result.report_markdown.read_text(), f"{c}: data validation failed")
    valid = sorted(c for c, r in checks.items() if not isinstance(r, Exception) and r.success)
    networks = plan.keep_valid(set(valid), params, dataset)
    previews = {c: synthesize.submit(dataset.root, c, params, runs / "synthesis" / f"{c}.png") for c in valid}
    cached = cache_features.submit(dataset.root, valid, params) if valid else None
    keys = plan.keys

    trained = _settle({
        name: _cached(train, runs / keys[name]).submit(dataset.root, name, group, params, runs / keys[name], keys[name], wait_for=[cached])
        for name, group in networks.items()
    })  # fmt: skip
    evaluations = _settle({
        name: _cached(evaluate, runs / keys[name] / "eval").submit(
            model.model_dir, dataset.root, name, networks[name], params, runs / keys[name] / "eval", keys[name],
        )
        for name, model in trained.items() if not isinstance(model, Exception)
    })  # fmt: skip
    previews = _settle(previews)
    for name, group in networks.items():
        model, reports = trained[name], evaluations.get(name)
        if isinstance(model, Exception) or isinstance(reports, Exception):
            step = "training" if isinstance(model, Exception) else "evaluation"
            outcomes.update({c: steps.CategoryOutcome(c, steps.Status.FAILED, reasons=[f"{step} failed: {model if step == 'training' else reports}"])
                             for c in group})  # fmt: skip
            continue
        for c, report in sorted(reports.items()):  # one writer to the registry at a time
            preview = previews.get(c)
            outcomes[c] = register(client, tracking, params, dataset, c, name, keys[name], model, report,
                                   None if isinstance(preview, Exception) else preview, checks[c].report_json)  # fmt: skip
    steps.finish_tracking(client, tracking, outcomes)
    for outcome in outcomes.values():
        _markdown(_artifact_key(dataset.name, outcome.category), outcome.to_markdown(dataset.name, tracking.uri),
                  f"{outcome.category}: {outcome.status}")  # fmt: skip
    return steps.as_dicts(outcomes)


@flow(name="train-category", log_prints=True)
def train_category(
    category: str,
    params_path: str = str(DEFAULT_PARAMS_PATH),
    profile: str | None = None,
    force: bool = False,
    project_root: str = ".",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One category through the same steps (a subflow run of ``retrain``)."""
    return retrain(params_path, profile, [category], force, project_root, overrides)[category]


# -- few-shot generalist -----------------------------------------------------------------------------
class DriftDetected(RuntimeError):
    """A drift check fired: the ``monitor`` run fails, so a Prefect notification can page someone."""


@task(name="check drift", cache_policy=NO_CACHE)
def check_drift(params: Params, project_root: Path) -> jobs.DriftReport:
    return jobs.monitor_traffic(params, project_root)


@flow(name="monitor", log_prints=True)
def monitor(
    params_path: str = str(DEFAULT_PARAMS_PATH), profile: str | None = None, project_root: str = ".", overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Compare the recent logged traffic per category and station with the calibration normals; a
    markdown artifact with every check; the run fails when one fires."""
    root_dir, params = _setup(params_path, profile, project_root, overrides)
    report = check_drift(params, root_dir)
    _markdown("onenip-drift", report.markdown, f"drift: {len(report.fired)} of {len(report.checks)} checks fired")
    if report.fired:
        names = ", ".join(f"{c['category']}/{c['station'] or '-'}: {c['check']}" for c in report.fired)
        raise DriftDetected(f"{len(report.fired)} drift check(s) fired: {names}")
    return report.checks


@task(name="train generalist", cache_policy=NO_CACHE)
def train_generalist(root: Path, categories: list[str], params: Params, out_dir: Path) -> Any:
    from onenip.fewshot import train_generalist as train

    return train(root, categories, params, out_dir, progress=True)


@task(name="onboard", cache_policy=NO_CACHE, task_run_name="onboard {category}")
def onboard(generalist_dir: Path, root: Path, category: str, shots: int, params: Params, out_dir: Path, source: str) -> Any:
    from onenip.fewshot import onboard_category

    return onboard_category(generalist_dir, root, category, shots, params, out_dir, progress=True, source=source)


@task(name="version prompts", cache_policy=NO_CACHE, retry_condition_fn=_transient, task_run_name="version prompts {category}")
def version_prompts(params: Params, dataset: str, category: str, prompt_paths: list[str], project_root: Path) -> jobs.PromptsVersion:
    return jobs.track_prompts(params, dataset, category, prompt_paths, project_root)


def _setup(params_path: str, profile: str | None, project_root: str, overrides: dict[str, Any] | None = None) -> tuple[Path, Params]:
    root_dir = Path(project_root).resolve()
    path = Path(params_path) if Path(params_path).is_absolute() else root_dir / params_path
    return root_dir, load_params(path, overrides, profile)


@flow(name="train-generalist", log_prints=True)
def generalist(
    data_root: str, categories: list[str], params_path: str = str(DEFAULT_PARAMS_PATH), profile: str | None = None,
    project_root: str = ".", overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train the InCTRL generalist once on auxiliary categories; record it (validation, gate) in MLflow."""
    root_dir, params = _setup(params_path, profile, project_root, overrides)
    out_dir = root_dir / params.pipeline.runs_dir / "generalist"
    result = train_generalist(Path(data_root), sorted(categories), params, out_dir)
    return steps.record_generalist(registry.connect(params, root_dir), params, result, sorted(categories), root_dir)


@flow(name="onboard", log_prints=True)
def onboard_category(
    data_root: str, category: str, generalist: str | None = None, shots: int | None = None, dataset: str | None = None,
    params_path: str = str(DEFAULT_PARAMS_PATH), profile: str | None = None, project_root: str = ".",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A new category from k normal images and the generalist (a folder or a models:/ URI; default the
    registered generalist's champion): prompts, threshold, evaluation, the prompt images versioned with
    DVC (``data/prompts/<dataset>/<category>``), gate, register."""
    root_dir, params = _setup(params_path, profile, project_root, overrides)
    name = dataset or params.data.name
    # the version the alias points at now: the onboarded model records which generalist made it
    source = registry.pin_model_uri(generalist or f"models:/{params.generalist.model_name}@champion", params, root_dir)
    generalist_dir = registry.resolve_model(source, params, root_dir).folder
    out_dir = root_dir / params.pipeline.runs_dir / name / "onboard" / category
    result = onboard(generalist_dir, Path(data_root), category, shots or params.generalist.shots, params, out_dir, source)
    prompts = version_prompts(params, name, category, result.prompt_paths, root_dir)
    client = registry.connect(params, root_dir)
    outcome = steps.register_onboarded(client, params, name, result, prompts, root_dir, generalist=source)
    _markdown(_artifact_key(name, category), outcome.to_markdown(name, registry.tracking_uri(params, root_dir)), f"{category}: {outcome.status}")
    return outcome.to_dict()


# -- task runners ---------------------------------------------------------------------------------
def task_runner(params: Params) -> Any:
    """Local threads by default; Dask (LocalCluster, or an existing scheduler) from params.yaml."""
    cfg = params.pipeline
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        # Workers are new processes: cap their torch/OpenMP threads before they import torch.
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(cfg.threads_per_worker)
        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=cfg.max_workers)


def run_retrain(
    params_path: str | Path = DEFAULT_PARAMS_PATH,
    profile: str | None = None,
    categories: list[str] | None = None,
    force: bool = False,
    project_root: str | Path = ".",
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``retrain`` with the task runner params.yaml asks for (what ``onenip run`` calls)."""
    root, params = _setup(str(params_path), profile, str(project_root), overrides)
    configured = retrain.with_options(task_runner=task_runner(params))
    return configured(str(params_path), profile, categories, force, str(root), overrides)
