"""The leave-one-category-out scripts' own logic: ``family_transfer.subset`` keeps the normals and one
family set's anomalies, and ``selection_loco`` applies the refiner margin as the product's selection does."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import selection_loco
from benchmarks.family_transfer import subset
from benchmarks.rule_transfer import SCORED, RuleMaps
from benchmarks.selection_loco import Procedure, choose


def _maps() -> RuleMaps:
    methods = np.array(["normal", "normal", "warp", "missing", "spots", "missing"])
    labels = (methods != "normal").astype(int)
    val = [np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 4), np.float32) + k for k in range(5)]
    test = [np.zeros((2, 8, 8), np.float32) for _ in range(5)]
    return RuleMaps("plate", val, labels, np.zeros((6, 4, 4), bool), None, methods, test, np.array([0, 1]), None, np.array([[0, 0, 8, 8]] * 2))


def test_a_family_subset_keeps_every_normal_and_only_those_families_anomalies() -> None:
    part = subset(_maps(), ("missing",))
    assert part.val_methods.tolist() == ["normal", "normal", "missing", "missing"]
    assert part.val_labels.tolist() == [0, 0, 1, 1]
    assert [float(c[i, 0, 0]) for c in part.val_components[:1] for i in range(4)] == [0.0, 1.0, 3.0, 5.0]


def _row(refiner: float, score: float) -> dict:
    return {"weights": [0.0, refiner, 0.0, 0.0, 1.0 - refiner], "smoothing_sigma": 0.0, "score_pool_size": 8,
            "val": dict.fromkeys(SCORED, score), "test": dict.fromkeys(SCORED, score)}  # fmt: skip


@pytest.mark.parametrize(("lead", "spread", "kept_refiner"), [(0.010, 0.002, 0.5), (0.002, 0.010, 0.0)])
def test_more_refiner_weight_must_win_beyond_the_margin(monkeypatch: pytest.MonkeyPatch, lead: float, spread: float, kept_refiner: float) -> None:
    table = [_row(0.5, 0.90 + lead), _row(0.25, 0.90), _row(0.0, 0.90)]
    rng = np.random.default_rng(0)
    draws = lead + spread * rng.standard_normal(200)  # bootstrap draws of (more refiner - less refiner)
    monkeypatch.setattr(selection_loco, "_differences", lambda first, second, maps: dict.fromkeys(SCORED, draws))
    procedure = Procedure("refiner margin 1", SCORED, (True,) * 5, refiner_margin_se=1.0)
    assert choose(procedure, table, _maps())["weights"][1] == kept_refiner
    assert choose(Procedure("no margin"), table, _maps())["weights"][1] == 0.5
