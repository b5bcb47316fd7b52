"""The index.html report of predict and evaluate: order, filters, threshold, escaping, image links; and
the page in a real browser (Chromium) when one is installed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onenip.report import EVALUATE_KINDS, PREDICT_KINDS, evaluation_items, predict_items, score_histogram_svg, write_report
from tests.helpers.browser import chromium_page


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(np.full((24, 32, 3), 40 * i % 255, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _predict_report(tmp_path: Path) -> tuple[Path, list[float]]:
    paths = _images(tmp_path / "images", 5)
    scores = [0.2, 0.9, 0.5, 0.1, 0.7]
    rows = [{"image_path": str(p), "category": "plate", "score": s, "threshold": 0.6, "is_anomaly": s > 0.6} for p, s in zip(paths, scores)]
    failures = [{"image_path": str(tmp_path / "broken<script>.png"), "error": "broken<script>.png: not an image"}]
    out = tmp_path / "report"
    write_report(out, predict_items(rows, failures), title="Predictions", threshold=0.6, model="models:/onenip-x-plate/3", kinds=PREDICT_KINDS)
    return out / "index.html", scores


def test_predict_report_sorted_by_score_with_counts_threshold_and_escaped_names(tmp_path: Path) -> None:
    page, scores = _predict_report(tmp_path)
    html = page.read_text()
    shown = [float(s) for s in re.findall(r'class="score">([0-9.]+)<', html)]
    assert shown == sorted(scores, reverse=True)  # highest first; the unreadable file has no score and comes last
    assert re.findall(r'data-kind="(\w+)"', html) == ["anomalous", "anomalous", "normal", "normal", "normal", "error"]
    assert "Anomalous (2)" in html and "Normal (3)" in html and "Errors (1)" in html
    assert 'id="threshold">0.6<' in html and "models:/onenip-x-plate/3" in html
    assert "<script>.png" not in html and "broken&lt;script&gt;.png" in html  # a file name cannot inject markup
    for src in re.findall(r'<img src="([^"]+)"', html):  # relative links that resolve to the images
        assert (page.parent / src).resolve().is_file()


def test_histogram_bars_count_every_score_and_the_line_sits_at_the_threshold() -> None:
    from onenip.report import ReportItem

    items = [ReportItem(str(i), "normal", float(s)) for i, s in enumerate(np.linspace(0, 1, 50))]
    svg = score_histogram_svg(items, threshold=0.25, bins=10, width=220, height=100)
    counts = [int(c) for c in re.findall(r"<title>normal: (\d+)</title>", svg)]
    assert sum(counts) == 50
    x = float(re.search(r'id="threshold-line" x1="([0-9.]+)"', svg).group(1))  # type: ignore[union-attr]
    assert x == pytest.approx(30 + 0.25 * (220 - 60), abs=0.1)


def test_evaluation_items_put_missed_defects_then_false_alarms_first(tmp_path: Path) -> None:
    labels = [0, 1, 1, 0, 1, 0]
    scores = [0.1, 0.3, 0.9, 0.8, 0.2, 0.7]
    items = evaluation_items([f"{i}.png" for i in range(6)], labels, scores, 0.5, ["good", "crack", "crack", "good", "hole", "good"], {})
    assert [(i.name, i.kind) for i in items] == [
        ("4.png", "missed"), ("1.png", "missed"),  # lowest score first: the hardest misses
        ("3.png", "false-alarm"), ("5.png", "false-alarm"),
        ("2.png", "found"), ("0.png", "normal"),
    ]  # fmt: skip
    assert set(EVALUATE_KINDS) == {i.kind for i in items}


def test_report_page_in_chromium_loads_filters_and_shows_images(tmp_path: Path) -> None:
    page_path, _ = _predict_report(tmp_path)
    with chromium_page() as page:
        page.goto(page_path.as_uri())
        assert page.title() == "Predictions"
        cards = page.locator("#grid .card")
        assert cards.count() == 6
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths == [32] * 5  # every image loaded from its relative link
        assert page.locator("#histogram rect.bar").count() > 0 and page.locator("#threshold-line").count() == 1
        for kind, expected in (("anomalous", 2), ("normal", 3), ("error", 1), ("all", 6)):
            page.click(f'button[data-filter="{kind}"]')
            visible = page.locator("#grid .card:visible")
            assert visible.count() == expected, kind
            if kind != "all":
                assert set(visible.evaluate_all("cards => cards.map(c => c.dataset.kind)")) == {kind}
            assert page.inner_text("#shown") == f"{expected} shown"
