"""Selection procedures compared leave-one-category-out on real defects (a record, and how defaults are chosen).

Reads the maps and rule tables that ``benchmarks/rule_transfer.py`` wrote for several saved models (one
folder each; the categories of all folders together are the pool). A selection procedure sees one
category's VALIDATION data only and returns a rule; its outcome is that rule's test metrics. For each
held-out category the procedure with the best mean test utility on the OTHER categories is chosen and
its outcome on the held-out one is reported, beside the current procedure, the memory bank alone and the
best rule in hindsight (an upper bound nobody can choose). Utility: the mean of image AUROC, pixel AUROC
and AUPRO (image AUROC alone for a category without masks).

    .venv/bin/python benchmarks/selection_loco.py R/rule-transfer-unified R/rule-transfer-elpv --out R/selection-loco.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.rule_transfer import LOCALISATION, SCORED, RuleMaps, image_scores, rule_maps, rule_score  # noqa: E402
from onenip.scoring_selection import SELECTION_DOWNSCALE, paired_metric_differences  # noqa: E402

UTILITY = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
MEMORY_ALONE = (0.0, 0.0, 0.0, 0.0, 1.0)
BOOTSTRAP = 50


@dataclass(frozen=True)
class Procedure:
    """Choose the best rule by ``objective`` among rules using only ``allowed`` components; with a
    ``baseline`` (a weight vector), keep the best baseline rule unless the best rule beats it by more
    than ``margin_se`` bootstrap standard errors on localisation AND on image AUROC."""

    name: str
    objective: tuple[str, ...] = SCORED
    allowed: tuple[bool, ...] = (True, True, True, True, True)
    baseline: tuple[float, ...] | None = None
    margin_se: float = 0.0
    tie_rule: str = "both"
    refiner_margin_se: float = 0.0
    """More refiner weight only when it beats the best rule of each smaller refiner weight by more than
    this many bootstrap SEs of the objective (``validation.refiner_margin_se``; applied before the tie rule)."""


def procedures() -> list[Procedure]:
    subsets = {
        "all": (True, True, True, True, True),
        "no-gaussian": (True, True, True, False, True),
        "network+memory": (True, True, False, False, True),
        "statistics": (False, False, False, True, True),
        "network": (True, True, True, False, False),
    }
    found = [Procedure("current (all maps, mean of 4)")]
    for (subset, allowed), objective, margin in itertools.product(
        subsets.items(), (SCORED, ("image_AUROC", *LOCALISATION)), (None, 0.0, 1.0, 2.0),
    ):
        label = "mean4" if objective == SCORED else "I+loc"
        if margin is None:
            found.append(Procedure(f"{subset}, {label}", objective, allowed))
        elif allowed[4]:
            for rule in ("both", "score"):
                found.append(Procedure(f"{subset}, {label}, memory wins ties at {margin:g} SE ({rule})", objective, allowed, MEMORY_ALONE, margin, rule))
    for refiner in (1.0, 2.0):  # the product's rule with its refiner margin (validation.refiner_margin_se)
        found.append(Procedure(f"all, mean4, refiner margin {refiner:g} SE, memory wins ties at 2 SE (score)", SCORED, subsets["all"],
                               MEMORY_ALONE, 2.0, "score", refiner))  # fmt: skip
    return found


def _key(row: dict) -> tuple:
    return tuple(row["weights"]), float(row["smoothing_sigma"]), int(row["score_pool_size"])


def _usable(row: dict, allowed: tuple[bool, ...]) -> bool:
    return all(ok or w == 0 for w, ok in zip(row["weights"], allowed, strict=True))


def choose(procedure: Procedure, table: list[dict], maps: RuleMaps) -> dict:
    rows = [r for r in table if _usable(r, procedure.allowed) and r["val"]]
    best = max(rows, key=lambda r: rule_score(r["val"], procedure.objective))
    if procedure.refiner_margin_se > 0:
        best = _less_refiner_within_noise(best, rows, maps, procedure)
    if procedure.baseline is None or tuple(best["weights"]) == procedure.baseline:
        return best
    base_rows = [r for r in table if tuple(r["weights"]) == procedure.baseline]
    base = max(base_rows, key=lambda r: rule_score(r["val"], procedure.objective))
    differences = _differences(best, base, maps)
    margin = procedure.margin_se
    parts = [np.mean([differences[n] for n in names], axis=0) for names in (LOCALISATION, ("image_AUROC",))]
    if procedure.tie_rule == "both":  # win on localisation AND on the image score beyond the noise
        keep_base = any(not np.mean(d) > margin * np.std(d, ddof=1) for d in parts)
    else:  # win on the objective beyond the noise, lose on neither part beyond it
        total = np.mean([differences[n] for n in procedure.objective], axis=0)
        keep_base = not np.mean(total) > margin * np.std(total, ddof=1) or any(np.mean(d) < -margin * np.std(d, ddof=1) for d in parts)
    return base if keep_base else best


def _less_refiner_within_noise(best: dict, rows: list[dict], maps: RuleMaps, procedure: Procedure) -> dict:
    """As the product's selection: the best rule of the smallest refiner weight whose objective is within
    ``refiner_margin_se`` paired bootstrap SEs of ``best``'s (``best`` when none is)."""
    for level in sorted({r["weights"][1] for r in rows if r["weights"][1] < best["weights"][1]}):
        row = max((r for r in rows if r["weights"][1] == level), key=lambda r: rule_score(r["val"], procedure.objective))
        total = np.mean([_differences(best, row, maps)[n] for n in procedure.objective], axis=0)
        if not np.mean(total) > procedure.refiner_margin_se * np.std(total, ddof=1):
            return row
    return best


def _differences(first: dict, second: dict, maps: RuleMaps) -> dict[str, np.ndarray]:
    key = (_key(first), _key(second))
    if key not in maps.differences:
        factor = SELECTION_DOWNSCALE

        def scored(row: dict) -> tuple[np.ndarray, np.ndarray]:
            blended = rule_maps(maps.val_components, tuple(row["weights"]), float(row["smoothing_sigma"]) / factor, maps.val_valid)
            return blended, image_scores(blended, round(int(row["score_pool_size"]) / factor))

        maps.differences[key] = paired_metric_differences(scored(first), scored(second), maps.val_masks, maps.val_labels, BOOTSTRAP)
    return maps.differences[key]


def utility(metrics: dict[str, float]) -> float:
    return rule_score(metrics, UTILITY)


def load_variant(folders: list[Path]) -> tuple[dict[str, list[dict]], dict[str, RuleMaps]]:
    tables, maps = {}, {}
    for folder in folders:
        report = json.loads((folder / "rules.json").read_text())
        for category, found in report["categories"].items():
            tables[category] = found["rules"]
            maps[category] = RuleMaps.load(folder / f"maps-{category}.npz")
    return tables, maps


def _cell(row: dict) -> str:
    test = row["test"]
    values = " / ".join("-" if n not in test else f"{test[n]:.3f}" for n in UTILITY)
    return f"{values} ({row['weights']}, {row['smoothing_sigma']:g}, {row['score_pool_size']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "FOLDER"),
                        help="a model option (e.g. whitened) and the rule_transfer.py folders of its models; several --variant: the option is chosen too")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    variants = {spec[0]: load_variant([Path(f) for f in spec[1:]]) for spec in args.variant}
    categories = sorted(set.intersection(*(set(tables) for tables, _ in variants.values())))
    candidates = procedures()
    choices = [(v, p) for v in variants for p in candidates]
    outcome = {(v, p.name, c): choose(p, variants[v][0][c], variants[v][1][c]) for v, p in choices for c in categories}
    first = next(iter(variants))
    print("| held out | chosen on the others (option, procedure) | its test I-AUROC / P-AUROC / AUPRO | current procedure, first option | memory alone | best in hindsight |")
    print("|---|---|---|---|---|---|")
    record = {}
    for held_out in categories:
        others = [c for c in categories if c != held_out]
        mean_utility = {f"{v} | {p.name}": float(np.mean([utility(outcome[(v, p.name, c)]["test"]) for c in others])) for v, p in choices}
        chosen = max(choices, key=lambda vp: mean_utility[f"{vp[0]} | {vp[1].name}"])
        tables, maps = variants[first]
        memory = Procedure("memory", allowed=(False, False, False, False, True))
        rows = {"chosen": outcome[(chosen[0], chosen[1].name, held_out)], "current": outcome[(first, candidates[0].name, held_out)],
                "memory": choose(memory, tables[held_out], maps[held_out]),
                "hindsight": max(tables[held_out], key=lambda r: utility(r["test"]))}  # fmt: skip
        print(f"| {held_out} | {chosen[0]}, {chosen[1].name} | {_cell(rows['chosen'])} | {_cell(rows['current'])} | {_cell(rows['memory'])} | {_cell(rows['hindsight'])} |")
        record[held_out] = {"chosen": [chosen[0], chosen[1].name], "others_utility": mean_utility, **rows}
    overall = {f"{v} | {p.name}": float(np.mean([utility(outcome[(v, p.name, c)]["test"]) for c in categories])) for v, p in choices}
    print("\nmean utility over all categories (a record; the LOCO choice above never sees its held-out category):")
    for name, value in sorted(overall.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {value:.4f}  {name}")
    if args.out:
        args.out.write_text(json.dumps({"folds": record, "overall": overall}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
