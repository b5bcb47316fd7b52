"""The line's pieces on tiny inputs: operating points, the image store, the prediction log (verdicts as an
audit trail, summaries), users and sessions, the review app's refusals, and the drift checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from onenip.config import MonitoringParams
from onenip.monitoring.drift import check_drift
from onenip.monitoring.log import LoggedPrediction, PredictionLog, image_statistics
from onenip.monitoring.store import ImageStore, StoreFull
from onenip.operating_points import OperatingPoint, OperatingPointError, changed, expected_fpr, threshold_for_fpr
from onenip.review.app import COOKIE, create_app
from onenip.review.auth import AuthError, Sessions, User, add_user, authenticate, read_users


def image(value: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(value + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def test_threshold_for_a_false_alarm_rate_is_the_quantile_of_calibration_scores() -> None:
    scores = np.arange(100, dtype=np.float64) / 100  # 0.00 ... 0.99
    value = threshold_for_fpr(scores, 0.05)
    assert expected_fpr(scores, value) == pytest.approx(0.05, abs=0.011)
    assert expected_fpr(scores, threshold_for_fpr(scores, 0.0)) == 0.0
    with pytest.raises(OperatingPointError, match="--fpr"):
        threshold_for_fpr(scores, 1.5)
    point = changed(OperatingPoint(0.5, "calibration"), 0.7, "value", "ana", "2026-12-06T10:00:00Z", scores)
    assert point.history == [{"at": "2026-12-06T10:00:00Z", "by": "ana", "old": 0.5, "new": 0.7, "how": "value"}]
    assert point.expected_fpr == pytest.approx(0.29)


def test_store_refuses_paths_outside_and_past_its_cap(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", max_bytes=10_000)
    relative, heatmap = store.put("2026-12-06", "ab" * 32, image(100), np.ones((8, 8), np.float32))
    assert store.resolve(relative).is_file() and store.heatmap(heatmap).shape == (8, 8)
    (tmp_path / "secret.txt").write_text("x")
    for bad in ("../secret.txt", "/etc/passwd", "2026-12-06/../../secret.txt"):
        with pytest.raises(ValueError, match="not a file of the store"):
            store.resolve(bad)
    with pytest.raises(StoreFull):
        for i in range(10):
            store.put("2026-12-06", f"{i:064d}", image(100, 64, seed=i), None)


def make_log(tmp_path: Path, max_bytes: int = 10**8) -> PredictionLog:
    return PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", ImageStore(tmp_path / "store", max_bytes))


def test_log_keeps_every_verdict_and_summarises(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    records = [LoggedPrediction("plate", s, 0.5, s > 0.5, image(90 + i, seed=i), np.full((4, 4), s, np.float32), station="A")
               for i, s in enumerate([0.1, 0.45, 0.55, 0.9])]  # fmt: skip
    log.submit(records)
    log.flush()
    rows = log.predictions(category="plate")
    assert len(rows) == 4 and all(r["image_path"] and r["heatmap_path"] for r in rows)
    alarm = next(r for r in rows if r["score"] == 0.55)["id"]
    log.add_verdict(alarm, "defect", "ana", "reviewer", "scratch")
    log.add_verdict(alarm, "normal", "ben", "lead", comment="reflection")  # supersedes, keeps the first
    history = log.verdicts(alarm)
    assert [v["label"] for v in history] == ["defect", "normal"] and history[0]["defect_type"] == "scratch"
    miss = next(r for r in rows if r["score"] == 0.45)["id"]
    log.add_verdict(miss, "defect", "ana", "reviewer", "dent")
    summary = log.summary("plate", 1)
    assert summary == {"predictions": 4, "alarms": 2, "alarm_rate": 0.5, "reviewed_alarms": 1, "false_alarm_rate": 1.0,
                       "misses_found": 1, "reviewed": 2}  # fmt: skip
    with pytest.raises(KeyError):
        log.add_verdict("no-such-id", "normal", "ana", "reviewer")
    assert [r["label"] for r in log.unapplied("plate")] == ["defect", "normal"] or len(log.unapplied("plate")) == 2


def test_a_broken_database_never_fails_the_caller(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'missing-folder' / 'log.db'}", None)
    log.submit([LoggedPrediction("plate", 0.2, 0.5, False, image(100))])  # returns at once
    log.flush()
    assert log.failures == 1


def test_users_file_holds_hashes_and_refuses_bad_entries(tmp_path: Path) -> None:
    users = tmp_path / "reviewers.yaml"
    add_user(users, "ana", "reviewer", "correct horse")
    assert "correct horse" not in users.read_text() and oct(users.stat().st_mode)[-3:] == "600"
    assert authenticate(read_users(users), "ana", "correct horse") == User("ana", "reviewer")
    assert authenticate(read_users(users), "ana", "wrong") is None and authenticate(read_users(users), "bob", "x") is None
    for name, role, password, message in (("ana", "admin", "longenough", "role"), ("a/b", "lead", "longenough", "user name"), ("c", "lead", "short", "8")):
        with pytest.raises(AuthError, match=message):
            add_user(users, name, role, password)
    sessions = Sessions("s" * 64)
    user, csrf = sessions.read(sessions.issue(User("ana", "reviewer")))  # type: ignore[misc]
    assert user.name == "ana" and len(csrf) > 20
    assert sessions.read("forged") is None and Sessions("t" * 64).read(sessions.issue(user)) is None


@pytest.fixture
def review(tmp_path: Path) -> tuple[TestClient, PredictionLog, list[str]]:
    log = make_log(tmp_path)
    records = [LoggedPrediction("plate", s, 0.5, s > 0.5, image(100, seed=i), np.full((8, 8), s, np.float32), station="A") for i, s in enumerate([0.2, 0.6])]
    log.submit(records)
    log.flush()
    users = tmp_path / "reviewers.yaml"
    add_user(users, "ana", "reviewer", "reviewer-pass")
    add_user(users, "lee", "lead", "lead-pass-1")
    applied: list[str] = []
    app = create_app(log, users, "k" * 64, apply=lambda category, user: applied.append(f"{category}:{user.name}") or "applied")
    return TestClient(app), log, applied


def login(client: TestClient, name: str, password: str) -> str:
    response = client.post("/login", data={"username": name, "password": password}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/").text
    return page.split('name="csrf" value="')[1].split('"')[0]


def test_review_app_refuses_what_it_must_and_writes_nothing(review: tuple[TestClient, PredictionLog, list[str]]) -> None:
    client, log, applied = review
    ids = [r["id"] for r in log.predictions()]
    assert client.get("/", follow_redirects=False).status_code == 303  # to the login
    assert client.get(f"/image/{ids[0]}").status_code == 401
    wrong = client.post("/login", data={"username": "ana", "password": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    csrf = login(client, "ana", "reviewer-pass")
    assert client.post(f"/item/{ids[0]}/verdict", data={"label": "normal"}).status_code == 403  # no CSRF token
    assert client.post(f"/item/{ids[0]}/verdict", data={"label": "normal", "csrf": "forged"}).status_code == 403
    assert client.post(f"/item/{ids[0]}/verdict", data={"label": "normal", "csrf": "fälscht"}).status_code == 403
    assert client.post("/item/nope/verdict", data={"label": "normal", "csrf": csrf}).status_code == 404
    assert client.get("/item/nope").status_code == 404
    for path in ("/image/..%2F..%2Freviewers.yaml", "/image/../reviewers.yaml", "/overlay/%2Fetc%2Fpasswd"):
        assert client.get(path).status_code == 404
    assert client.post("/apply/plate", data={"csrf": csrf}).status_code == 403  # a reviewer
    assert all(not log.verdicts(i) for i in ids) and applied == []
    # the image and its overlay come from the store, by id
    assert client.get(f"/image/{ids[0]}").headers["content-type"] == "image/png"
    assert client.get(f"/overlay/{ids[0]}").content[:4] == b"\x89PNG"
    ok = client.post(f"/item/{ids[1]}/verdict", data={"label": "defect", "defect_type": "scratch", "csrf": csrf}, follow_redirects=False)
    assert ok.status_code == 303 and log.verdicts(ids[1])[0]["user"] == "ana"
    page = client.get("/").text  # reviewed items leave the default queue
    assert ids[1] not in page and ids[0] in page


def test_review_queue_puts_the_nearest_to_the_threshold_first(review: tuple[TestClient, PredictionLog, list[str]]) -> None:
    client, log, applied = review
    log.submit([LoggedPrediction("plate", 0.49, 0.5, False, image(100, seed=9), station="B")])
    log.flush()
    login(client, "lee", "lead-pass-1")
    page = client.get("/?review=all").text
    scores = [float(s.split(" /")[0]) for s in page.split("score ")[1:]]
    assert scores == [0.49, 0.6, 0.2]
    assert client.get("/?station=B").text.count('class="card"') == 1
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert client.post("/apply/plate", data={"csrf": csrf}).status_code == 200 and applied == ["plate:lee"]


def test_drift_fires_on_darkened_images_and_stays_quiet_on_normal_traffic(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", None)
    rng = np.random.default_rng(0)
    calibration = rng.normal(0.3, 0.05, 200)
    normal = [LoggedPrediction("plate", float(s), 0.45, s > 0.45, image(120, seed=i), station="A") for i, s in enumerate(rng.normal(0.3, 0.05, 40))]
    dark = [LoggedPrediction("plate", float(s), 0.45, s > 0.45, image(30, seed=i), station="B") for i, s in enumerate(rng.normal(0.6, 0.05, 40))]
    log.submit(normal + dark)
    log.flush()
    train = tmp_path / "train"
    train.mkdir()
    from PIL import Image

    for i in range(30):
        Image.fromarray(image(120, seed=100 + i)).save(train / f"{i}.png")
    checks = check_drift(log, MonitoringParams(drift_min_images=20), lambda version, category: calibration, lambda category: sorted(train.glob("*.png")))
    fired = {(c["station"], c["check"]) for c in checks if c["fired"]}
    assert {station for station, _ in fired} == {"B"}, checks  # the normal station stays quiet
    assert {("B", "alarm_rate"), ("B", "score"), ("B", "brightness"), ("B", "contrast")} <= fired, checks
    assert ("B", "size") not in fired  # the same 32 x 32 parts
    log.submit([LoggedPrediction("plate", 0.3, 0.45, False, image(120, size=48, seed=i), station="C") for i in range(25)])
    log.flush()
    checks = check_drift(log, MonitoringParams(drift_min_images=20), lambda version, category: calibration, lambda category: sorted(train.glob("*.png")))
    assert {c["check"] for c in checks if c["fired"] and c["station"] == "C"} == {"size"}, checks  # a new camera's size
    assert json.loads(next(c for c in checks if c["station"] == "B" and c["check"] == "brightness")["detail"])["median_shift_in_std"] < -1
    assert image_statistics(image(30))["brightness"] < image_statistics(image(120))["brightness"]


def test_feedback_leaves_the_data_as_it_was_when_a_later_step_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onenip.feedback as feedback
    from onenip.config import Params

    log = make_log(tmp_path)
    records = [LoggedPrediction("plate", s, 0.5, s > 0.5, image(60 + 40 * i, seed=i), station="A") for i, s in enumerate([0.7, 0.8])]
    log.submit(records)
    log.flush()
    log.add_verdict(records[0].id, "normal", "ana", "reviewer")
    log.add_verdict(records[1].id, "defect", "ana", "reviewer", "scratch", mask=np.ones((32, 32), bool))
    params = Params.model_validate({"data": {"name": "widgets"}})
    folder = tmp_path / "data" / "widgets" / "plate" / "train" / "good"
    folder.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))

    def broken(*args: object) -> str:
        raise RuntimeError("dvc push: remote unreachable")

    monkeypatch.setattr(feedback, "_validate_and_version", broken)
    with pytest.raises(feedback.FeedbackError, match="nothing was added .*remote unreachable"):
        feedback.apply_verdicts(log, params, tmp_path, "plate", "lee")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*") if p.is_file()) == [b for b in before if (tmp_path / b).is_file()]
    assert len(log.unapplied("plate")) == 2  # nothing recorded as applied

    monkeypatch.setattr(feedback, "_validate_and_version", lambda *args: "v2")
    result = feedback.apply_verdicts(log, params, tmp_path, "plate", "lee")
    assert result.added == {"train/good": 1, "test/scratch": 1} and result.data_version == "v2"
    assert not (tmp_path / "data" / "widgets" / "plate" / "ground_truth").exists()  # a mask-less category stays image-level
    assert log.unapplied("plate") == []


def test_served_threshold_follows_the_registry_without_holding_up_a_prediction() -> None:
    import time as clock
    from types import SimpleNamespace

    from onenip.registry_thresholds import RegistryThreshold

    class Registry:
        def __init__(self) -> None:
            self.tags: dict[str, str] = {}
            self.fail = False

        def get_model_version(self, name: str, version: str) -> SimpleNamespace:
            if self.fail:
                raise ConnectionError("tracking server down")
            return SimpleNamespace(tags=dict(self.tags))

    registry = Registry()
    source = RegistryThreshold.from_uri("models:/onenip-x-plate/3", ttl=0.05, client=registry)  # type: ignore[arg-type]
    assert (source.name, source.version) == ("onenip-x-plate", "3")
    assert source("plate") is None  # nothing set: the trained threshold holds
    registry.tags["onenip.threshold"] = "0.7"
    clock.sleep(0.06)
    source("plate")  # starts a background refresh, answers at once
    deadline = clock.monotonic() + 5
    while source("plate") != 0.7:
        assert clock.monotonic() < deadline
        clock.sleep(0.02)
    registry.fail = True
    registry.tags["onenip.threshold"] = "0.9"
    clock.sleep(0.2)
    assert source("plate") == 0.7  # the registry is down: the last value read holds
    registry.fail, registry.tags["onenip.threshold"] = False, "not a number"
    clock.sleep(0.2)
    source("plate")
    clock.sleep(0.2)
    assert source("plate") == 0.7  # a malformed tag: still the last good value
