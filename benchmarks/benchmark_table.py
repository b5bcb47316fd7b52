"""The table of ``run_benchmark.py``: rows per category, means over seeds, intervals against the best fair peer.

Reads every row (``*.json``) of a run folder. Per category the fair peers are the peers at OneNIP's own
input (``input: native``); per metric the best of them is the one with the highest value. Each OneNIP
row (variant x input, its seeds together) gets, per compared metric, the mean over seeds and the paired
bootstrap 95 % interval of (OneNIP's mean over seeds - the best fair peer) over resamples of the test
images (``onenip.metrics.bootstrap``; binned pixel metrics in the resamples). Verdicts: ``ahead`` when the
interval is above 0, ``tie`` when it contains 0, ``behind`` below; ``>= peer`` when its lower bound is at
or above -``TIE_TOLERANCE`` (the targets' reading).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from onenip.metrics.bootstrap import PerImage, interval, paired_differences

COMPARED = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AP")
SHORT = {"image_AUROC": "I-AUROC", "pixel_AUROC": "P-AUROC", "pixel_AUPRO": "AUPRO", "pixel_AP": "P-AP"}
TIE_TOLERANCE = 0.005
VARIANT_ORDER = {"default": 0, "paper": 1, "network": 2, "statistics": 3, "": 4}


def load_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*.json")):
        if path.name in ("run.json", "summary.json"):
            continue
        found = json.loads(path.read_text())
        for row in found if isinstance(found, list) else [found]:
            if not isinstance(row, dict) or "category" not in row:  # another script's record kept beside the rows
                continue
            if row.get("per_image") and not Path(row["per_image"]).is_absolute():  # relative to the folder: it can move
                row["per_image"] = str(folder / row["per_image"])
            rows.append(row)
    return rows


def _label(row: dict[str, Any]) -> str:
    if row["method"] != "onenip":
        return f"{row['method']} @{row['input']}"
    name = f"onenip {row['variant']}"
    if row.get("network") == "none":
        name += " (statistics-only fit)"
    return f"{name} @{row['input']}"


def verdict(low: float, high: float) -> str:
    reading = "ahead" if low > 0 else "behind" if high < 0 else "tie"
    return f"{reading}, {'>=' if low >= -TIE_TOLERANCE else '<'} peer"


def summarise(rows: list[dict[str, Any]], resamples: int) -> dict[str, Any]:
    by_category: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_category[row["category"]][_label(row)].append(row)
    summary: dict[str, Any] = {}
    for category, groups in sorted(by_category.items()):
        fair, best = _fair_peers(groups, "native")
        entries = {}
        for label, found in sorted(groups.items(), key=lambda kv: (not kv[0].startswith("onenip"), VARIANT_ORDER.get(kv[1][0]["variant"], 9), kv[0])):
            metrics = {m: [r["metrics"][m] for r in found if r["metrics"].get(m) is not None] for m in COMPARED}
            entry: dict[str, Any] = {
                "seeds": sorted(r["seed"] for r in found),
                "mean": {m: float(np.mean(v)) for m, v in metrics.items() if v},
                "std": {m: float(np.std(v)) for m, v in metrics.items() if v},
                "train_minutes": float(np.mean([r["train_minutes"] for r in found])),
                "peak_rss_mb": float(max(r["peak_rss_mb"] for r in found)),
                "rule": found[0].get("scoring_rule") if len(found) == 1 else [r.get("scoring_rule") for r in found],
            }
            # an onenip row against the peers at ITS input (256 x 256 rows against the peers' 256 x 256 rows);
            # a category whose own input is 256 x 256 has no separate 256 rows of peers: their native rows are
            row_fair, row_best = _fair_peers(groups, found[0]["input"])
            if label.startswith("onenip") and row_best:
                entry["versus_best_peer"] = _intervals(found, row_fair, row_best, resamples)
            entries[label] = entry
        summary[category] = {"best_fair_peer": best, "rows": entries}
    return summary


def _fair_peers(groups: dict[str, list[dict[str, Any]]], size: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The peer rows at input ``size`` (the native rows when no peer ran at that size) and the best of
    them per metric."""
    peers = {label: found[0] for label, found in groups.items() if not label.startswith("onenip")}
    fair = {label: row for label, row in peers.items() if row["input"] == size} or {
        label: row for label, row in peers.items() if row["input"] == "native"}
    best = {}
    for metric in COMPARED:
        valued = {label: row["metrics"].get(metric) for label, row in fair.items() if row["metrics"].get(metric) is not None}
        if valued:
            best[metric] = max(valued, key=valued.get)  # type: ignore[arg-type]
    return fair, best


def _intervals(found: list[dict[str, Any]], fair: dict[str, dict[str, Any]], best: dict[str, str], resamples: int) -> dict[str, Any]:
    mine = [PerImage.load(r["per_image"]) for r in found]
    ids = mine[0].ids
    mine = [m.aligned(ids) for m in mine]  # type: ignore[arg-type]
    out = {}
    for peer in sorted(set(best.values())):
        theirs = PerImage.load(fair[peer]["per_image"]).aligned(ids)  # type: ignore[arg-type]
        differences = paired_differences(mine, [theirs], resamples)
        for metric, compared_peer in best.items():
            if compared_peer != peer or metric not in differences:
                continue
            point = float(np.mean([r["metrics"][metric] for r in found])) - float(fair[peer]["metrics"][metric])
            low, high = interval(differences[metric])
            out[metric] = {"peer": peer, "difference": point, "low": low, "high": high, "verdict": verdict(low, high)}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    head = ("| category | row | seeds | I-AUROC | P-AUROC | AUPRO | P-AP | vs best fair peer: difference [95 % interval] | train min | peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for category, found in summary.items():
        for label, entry in found["rows"].items():
            cells = []
            for metric in COMPARED:
                if metric not in entry["mean"]:
                    cells.append("-")
                    continue
                spread = f" ± {entry['std'][metric]:.3f}" if len(entry["seeds"]) > 1 else ""
                cells.append(f"{entry['mean'][metric]:.3f}{spread}")
            compared = entry.get("versus_best_peer", {})
            versus = "; ".join(
                f"{SHORT[m]} {compared[m]['difference']:+.3f} [{compared[m]['low']:+.3f}, {compared[m]['high']:+.3f}] {compared[m]['verdict']}"
                for m in COMPARED if m in compared
            )
            lines.append(f"| {category} | {label} | {len(entry['seeds'])} | " + " | ".join(cells)
                         + f" | {versus or '-'} | {entry['train_minutes']:.1f} | {entry['peak_rss_mb']:.0f} |")  # fmt: skip
        peers = ", ".join(f"{SHORT[m]}: {p}" for m, p in found["best_fair_peer"].items())
        lines.append(f"| {category} | best fair peer per metric | | | | | | {peers} | | |")
    return "\n".join(lines)


def write_summary(folder: Path, resamples: int = 1000) -> str:
    summary = summarise(load_rows(folder), resamples)
    table = format_summary(summary)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    (folder / "summary.md").write_text(table + "\n")
    return table
