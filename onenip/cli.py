"""The ``onenip`` command line (typer). Every command reads the same ``params.yaml``."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onenip.config import DEFAULT_PARAMS_PATH, ConfigError, Params, find_project_root, load_params
from onenip.overrides import parse_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown", help="OneNIP industrial anomaly detection.")
data_app = typer.Typer(no_args_is_help=True, help="Import, validate and summarise datasets.")

# the groups of `onenip --help`
PIPELINE, MODEL, SERVING, DATA, FEWSHOT = "Pipeline", "Model", "Registry and serving", "Data", "Few-shot"
app.add_typer(data_app, name="data", rich_help_panel=DATA)

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


# choices shown in --help and checked before anything runs (a typo fails at once, naming the choices)
class DataFormat(str, Enum):
    mvtec = "mvtec"
    visa = "visa"
    btad = "btad"
    elpv = "elpv"


class GraphFormat(str, Enum):
    onnx = "onnx"
    openvino = "openvino"


class Runtime(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    openvino = "openvino"


class Mode(str, Enum):
    unified = "unified"
    per_category = "per-category"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"onenip {version('onenip')}")
        raise typer.Exit


@app.callback()
def _configure_logging(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """onenip's own progress messages (resume, saved model) on stderr; libraries stay at WARNING."""
    import logging

    logger = logging.getLogger("onenip")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # printed once: Prefect's console handler on the root logger would repeat each line

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read (default: the project's, found from here up).")]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="Merge profiles.NAME of params.yaml (e.g. fast).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override one setting for this command: section.key=value (repeat), e.g. train.epochs=3."),
]
MODEL_HELP = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a model folder."
ModelOption = Annotated[str, typer.Option("--model", help=MODEL_HELP)]
# commands with no other argument take the model as their argument too: `onenip export MODEL` = `--model MODEL`
ModelArgument = Annotated[str | None, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
ModelOrOption = Annotated[str | None, typer.Option("--model", help="The same as MODEL.", show_default=False)]


def _model_reference(argument: str | None, option: str | None) -> str:
    if (argument is None) == (option is None):
        msg = "Give the model once: as MODEL or as --model (models:/NAME@champion, models:/NAME/VERSION, or a folder)"
        raise ConfigError(msg)
    return str(argument or option)


def user_errors(func: F) -> F:
    """Turn errors a user can cause into one red line and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from onenip.data.manifest import DatasetError
        from onenip.data.versioning import DVCError
        from onenip.runtime import ExportError

        try:
            return func(*args, **kwargs)
        except Exception as error:
            # These error types can only come from modules already imported; importing them here
            # would load MLflow or torch for every command (`onenip predict` on an exported graph
            # never imports torch).
            known: tuple[type[Exception], ...] = (DatasetError, ConfigError, DVCError, ExportError)
            for module, name in (("onenip.registry", "RegistryError"), ("onenip.models.detector", "ModelLoadError"),
                                 ("onenip.synthesis.checks", "SynthesisError")):  # fmt: skip
                if module in sys.modules:
                    known += (getattr(sys.modules[module], name),)
            if not isinstance(error, known):
                raise
            # the message is text, not markup: a "[...]" in it (a YAML error, a list of names) must print as is
            err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def project_dir() -> Path:
    """The project: the nearest folder with params.yaml from here up; here when there is none."""
    return find_project_root(Path.cwd()) or Path.cwd()


def params_path(params: Path) -> Path | None:
    """params.yaml as given; the default is the project's (found from any folder below it), None when
    there is none (the built-in defaults apply)."""
    if params == DEFAULT_PARAMS_PATH:
        found = project_dir() / DEFAULT_PARAMS_PATH
        return found if found.exists() else None
    return params


def _load(params: Path, profile: str | None = None, sets: list[str] | None = None) -> Params:
    """The settings a command runs with: params.yaml, then ``--profile``, then every ``--set``."""
    return load_params(params_path(params), parse_overrides(sets or []), profile)


def _resolve(model: str, cfg: Params) -> Any:
    """A model reference -> ``registry.ResolvedModel``; an unknown name, alias, version or folder is one line."""
    from onenip import registry

    try:
        return registry.resolve_model(model, cfg, project_dir())
    except registry.RegistryError as error:
        raise ConfigError(str(error)) from None


def _print_frame(frame: Any, title: str) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "iuf" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    console.print(table)


def _print_summary(root: Path) -> None:
    from onenip.data.manifest import make_manifest, summarize_manifest

    manifest = make_manifest(root)
    _print_frame(summarize_manifest(manifest), title=f"Dataset {root}")


@data_app.command("add")
@user_errors
def data_add(
    source: Annotated[str, typer.Argument(help="Source folder, or 'elpv-dataset' for --format elpv.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name: written to data/NAME.")],
    fmt: Annotated[DataFormat, typer.Option("--format", help="The source's layout.")] = DataFormat.mvtec,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Convert SOURCE into data/NAME, validate it, track it with DVC and print its data version."""
    from onenip.data.versioning import import_dataset

    cfg = _load(params, profile, sets).data
    result = import_dataset(
        source,
        name,
        fmt.value,
        project_root=project_dir(),
        min_train_images=cfg.min_train_images,
        require_masks=cfg.require_masks,
        test_every=cfg.test_every,
    )
    console.print(str(result.conversion))
    console.print(f"Validation passed: {result.validation.num_images} images, {result.validation.num_categories} categories")
    console.print(f"data version ({result.path.name}.dvc): [bold]{result.data_version}[/]")


@data_app.command("validate")
@user_errors
def data_validate(
    root: Annotated[Path, typer.Argument(help="Dataset root in MVTec AD layout.")],
    categories: Annotated[list[str] | None, typer.Option("--category", help="Only these categories.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the result as JSON here.")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Validate a dataset; exit 1 and list every failed expectation with its files."""
    from onenip.data.validate.dataset import validate_dataset

    cfg = _load(params, profile, sets).data
    result = validate_dataset(
        root,
        categories=categories or None,
        min_train_images=cfg.min_train_images,
        require_masks=cfg.require_masks,
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=2))
    console.print(result.to_markdown(), markup=False, highlight=False)
    result.raise_for_failure()


@data_app.command("summary")
@user_errors
def data_summary(root: Annotated[Path, typer.Argument(help="Dataset root in MVTec AD layout.")]) -> None:
    """Counts per category, split and defect type."""
    _print_summary(root)


@app.command("promote", rich_help_panel=SERVING)
@user_errors
def promote(
    model_argument: Annotated[str | None, typer.Argument(metavar="MODEL", help="models:/NAME/VERSION or models:/NAME@ALIAS to make champion; models:/NAME with --rollback.", show_default=False)] = None,
    category: Annotated[str | None, typer.Option("--category", help="Instead of MODEL: this category's model of the dataset.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Move champion back to the 'previous' version.")] = False,
    version: Annotated[str | None, typer.Option("--version", help="With --category: make this version (number or alias) champion.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="With --category: the dataset name (default: data.name).")] = None,
    model_option: ModelOrOption = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Promote a version to champion by hand (recorded as a tag on it), or roll the champion back."""
    from onenip import registry

    cfg = _load(params, profile, sets)
    model = None if model_argument is None and model_option is None else _model_reference(model_argument, model_option)
    name, version = _promotion_target(model, category, dataset, version, rollback, cfg)
    if rollback == (version is not None):
        msg = "Give exactly one of --rollback or a version (models:/NAME/VERSION, or --version)"
        raise ConfigError(msg)
    client = registry.connect(cfg, project_dir(), existing=True)
    try:
        if rollback:
            demoted, restored = registry.rollback(client, name)
            console.print(f"{name}: champion rolled back from version {demoted} to version {restored}")
        else:
            target = registry.get_version(client, name, str(version))
            registry.promote_version(client, name, target.version)
            console.print(f"{name}: version {target.version} is now champion")
    except registry.RegistryError as error:
        raise ConfigError(f"{error} (store: {registry.tracking_uri(cfg, project_dir())})") from None


def _promotion_target(
    model: str | None, category: str | None, dataset: str | None, version: str | None, rollback: bool, cfg: Params,
) -> tuple[str, str | None]:  # fmt: skip
    """(registered model name, version or alias or None) from MODEL or from --category/--dataset/--version."""
    from onenip import registry

    if model is None:
        if category is None:
            msg = "Say which model: models:/NAME/VERSION (see `onenip registry`), or --category"
            raise ConfigError(msg)
        return registry.model_name(cfg, dataset or cfg.data.name, category), version
    if category is not None or dataset is not None or version is not None:
        msg = "Give MODEL or --category/--dataset/--version, not both"
        raise ConfigError(msg)
    if not model.startswith("models:/"):
        msg = f"promote takes a registered model (models:/NAME/VERSION), got {model!r}"
        raise ConfigError(msg)
    name, ref = registry.split_model_uri(model)
    if rollback and ref:
        msg = f"--rollback takes the model name only (models:/{name}), not a version"
        raise ConfigError(msg)
    return name, ref or None


@app.command("serve", rich_help_panel=SERVING)
@user_errors
def serve(
    model_argument: ModelArgument = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 5001,
    host: Annotated[str, typer.Option("--host", help="127.0.0.1 serves this machine only; 0.0.0.0 every interface.")] = "127.0.0.1",
    runtime: Annotated[Runtime, typer.Option("--runtime", help="auto: the runtime the version was registered with.")] = Runtime.auto,
    log: Annotated[bool | None, typer.Option("--log/--no-log", help="Append every prediction to the prediction log (default: monitoring.log_serve).", show_default=False)] = None,
    model_option: ModelOrOption = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Serve a registered model over HTTP (mlflow models serve on the project's store and this
    environment), judged against the version's operating point (`onenip threshold`), every prediction
    logged for the review page (`onenip review`)."""
    import os

    from onenip import registry

    model = _model_reference(model_argument, model_option)
    cfg = _load(params, profile, sets)
    root = project_dir()
    if not model.startswith("models:/"):
        msg = f"serve takes a registered model (models:/NAME@champion or models:/NAME/VERSION), got {model!r}"
        raise ConfigError(msg)
    resolved = _resolve(model, cfg)  # one clear line for an unknown name, alias or version, before anything starts
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri(cfg, root), "ONENIP_MODEL_URI": resolved.version or model,
           # mlflow starts uvicorn from PATH: this environment's, as with an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    if cfg.monitoring.log_serve if log is None else log:
        from onenip.monitoring.log import log_url

        env.update(ONENIP_PREDICTION_LOG=log_url(cfg.monitoring.database, root), ONENIP_PREDICTION_STORE=str(root / cfg.monitoring.store),
                   ONENIP_PREDICTION_STORE_MB=str(cfg.monitoring.store_max_mb))  # fmt: skip
    if runtime != Runtime.auto:
        env["ONENIP_RUNTIME"] = runtime.value
    console.print(f"Serving {model} on http://{host}:{port}/invocations (Ctrl-C stops it); health: http://{host}:{port}/ping")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local", "-h", host, "-p", str(port)]
    sys.stdout.flush()
    os.chdir(root)
    # this process becomes the server: a signal that stops `onenip serve` stops the server and its workers
    os.execve(sys.executable, command, env)


@app.command("registry", rich_help_panel=SERVING)
@user_errors
def show_registry(params: ParamsOption = DEFAULT_PARAMS_PATH, profile: ProfileOption = None, sets: SetOption = None) -> None:
    """Every registered onenip model version with its kind (trained, onboarded, generalist), aliases, gate decision, data version and metrics."""
    from onenip import registry

    cfg = _load(params, profile, sets)
    client = registry.connect(cfg, project_dir(), existing=True)
    table = Table(title=f"MLflow registry ({registry.tracking_uri(cfg, project_dir())})")
    columns = ("model", "version", "kind", "aliases", "gate", "category data version", "I-AUROC", "P-AUROC", "threshold", "network share, adds", "runtime", "export parity, p50", "run")
    for column in columns:
        table.add_column(column)
    for row in registry.describe(client, prefix=cfg.pipeline.model_name.split("{")[0]):
        table.add_row(row.name, row.version, row.kind + (f" ({row.residual})" if row.residual else ""), ", ".join(row.aliases) or "-", row.gate, row.data_version,
                      f"{row.metrics.get('image_AUROC', float('nan')):.4f}", f"{row.metrics.get('pixel_AUROC', float('nan')):.4f}",
                      row.threshold, row.network, row.runtime, row.export, row.run_id[:12])  # fmt: skip
    # model names must not be cut, also in a pipe or a narrow terminal (rich would shrink to 80 columns)
    Console(width=max(console.width, 200)).print(table)


@app.command("export", rich_help_panel=MODEL)
@user_errors
def export(
    model_argument: ModelArgument = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the graph and export.json (default: runs/export/CATEGORY of the project).")] = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", help="Graph format.")] = GraphFormat.onnx,
    category: Annotated[str | None, typer.Option("--category", help="Category (needed for a multi-category model folder).")] = None,
    model_option: ModelOrOption = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Export one category's whole scoring graph (image -> anomaly map and score) for ONNX Runtime or OpenVINO."""
    from onenip.export import ExportError, export_category
    from onenip.models.detector import OneNIPDetector

    model = _model_reference(model_argument, model_option)
    resolved = _resolve(model, _load(params, profile, sets))
    detector = OneNIPDetector.load(resolved.folder)
    if resolved.category and category not in (None, resolved.category):
        msg = f"{model} serves category {resolved.category!r} only, not {category!r}"
        raise ConfigError(msg)
    chosen = category or resolved.category or (detector.categories[0] if len(detector.categories) == 1 else None)
    if chosen is None:
        msg = f"This model knows several categories {detector.categories}; say which one with --category"
        raise ConfigError(msg)
    out = out or project_dir() / "runs" / "export" / chosen
    try:
        detector.category_index(chosen)
        graph = export_category(detector, chosen, out, fmt=fmt.value, weights=resolved.folder / "model.safetensors")  # type: ignore[arg-type]
    except (ValueError, ExportError) as error:
        raise ConfigError(str(error)) from None
    geometry = detector.geometry(chosen)
    console.print(f"Exported {chosen!r} ({geometry.height}x{geometry.width}{', letterboxed' if geometry.letterbox else ''}) to {graph}")


@app.command("predict", rich_help_panel=MODEL)
@user_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: ModelOption,
    out: Annotated[Path | None, typer.Option("--out", help="Writes index.html, predictions.csv, predictions.json, heatmaps/ (default: a new runs/predict/TIME folder of the project).")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Category (needed for a multi-category model folder).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    heatmaps: Annotated[bool, typer.Option("--heatmaps/--no-heatmaps", help="Write heatmap overlay PNGs.")] = True,
    runtime: Annotated[Runtime, typer.Option("--runtime", help="auto: the runtime the version was registered with, else onnx when installed, else torch.")] = Runtime.auto,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Judge against this threshold instead of the version's operating point.")] = None,
    log: Annotated[bool | None, typer.Option("--log/--no-log", help="Append the predictions to the prediction log (default: monitoring.log_predict).", show_default=False)] = None,
    station: Annotated[str | None, typer.Option("--station", help="With --log: the station / line the images come from.")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Score images: per image the score, the decision at the version's operating point (`onenip
    threshold`; the calibrated threshold unless one was set) and a heatmap overlay, and an index.html
    report to browse them; unreadable files are listed and skipped, the rest are scored."""
    from onenip.data.manifest import DatasetError
    from onenip.serving import collect_images, predict_files
    from onenip.serving import load_predictor

    cfg = _load(params, profile, sets)
    resolved = _resolve(model, cfg)
    paths = collect_images(inputs)
    if not paths:
        msg = f"No image files in {', '.join(map(str, inputs))}"
        raise DatasetError(msg)
    try:
        # A registered version answers for its own category only (the one its gate passed for).
        predictor = load_predictor(
            resolved.folder, category, device=cfg.train.device,
            served_category=resolved.category, model_name_pattern=resolved.name_pattern, runtime=runtime.value,
        )  # fmt: skip
    except ValueError as error:
        raise DatasetError(str(error)) from None
    if predictor.default_category is None and not category:
        msg = f"{model} knows several categories; say which one with --category"
        raise ConfigError(msg)
    out = out or _new_folder(project_dir() / "runs" / "predict")  # each run its own folder
    if (resolved.version or "").startswith("models:/"):
        from onenip import registry
        from onenip.registry_thresholds import RegistryThreshold

        predictor.threshold_source = RegistryThreshold.from_uri(resolved.version, client=registry.connect(cfg, project_dir(), existing=True))
    prediction_log = None
    if cfg.monitoring.log_predict if log is None else log:
        from onenip.monitoring.log import open_log

        prediction_log = open_log(cfg, project_dir())
    report = predict_files(predictor, paths, out, category or resolved.category, batch_size=batch_size, heatmaps=heatmaps,
                           model=resolved.version or str(resolved.folder), threshold=threshold, log=prediction_log, station=station)  # fmt: skip
    if prediction_log is not None:
        prediction_log.flush()
        console.print(f"Logged {len(report.predictions)} predictions to {prediction_log.url}" + (f" ({prediction_log.failures} failed)" if prediction_log.failures else ""))
    anomalous = sum(bool(r["is_anomaly"]) for r in report.predictions)
    console.print(f"Scored {len(report.predictions)} of {len(paths)} images: {anomalous} anomalous at the operating point.")
    console.print(f"Wrote {report.csv_path}, {report.json_path}" + (f" and heatmaps under {out / 'heatmaps'}" if heatmaps else ""))
    console.print(f"Report: {report.html_path.resolve().as_uri()}")
    if report.failures:
        err_console.print(f"[bold red]{len(report.failures)} file(s) could not be scored:[/]")
        for failure in report.failures:
            err_console.print(f"  {failure['error']}", highlight=False, markup=False)
        raise typer.Exit(code=2)


def _print_metrics(metrics: dict[str, dict[str, float]], title: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(metrics).T.reset_index(names="category")
    for column in frame.columns[1:]:
        frame[column] = frame[column].map(lambda v: f"{v:.4f}" if isinstance(v, float) and v < 2 else f"{v:g}")
    _print_frame(frame, title)


CategoriesOption = Annotated[list[str] | None, typer.Option("--category", "--categories", help="Only these categories (repeat).")]


DataOption = Annotated[Path | None, typer.Option("--data", help="Dataset root in MVTec AD layout (default: the project's data/DATA_NAME).")]


def _data_root(data: Path | None, cfg: Params) -> Path:
    root = data if data is not None else project_dir() / cfg.data.root
    if not root.is_dir():
        msg = f"No dataset at {root}: give --data, or import one with `onenip data add` / `onenip run --data`"
        raise ConfigError(msg)
    return root


@app.command("train", rich_help_panel=MODEL)
@user_errors
def train(
    data: DataOption = None,
    categories: CategoriesOption = None,
    mode: Annotated[Mode | None, typer.Option("--mode", help="One network for all categories or one each (default: params.yaml).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder: OUT/unified|CATEGORY/model.")] = Path("runs/train"),
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override train.epochs.")] = None,
    evaluate_after: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate on the test split.")] = True,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint.")] = True,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Train OneNIP on the normal training images (no registry: `onenip run` trains and registers);
    optionally evaluate on the test split."""
    from onenip import jobs

    cfg = _load(params, profile, sets)
    root = _data_root(data, cfg)
    if epochs:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    trained = jobs.train_models(root, categories, cfg, out, mode=None if mode is None else mode.value, resume=resume)
    for name, result in trained.items():
        console.print(f"{name}: model saved to {result.model_dir} ({result.train_seconds / 60:.1f} min training)")
    if evaluate_after:
        metrics = {}
        for name, result in trained.items():
            reports = jobs.evaluate_model(result.model_dir, root, result.categories, cfg, out / name / "eval", progress=True)
            metrics.update({category: report.metrics for category, report in reports.items()})
        _print_metrics(metrics, f"Test metrics ({out})")
        console.print(f"Reports: {', '.join(str((out / name / 'eval' / 'index.html').resolve().as_uri()) for name in trained)}")


@app.command("evaluate", rich_help_panel=MODEL)
@user_errors
def evaluate(
    model_argument: ModelArgument = None,
    data: DataOption = None,
    categories: CategoriesOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Writes index.html, metrics.json, CATEGORY/curves.png, heatmaps/ (default: a new runs/eval/TIME folder).")] = None,
    model_option: ModelOrOption = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Evaluate a model on the test split: metrics, ROC/PR curves, heatmaps and an index.html report
    with the missed defects and the false alarms first."""
    from onenip import jobs

    model = _model_reference(model_argument, model_option)
    cfg = _load(params, profile, sets)
    resolved = _resolve(model, cfg)
    if resolved.category and categories and set(categories) != {resolved.category}:
        msg = f"{model} serves category {resolved.category!r} only, not {', '.join(categories)}"
        raise ConfigError(msg)
    out = out or _new_folder(project_dir() / "runs" / "eval")
    reports = jobs.evaluate_model(resolved.folder, _data_root(data, cfg), categories or ([resolved.category] if resolved.category else None),
                                  cfg, out, progress=True, model=resolved.version or str(resolved.folder))  # fmt: skip
    _print_metrics({c: r.metrics for c, r in reports.items()}, f"Test metrics ({model})")
    console.print(f"Wrote {out / 'metrics.json'} and per-category curves and heatmaps under {out}")
    console.print(f"Report: {(out / 'index.html').resolve().as_uri()}")


def _new_folder(parent: Path) -> Path:
    """``parent/TIME``, never an existing folder: earlier results never mix with new ones."""
    out = parent / time.strftime("%Y%m%d-%H%M%S")
    while out.exists():
        out = out.with_name(out.name + "-1")
    return out


@app.command("synthesize", rich_help_panel=MODEL)
@user_errors
def synthesize(
    category: Annotated[str, typer.Option("--category", help="Category whose training images to use.")],
    data: DataOption = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Number of source images.")] = 8,
    seed: Annotated[int | None, typer.Option("--seed", help="Default: train.seed (what training synthesises).")] = None,
    validation: Annotated[bool, typer.Option("--validation", help="Show the validation families instead.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Preview PNG to write.")] = Path("runs/synthesis_preview.png"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Write a preview grid (original | synthetic anomaly | mask) for a person to look at."""
    from onenip.jobs import synthesis_preview

    cfg = _load(params, profile, sets)
    path = synthesis_preview(_data_root(data, cfg), category, cfg, out, count, seed=seed, validation=validation)
    console.print(f"Wrote {path} ({count} images of {category})")


def main() -> None:  # pragma: no cover - console entry point
    app()
