"""Prefect flows: ``retrain`` (every category of the configured dataset, fanned out) and
``train_category`` (one). Thin by design: each task calls one ``onenip.jobs`` function; MLflow
logging, registration and the gates go through ``onenip.registry``.

    version -> validate -> synthesize -> cache features -> train -> evaluate -> log -> register -> gate

A category whose (data version, params, code version) key already has a registered version is
skipped (the weekly schedule retrains only what changed); ``force=True`` retrains anyway. Train and
evaluate also use Prefect's task cache with the same key, so a run that failed after training (for
example the registry was unreachable) does not train again.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from onenip import jobs, registry
from onenip.config import DEFAULT_PARAMS_PATH, Params, flatten_params, load_params

CACHE_EXPIRATION = timedelta(days=90)


def _key_from_argument(context: Any, parameters: dict[str, Any]) -> str:
    # One key per (task, output folder, data version, params, code version): train and evaluate must
    # not share one, and another checkout (its own runs/ folder) must not reuse this one's results.
    import hashlib

    folder = hashlib.sha256(str(Path(parameters["out_dir"]).resolve()).encode()).hexdigest()[:8]
    return f"onenip-{context.task.name}-{folder}-{parameters['cache_key']}"


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


# -- flow -----------------------------------------------------------------------------------------
@dataclass
class CategoryOutcome:
    category: str
    status: str
    """promoted | challenger | up-to-date | validation-failed | failed"""
    model_name: str = ""
    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    run_id: str | None = None
    failures: list[str] = field(default_factory=list)
    """The gate checks that failed (a subset of ``reasons``), or the error that stopped the category."""

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _git_commit(project_root: Path) -> str:
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True, check=True)
        return completed.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flow_run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # noqa: BLE001 - outside a flow run there is no id
        return "none"


def _artifact_key(dataset: str, category: str) -> str:
    raw = f"onenip-{dataset}-{category}".lower()
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in raw)


def _report(outcome: CategoryOutcome, dataset: str, uri: str) -> None:
    lines = [f"# {dataset} / {outcome.category}: {outcome.status}", ""]
    if outcome.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in outcome.metrics.items() if isinstance(v, float)]
        lines.append("")
    if outcome.reasons:
        lines += ["**Gate decision / reasons**", "", *(f"- {reason}" for reason in outcome.reasons), ""]
    if outcome.run_id:
        lines.append(f"- MLflow run: `{outcome.run_id}` (tracking `{uri}`, `runs:/{outcome.run_id}`)")
    if outcome.version:
        lines.append(f"- Model version: `models:/{outcome.model_name}/{outcome.version}`")
    try:
        create_markdown_artifact(key=_artifact_key(dataset, outcome.category), markdown="\n".join(lines),
                                 description=f"{outcome.category}: {outcome.status}")  # fmt: skip
    except Exception:  # noqa: BLE001 - artifacts are reporting; never fail a category over one
        get_run_logger().warning("Could not write the Prefect artifact for %s", outcome.category)


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = str(DEFAULT_PARAMS_PATH),
    profile: str | None = None,
    categories: list[str] | None = None,
    force: bool = False,
    project_root: str = ".",
) -> dict[str, dict[str, Any]]:
    """Version the data, then retrain, evaluate, register and gate every category that changed."""
    logger = get_run_logger()
    root_dir = Path(project_root).resolve()
    params = load_params(root_dir / params_path if not Path(params_path).is_absolute() else params_path, profile=profile)
    retrying = version_data.with_options(retries=params.pipeline.retries, retry_delay_seconds=params.pipeline.retry_delay_seconds)
    dataset = retrying(params, str(root_dir))
    known = sorted(dataset.category_versions)
    wanted = sorted(categories or known)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        msg = f"Unknown categories {unknown} in data/{dataset.name}; it has {known}"
        raise ValueError(msg)

    client = registry.connect(params, root_dir)
    uri = registry.tracking_uri(params, root_dir)
    mode = params.model.mode
    groups = {"unified": wanted} if mode == "unified" else {c: [c] for c in wanted}
    keys = {name: jobs.cache_key(mode, [dataset.category_versions[c] for c in group], params) for name, group in groups.items()}

    outcomes: dict[str, CategoryOutcome] = {}
    todo: dict[str, list[str]] = {}
    for name, group in groups.items():
        existing = {c: registry.find_version_with_tag(client, registry.model_name(params, dataset.name, c),
                                                      f"{registry.TAG_PREFIX}cache_key", keys[name]) for c in group}  # fmt: skip
        if not force and all(v is not None for v in existing.values()):
            for c, version in existing.items():
                outcomes[c] = CategoryOutcome(
                    c, "up-to-date", registry.model_name(params, dataset.name, c), str(version.version),
                    registry.version_metrics(version),
                    [f"data version {dataset.category_versions[c]}, params and code unchanged since version {version.version} "
                     f"(gate {version.tags.get(registry.TAG_PREFIX + 'gate', '?')})"],
                )  # fmt: skip
                logger.info("%s: up to date (version %s)", c, version.version)
        else:
            todo[name] = group
    if not todo:
        return {c: o.to_dict() for c, o in sorted(outcomes.items())}

    runs_dir = root_dir / params.pipeline.runs_dir / dataset.name
    experiment = registry.experiment_id(client, params, dataset.name, root_dir)
    commit = _git_commit(root_dir)
    common_tags = {
        "onenip.data_version": dataset.data_version,
        "onenip.dataset": dataset.name,
        "onenip.git_commit": commit,
        "onenip.code_version": jobs.code_version(),
        "onenip.mode": mode,
        "onenip.prefect_flow_run_id": _flow_run_id(),
    }
    parent = registry.start_run(client, experiment, f"retrain-{dataset.name}", common_tags)
    params_file = jobs.write_params(params, runs_dir / "params.effective.yaml")
    try:
        registry.log_artifacts(client, parent, {"config": params_file})
        source_params = root_dir / params_path
        if source_params.is_file():
            registry.log_artifacts(client, parent, {"config": source_params})
        registry.log_params(client, parent, flatten_params(params))
    except Exception as error:
        # Nothing trained or registered yet: stop before spending hours on a run that cannot be recorded.
        registry.end_run(client, parent, "FAILED")
        msg = f"Cannot record the run in MLflow ({uri}, artifacts of experiment {experiment}): {error}"
        raise registry.RegistryError(msg) from error

    # validate (fan out); a failed category stops here, the others go on
    todo_categories = [c for group in todo.values() for c in group]
    validation_futures = {c: validate.submit(dataset.root, c, params, runs_dir / "validation" / c) for c in todo_categories}
    valid: set[str] = set()
    validation_reports: dict[str, jobs.ValidationOutcome] = {}
    for c, future in validation_futures.items():
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - reported per category
            outcomes[c] = CategoryOutcome(c, "failed", reasons=[f"validation crashed: {error}"])
            continue
        validation_reports[c] = result
        if result.success:
            valid.add(c)
        else:
            run_id = registry.start_run(client, experiment, c, common_tags | {"onenip.category": c}, parent)
            registry.log_artifacts(client, run_id, {"validation": result.report_json, "": result.report_markdown})
            registry.set_tags(client, run_id, {"onenip.outcome": "validation-failed"})
            registry.end_run(client, run_id, "FAILED")
            outcomes[c] = CategoryOutcome(c, "validation-failed", reasons=[result.summary], run_id=run_id)
            create_markdown_artifact(key=_artifact_key(dataset.name, c) + "-validation",
                                     markdown=result.report_markdown.read_text(),
                                     description=f"{c}: data validation failed")  # fmt: skip

    groups_to_train = {name: [c for c in group if c in valid] for name, group in todo.items()}
    groups_to_train = {name: group for name, group in groups_to_train.items() if group}
    if mode == "unified" and groups_to_train:
        # a category that failed validation leaves the network: its key covers only the valid ones
        group = groups_to_train["unified"]
        keys["unified"] = jobs.cache_key(mode, [dataset.category_versions[c] for c in group], params)
    valid_categories = sorted(valid)
    previews = {c: synthesize.submit(dataset.root, c, params, runs_dir / "synthesis" / f"{c}.png") for c in valid_categories}
    cached = cache_features.submit(dataset.root, valid_categories, params) if valid_categories else None

    train_futures = {
        name: train.submit(dataset.root, name, group, params, runs_dir / keys[name], keys[name], wait_for=[cached])
        for name, group in groups_to_train.items()
    }
    evaluations: dict[str, tuple[jobs.TrainedModel, dict[str, jobs.CategoryReport]]] = {}
    eval_futures = {}
    for name, future in train_futures.items():
        try:
            trained = future.result()
            if not (trained.model_dir / "onenip.json").is_file():  # cached result whose files were deleted
                trained = train.with_options(refresh_cache=True)(
                    dataset.root, name, groups_to_train[name], params, runs_dir / keys[name], keys[name],
                )
        except Exception as error:  # noqa: BLE001
            for c in groups_to_train[name]:
                outcomes[c] = CategoryOutcome(c, "failed", reasons=[f"training failed: {error}"])
            continue
        eval_futures[name] = (trained, evaluate.submit(trained.model_dir, dataset.root, name, groups_to_train[name], params,
                                                       runs_dir / keys[name] / "eval", keys[name]))  # fmt: skip
    for name, (trained, future) in eval_futures.items():
        try:
            reports = future.result()
            if not all(r.eval_dir.is_dir() for r in reports.values()):  # cached result whose files were deleted
                reports = evaluate.with_options(refresh_cache=True)(trained.model_dir, dataset.root, name, groups_to_train[name],
                                                                    params, runs_dir / keys[name] / "eval", keys[name])  # fmt: skip
            evaluations[name] = (trained, reports)
        except Exception as error:  # noqa: BLE001
            for c in groups_to_train[name]:
                outcomes[c] = CategoryOutcome(c, "failed", reasons=[f"evaluation failed: {error}"])

    # log, register, gate: sequential in the flow's process (one writer to the registry at a time)
    from onenip.data.manifest import read_image

    for name, (trained, reports) in evaluations.items():
        for c, report in sorted(reports.items()):
            model = registry.model_name(params, dataset.name, c)
            tags = common_tags | {
                "onenip.category": c,
                "onenip.category_data_version": dataset.category_versions[c],
                "onenip.cache_key": keys[name],
                "onenip.network": name,
            }
            run_id = registry.start_run(client, experiment, c, tags, parent)
            try:
                registry.log_params(client, run_id, flatten_params(params))
                registry.log_metrics(client, run_id, {k: v for k, v in report.metrics.items() if isinstance(v, float)})
                registry.log_metrics(client, run_id, {"threshold": report.threshold, "train_seconds": trained.train_seconds})
                registry.log_history(client, run_id, trained.history)
                preview = previews[c].result() if c in previews else None
                registry.log_artifacts(client, run_id, {
                    "evaluation": report.eval_dir,
                    "synthesis": preview or Path(),
                    "validation": validation_reports[c].report_json,
                    "config": params_file,
                })  # fmt: skip
                version_tags = tags | {f"onenip.metric.{k}": f"{v:.6f}" for k, v in report.metrics.items() if isinstance(v, float)}
                example = read_image(jobs.first_test_image(dataset.root, c))
                with registry.registry_lock(client, model):
                    version = registry.register_model(
                        client, run_id, trained.model_dir, model, c, example, version_tags,
                        registry.model_name_pattern(params, dataset.name),
                    )
                    decision = registry.gate_and_promote(
                        client, model, version.version, report.metrics, params.gates, has_masks=report.has_masks,
                    )
                status = "promoted" if decision.passed else "challenger"
                registry.set_tags(client, run_id, {"onenip.outcome": status, "onenip.model_version": f"{model}/{version.version}"})
                registry.end_run(client, run_id)
                outcomes[c] = CategoryOutcome(
                    c, status, model, str(version.version), dict(report.metrics), decision.reasons, run_id, decision.failures,
                )
            except Exception as error:  # noqa: BLE001 - the champion alias did not move; say why
                registry.end_run(client, run_id, "FAILED")
                outcomes[c] = CategoryOutcome(c, "failed", model, reasons=[f"logging/registration failed: {error}"], run_id=run_id)
                logger.error("%s: %s", c, error)
    failed = [c for c, o in outcomes.items() if o.status == "failed"]
    registry.end_run(client, parent, "FAILED" if failed else "FINISHED")
    for outcome in outcomes.values():
        _report(outcome, dataset.name, uri)
    return {c: o.to_dict() for c, o in sorted(outcomes.items())}


@flow(name="train-category", log_prints=True)
def train_category(
    category: str,
    params_path: str = str(DEFAULT_PARAMS_PATH),
    profile: str | None = None,
    force: bool = False,
    project_root: str = ".",
) -> dict[str, Any]:
    """One category through the same steps (a subflow run of ``retrain``)."""
    return retrain(params_path, profile, [category], force, project_root)[category]


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
) -> dict[str, dict[str, Any]]:
    """Run ``retrain`` with the task runner params.yaml asks for (what ``onenip run`` calls)."""
    root = Path(project_root).resolve()
    path = Path(params_path)
    params = load_params(path if path.is_absolute() else root / path, profile=profile)
    configured = retrain.with_options(task_runner=task_runner(params))
    return configured(str(params_path), profile, categories, force, str(root))
