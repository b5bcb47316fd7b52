"""The steps of a retrain that are not one job each: what to retrain, recording the run in MLflow,
registering and gating a category, and the typed outcome per category.

``pipelines.flows.retrain`` calls these in order; they know nothing of Prefect (futures, tasks,
artifacts stay in the flow), and reach MLflow only through ``onenip.registry``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from onenip import jobs, registry
from onenip.config import Params, flatten_params


class Status(StrEnum):
    """What happened to a category in a retrain."""

    PROMOTED = "promoted"
    """Registered, passed its gates, now ``champion``."""
    CHALLENGER = "challenger"
    """Registered, failed a gate: ``challenger``; the champion did not move."""
    UP_TO_DATE = "up-to-date"
    """A registered version was trained on the same data, params and code: nothing to do."""
    VALIDATION_FAILED = "validation-failed"
    """The data failed its checks; not trained."""
    FAILED = "failed"
    """An error stopped the category (see ``reasons``)."""


@dataclass
class CategoryOutcome:
    category: str
    status: Status
    model_name: str = ""
    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    run_id: str | None = None
    failures: list[str] = field(default_factory=list)
    """The gate checks that failed (a subset of ``reasons``)."""

    @property
    def failed(self) -> bool:
        return self.status in (Status.FAILED, Status.VALIDATION_FAILED)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"status": str(self.status)}

    def to_markdown(self, dataset: str, tracking_uri: str) -> str:
        lines = [f"# {dataset} / {self.category}: {self.status}", ""]
        if self.metrics:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items() if isinstance(v, float)]
            lines.append("")
        if self.reasons:
            lines += ["**Gate decision / reasons**", "", *(f"- {reason}" for reason in self.reasons), ""]
        if self.run_id:
            lines.append(f"- MLflow run: `{self.run_id}` (tracking `{tracking_uri}`, `runs:/{self.run_id}`)")
        if self.version:
            lines.append(f"- Model version: `models:/{self.model_name}/{self.version}`")
        return "\n".join(lines)


def as_dicts(outcomes: dict[str, CategoryOutcome]) -> dict[str, dict[str, Any]]:
    return {c: o.to_dict() for c, o in sorted(outcomes.items())}


# -- plan -------------------------------------------------------------------------------------------
@dataclass
class RetrainPlan:
    """Which networks to train (``todo``: network name -> categories) under which cache keys; the
    categories already up to date have their outcome."""

    mode: str
    keys: dict[str, str]
    todo: dict[str, list[str]]
    outcomes: dict[str, CategoryOutcome]

    @property
    def categories(self) -> list[str]:
        return [c for group in self.todo.values() for c in group]

    def keep_valid(self, valid: set[str], params: Params, dataset: jobs.DatasetVersion) -> dict[str, list[str]]:
        """The networks to train with only the categories that passed validation; a category that
        failed leaves the unified network, so its key covers only the valid ones."""
        groups = {name: [c for c in group if c in valid] for name, group in self.todo.items()}
        groups = {name: group for name, group in groups.items() if group}
        if self.mode == "unified" and groups:
            self.keys["unified"] = jobs.cache_key(self.mode, [dataset.category_versions[c] for c in groups["unified"]], params)
        return groups


def plan_retrain(
    client: Any, params: Params, dataset: jobs.DatasetVersion, categories: list[str] | None, *, force: bool,
) -> RetrainPlan:
    """Group the categories into networks (one unified, or one each) and skip a network whose cache
    key (data version, params, code) already has a registered version for every category."""
    known = sorted(dataset.category_versions)
    wanted = sorted(categories or known)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        msg = f"Unknown categories {unknown} in data/{dataset.name}; it has {known}"
        raise ValueError(msg)
    mode = params.model.mode
    groups = {"unified": wanted} if mode == "unified" else {c: [c] for c in wanted}
    keys = {name: jobs.cache_key(mode, [dataset.category_versions[c] for c in group], params) for name, group in groups.items()}
    plan = RetrainPlan(mode, keys, {}, {})
    for name, group in groups.items():
        existing = {
            c: registry.find_version_with_tag(client, registry.model_name(params, dataset.name, c), f"{registry.TAG_PREFIX}cache_key", keys[name])
            for c in group
        }
        if force or any(v is None for v in existing.values()):
            plan.todo[name] = group
            continue
        for c, version in existing.items():
            plan.outcomes[c] = CategoryOutcome(
                c, Status.UP_TO_DATE, registry.model_name(params, dataset.name, c), str(version.version),
                registry.version_metrics(version),
                [f"data version {dataset.category_versions[c]}, params and code unchanged since version {version.version} "
                 f"(gate {version.tags.get(registry.TAG_PREFIX + 'gate', '?')})"],
            )  # fmt: skip
    return plan


# -- tracking ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tracking:
    """The MLflow parent run of one retrain and what every category run inherits."""

    experiment: str
    parent_run: str
    tags: dict[str, str]
    params_file: Path
    uri: str
    runs_dir: Path


def _git_commit(project_root: Path) -> str:
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True, check=True)
        return completed.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def start_tracking(
    client: Any, params: Params, dataset: jobs.DatasetVersion, root_dir: Path, params_path: str | Path, flow_run_id: str,
) -> Tracking:
    """Open the parent run and log the configuration; fails (RegistryError) before anything is trained
    when the run cannot be recorded."""
    runs_dir = root_dir / params.pipeline.runs_dir / dataset.name
    experiment = registry.experiment_id(client, params, dataset.name, root_dir)
    tags = {
        "onenip.data_version": dataset.data_version,
        "onenip.dataset": dataset.name,
        "onenip.git_commit": _git_commit(root_dir),
        "onenip.code_version": jobs.code_version(),
        "onenip.mode": params.model.mode,
        "onenip.prefect_flow_run_id": flow_run_id,
    }
    parent = registry.start_run(client, experiment, f"retrain-{dataset.name}", tags)
    params_file = jobs.write_params(params, runs_dir / "params.effective.yaml")
    uri = registry.tracking_uri(params, root_dir)
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
    return Tracking(experiment, parent, tags, params_file, uri, runs_dir)


def record_validation_failure(client: Any, tracking: Tracking, result: jobs.ValidationOutcome) -> CategoryOutcome:
    c = result.category
    run_id = registry.start_run(client, tracking.experiment, c, tracking.tags | {"onenip.category": c}, tracking.parent_run)
    registry.log_artifacts(client, run_id, {"validation": result.report_json, "": result.report_markdown})
    registry.set_tags(client, run_id, {"onenip.outcome": Status.VALIDATION_FAILED.value})
    registry.end_run(client, run_id, "FAILED")
    return CategoryOutcome(c, Status.VALIDATION_FAILED, reasons=[result.summary], run_id=run_id)


def register_category(
    client: Any,
    tracking: Tracking,
    params: Params,
    dataset: jobs.DatasetVersion,
    network: str,
    cache_key: str,
    trained: jobs.TrainedModel,
    report: jobs.CategoryReport,
    preview: Path | None,
    validation_report: Path,
) -> CategoryOutcome:
    """Log one category's run, register its model version, and gate it (under the registry's lock).

    Any error is the category's outcome (``failed``); the champion alias has not moved then."""
    from onenip.data.manifest import read_image

    from onenip.model_card import model_card, network_summary

    c = report.category
    model = registry.model_name(params, dataset.name, c)
    config = json.loads((trained.model_dir / "onenip.json").read_text())
    tags = tracking.tags | {
        "onenip.category": c,
        "onenip.category_data_version": dataset.category_versions[c],
        "onenip.cache_key": cache_key,
        "onenip.network": network,
        "onenip.kind": registry.KIND_TRAINED,
    } | network_summary(config, c)
    run_id = registry.start_run(client, tracking.experiment, c, tags, tracking.parent_run)
    try:
        registry.log_params(client, run_id, flatten_params(params))
        registry.log_metrics(client, run_id, {k: v for k, v in report.metrics.items() if isinstance(v, float)})
        registry.log_metrics(client, run_id, {"threshold": report.threshold, "train_seconds": trained.train_seconds})
        registry.log_history(client, run_id, trained.history)
        card = tracking.runs_dir / network / "cards" / c / "model_card.md"
        card.parent.mkdir(parents=True, exist_ok=True)
        card.write_text(model_card(trained.model_dir, c, report.metrics))
        registry.log_artifacts(client, run_id, {
            "evaluation": report.eval_dir,
            "synthesis": preview,
            "validation": validation_report,
            "config": tracking.params_file,
            "": card,
        })  # fmt: skip
        checked = jobs.category_test_images(dataset.root, c)
        example = read_image(checked[0])
        return _register_and_gate(client, params, dataset.name, run_id, trained.model_dir, c, example, tags, report.metrics, report.has_masks,
                                  check_images=checked)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the champion alias did not move; say why
        registry.end_run(client, run_id, "FAILED")
        return CategoryOutcome(c, Status.FAILED, model, reasons=[f"logging/registration failed: {error}"], run_id=run_id)


def _register_and_gate(
    client: Any, params: Params, dataset: str, run_id: str, model_dir: Path, category: str, example: Any,
    tags: dict[str, str], metrics: dict[str, float], has_masks: bool, *, gate_metrics: dict[str, float] | None = None,
    check_images: list[Path] | None = None,
) -> CategoryOutcome:  # fmt: skip
    """Export the served graph and check it against torch on ``check_images`` (spread over them, at most
    ``gates.export_check_images``; the example alone when None), then register ``model_dir`` as a new
    version and gate it, under the registry's lock; close the run. ``metrics`` are the version's (tags);
    the gate reads ``gate_metrics`` when given, else those."""
    from onenip.data.manifest import read_image
    from onenip.export_check import check_export, spread_sample
    from onenip.pyfunc import export_for_serving
    from onenip.runtime import EXPORT_FOLDER, record_served_runtime, safe_name

    model = registry.model_name(params, dataset, category)
    version_tags = tags | {f"onenip.metric.{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, float)}
    # outside the lock: exporting and timing take seconds, other categories may register meanwhile
    runtimes = export_for_serving(model_dir, category)
    images = [read_image(p) for p in spread_sample(check_images, params.gates.export_check_images)] if check_images else [example]
    export = check_export(model_dir, category, images, runtime=runtimes or "torch", tolerance=params.gates.export_tolerance)
    if export.runtime != "torch":
        record_served_runtime(model_dir / EXPORT_FOLDER / safe_name(category), export.runtime)
    with registry.registry_lock(client, model):
        version = registry.register_model(
            client, run_id, model_dir, model, category, example, version_tags, registry.model_name_pattern(params, dataset),
            runtime=export.runtime,
        )
        decision = registry.gate_and_promote(client, model, version.version, metrics if gate_metrics is None else gate_metrics,
                                             params.gates, has_masks=has_masks, export=export)  # fmt: skip
    status = Status.PROMOTED if decision.passed else Status.CHALLENGER
    registry.set_tags(client, run_id, {"onenip.outcome": status.value, "onenip.model_version": f"{model}/{version.version}"})
    registry.end_run(client, run_id)
    return CategoryOutcome(category, status, model, str(version.version), dict(metrics), decision.reasons, run_id, decision.failures)


def finish_tracking(client: Any, tracking: Tracking, outcomes: dict[str, CategoryOutcome]) -> None:
    failed = any(o.status == Status.FAILED for o in outcomes.values())
    registry.end_run(client, tracking.parent_run, "FAILED" if failed else "FINISHED")


# -- few-shot generalist --------------------------------------------------------------------------------
def record_generalist(client: Any, params: Params, result: Any, categories: list[str], project_root: Path) -> dict[str, Any]:
    """The generalist's MLflow run (validation metrics on the auxiliary categories' training data only,
    the model files) and its registered version, gated on the mean validation image AUROC."""
    experiment = registry.experiment_id(client, params, "generalist", project_root)
    tags = {"onenip.kind": registry.KIND_GENERALIST, "onenip.auxiliary_categories": ",".join(categories), "onenip.code_version": jobs.code_version()}
    run_id = registry.start_run(client, experiment, "generalist", tags)
    registry.log_params(client, run_id, flatten_params(params))
    registry.log_metrics(client, run_id, dict(result.validation) | {"train_seconds": result.train_seconds})
    registry.log_history(client, run_id, result.history)
    registry.log_artifacts(client, run_id, {"model": result.model_dir})
    registry.end_run(client, run_id)
    # Its own registered model, gated like a category's (``gates.minimum`` and no regression against
    # the current champion, on the validation image AUROC; no masks there): champion when it passes
    # (the old one becomes ``previous``, so a rollback works), challenger otherwise.
    name = params.generalist.model_name
    metrics = {"image_AUROC": result.validation.get("val_image_AUROC")}
    version_tags = tags | {f"onenip.metric.{k}": f"{v:.6g}" for k, v in metrics.items() if v is not None}
    with registry.registry_lock(client, name):
        version = registry.register_artifact_folder(client, run_id, "model", name, version_tags)
        decision = registry.gate_and_promote(client, name, str(version.version), metrics, params.gates, has_masks=False)
    registry.set_tags(client, run_id, {"onenip.gate": "passed" if decision.passed else "failed", "onenip.gate_reasons": json.dumps(decision.reasons)})
    return {"run_id": run_id, "passed": decision.passed, "reasons": decision.reasons, "validation": dict(result.validation),
            "model_dir": str(result.model_dir), "model_name": name, "version": str(version.version),
            "alias": "champion" if decision.passed else "challenger"}  # fmt: skip


def register_onboarded(
    client: Any, params: Params, dataset: str, result: Any, prompts: jobs.PromptsVersion, project_root: Path, *, generalist: str = "",
) -> CategoryOutcome:  # fmt: skip
    """Register an onboarded category like a trained one: run, version, gate, aliases; the kind, the
    prompts and their DVC version (``jobs.track_prompts``) are tags and artifacts of the version, so the
    registry shows which kind each version is and which images it was onboarded from."""
    from onenip.data.manifest import read_image

    c = result.category
    model = registry.model_name(params, dataset, c)
    experiment = registry.experiment_id(client, params, dataset, project_root)
    tags = {"onenip.category": c, "onenip.kind": registry.KIND_ONBOARDED, "onenip.shots": str(result.shots), "onenip.dataset": dataset,
            "onenip.code_version": jobs.code_version(), "onenip.generalist": generalist, "onenip.residual": result.residual,
            "onenip.input_size": "x".join(str(v) for v in result.input_size), "onenip.category_data_version": result.data_version,
            "onenip.prompts_data_version": prompts.data_version, "onenip.prompts_dvc": prompts.dvc_file.as_posix()}  # fmt: skip
    run_id = registry.start_run(client, experiment, f"onboard-{c}", tags)
    try:
        registry.log_metrics(client, run_id, dict(result.metrics) | {"threshold": result.threshold, "onboard_seconds": result.seconds,
                                                                       "head_weight": result.head_weight})  # fmt: skip
        # no eval folder when the category has no labelled test images (log_artifacts skips it)
        registry.log_artifacts(client, run_id, {"prompts": prompts.folder / jobs.PROMPTS_TABLE, "evaluation": result.model_dir.parent / "eval"})
        tags = tags | {"onenip.prompts": ";".join(Path(p).name for p in result.prompt_paths)}
        metrics, gate_metrics = dict(result.metrics), None
        validation = result.selection.get("val_image_AUROC_chosen")
        if not metrics:
            # no labelled test images: the gate reads onboarding's own validation (training normals against
            # synthetic anomalies), kept apart from test metrics so no later version is compared with it
            tags = tags | {"onenip.gate_basis": "validation" if validation is not None else "none"}
            if validation is not None:
                metrics, gate_metrics = {"val_image_AUROC": float(validation)}, {"image_AUROC": float(validation)}
                registry.log_metrics(client, run_id, metrics)
        example = read_image(result.prompt_paths[0])
        return _register_and_gate(client, params, dataset, run_id, result.model_dir, c, example, tags, metrics, result.has_masks,
                                  gate_metrics=gate_metrics)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the champion alias did not move; say why
        registry.end_run(client, run_id, "FAILED")
        return CategoryOutcome(c, Status.FAILED, model, reasons=[f"registration failed: {error}"], run_id=run_id)
