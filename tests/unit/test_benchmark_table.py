"""``benchmarks/benchmark_table.py``: seeds pooled per row, intervals against the best peer at the same
input, verdicts that separate a clearly better row from a copy of the peer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.benchmark_table import load_rows, summarise, verdict, write_summary
from onenip.metrics.bootstrap import PerImage


def _row(folder: Path, name: str, method: str, variant: str, seed: int, strength: float, input_label: str = "native") -> dict:
    rng = np.random.default_rng(seed + int(strength * 100))
    labels = np.array([0] * 30 + [1] * 30)
    masks = []
    for label in labels:
        mask = np.zeros((24, 24), dtype=bool)
        if label:
            mask[4:10, 6:12] = True
        masks.append(mask)
    maps = [rng.random(m.shape).astype(np.float32) + strength * m for m in masks]
    scores = np.array([m.max() for m in maps])
    summary = PerImage.from_maps(scores, labels, maps, masks)
    summary.ids = np.array([f"img{i}" for i in range(len(labels))])
    path = summary.save(folder / f"{name}.npz")
    row = {"method": method, "variant": variant, "input": input_label, "seed": seed, "category": "plate",
           "metrics": summary.metrics(), "train_minutes": 1.0, "peak_rss_mb": 100.0, "per_image": path.name}  # relative: the folder can move
    (folder / f"{name}.json").write_text(json.dumps([row]))
    return row


def test_a_clearly_better_row_is_ahead_and_a_copy_of_the_peer_ties(tmp_path: Path) -> None:
    for seed in (0, 1):
        _row(tmp_path, f"onenip-seed{seed}", "onenip", "default", seed, 0.6)
    _row(tmp_path, "copy", "onenip", "paper", 7, 0.2)
    _row(tmp_path, "patchcore-native", "patchcore", "", 7, 0.2)
    _row(tmp_path, "patchcore-256", "patchcore", "", 3, 5.0, input_label="256")  # not a fair peer: another input
    summary = summarise(load_rows(tmp_path), resamples=200)["plate"]
    assert summary["best_fair_peer"] == {m: "patchcore @native" for m in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AP")}
    better = summary["rows"]["onenip default @native"]
    assert better["seeds"] == [0, 1] and better["std"]["pixel_AUROC"] > 0  # two seeds pooled, their spread kept
    versus = better["versus_best_peer"]
    assert all(versus[m]["verdict"] == "ahead, >= peer" and versus[m]["low"] > 0.1 for m in ("pixel_AUROC", "pixel_AUPRO", "pixel_AP"))
    assert versus["image_AUROC"]["verdict"] == "tie, >= peer"  # both separate every image: a saturated metric ties
    copy = summary["rows"]["onenip paper @native"]["versus_best_peer"]
    assert all(v["difference"] == 0 and v["low"] == 0 == v["high"] for v in copy.values())
    table = write_summary(tmp_path, resamples=50)
    assert "onenip default @native | 2 |" in table and (tmp_path / "summary.json").exists()


def test_verdicts_read_the_interval() -> None:
    assert verdict(0.01, 0.03) == "ahead, >= peer"
    assert verdict(-0.004, 0.02) == "tie, >= peer"
    assert verdict(-0.02, 0.01) == "tie, < peer"
    assert verdict(-0.05, -0.01) == "behind, < peer"


def test_a_256_row_is_compared_with_the_peers_at_256_and_other_records_are_skipped(tmp_path: Path) -> None:
    _row(tmp_path, "onenip-256", "onenip", "default", 0, 0.6, input_label="256")
    _row(tmp_path, "patchcore-native", "patchcore", "", 7, 0.1)
    _row(tmp_path, "patchcore-256", "patchcore", "", 0, 0.6, input_label="256")  # the same maps as onenip's: a tie
    (tmp_path / "maps-alone.json").write_text(json.dumps({"bottle": {"memory bank": [1, 0.9]}}))  # another script's record
    rows = summarise(load_rows(tmp_path), resamples=100)["plate"]["rows"]
    versus = rows["onenip default @256"]["versus_best_peer"]
    assert {v["peer"] for v in versus.values()} == {"patchcore @256"}
    assert all(v["low"] == 0 == v["high"] for v in versus.values())
