"""A global option chosen leave-one-category-out from ``run_benchmark.py`` folders (a record, and how defaults are chosen).

Each ``--variant NAME FOLDER [FOLDER ...]`` names the runs made with one value of the option (the same
jobs in each, e.g. ``--params`` files that differ in that value only). For every category the OneNIP
row of one kind (``--row``: ``default``, ``statistics``, ``paper`` or ``network``) gives a test
utility, the mean of image AUROC, pixel AUROC and AUPRO (image AUROC alone without masks), averaged over
the seeds present. For each held-out category the variant with the best mean utility on the OTHER
categories is chosen and its utility on the held-out one is reported, beside every variant's.

    .venv/bin/python benchmarks/option_loco.py --row statistics --variant prior10 R10 --variant prior40 R40 \\
        --out benchmarks/results/option-loco.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

UTILITY = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def utilities(folders: list[Path], row: str) -> dict[str, float]:
    """Per category: the mean utility over the seeds of the OneNIP ``row`` rows at the native input."""
    found: dict[str, list[float]] = defaultdict(list)
    for folder in folders:
        for path in sorted(folder.glob("onenip-*.json")):
            for record in json.loads(path.read_text()):
                if record.get("variant") != row or record.get("input", "native") != "native":
                    continue
                values = [record["metrics"].get(m) for m in UTILITY]
                values = [v for v in values if v is not None]
                if values:
                    found[record["category"]].append(sum(values) / len(values))
    return {category: sum(v) / len(v) for category, v in found.items()}


def leave_one_out(table: dict[str, dict[str, float]]) -> dict[str, dict[str, object]]:
    """Per held-out category: the variant best on the others' mean utility, and its held-out utility."""
    categories = sorted(set.intersection(*(set(u) for u in table.values())))
    result: dict[str, dict[str, object]] = {}
    for held_out in categories:
        others = [c for c in categories if c != held_out]
        means = {name: sum(u[c] for c in others) / len(others) for name, u in table.items()}
        chosen = max(means, key=lambda name: (round(means[name], 6), -list(table).index(name)))
        result[held_out] = {"chosen": chosen, "utility": table[chosen][held_out], "others_mean": means}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "FOLDER"),
                        help="a variant's name and its run_benchmark.py folders (first variant: the current default, it wins exact ties)")
    parser.add_argument("--row", default="default", choices=("default", "statistics", "paper", "network"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    table = {name: utilities([Path(f) for f in folders], args.row) for name, *folders in args.variant}
    if any(not u for u in table.values()):
        parser.error(f"no {args.row!r} OneNIP rows in the folders of: " + ", ".join(n for n, u in table.items() if not u))
    folds = leave_one_out(table)
    names = list(table)
    lines = ["| held-out category | " + " | ".join(names) + " | chosen on the other categories | its utility |",
             "|---|" + "---|" * (len(names) + 2)]
    for category, fold in folds.items():
        cells = [f"{table[n][category]:.4f}" for n in names]
        lines.append(f"| {category} | " + " | ".join(cells) + f" | {fold['chosen']} | {fold['utility']:.4f} |")
    mean = {n: sum(table[n][c] for c in folds) / len(folds) for n in names}
    chosen_mean = sum(f["utility"] for f in folds.values()) / len(folds)
    lines.append("| mean | " + " | ".join(f"{mean[n]:.4f}" for n in names) + f" | | {chosen_mean:.4f} |")
    print(f"row: {args.row}; utility: mean of {' / '.join(UTILITY)} (image AUROC alone without masks)\n" + "\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"row": args.row, "variants": {n: [str(f) for f in fs] for n, *fs in args.variant}, "utilities": table, "folds": folds}
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
