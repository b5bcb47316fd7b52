"""The review web app over the prediction log (``create_app``): a queue of logged predictions nearest
the threshold first, one page per prediction with its image, heatmap overlay and outline, verdicts
kept as an audit trail, a summary per category, the latest drift checks, and (leads only) applying
the verdicts to the data.

Every page needs a login; every write needs the session and the form's CSRF token. Images are served
by prediction id from the store (the log holds their paths), never from a path in a request."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from onenip.monitoring.log import LABELS, PredictionLog
from onenip.review.auth import Sessions, User, authenticate, csrf_ok, read_users
from onenip.review.templates import ENVIRONMENT

COOKIE = "onenip_review"
QUEUE_LIMIT = 200
ApplyVerdicts = Callable[[str, User], str]
"""(category, lead) -> a one-line summary of what was applied (``onenip.feedback.apply_verdicts``)."""
SetThreshold = Callable[[str, "float | None", "float | None", User], str]
"""(models:/NAME/VERSION, false-alarm rate, value, lead) -> a one-line summary (``onenip.operating_points.current_and_set``)."""
MAX_MASK_BYTES = 8 * 1024 * 1024


class Review:
    """What every route needs: the log, the users file, the sessions, the apply step; page rendering and
    the checks of a write."""

    def __init__(self, log: PredictionLog, users_file: str | Path, secret: str, apply: ApplyVerdicts | None, set_threshold: SetThreshold | None) -> None:
        self.log, self.users_file, self.sessions, self.apply, self.set_threshold = log, users_file, Sessions(secret), apply, set_threshold

    def current(self, request: Request) -> tuple[User, str] | None:
        session = self.sessions.read(request.cookies.get(COOKIE))
        # a user removed from the users file (or given another role) loses the session at once
        if session is None or read_users(self.users_file).get(session[0].name, {}).get("role") != session[0].role:
            return None
        return session

    @staticmethod
    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(ENVIRONMENT.get_template(name).render(**context), status_code=status)

    def refuse(self, status: int, message: str, session: tuple[User, str] | None = None) -> HTMLResponse:
        user, csrf = session or (None, "")
        return self.page("message.html", status, heading="Refused", message=message, user=user, csrf=csrf)

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    async def writer(self, request: Request, lead: bool = False) -> tuple[tuple[User, str] | None, dict[str, str], HTMLResponse | None]:
        """The session and form of a write, or the refusal: no session, a bad CSRF token, not a lead."""
        session, fields = self.current(request), await self.form(request)
        if session is None:
            return None, fields, self.refuse(401, "Log in first.")
        if not csrf_ok(session[1], fields.get("csrf")):
            return session, fields, self.refuse(403, "The form's CSRF token is missing or wrong: reload the page and try again.", session)
        if lead and not session[0].is_lead:
            return session, fields, self.refuse(403, f"{session[0].name} is a reviewer: only a lead can do this.", session)
        return session, fields, None

    async def lead_action(
        self, request: Request, action: Callable[[dict[str, str], User], str] | None, heading: str, failed: str, status: int,
        unknown: str | None = None,
    ) -> Response:  # fmt: skip
        """A lead's write (apply, threshold): the checks of ``writer``, then ``action(form, lead)`` off the
        event loop (GX, DVC, MLflow take seconds: the page stays up for everyone else); any error is a refusal."""
        session, fields, refusal = await self.writer(request, lead=True)
        if refusal is not None:
            return refusal
        assert session is not None
        if action is None:
            return self.refuse(503, "This is not configured for this page.", session)
        if unknown is not None:
            return self.refuse(404, unknown, session)
        try:
            message = await run_in_threadpool(action, fields, session[0])
        except Exception as error:  # noqa: BLE001 - nothing was done: say why, keep serving
            return self.refuse(status, f"{failed}: {error}", session)
        return self.page("message.html", user=session[0], csrf=session[1], heading=heading, message=message)

    def stored_png(self, request: Request, prediction_id: str, overlay: bool) -> Response:
        if self.current(request) is None:
            return Response(status_code=401)
        prediction = self.log.prediction(prediction_id)
        if prediction is None or not prediction["image_path"] or self.log.store is None:
            return Response(status_code=404)
        try:
            path = self.log.store.resolve(prediction["image_path"])
            if not overlay or not prediction["heatmap_path"]:
                return Response(path.read_bytes(), media_type="image/png")
            return Response(render_overlay(self.log, prediction, path), media_type="image/png")
        except (ValueError, OSError):
            return Response(status_code=404)


def create_app(
    log: PredictionLog, users_file: str | Path, secret: str, apply: ApplyVerdicts | None = None, set_threshold: SetThreshold | None = None,
) -> FastAPI:  # fmt: skip
    app = FastAPI(title="onenip review", docs_url=None, redoc_url=None, openapi_url=None)
    review = Review(log, users_file, secret, apply, set_threshold)
    _login_routes(app, review)
    _page_routes(app, review)
    _write_routes(app, review)
    return app


def _login_routes(app: FastAPI, r: Review) -> None:
    @app.get("/login", response_class=HTMLResponse)
    def login_page() -> HTMLResponse:
        return r.page("login.html", user=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        fields = await r.form(request)
        user = authenticate(read_users(r.users_file), fields.get("username", ""), fields.get("password", ""))
        if user is None:
            return r.page("login.html", 401, user=None, error="Wrong user name or password.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, r.sessions.issue(user), httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session, _, refusal = await r.writer(request)
        if refusal is not None and session is not None:
            return refusal
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response


def _page_routes(app: FastAPI, r: Review) -> None:
    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request, category: str = "", station: str = "", decision: str = "", review: str = "unreviewed",
              since: str = "", until: str = "") -> Response:  # fmt: skip
        session = r.current(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        filters = {"category": category, "station": station, "decision": decision, "review": review, "since": since, "until": until}
        categories = r.log.categories()
        summaries = {c: [("last day", r.log.summary(c, 1)), ("last week", r.log.summary(c, 7))] for c in categories}
        versions = {c: rows[0]["model_version"] for c in categories if (rows := r.log.predictions(category=c, limit=1)) and rows[0]["model_version"]}
        versions = versions if r.set_threshold is not None else {}
        return r.page("queue.html", user=session[0], csrf=session[1], items=queue_items(r.log, filters), categories=categories,
                      f=filters, summaries=summaries, drift=r.log.latest_drift(20), versions=versions)  # fmt: skip

    @app.get("/item/{prediction_id}", response_class=HTMLResponse)
    def item(request: Request, prediction_id: str) -> Response:
        session = r.current(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        prediction = r.log.prediction(prediction_id)
        if prediction is None:
            return r.refuse(404, f"No prediction {prediction_id!r} in the log.", session)
        return r.page("item.html", user=session[0], csrf=session[1], p=prediction, verdicts=r.log.verdicts(prediction_id))

    @app.get("/image/{prediction_id}")
    def image(request: Request, prediction_id: str) -> Response:
        return r.stored_png(request, prediction_id, overlay=False)

    @app.get("/overlay/{prediction_id}")
    def overlay(request: Request, prediction_id: str) -> Response:
        return r.stored_png(request, prediction_id, overlay=True)


def _write_routes(app: FastAPI, r: Review) -> None:
    @app.post("/item/{prediction_id}/verdict")
    async def verdict(request: Request, prediction_id: str) -> Response:
        session, fields, refusal = await r.writer(request)
        if refusal is not None:
            return refusal
        assert session is not None
        if r.log.prediction(prediction_id) is None:
            return r.refuse(404, f"No prediction {prediction_id!r} in the log.", session)
        label = fields.get("label", "")
        if label not in LABELS:
            return r.refuse(400, f"Choose a verdict: {', '.join(LABELS)}.", session)
        try:
            mask = drawn_mask(fields.get("mask", ""))
        except ValueError as error:
            return r.refuse(400, str(error), session)
        r.log.add_verdict(prediction_id, label, session[0].name, session[0].role, fields.get("defect_type", "").strip(),
                          fields.get("comment", "").strip(), mask)  # fmt: skip
        return RedirectResponse(f"/item/{prediction_id}", status_code=303)

    @app.post("/threshold/{category}")
    async def threshold(request: Request, category: str) -> Response:
        def set_it(fields: dict[str, str], lead: User) -> str:
            fpr, value = (float(fields[k]) if fields.get(k, "").strip() else None for k in ("fpr", "value"))
            return r.set_threshold(fields.get("model", ""), fpr, value, lead)  # type: ignore[misc]

        # a bad number, an unknown model, the registry down: nothing was set
        return await r.lead_action(request, r.set_threshold and set_it, f"{category}: threshold", "Threshold not set", 400)

    @app.post("/apply/{category}")
    async def apply_category(request: Request, category: str) -> Response:
        # apply_verdicts removed its copies on any failure: say why, keep serving
        action = r.apply and (lambda fields, lead: r.apply(category, lead))  # type: ignore[misc]
        unknown = None if category in r.log.categories() else f"No logged predictions of category {category!r}."
        return await r.lead_action(request, action, f"{category}: verdicts applied", "Nothing applied", 409, unknown)


def queue_items(log: PredictionLog, f: dict[str, str]) -> list[dict[str, Any]]:
    """Logged predictions matching the filters, nearest the threshold (relative) first, at most ``QUEUE_LIMIT``."""
    until = _day(f["until"])
    return log.predictions(
        category=f["category"] or None, station=f["station"] or None, since=_day(f["since"]), until=until + timedelta(days=1) if until else None,
        review=None if f["review"] == "all" else f["review"], anomalous={"anomalous": True, "normal": False}.get(f["decision"]),
        nearest_threshold=True, limit=QUEUE_LIMIT,
    )  # fmt: skip


def drawn_mask(data_url: str) -> np.ndarray | None:
    """The region a reviewer drew (a PNG data URL of the canvas) -> (H, W) bool, None when nothing was drawn."""
    if not data_url:
        return None
    prefix = "data:image/png;base64,"
    if not data_url.startswith(prefix) or len(data_url) > MAX_MASK_BYTES:
        raise ValueError("the drawn region must be a PNG data URL of at most 8 MB")
    from PIL import Image

    try:
        drawing = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :], validate=True)))
        alpha = np.asarray(drawing.convert("RGBA"))[..., 3]
    except (ValueError, OSError) as error:
        raise ValueError(f"the drawn region is not a readable PNG ({error})") from None
    return alpha > 0 if alpha.any() else None


def _day(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%d") if value else None
    except ValueError:
        return None


def render_overlay(log: PredictionLog, prediction: dict[str, Any], image_path: Path) -> bytes:
    """The image beside its heatmap, the region above the threshold outlined (``onenip.plots.prediction_overlay``)."""
    from PIL import Image

    from onenip.data.resample import resize_chw
    from onenip.plots import prediction_overlay

    assert log.store is not None
    picture = Image.open(image_path).convert("RGB")
    heatmap = resize_chw(log.store.heatmap(prediction["heatmap_path"]), (picture.height, picture.width), antialias=False)
    buffer = io.BytesIO()
    prediction_overlay(picture, heatmap, prediction["score"], prediction["threshold"]).save(buffer, format="PNG")
    return buffer.getvalue()
