"""The review page in a real browser (Chromium through Playwright; skips loudly without them): login,
the queue with its images, filters, an item with its image and overlay, a region drawn with the mouse
and a verdict saved with it; what a reviewer does not see (the lead's buttons)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from onenip.monitoring.log import LoggedPrediction, PredictionLog
from onenip.monitoring.store import ImageStore
from onenip.review.app import create_app
from onenip.review.auth import add_user
from tests.helpers.browser import chromium_page
from tests.helpers.net import free_port


@pytest.fixture
def review_server(tmp_path: Path) -> tuple[str, PredictionLog]:
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", ImageStore(tmp_path / "store", 10**8))
    rng = np.random.default_rng(0)
    records = []
    for i, (score, station) in enumerate([(0.2, "A"), (0.48, "A"), (0.7, "B"), (0.9, "B")]):
        picture = np.clip(120 + rng.normal(0, 15, (96, 128, 3)), 0, 255).astype(np.uint8)
        heatmap = np.zeros((48, 64), np.float32)
        heatmap[10 + i : 20 + i, 20:30] = score * 2
        records.append(LoggedPrediction("plate", score, 0.5, score > 0.5, picture, heatmap, station=station, model_version="models:/onenip-x-plate/1"))
    log.submit(records)
    log.flush()
    users = tmp_path / "reviewers.yaml"
    add_user(users, "ana", "reviewer", "reviewer-pass")
    server = uvicorn.Server(uvicorn.Config(create_app(log, users, "k" * 64, apply=lambda c, u: "applied"), port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield f"http://127.0.0.1:{server.config.port}", log
    server.should_exit = True
    thread.join(10)


def test_review_page_in_chromium(review_server: tuple[str, PredictionLog]) -> None:
    base, log = review_server
    with chromium_page() as page:
        page.goto(base + "/")
        assert page.url.endswith("/login")
        page.fill("input[name=username]", "ana")
        page.fill("input[name=password]", "wrong")
        page.click("button")
        assert "Wrong user name or password" in page.content()
        page.fill("input[name=username]", "ana")
        page.fill("input[name=password]", "reviewer-pass")
        page.click("button")
        page.wait_for_selector(".card")
        assert page.locator(".card").count() == 4 and page.inner_text("#count").startswith("4 shown")
        scores = [float(t.split()[1]) for t in page.locator(".card div:nth-child(3)").all_inner_texts()]
        assert scores == [0.48, 0.7, 0.2, 0.9]  # nearest the threshold first
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(e => e.complete)")
        widths = page.eval_on_selector_all(".card img", "els => els.map(e => e.complete && e.naturalWidth)")
        assert all(w and w > 100 for w in widths), widths  # overlays (image | heatmap) loaded
        assert page.locator("text=apply verdicts to data").count() == 0  # a reviewer has no lead buttons
        page.select_option("select[name=decision]", "anomalous")
        page.click("text=filter")
        assert page.locator(".card").count() == 2
        page.locator(".card a").first.click()
        page.wait_for_selector("#mask-canvas")
        page.wait_for_function("document.getElementById('image').complete && document.getElementById('overlay').complete")
        assert page.eval_on_selector("#image", "e => e.naturalWidth") == 128 and page.eval_on_selector("#overlay", "e => e.naturalWidth") > 128
        box = page.locator("#mask-canvas").bounding_box()
        page.mouse.move(box["x"] + 20, box["y"] + 20)
        page.mouse.down()
        page.mouse.move(box["x"] + 40, box["y"] + 30, steps=5)
        page.mouse.up()
        page.check("input[value=defect]")
        page.fill("input[name=defect_type]", "scratch")
        page.click("#verdict button")
        page.wait_for_selector("#history td")
        assert "(region drawn)" in page.inner_text("#history") and "scratch" in page.inner_text("#history")
    prediction_id = next(r["id"] for r in log.predictions() if r["label"] == "defect")
    (verdict,) = log.verdicts(prediction_id)
    mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(log.store.resolve(verdict["mask_path"])))
    assert mask.shape == (96, 128) and 0 < (mask > 0).mean() < 0.5  # the drawn stroke, at the image's size
