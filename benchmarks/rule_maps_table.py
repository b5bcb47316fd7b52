"""Each map alone and the product's rule, read from ``rule_transfer.py`` folders (test metrics; a record).

For every folder and category: the test I-AUROC / P-AUROC / AUPRO of each map alone (sigma 0, pool 16),
of the paper's blend (reconstruction error + refiner 0.5 / 0.5), and of the rule the product's selection
picks on that folder's validation set (as ``selection_loco.py`` models it: refiner margin 1 SE, the
memory bank wins ties at 2 SE). Nothing is chosen from the test columns.

    .venv/bin/python benchmarks/rule_maps_table.py rt/u-p10 rt/u-p10-photo --out maps.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.rule_transfer import SCORED  # noqa: E402
from benchmarks.selection_loco import MEMORY_ALONE, UTILITY, Procedure, choose, load_variant  # noqa: E402

PRODUCT = Procedure("product", SCORED, (True,) * 5, MEMORY_ALONE, 2.0, "score", 1.0)
MAPS = {"recon": (1, 0, 0, 0, 0), "residual": (0, 0, 1, 0, 0), "Gaussian": (0, 0, 0, 1, 0), "memory": (0, 0, 0, 0, 1),
        "paper": (0.5, 0.5, 0, 0, 0)}  # fmt: skip


def rows_of(folder: Path) -> dict[str, dict[str, object]]:
    tables, maps = load_variant([folder])
    found: dict[str, dict[str, object]] = {}
    for category, table in tables.items():
        cells: dict[str, object] = {}
        for name, weights in MAPS.items():
            for row in table:
                if tuple(row["weights"]) == tuple(map(float, weights)) and float(row["smoothing_sigma"]) == 0 and int(row["score_pool_size"]) == 16:
                    cells[name] = [row["test"].get(m) for m in UTILITY]
        chosen = choose(PRODUCT, table, maps[category])
        cells["product"] = [chosen["test"].get(m) for m in UTILITY]
        cells["product_rule"] = [chosen["weights"], chosen["smoothing_sigma"], chosen["score_pool_size"]]
        found[category] = cells
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="rule_transfer.py output folders")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = {}
    names = [*MAPS, "product"]
    print("| folder | category | " + " | ".join(names) + " | product's rule |\n|---|---|" + "---|" * (len(names) + 1))
    for folder in args.folders:
        for category, cells in rows_of(folder).items():
            report[f"{folder.name}|{category}"] = cells
            text = [" / ".join("-" if v is None else f"{v:.3f}" for v in cells[n]) if n in cells else "-" for n in names]
            print(f"| {folder.name} | {category} | " + " | ".join(text) + f" | {cells['product_rule']} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
