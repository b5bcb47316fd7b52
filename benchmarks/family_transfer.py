"""Which validation families rank scoring rules the way real defects do? Chosen leave-one-category-out.

Reads ``benchmarks/rule_transfer.py`` folders made with a validation set of several families (every
anomaly is labelled with its family in the saved maps). For each candidate set of families it keeps the
held-out normals and the anomalies of those families only, re-scores every candidate rule on that
validation set (the test scores are the rule table's), and reports per category:

- Kendall's tau between the rules' validation and test values (selection score, image, localisation);
- the test utility (mean of I-AUROC, P-AUROC, AUPRO; I-AUROC alone without masks) of the rule that the
  product's selection (the memory bank wins ties at 2 SE, ``score`` rule) picks on that validation set.

Leave-one-category-out: for each category the family set with the best mean utility on the OTHER
categories is chosen and its outcome on the held-out one reported beside the current set's. A record and
how ``validation.methods`` is chosen; nothing here looks at the held-out category's test split.

    .venv/bin/python benchmarks/family_transfer.py R/rt-unified R/rt-elpv --out R/family-transfer.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.rule_transfer import SCORED, RuleMaps, kendall_summary, score_rules  # noqa: E402
from benchmarks.selection_loco import MEMORY_ALONE, Procedure, choose, utility  # noqa: E402

CURRENT = ("warp", "smudge", "spots")
FAMILY_SETS: tuple[tuple[str, ...], ...] = (
    CURRENT,
    ("warp", "smudge", "spots", "missing"),
    ("warp", "smudge", "spots", "misplaced"),
    ("warp", "smudge", "spots", "missing", "misplaced"),
    ("spots", "missing", "misplaced"),
    ("missing", "misplaced"),
    ("smudge", "spots", "missing", "misplaced"),
    ("warp", "spots", "missing", "misplaced"),
)
PRODUCT = Procedure("memory wins ties at 2 SE (score)", SCORED, (True,) * 5, MEMORY_ALONE, 2.0, "score")


def subset(maps: RuleMaps, families: tuple[str, ...]) -> RuleMaps:
    """The validation part of ``maps`` with its normals and the anomalies of ``families`` only."""
    keep = (maps.val_labels == 0) | np.isin(maps.val_methods, families)
    return replace(
        maps,
        val_components=[None if c is None else c[keep] for c in maps.val_components],
        val_labels=maps.val_labels[keep],
        val_masks=maps.val_masks[keep],
        val_valid=None if maps.val_valid is None else maps.val_valid[keep],
        val_methods=maps.val_methods[keep],
    )


def rescored(table: list[dict], maps: RuleMaps) -> list[dict]:
    """``table``'s rules with their validation metrics recomputed on ``maps`` (test metrics kept)."""
    rules = sorted({(tuple(r["weights"]), float(r["smoothing_sigma"])) for r in table})
    pools = sorted({int(r["score_pool_size"]) for r in table})
    val = {(tuple(r["weights"]), float(r["smoothing_sigma"]), int(r["score_pool_size"])): r for r in score_rules(maps, rules, pools, "val")}
    out = []
    for row in table:
        found = val[(tuple(row["weights"]), float(row["smoothing_sigma"]), int(row["score_pool_size"]))]
        out.append({**row, "val": {m: found[m] for m in SCORED if m in found}})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="rule_transfer.py output folders (all families in their validation sets)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results: dict[str, dict[str, dict]] = {}
    for folder in args.folders:
        report = json.loads((folder / "rules.json").read_text())
        for category, found in report["categories"].items():
            maps = RuleMaps.load(folder / f"maps-{category}.npz")
            counts = {str(m): int(n) for m, n in zip(*np.unique(maps.val_methods, return_counts=True), strict=True)}
            print(f"{category}: validation items {counts}", flush=True)
            results[category] = {}
            for families in FAMILY_SETS:
                part = subset(maps, families)
                table = rescored(found["rules"], part)
                chosen = choose(PRODUCT, table, part)
                summary = kendall_summary(table, has_masks=maps.test_masks is not None)
                results[category]["+".join(families)] = {"tau": summary, "chosen": chosen, "utility": utility(chosen["test"])}
                print(f"  {'+'.join(families)}: tau {json.dumps({k: round(v, 3) for k, v in summary.items() if k != 'rules'})}, "
                      f"chosen {chosen['weights']} sigma {chosen['smoothing_sigma']:g} pool {chosen['score_pool_size']}: "
                      f"utility {utility(chosen['test']):.4f}", flush=True)  # fmt: skip
    categories = list(results)
    names = ["+".join(f) for f in FAMILY_SETS]
    current = "+".join(CURRENT)
    print("\n| held out | family set chosen on the others (their mean utility) | held-out utility: chosen / current | held-out tau (score): chosen / current |")
    print("|---|---|---|---|")
    folds = {}
    for held_out in categories:
        others = [c for c in categories if c != held_out]
        mean_utility = {n: float(np.mean([results[c][n]["utility"] for c in others])) for n in names}
        best = max(names, key=lambda n: (mean_utility[n], n == current))
        row, base = results[held_out][best], results[held_out][current]
        print(f"| {held_out} | {best} ({mean_utility[best]:.4f}) | {row['utility']:.4f} / {base['utility']:.4f} | "
              f"{row['tau']['tau_score']:.2f} / {base['tau']['tau_score']:.2f} |")  # fmt: skip
        folds[held_out] = {"chosen": best, "others_utility": mean_utility}
    print("\nmean over categories (a record): family set | utility | tau score | tau image | tau localisation (masked categories)")
    for n in names:
        taus = [results[c][n]["tau"] for c in categories]
        loc = [t["tau_localisation"] for t in taus if "tau_localisation" in t]
        print(f"  {n}: {np.mean([results[c][n]['utility'] for c in categories]):.4f} | {np.mean([t['tau_score'] for t in taus]):.2f} | "
              f"{np.mean([t['tau_image'] for t in taus]):.2f} | {np.mean(loc) if loc else float('nan'):.2f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"categories": results, "folds": folds}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
