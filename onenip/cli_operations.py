"""CLI commands for the line: ``threshold`` (operating points), ``review`` (the review page and its
users) and ``feedback apply`` (verdicts into versioned data). Registered on ``onenip.cli.app``."""

from __future__ import annotations

import getpass
import os
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from onenip.cli import (
    DEFAULT_PARAMS_PATH,
    ModelArgument,
    ModelOrOption,
    ParamsOption,
    ProfileOption,
    SetOption,
    _load,
    _model_reference,
    _resolve,
    app,
    console,
    project_dir,
    user_errors,
)
from onenip.config import ConfigError

LINE = "On the line"
review_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, help="The review page over the prediction log.")
feedback_app = typer.Typer(no_args_is_help=True, help="Operators' verdicts back into the data.")
app.add_typer(review_app, name="review", rich_help_panel=LINE)
app.add_typer(feedback_app, name="feedback", rich_help_panel=LINE)


class Role(str, Enum):
    reviewer = "reviewer"
    lead = "lead"


def _user(name: str | None) -> str:
    return name or os.environ.get("ONENIP_USER") or getpass.getuser()


@app.command("threshold", rich_help_panel=LINE)
@user_errors
def threshold(
    model_argument: ModelArgument = None,
    fpr: Annotated[float | None, typer.Option("--fpr", help="Set the threshold for this false-alarm rate on the held-out training normals (0.01 = 1 %).")] = None,
    value: Annotated[float | None, typer.Option("--value", help="Set this threshold.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Who sets it (default: ONENIP_USER, else the login name).")] = None,
    model_option: ModelOrOption = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Show a registered version's operating point (threshold, how it was set, the expected false-alarm
    rate, its history), or set it with --fpr or --value: no retraining, recorded with who and when."""
    from onenip.operating_points import OperatingPointError
    from onenip.thresholds import current_and_set

    model = _model_reference(model_argument, model_option)
    cfg = _load(params, profile, sets)
    _resolve(model, cfg)  # one clear line for an unknown name, alias or version
    try:
        pinned, point = current_and_set(cfg, project_dir(), model, fpr=fpr, value=value, user=_user(user))
    except OperatingPointError as error:
        raise ConfigError(str(error)) from None
    if fpr is not None or value is not None:
        console.print(f"{pinned}: threshold set to {point.threshold:.6g} ({point.how}) by {point.set_by}; no retraining needed")
    _print_point(pinned, point)


def _print_point(model: str, point: object) -> None:
    from onenip.operating_points import OperatingPoint

    assert isinstance(point, OperatingPoint)
    rate = ("unknown (the model was trained before its calibration scores were kept)" if point.expected_fpr is None
            else f"{100 * point.expected_fpr:.2f} % of the held-out training normals")  # fmt: skip
    console.print(f"{model}: threshold {point.threshold:.6g}, set by {point.how}" + (f" ({point.set_by}, {point.set_at})" if point.set_by else ""))
    console.print(f"expected false-alarm rate: {rate}")
    if point.history:
        table = Table(title="changes")
        for column in ("when", "who", "old", "new", "how"):
            table.add_column(column)
        for entry in point.history:
            table.add_row(entry["at"], entry["by"], f"{entry['old']:.6g}", f"{entry['new']:.6g}", entry["how"])
        console.print(table)


@review_app.callback()
@user_errors
def review(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 5002,
    host: Annotated[str, typer.Option("--host", help="127.0.0.1 serves this machine only; 0.0.0.0 every interface.")] = "127.0.0.1",
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Start the review page over the project's prediction log (users: `onenip review add-user`)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = (params, profile, sets)
        return
    import uvicorn

    from onenip.review.auth import read_users

    cfg = _load(params, profile, sets)
    root = project_dir()
    users_file = root / cfg.monitoring.users_file
    if not read_users(users_file):
        msg = f"No users in {users_file}: add one with `onenip review add-user NAME --role lead`"
        raise ConfigError(msg)
    console.print(f"Review page on http://{host}:{port}/ (Ctrl-C stops it); users from {users_file}")
    uvicorn.run(build_review_app(cfg, root), host=host, port=port, log_level="warning")


def build_review_app(cfg: object, root: os.PathLike[str] | str) -> object:
    """The review app of a project: its log, users file, session secret and the apply button."""
    from pathlib import Path

    from onenip.config import Params
    from onenip.feedback import apply_verdicts
    from onenip.monitoring.log import open_log
    from onenip.review.app import create_app
    from onenip.review.auth import session_secret

    assert isinstance(cfg, Params)
    root = Path(root)
    log = open_log(cfg, root)
    from onenip.thresholds import current_and_set

    def apply(category: str, user: object) -> str:
        return apply_verdicts(log, cfg, root, category, user.name).summary()  # type: ignore[attr-defined]

    def set_threshold(model: str, fpr: float | None, value: float | None, user: object) -> str:
        pinned, point = current_and_set(cfg, root, model, fpr=fpr, value=value, user=user.name)  # type: ignore[attr-defined]
        rate = "" if point.expected_fpr is None else f", expected false-alarm rate {100 * point.expected_fpr:.2f} %"
        return f"{pinned}: threshold {point.threshold:.6g} ({point.how}){rate}"

    return create_app(log, root / cfg.monitoring.users_file, session_secret(root / cfg.monitoring.store), apply, set_threshold)


@review_app.command("add-user")
@user_errors
def add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user name to log in with.")],
    role: Annotated[Role, typer.Option("--role", help="reviewer: labels predictions; lead: also applies labels to data and sets thresholds.")] = Role.reviewer,
    password: Annotated[str | None, typer.Option("--password", help="Default: asked for (ONENIP_REVIEW_PASSWORD for scripts).", show_default=False)] = None,
) -> None:
    """Add a user of the review page (or change one's role and password); only the password's hash is kept."""
    from onenip.review.auth import AuthError, add_user as write_user

    params, profile, sets = ctx.obj or (DEFAULT_PARAMS_PATH, None, None)
    cfg = _load(params, profile, sets)
    users_file = project_dir() / cfg.monitoring.users_file
    secret = password or os.environ.get("ONENIP_REVIEW_PASSWORD") or typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        write_user(users_file, name, role.value, secret)
    except AuthError as error:
        raise ConfigError(str(error)) from None
    console.print(f"{name} ({role.value}) can log in to the review page; users in {users_file}")


@feedback_app.command("apply")
@user_errors
def feedback_apply(
    category: Annotated[str, typer.Option("--category", help="The category whose reviewed predictions go into the data.")],
    user: Annotated[str | None, typer.Option("--user", help="Who applies them (default: ONENIP_USER, else the login name).")] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    profile: ProfileOption = None,
    sets: SetOption = None,
) -> None:
    """Reviewed false alarms become training normals, confirmed defects test anomalies of their type: a new
    DVC version of the data, validated by Great Expectations first (the next retrain picks it up)."""
    from onenip.feedback import FeedbackError, apply_verdicts
    from onenip.monitoring.log import open_log

    cfg = _load(params, profile, sets)
    try:
        result = apply_verdicts(open_log(cfg, project_dir()), cfg, project_dir(), category, _user(user), push=cfg.pipeline.dvc_remote != "")
    except FeedbackError as error:
        raise ConfigError(str(error)) from None
    console.print(result.summary())
