"""The ``onenip`` command line (typer). Every command reads the same ``params.yaml``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from onenip.config import DEFAULT_PARAMS_PATH, ConfigError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help="OneNIP industrial anomaly detection.")
data_app = typer.Typer(no_args_is_help=True, help="Import, validate and summarise datasets.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


def _user_errors(func: F) -> F:
    """Turn errors a user can cause into one red line and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from onenip.data.manifest import DatasetError
        from onenip.data.versioning import DVCError

        try:
            return func(*args, **kwargs)
        except (DatasetError, ConfigError, DVCError) as error:
            err_console.print(f"[bold red]Error:[/] {error}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


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
@_user_errors
def data_add(
    source: Annotated[str, typer.Argument(help="Source folder, or 'elpv-dataset' for --format elpv.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name: written to data/<name>.")],
    fmt: Annotated[str, typer.Option("--format", help="mvtec | visa | btad | elpv")] = "mvtec",
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Convert SOURCE into data/NAME, validate it, track it with DVC and print its data version."""
    from onenip.data.versioning import import_dataset

    cfg = load_params(params).data if params.exists() else None
    result = import_dataset(
        source,
        name,
        fmt,
        project_root=Path.cwd(),
        min_train_images=cfg.min_train_images if cfg else 10,
        require_masks=cfg.require_masks if cfg else "auto",
        test_every=cfg.test_every if cfg else 5,
    )
    console.print(str(result.conversion))
    console.print(f"Validation passed: {result.validation.num_images} images, {result.validation.num_categories} categories")
    console.print(f"data version ({result.path.name}.dvc): [bold]{result.data_version}[/]")


@data_app.command("validate")
@_user_errors
def data_validate(
    root: Annotated[Path, typer.Argument(help="Dataset root in MVTec AD layout.")],
    categories: Annotated[list[str] | None, typer.Option("--category", help="Only these categories.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the result as JSON here.")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Validate a dataset; exit 1 and list every failed expectation with its files."""
    from onenip.data.validate import validate_dataset

    cfg = load_params(params).data if params.exists() else None
    result = validate_dataset(
        root,
        categories=categories or None,
        min_train_images=cfg.min_train_images if cfg else 10,
        require_masks=cfg.require_masks if cfg else "auto",
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=2))
    console.print(result.to_markdown(), markup=False, highlight=False)
    result.raise_for_failure()


@data_app.command("summary")
@_user_errors
def data_summary(root: Annotated[Path, typer.Argument(help="Dataset root in MVTec AD layout.")]) -> None:
    """Counts per category, split and defect type."""
    _print_summary(root)


@app.command("run")
@_user_errors
def run_default_job(params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """The default job: import the configured dataset into data/<name> (DVC-tracked), validate, summarise."""
    from onenip.data.versioning import import_dataset

    cfg = load_params(params).data
    result = import_dataset(
        cfg.source,
        cfg.name,
        cfg.format,
        project_root=Path.cwd(),
        min_train_images=cfg.min_train_images,
        require_masks=cfg.require_masks,
        test_every=cfg.test_every,
    )
    console.print(str(result.conversion))
    _print_summary(result.path)
    console.print(
        f"Validation passed ({result.validation.num_images} images). "
        f"data/{cfg.name} is DVC-tracked, data version [bold]{result.data_version}[/]",
    )


def main() -> None:  # pragma: no cover - console entry point
    app()
