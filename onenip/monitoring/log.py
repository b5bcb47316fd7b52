"""The prediction log: every served (and, when asked, CLI) prediction, the operators' verdicts on them,
what was applied to the data, and the drift checks. SQLite in the project by default, PostgreSQL in
the team setup (any SQLAlchemy URL).

Writing never slows or fails a prediction: ``PredictionLog.submit`` hands the record to one background
writer through a bounded queue; a full queue, a full disk or a down database is reported on the
logger (and counted in ``failures``), and the prediction has been answered already. Verdicts are
append-only: a new verdict on a prediction supersedes the earlier ones, nothing is overwritten."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from onenip.monitoring.store import ImageStore

if TYPE_CHECKING:
    from onenip.config import Params

logger = logging.getLogger(__name__)

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    "predictions", METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("station", sa.String(128)),
    sa.Column("category", sa.String(128), nullable=False, index=True),
    sa.Column("model_version", sa.String(256)),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("is_anomaly", sa.Boolean, nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("source", sa.String(32)),
    sa.Column("image_sha256", sa.String(64), nullable=False),
    sa.Column("image_path", sa.String(256)),
    sa.Column("heatmap_path", sa.String(256)),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("brightness", sa.Float),
    sa.Column("contrast", sa.Float),
    sa.Column("sharpness", sa.Float),
)  # fmt: skip
VERDICTS = sa.Table(
    "verdicts", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(32), sa.ForeignKey("predictions.id"), nullable=False, index=True),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("defect_type", sa.String(64)),
    sa.Column("comment", sa.Text),
    sa.Column("mask_path", sa.String(256)),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("model_version", sa.String(256)),
    sa.Column("threshold", sa.Float),
)  # fmt: skip
APPLIED = sa.Table(
    "applied_verdicts", METADATA,
    sa.Column("verdict_id", sa.Integer, sa.ForeignKey("verdicts.id"), primary_key=True),
    sa.Column("path", sa.String(512), nullable=False),
    sa.Column("data_version", sa.String(64)),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)  # fmt: skip
DRIFT_CHECKS = sa.Table(
    "drift_checks", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("station", sa.String(128)),
    sa.Column("check", sa.String(64), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("limit", sa.Float),
    sa.Column("fired", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text),
)  # fmt: skip

LABELS = ("defect", "normal", "unsure")
"""An operator's verdict: a real defect, a false alarm / good part, or not sure."""


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL: the review page reads while the server writes; synchronous NORMAL: a commit without an fsync each."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _lower_priority() -> None:
    """Nice the calling thread (Linux: a thread has its own nice value), so that on a machine whose cores
    the scoring uses, the log's work waits for them instead of slowing a request."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the writer runs at normal priority
        pass


def _conditions(category: str | None, station: str | None, since: datetime | None, until: datetime | None, anomalous: bool | None) -> list[Any]:
    conditions = [column == value for column, value in ((PREDICTIONS.c.category, category), (PREDICTIONS.c.station, station)) if value]
    if since is not None:
        conditions.append(PREDICTIONS.c.created_at >= since)
    if until is not None:
        conditions.append(PREDICTIONS.c.created_at < until)
    if anomalous is not None:
        conditions.append(PREDICTIONS.c.is_anomaly == anomalous)
    return conditions


def _cut(text: str | None, length: int) -> str | None:
    """A free-text field at most its column's length (PostgreSQL refuses longer ones); empty -> None."""
    return (text or "")[:length] or None


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Brightness (mean grey, 0-255), contrast (its standard deviation) and sharpness (mean absolute
    Laplacian) of an (H, W, 3) uint8 image, on a copy at most 256 px on its long side."""
    grey = image.astype(np.float32).mean(axis=2)
    step = max(1, max(grey.shape) // 256)
    grey = grey[::step, ::step]
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return {"brightness": float(grey.mean()), "contrast": float(grey.std()), "sharpness": float(np.abs(laplacian).mean()) if laplacian.size else 0.0}


@dataclass
class LoggedPrediction:
    """What one prediction leaves in the log (``image`` and ``heatmap`` go to the store, not the database)."""

    category: str
    score: float
    threshold: float
    is_anomaly: bool
    image: np.ndarray
    heatmap: np.ndarray | None = None
    station: str | None = None
    model_version: str | None = None
    latency_ms: float | None = None
    source: str = "serve"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=now)

    @classmethod
    def of(cls, prediction: Any, image: Any, **fields: Any) -> LoggedPrediction:
        """The record of a ``serving.Prediction`` of ``image`` (a PIL image or array; kept as RGB uint8)."""
        from onenip.serving.base import as_rgb_uint8

        return cls(prediction.category, prediction.score, prediction.threshold, prediction.is_anomaly, as_rgb_uint8(image),
                   prediction.anomaly_map, **fields)  # fmt: skip


class PredictionLog:
    """The log's database and store; ``submit`` for predictions (background), the rest synchronous."""

    def __init__(self, url: str, store: ImageStore | None, *, queue_size: int = 256) -> None:
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.store = store
        self.failures = 0
        self._queue: queue.Queue[LoggedPrediction | None] = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._ready = False

    def ensure_schema(self) -> None:
        """Create the tables that are missing. The server, the review page and the CLI may do it at the same
        moment: a table another process created in between is not an error (the second pass finds it)."""
        if self._ready:
            return
        for attempt in range(3):
            try:
                METADATA.create_all(self.engine)
                break
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._ready = True

    # -- predictions --------------------------------------------------------------------------------
    def submit(self, records: Sequence[LoggedPrediction]) -> None:
        """Queue records for the background writer; never raises, never blocks."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="prediction-log", daemon=True)
                self._writer.start()
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._report(f"prediction log queue full: {record.id} not logged")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every submitted record is written (tests, and the CLI before it exits)."""
        if self._writer is None:
            return
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def _drain(self) -> None:
        _lower_priority()  # the copies and the insert use what the scoring leaves of the cores
        while True:
            record = self._queue.get()
            try:
                if record is not None:
                    self.write(record)
            except Exception as error:  # noqa: BLE001 - a log write must never take the server down
                self._report(f"prediction {record.id if record else '?'} not logged: {error}")
            finally:
                self._queue.task_done()

    def _report(self, message: str) -> None:
        self.failures += 1
        logger.warning(message)

    def write(self, record: LoggedPrediction) -> None:
        """Store the copies (skipped with a warning when the store is full or failing), then insert the row."""
        sha = hashlib.sha256(np.ascontiguousarray(record.image).tobytes()).hexdigest()
        image_path = heatmap_path = None
        if self.store is not None:
            try:
                image_path, heatmap_path = self.store.put(record.created_at.strftime("%Y-%m-%d"), sha, record.image, record.heatmap)
            except OSError as error:
                self._report(f"prediction {record.id}: copies not stored ({error})")
        self.ensure_schema()
        row = {
            "id": record.id, "created_at": record.created_at, "station": _cut(record.station, 128), "category": record.category,
            "model_version": record.model_version, "threshold": float(record.threshold), "score": float(record.score),
            "is_anomaly": bool(record.is_anomaly), "latency_ms": record.latency_ms, "source": record.source,
            "image_sha256": sha, "image_path": image_path, "heatmap_path": heatmap_path,
            "width": int(record.image.shape[1]), "height": int(record.image.shape[0]), **image_statistics(record.image),
        }  # fmt: skip
        with self.engine.begin() as connection:
            connection.execute(PREDICTIONS.insert().values(**row))

    # -- reading --------------------------------------------------------------------------------------
    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        self.ensure_schema()
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(PREDICTIONS).where(PREDICTIONS.c.id == prediction_id)).mappings().first()
        return None if row is None else dict(row)

    def _joined(self, *columns: Any) -> Any:
        """A select of ``columns`` over the predictions, each joined with its newest verdict (if any)."""
        self.ensure_schema()
        latest = (
            sa.select(VERDICTS.c.prediction_id, sa.func.max(VERDICTS.c.id).label("verdict_id")).group_by(VERDICTS.c.prediction_id).subquery()
        )
        joined = PREDICTIONS.outerjoin(latest, latest.c.prediction_id == PREDICTIONS.c.id).outerjoin(VERDICTS, VERDICTS.c.id == latest.c.verdict_id)
        return sa.select(*columns).select_from(joined)

    def predictions(
        self, *, category: str | None = None, station: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int | None = None, review: str | None = None, anomalous: bool | None = None, nearest_threshold: bool = False,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Logged predictions with their current verdict (``label``, ``defect_type``, ``mask_path``,
        ``verdict_user``, ``verdict_id``), newest first or (``nearest_threshold``) nearest their threshold
        first. ``review``: ``unreviewed`` or a label; ``anomalous``: the model's decision. Filtered, sorted
        and limited in the database (a week of a line's traffic is a lot of rows)."""
        query = self._joined(PREDICTIONS, VERDICTS.c.label, VERDICTS.c.defect_type, VERDICTS.c.mask_path,
                             VERDICTS.c.user.label("verdict_user"), VERDICTS.c.id.label("verdict_id"))  # fmt: skip
        for condition in _conditions(category, station, since, until, anomalous):
            query = query.where(condition)
        if review == "unreviewed":
            query = query.where(VERDICTS.c.id.is_(None))
        elif review:
            query = query.where(VERDICTS.c.label == review)
        if nearest_threshold:
            distance = sa.func.abs(PREDICTIONS.c.score - PREDICTIONS.c.threshold) / sa.func.nullif(sa.func.abs(PREDICTIONS.c.threshold), 0)
            query = query.order_by(distance.asc(), PREDICTIONS.c.created_at.desc())
        else:
            query = query.order_by(PREDICTIONS.c.created_at.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    # -- verdicts ---------------------------------------------------------------------------------------
    def add_verdict(
        self, prediction_id: str, label: str, user: str, role: str, defect_type: str | None = None, comment: str | None = None,
        mask: np.ndarray | None = None,
    ) -> int:  # fmt: skip
        """Append a verdict (the newest one on a prediction is its verdict); ``KeyError`` for an unknown
        prediction. ``mask``: a defect's region drawn by the reviewer ((H, W) bool at the image's size), kept in the store."""
        if label not in LABELS:
            msg = f"verdict must be one of {LABELS}, got {label!r}"
            raise ValueError(msg)
        prediction = self.prediction(prediction_id)
        if prediction is None:
            raise KeyError(prediction_id)
        mask_path = None
        if mask is not None and label == "defect" and mask.any() and self.store is not None:
            mask_path = self.store.put_mask(prediction["created_at"].strftime("%Y-%m-%d"), uuid.uuid4().hex, mask)
        row = {"prediction_id": prediction_id, "label": label, "defect_type": _cut(defect_type, 64) if label == "defect" else None,
               "comment": _cut(comment, 4000), "mask_path": mask_path, "user": _cut(user, 64), "role": role, "created_at": now(),
               "model_version": prediction["model_version"], "threshold": prediction["threshold"]}  # fmt: skip
        with self.engine.begin() as connection:
            return int(connection.execute(VERDICTS.insert().values(**row)).inserted_primary_key[0])

    def verdicts(self, prediction_id: str) -> list[dict[str, Any]]:
        self.ensure_schema()
        with self.engine.connect() as connection:
            query = sa.select(VERDICTS).where(VERDICTS.c.prediction_id == prediction_id).order_by(VERDICTS.c.id)
            return [dict(row) for row in connection.execute(query).mappings()]

    def unapplied(self, category: str) -> list[dict[str, Any]]:
        """Current verdicts of a category (defect or normal) not applied to the data yet."""
        applied = {row["verdict_id"] for row in self._applied()}
        return [row for row in self.predictions(category=category) if row["label"] in ("defect", "normal") and row["verdict_id"] not in applied]

    def _applied(self) -> list[dict[str, Any]]:
        self.ensure_schema()
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.select(APPLIED)).mappings()]

    def mark_applied(self, verdict_id: int, path: str, data_version: str | None, user: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(APPLIED.insert().values(verdict_id=verdict_id, path=path[:512], data_version=data_version, user=_cut(user, 64), created_at=now()))

    # -- summaries and drift -------------------------------------------------------------------------------
    def summary(self, category: str, days: float) -> dict[str, Any]:
        """Alarm rate, false-alarm rate among reviewed alarms and misses found, over the last ``days`` (counted in the database)."""
        alarm, label = PREDICTIONS.c.is_anomaly, VERDICTS.c.label
        reviewed_label = label.in_(("defect", "normal"))

        def count(condition: Any) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        query = self._joined(sa.func.count(), count(alarm), count(sa.and_(alarm, reviewed_label)), count(sa.and_(alarm, label == "normal")),
                             count(sa.and_(sa.not_(alarm), label == "defect")), count(label.is_not(None)))  # fmt: skip
        for condition in _conditions(category, None, now() - timedelta(days=days), None, None):
            query = query.where(condition)
        with self.engine.connect() as connection:
            total, alarms, reviewed_alarms, false_alarms, misses, reviewed = (int(v) for v in connection.execute(query).one())
        return {
            "predictions": total, "alarms": alarms, "alarm_rate": alarms / total if total else None,
            "reviewed_alarms": reviewed_alarms, "false_alarm_rate": false_alarms / reviewed_alarms if reviewed_alarms else None,
            "misses_found": misses, "reviewed": reviewed,
        }  # fmt: skip

    def record_drift(self, checks: Sequence[dict[str, Any]]) -> None:
        self.ensure_schema()
        with self.engine.begin() as connection:
            for check in checks:
                connection.execute(DRIFT_CHECKS.insert().values(created_at=now(), **check))

    def latest_drift(self, limit: int = 50) -> list[dict[str, Any]]:
        self.ensure_schema()
        with self.engine.connect() as connection:
            query = sa.select(DRIFT_CHECKS).order_by(DRIFT_CHECKS.c.id.desc()).limit(limit)
            return [dict(row) for row in connection.execute(query).mappings()]

    def categories(self) -> list[str]:
        self.ensure_schema()
        with self.engine.connect() as connection:
            return sorted(r[0] for r in connection.execute(sa.select(PREDICTIONS.c.category).distinct()))


def log_url(database: str | None, project_root: str | Path) -> str:
    """``ONENIP_PREDICTION_LOG``, else ``monitoring.database``, else SQLite in the project."""
    return os.environ.get("ONENIP_PREDICTION_LOG") or database or f"sqlite:///{Path(project_root).resolve() / 'predictions.db'}"


def open_log(params: Params, project_root: str | Path) -> PredictionLog:
    """The project's prediction log and image store (``monitoring`` in params.yaml)."""
    cfg = params.monitoring
    store = ImageStore(Path(project_root) / cfg.store, int(cfg.store_max_mb * 1e6))
    return PredictionLog(log_url(cfg.database, project_root), store)
