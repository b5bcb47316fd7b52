"""Two selection variants compared over several saved models, leave-one-category-out (a record, and how a default is chosen).

Reads the JSON files ``selection_smoothing.py`` wrote (one per saved model, e.g. one per seed; each holds two
variants' rules and their test metrics per category, on the real test split and on any ``--test-root``).
Utility: the mean of I-AUROC, P-AUROC and AUPRO (I-AUROC alone without masks). Per category and test set it
prints each variant's seed-mean utility and the difference; then, on the real test split, each category
held out in turn: the variant with the higher mean utility on the OTHER categories is chosen (ties keep the
first) and its held-out outcome is reported. Nothing here looks at a held-out category to choose for it.

    .venv/bin/python benchmarks/selection_variants.py R/none-seed0.json R/none-seed1.json --out R/summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

UTILITY = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def utility(metrics: dict[str, float | None]) -> float:
    return float(np.mean([metrics[m] for m in UTILITY if metrics.get(m) is not None]))


def seed_means(files: list[Path]) -> tuple[list[str], dict[str, dict[str, list[dict]]]]:
    """Variant names and, per (category, test set), each variant's per-model metrics."""
    reports = [json.loads(path.read_text())["runs"] for path in files]
    variants = list(reports[0])
    found: dict[str, dict[str, list[dict]]] = {}
    for report in reports:
        for variant in variants:
            for category, row in report[variant].items():
                for split, metrics in row.items():
                    if split not in ("rule", "validation"):
                        found.setdefault(f"{category} | {split}", {}).setdefault(variant, []).append(metrics)
    return variants, found


def leave_one_out(variants: list[str], found: dict[str, dict[str, list[dict]]]) -> list[dict[str, object]]:
    real = {key.split(" | ")[0]: rows for key, rows in found.items() if key.endswith("| test")}
    mean = {c: {v: float(np.mean([utility(m) for m in rows[v]])) for v in variants} for c, rows in real.items()}
    folds = []
    for held in mean:
        others = [c for c in mean if c != held]
        chosen = max(variants, key=lambda v: (np.mean([mean[c][v] for c in others]), -variants.index(v)))
        folds.append({"held_out": held, "chosen": chosen, "held_out_utility": mean[held][chosen],
                      "first_variant_utility": mean[held][variants[0]]})  # fmt: skip
    return folds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="selection_smoothing.py JSON files (one per model)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants, found = seed_means(args.files)
    first, second = variants[:2]
    print(f"| category, test set | models | {first}: I / P / AUPRO, utility | {second}: I / P / AUPRO, utility | difference |\n|---|---|---|---|---|")
    rows = []
    for key, per in found.items():
        cells = []
        for variant in (first, second):
            metrics = {m: float(np.mean([r[m] for r in per[variant]])) for m in UTILITY if per[variant][0].get(m) is not None}
            cells.append((metrics, float(np.mean([utility(r) for r in per[variant]]))))
        differences = [utility(b) - utility(a) for a, b in zip(per[first], per[second], strict=True)]
        text = [" / ".join(f"{v:.4f}" for v in m.values()) + f", {u:.4f}" for m, u in cells]
        print(f"| {key} | {len(per[first])} | {text[0]} | {text[1]} | {np.mean(differences):+.4f} (per model {', '.join(f'{d:+.4f}' for d in differences)}) |")
        rows.append({"cell": key, first: cells[0][0], second: cells[1][0], "utility_differences": differences})
    folds = leave_one_out(variants, found)
    print("\n| held out | chosen on the others | its utility | the first variant's |\n|---|---|---|---|")
    for fold in folds:
        print(f"| {fold['held_out']} | {fold['chosen']} | {fold['held_out_utility']:.4f} | {fold['first_variant_utility']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"files": [str(f) for f in args.files], "variants": variants, "cells": rows, "folds": folds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
