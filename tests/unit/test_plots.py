"""The prediction overlay a person reads: verdict header, outlined region, colour bar with the threshold."""

from __future__ import annotations

import numpy as np
from PIL import Image

from onenip.plots import BAR_PX, HEADER_PX, prediction_overlay


def _picture() -> Image.Image:
    return Image.fromarray(np.full((40, 50), 90, dtype=np.uint8))


def test_an_anomalous_image_has_a_red_header_an_outlined_region_and_the_threshold_on_the_bar() -> None:
    anomaly_map = np.zeros((40, 50), dtype=np.float32)
    anomaly_map[10:20, 30:42] = 2.0  # above the threshold 1.0: the predicted region
    canvas = np.asarray(prediction_overlay(_picture(), anomaly_map, score=1.5, threshold=1.0))
    assert canvas.shape == (HEADER_PX + 40 + BAR_PX, 100, 3)
    assert tuple(canvas[2, 98]) == (200, 30, 30)  # red header (away from the text)
    overlay = canvas[HEADER_PX : HEADER_PX + 40, 50:]
    white = np.all(overlay == 255, axis=-1)
    rows, cols = np.nonzero(white)
    assert white.any() and rows.min() == 10 and rows.max() == 19 and cols.min() == 30 and cols.max() == 41  # its edge only
    assert not white[14, 35]  # the inside keeps its colour
    assert not np.all(canvas[HEADER_PX : HEADER_PX + 40, :50] == 255, axis=-1).any()  # the photo half is untouched
    bar = canvas[HEADER_PX + 40 + BAR_PX // 2, 50:]
    assert np.all(bar[24] == 0) and not np.all(bar[5] == 0)  # the threshold tick halfway: the scale is 0 .. 2 x threshold


def test_a_normal_image_has_a_green_header_and_no_outline() -> None:
    anomaly_map = np.full((40, 50), 0.4, dtype=np.float32)
    canvas = np.asarray(prediction_overlay(_picture(), anomaly_map, score=0.5, threshold=1.0))
    assert tuple(canvas[2, 98]) == (30, 140, 60)
    assert not np.all(canvas[HEADER_PX : HEADER_PX + 40, 50:] == 255, axis=-1).any()


def test_evaluation_shows_the_mistakes_first() -> None:
    from onenip.evaluation import heatmap_choice

    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    scores = [0.9, 0.3, 2.0, 1.5, 0.2, 1.2, 0.8, 0.1]
    # threshold 1.0: missed defects 1 (0.3), 6 (0.8), 0 (0.9), lowest first; false alarms 3 (1.5) then 5 (1.2);
    # then found defects and normals alternate by descending score
    assert heatmap_choice(labels, scores, 1.0, 8) == [(1, "missed"), (6, "missed"), (0, "missed"), (3, "false-alarm"),
                                                      (5, "false-alarm"), (2, "found"), (4, "normal"), (7, "normal")]  # fmt: skip
    assert heatmap_choice(labels, scores, 1.0, 2) == [(1, "missed"), (6, "missed")]
    assert heatmap_choice([0, 1], [0.1, 2.0], 1.0, 4) == [(1, "found"), (0, "normal")]  # no mistakes: the clearest of each
