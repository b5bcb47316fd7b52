"""MLflow bridge: tracking (parent run per retrain, child run per category), model registry, gated
promotion with aliases, rollback. The only module besides ``onenip.pyfunc`` that imports MLflow.

Registry layout (one registered model per dataset category, name from ``pipeline.model_name``,
default ``onenip-<dataset>-<category>``):

- alias ``champion``: the version production uses; moves only when a version passes the gates.
- alias ``previous``: the champion before the last promotion (what ``onenip promote --rollback``
  returns to).
- alias ``challenger``: the newest version that failed the gates.
- version tags: ``onenip.kind`` (``KIND_TRAINED``, ``KIND_ONBOARDED``, ``KIND_GENERALIST``), ``onenip.gate`` (passed/failed), ``onenip.gate_reasons``,
  ``onenip.data_version``, ``onenip.category_data_version``, ``onenip.cache_key``, ``onenip.code_version``,
  ``onenip.git_commit``, ``onenip.metric.<name>``, ``onenip.export_parity`` (passed / failed / n/a: the
  served graph against torch), ``onenip.export_parity_detail``, ``onenip.export_p50_ms``; an onboarded
  version also ``onenip.prompts_data_version`` and ``onenip.prompts_dvc`` (its prompt images under DVC).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from onenip.config import GateParams, Params
from onenip.gates import GateDecision, decide

if TYPE_CHECKING:
    from onenip.operating_points import OperatingPoint
    from onenip.export_check import ExportCheck

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
TAG_PREFIX = "onenip."
KIND_TRAINED, KIND_ONBOARDED, KIND_GENERALIST = "trained-onenip", "onboarded-inctrl", "inctrl-generalist"
"""``onenip.kind`` of a version: a OneNIP model trained on the category, a category onboarded from k
prompts with no training, the generalist it was onboarded with. One registered model per category
holds both of the first two, so a trained version replaces an onboarded champion through the gates."""


class RegistryError(RuntimeError):
    """A model name, alias or version that does not exist, or a registry that cannot be written."""


def tracking_uri(params: Params, project_root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``pipeline.tracking_uri``, else sqlite in the project."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or params.pipeline.tracking_uri
        or f"sqlite:///{(Path(project_root).resolve() / 'mlflow.db').as_posix()}"
    )


def connect(params: Params, project_root: str | Path = ".", *, existing: bool = False) -> MlflowClient:
    """A client of the project's tracking store and registry. ``existing``: a command that only reads
    the store refuses a local store that is not there yet (one line naming it) instead of creating an
    empty ``mlflow.db`` wherever it was run."""
    uri = tracking_uri(params, project_root)
    if existing and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        msg = (
            f"No MLflow store at {uri}: nothing has been registered here. Run this in the onenip project "
            "(the folder with params.yaml, or one below it), or set MLFLOW_TRACKING_URI"
        )
        raise RegistryError(msg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_name(params: Params, dataset: str, category: str) -> str:
    return params.pipeline.model_name.format(dataset=dataset, category=category)


def model_name_pattern(params: Params, dataset: str) -> str:
    """The dataset's model names with ``{category}`` left open: ``onenip-elpv-{category}``."""
    return params.pipeline.model_name.format(dataset=dataset, category="{category}")


def experiment_id(client: MlflowClient, params: Params, dataset: str, project_root: str | Path = ".") -> str:
    """One experiment per dataset; new ones put artifacts under ``pipeline.artifact_root``, except on a
    tracking server, where a relative ``artifact_root`` (a local folder) is left to the server (its
    ``--artifacts-destination``, reached through its proxy: ``mlflow-artifacts:/``)."""
    name = params.pipeline.experiment.format(dataset=dataset)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = params.pipeline.artifact_root
    on_server = tracking_uri(params, project_root).startswith(("http://", "https://"))
    if on_server and "://" not in root:
        location = None
    else:
        location = root if "://" in root else (Path(project_root).resolve() / root).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        return client.get_experiment_by_name(name).experiment_id


# -- runs -----------------------------------------------------------------------------------------
def start_run(
    client: MlflowClient, experiment: str, name: str, tags: dict[str, str], parent_run_id: str | None = None,
) -> str:
    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment, run_name=name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, flat_params: dict[str, Any]) -> None:
    items = [Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value)) for key, value in flat_params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
    if items:
        client.log_batch(run_id, metrics=items)


def log_history(client: MlflowClient, run_id: str, history: list[dict[str, float]], prefix: str = "train_") -> None:
    """Per-epoch training losses as metric histories (step = epoch); records' non-numbers (``auto``'s
    network probe, in the model's metadata) are not metrics."""
    now = int(time.time() * 1000)
    items = [
        Metric(f"{prefix}{key}", float(value), now, int(record["epoch"]))
        for record in history
        for key, value in record.items()
        if key != "epoch" and isinstance(value, int | float)
    ]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def log_artifacts(client: MlflowClient, run_id: str, paths: dict[str, Path | None]) -> None:
    """``{artifact folder: file or folder}``; None and missing paths are skipped (e.g. no heatmaps written)."""
    for folder, path in paths.items():
        if path is None:  # never Path(""): that is the working directory, which would be uploaded whole
            continue
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        elif path.is_file():
            client.log_artifact(run_id, str(path), folder or None)


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status)


# -- registry -------------------------------------------------------------------------------------
def register_model(
    client: MlflowClient,
    run_id: str,
    model_dir: str | Path,
    name: str,
    category: str,
    example_image: Any,
    tags: dict[str, str],
    name_pattern: str | None = None,
    runtime: str | None = None,
) -> Any:
    """Log the pyfunc model into ``run_id`` and register it as a new version of ``name``; the version
    serves ``category`` only, on ``runtime`` (default: ``onenip.pyfunc.serving_runtime``)."""
    from onenip.pyfunc import log_pyfunc_model, serving_runtime

    runtime = runtime or serving_runtime(model_dir)
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc_model(model_dir, category, example_image, name_pattern, runtime)
    tags = tags | {f"{TAG_PREFIX}runtime": runtime}
    version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return client.get_model_version(name, version.version)


def register_artifact_folder(client: MlflowClient, run_id: str, artifact_path: str, name: str, tags: dict[str, str]) -> Any:
    """Register a folder logged into ``run_id`` (not a pyfunc model: the generalist's weights, which
    serve nothing alone) as a new version of ``name``; ``resolve_model`` downloads it like any other."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    return client.get_model_version(name, version.version)


def _aliased(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metrics(version: Any) -> dict[str, float]:
    prefix = f"{TAG_PREFIX}metric."
    return {key[len(prefix) :]: float(value) for key, value in version.tags.items() if key.startswith(prefix)}


LOCK_PREFIX = "_lock."
"""Registered models named ``_lock.<model>`` exist only while a run holds that model's promotion lock."""


@contextmanager
def registry_lock(
    client: MlflowClient, name: str, *, timeout: float = 300.0, stale_after: float = 900.0, poll: float = 0.5,
) -> Iterator[None]:
    """Serialise promotions of the registered model ``name`` across processes AND machines.

    Reading the champion and moving aliases must not interleave between two runs, or both could
    promote against the same old champion. The lock lives in the registry itself, so it spans every
    machine that talks to the same tracking server: acquiring is creating the registered model
    ``_lock.<name>``, which the store's unique constraint on names makes atomic (the second creator
    gets RESOURCE_ALREADY_EXISTS); releasing deletes it. A lock older than ``stale_after`` seconds
    (its holder crashed) is broken; clocks of the machines are assumed roughly in sync.
    """
    import socket
    import uuid

    lock = f"{LOCK_PREFIX}{name}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                lock, tags={f"{TAG_PREFIX}lock_owner": owner, f"{TAG_PREFIX}lock_since": f"{time.time():.3f}"},
                description=f"Promotion lock of {name}, held by {owner}; deleted when the promotion ends.",
            )  # fmt: skip
            break
        except MlflowException as error:
            # RESOURCE_DOES_NOT_EXIST is contention too: on the unique-name conflict MLflow's SQL store
            # reads the existing model to word its error, and the holder may have released it by then
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                msg = f"Cannot take the promotion lock {lock!r} in the registry: {error.message}"
                raise RegistryError(msg) from error
        holder = _lock_holder(client, lock)
        if holder is not None and time.time() - holder[1] > stale_after:
            _delete_lock(client, lock, holder[0])  # the holder died mid-promotion
            continue
        if time.monotonic() > deadline:
            who = holder[0] if holder else "another run"
            msg = f"Promotion lock {lock!r} held by {who} for more than {timeout:.0f} s; delete that registered model if its run is gone"
            raise RegistryError(msg)
        time.sleep(poll)
    try:
        yield
    finally:
        _delete_lock(client, lock, owner)


def _lock_holder(client: MlflowClient, lock: str) -> tuple[str, float] | None:
    try:
        tags = client.get_registered_model(lock).tags
    except MlflowException:
        return None  # released in between
    return tags.get(f"{TAG_PREFIX}lock_owner", "?"), float(tags.get(f"{TAG_PREFIX}lock_since", "0"))


def _delete_lock(client: MlflowClient, lock: str, owner: str) -> None:
    holder = _lock_holder(client, lock)
    if holder is None or holder[0] != owner:
        return  # already released or broken and re-taken: never delete someone else's lock
    try:
        client.delete_registered_model(lock)
    except MlflowException:
        pass


def gate_and_promote(
    client: MlflowClient,
    name: str,
    version: str,
    metrics: dict[str, float | None],
    gates: GateParams,
    *,
    has_masks: bool,
    export: ExportCheck | None = None,
) -> GateDecision:
    """Decide on ``version`` against the gates and the current champion, then move aliases.

    Passed: ``champion`` -> version, old champion -> ``previous``. Failed: ``challenger`` -> version,
    champion untouched. Decision and reasons are written as version tags first, so a crash between
    steps leaves a version that says what was decided.
    """
    champion = _aliased(client, name, CHAMPION)
    version = str(version)
    champion_metrics = version_metrics(champion) if champion is not None and str(champion.version) != version else None
    decision = decide(metrics, gates, champion_metrics, has_masks=has_masks, export=export)
    for key, value in ({} if export is None else export.tags()).items():
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}{key}", value)
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}gate", "passed" if decision.passed else "failed")
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}gate_reasons", json.dumps(decision.reasons))
    if champion is not None:
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}compared_to", str(champion.version))
    if decision.passed:
        if champion is not None and str(champion.version) != version:
            client.set_registered_model_alias(name, PREVIOUS, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
        challenger = _aliased(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    return decision


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Champion goes back to ``previous``; returns (demoted version, restored version)."""
    _require_model(client, name)
    current = _aliased(client, name, CHAMPION)
    previous = _aliased(client, name, PREVIOUS)
    if current is None or previous is None:
        have = "no champion" if current is None else "no 'previous' alias"
        msg = f"Cannot roll back {name!r}: it has {have}"
        raise RegistryError(msg)
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.delete_registered_model_alias(name, PREVIOUS)
    client.set_model_version_tag(name, current.version, f"{TAG_PREFIX}rolled_back", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return str(current.version), str(previous.version)


def promote_version(client: MlflowClient, name: str, version: str) -> None:
    """Manual promotion of an existing version (operator override of the metric gates, recorded as a
    tag). A version whose exported graph disagreed with torch is never promoted: it would serve other
    scores than the ones it was gated on."""
    target = get_version(client, name, version)
    if target.tags.get(f"{TAG_PREFIX}export_parity") == "failed":
        detail = target.tags.get(f"{TAG_PREFIX}export_parity_detail", "")
        msg = f"Version {target.version} of {name!r} cannot be promoted: its exported graph disagrees with torch ({detail})"
        raise RegistryError(msg)
    champion = _aliased(client, name, CHAMPION)
    if champion is not None and str(champion.version) != str(target.version):
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
    client.set_registered_model_alias(name, CHAMPION, target.version)
    client.set_model_version_tag(name, target.version, f"{TAG_PREFIX}manual_promotion", time.strftime("%Y-%m-%dT%H:%M:%S"))


def _require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        msg = f"Registered model {name!r} does not exist in {mlflow.get_registry_uri()}; known models: {known or 'none'}"
        raise RegistryError(msg) from None


def get_version(client: MlflowClient, name: str, version_or_alias: str) -> Any:
    """A version by number or alias, with one clear error when the name/version/alias is unknown."""
    _require_model(client, name)
    try:
        if str(version_or_alias).isdigit():
            return client.get_model_version(name, str(version_or_alias))
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException:
        aliases = sorted(client.get_registered_model(name).aliases)
        msg = f"Model {name!r} has no version or alias {version_or_alias!r}; aliases: {aliases or 'none'}"
        raise RegistryError(msg) from None


def find_version_with_tag(client: MlflowClient, name: str, key: str, value: str) -> Any | None:
    """Newest version of ``name`` whose tag ``key`` equals ``value`` (None if the model is new)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matching = [v for v in versions if v.tags.get(key) == value]
    return max(matching, key=lambda v: int(v.version)) if matching else None


@dataclass
class VersionRow:
    name: str
    version: str
    aliases: list[str]
    gate: str
    data_version: str
    metrics: dict[str, float]
    run_id: str
    runtime: str = "-"
    """The runtime the served model scores with (onnx: graph exported at registration; torch)."""
    kind: str = KIND_TRAINED
    """``onenip.kind``; versions registered before the tag are all trained ones."""
    residual: str = ""
    """An onboarded version's ``onenip.residual`` (``inctrl``, or ``neighbourhood``: PatchCore with the
    prompts as its bank); empty for the others."""
    export: str = "-"
    """``onenip.export_parity`` and ``onenip.export_p50_ms``, e.g. ``passed, 21.3 ms``."""
    threshold: str = "trained"
    """The operating point set with ``onenip threshold`` (value and how), or ``trained``: the calibrated one holds."""
    network: str = "-"
    """A trained version's network share of its map and what the network adds on validation
    (``onenip.network_weight``, ``onenip.network_adds``), e.g. ``0.25, +0.0120 (SE 0.0040)``."""


def describe(client: MlflowClient, prefix: str = "onenip-") -> list[VersionRow]:
    """Every version of every registered model starting with ``prefix``, newest first per model."""
    rows = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        if not model.name.startswith(prefix):
            continue
        aliases: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name = '{model.name}'")
        for version in sorted(versions, key=lambda v: -int(v.version)):
            rows.append(
                VersionRow(
                    model.name,
                    str(version.version),
                    sorted(aliases.get(str(version.version), [])),
                    version.tags.get(f"{TAG_PREFIX}gate", "-"),
                    version.tags.get(f"{TAG_PREFIX}category_data_version", "-"),
                    version_metrics(version),
                    version.run_id or "-",
                    version.tags.get(f"{TAG_PREFIX}runtime", "torch"),
                    version.tags.get(f"{TAG_PREFIX}kind", KIND_TRAINED),
                    version.tags.get(f"{TAG_PREFIX}residual", ""),
                    _export_cell(version.tags),
                    _threshold_cell(version.tags),
                    ", ".join(version.tags[f"{TAG_PREFIX}{key}"] for key in ("network_weight", "network_adds")
                              if f"{TAG_PREFIX}{key}" in version.tags) or "-",  # fmt: skip
                ),
            )
    return rows


def _threshold_cell(tags: dict[str, str]) -> str:
    value = tags.get(f"{TAG_PREFIX}threshold")
    return "trained" if value is None else f"{float(value):.4g} ({tags.get(f'{TAG_PREFIX}threshold_how', 'value')})"


def _export_cell(tags: dict[str, str]) -> str:
    parity, p50 = tags.get(f"{TAG_PREFIX}export_parity"), tags.get(f"{TAG_PREFIX}export_p50_ms")
    if parity is None and p50 is None:
        return "-"
    return ", ".join(part for part in (parity, f"{p50} ms" if p50 else None) if part)


# -- resolving a model for predict ------------------------------------------------------------------
class ResolvedModel(NamedTuple):
    folder: Path
    """Holds ``onenip.json`` + ``model.safetensors``."""
    category: str | None
    """The one category a registered version serves; None for a local folder (all its categories)."""
    name_pattern: str | None = None
    """``onenip-elpv-{category}``: names the other categories' models in a refusal."""
    version: str | None = None
    """What was loaded: ``models:/<name>/<version>`` (an alias pinned to the version it points at now) or the
    ``runs:/`` URI; None for a local folder."""


def split_model_uri(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias or version); the second is
    empty for ``models:/<name>``."""
    body = uri[len("models:/") :]
    name, _, ref = body.partition("@") if "@" in body else body.partition("/")
    return name, ref


def pin_model_uri(uri: str, params: Params, project_root: str | Path = ".") -> str:
    """``models:/<name>@<alias>`` -> ``models:/<name>/<version>`` (what the alias points at now), so a
    record keeps naming the same model after the alias moves; any other URI or path unchanged."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name, _, alias = uri[len("models:/") :].partition("@")
    version = get_version(connect(params, project_root), name, alias)
    return f"models:/{name}/{version.version}"


def resolve_model(uri: str, params: Params, project_root: str | Path = ".") -> ResolvedModel:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/model`` or a local
    folder -> the model folder and, for a logged model, the category it serves.
    """
    import yaml

    if uri.startswith(("models:/", "runs:/")):
        client = connect(params, project_root, existing=True)
        pinned = uri
        if uri.startswith("models:/"):
            name, ref = split_model_uri(uri)
            if not ref:
                msg = f"Model URI {uri!r} needs an alias or version: models:/<name>@champion or models:/<name>/<version>"
                raise RegistryError(msg)
            # one clear message for an unknown name, version or alias; the version an alias points at now
            pinned = f"models:/{name}/{get_version(client, name, ref).version}"
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        except (MlflowException, OSError) as error:
            msg = f"Cannot download model {uri}: {error}"
            raise RegistryError(msg) from error
        config: dict[str, Any] = {}
        mlmodel = local / "MLmodel"
        if mlmodel.is_file():
            flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
            # MLflow writes log_model(model_config=...) as the flavor's "config"
            config = flavor.get("config") or flavor.get("model_config") or {}
        folders = [p.parent for p in local.rglob("onenip.json")]
        if not folders:
            msg = f"{uri} is not an onenip model (no onenip.json inside)"
            raise RegistryError(msg)
        return ResolvedModel(folders[0], config.get("category"), config.get("model_name_pattern"), pinned)
    path = Path(uri)
    if (path / "onenip.json").is_file():
        return ResolvedModel(path, None)
    folders = sorted(p.parent for p in path.glob("**/model/onenip.json")) if path.is_dir() else []
    if len(folders) == 1:
        return ResolvedModel(folders[0], None)
    msg = (
        f"No onenip model at {uri}: give a model folder (onenip.json + model.safetensors), a run folder with one "
        "model, or models:/<name>@<alias>"
    )
    raise RegistryError(msg)


# -- operating points (onenip.operating_points): the threshold beside a version, not in it ----------
HISTORY_CHARS = 4500
THRESHOLD_KEYS = ("threshold", "threshold_how", "threshold_expected_fpr", "threshold_set_by", "threshold_set_at", "threshold_history")


def operating_point(version: Any, trained_threshold: float, scores: Any = None) -> OperatingPoint:
    """A version's operating point: the one set with ``onenip threshold`` (its tags), else the threshold
    calibrated at training."""
    from onenip.operating_points import OperatingPoint, expected_fpr

    tags = version.tags
    if f"{TAG_PREFIX}threshold" not in tags:
        return OperatingPoint(trained_threshold, "calibration", expected_fpr(scores, trained_threshold))
    fpr = tags.get(f"{TAG_PREFIX}threshold_expected_fpr", "")
    return OperatingPoint(
        float(tags[f"{TAG_PREFIX}threshold"]), tags.get(f"{TAG_PREFIX}threshold_how", "value"), float(fpr) if fpr else None,
        tags.get(f"{TAG_PREFIX}threshold_set_by", ""), tags.get(f"{TAG_PREFIX}threshold_set_at", ""),
        json.loads(tags.get(f"{TAG_PREFIX}threshold_history", "[]")),
    )  # fmt: skip


def set_operating_point(client: MlflowClient, name: str, version: str, point: OperatingPoint) -> None:
    """Record ``point`` as the version's threshold (the history tag keeps who changed it from what, and when)."""
    history = list(point.history)
    while history and len(json.dumps(history)) > HISTORY_CHARS:  # MLflow keeps 5,000 characters a tag
        history.pop(0)
    values = (point.threshold, point.how, "" if point.expected_fpr is None else point.expected_fpr, point.set_by, point.set_at,
              json.dumps(history))  # fmt: skip
    # the threshold itself last: the record of who set it is written before it takes effect
    for key, value in reversed(list(zip(THRESHOLD_KEYS, values, strict=True))):
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}{key}", str(value))

