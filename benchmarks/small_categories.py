"""The rule a category too small to validate falls back to, chosen leave-one-category-out.

A category whose held-out normals are fewer than ``validation.min_normals`` (18 training images hold out
2) gets no rule chosen on validation: it keeps a fixed fallback. This benchmark makes such categories
from the five real ones and chooses that fallback on their real defects, leave-one-category-out:

* ``subsample``: an MVTec-layout copy of a root (links) whose categories keep only N seeded training
  normals; test images and masks unchanged;
* train each group on it as usual (``run_benchmark.py --worker --root COPY``);
* ``score``: a saved model's test maps (``rule_transfer.test_maps``) scored under each named candidate
  rule (I-AUROC, and P-AUROC / P-AP / AUPRO where there are masks; a record per category);
* ``loco``: for each category held out, the candidate with the best mean selection score (mean of the
  metrics present) over the other categories, and that choice's score on the held-out one, beside the
  current fallback's. Several ``score`` files of one category (subsample seeds) are averaged.

    .venv/bin/python benchmarks/small_categories.py subsample ../shared/datasets/industrial SMALL --images 18 --seed 0
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/run_benchmark.py --worker --params params.yaml --root SMALL \\
        --categories bottle kolektor magnetic_tile --run-dir R/u --json R/u.json
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/small_categories.py score R/u/model --root SMALL --out R/u-rules.json
    .venv/bin/python benchmarks/small_categories.py loco R/*-rules.json --out R/loco.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CANDIDATES: dict[str, tuple[tuple[float, ...], float, int]] = {
    "paper blend (recon + refiner)": ((0.5, 0.5, 0.0, 0.0, 0.0), 4.0, 16),
    "reconstruction error": ((1.0, 0.0, 0.0, 0.0, 0.0), 4.0, 16),
    "prompt residual": ((0.0, 0.0, 1.0, 0.0, 0.0), 4.0, 16),
    "Gaussian": ((0.0, 0.0, 0.0, 1.0, 0.0), 4.0, 16),
    "memory bank": ((0.0, 0.0, 0.0, 0.0, 1.0), 4.0, 16),
    "Gaussian + memory": ((0.0, 0.0, 0.0, 0.5, 0.5), 4.0, 16),
    "recon + Gaussian + memory": ((0.5, 0.0, 0.0, 0.25, 0.25), 4.0, 16),
    "paper blend + Gaussian + memory": ((0.25, 0.25, 0.0, 0.25, 0.25), 4.0, 16),
}
"""Named fallbacks, each with the configured default smoothing (sigma 4) and pooling (16 px): a handful
of principled rules rather than the selection's thousand, so that four categories can choose among them."""
CURRENT = "paper blend (recon + refiner)"
SCORED = ("image_AUROC", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")


def subsample(source: Path, target: Path, images: int, seed: int, categories: list[str] | None) -> None:
    for category in categories or sorted(p.name for p in source.iterdir() if (p / "train" / "good").is_dir()):
        src, dst = source / category, target / category
        (dst / "train" / "good").mkdir(parents=True, exist_ok=True)
        for part in ("test", "ground_truth"):
            if (src / part).exists() and not (dst / part).exists():
                os.symlink((src / part).resolve(), dst / part)
        files = sorted((src / "train" / "good").iterdir())
        for file in random.Random(f"{seed}-{category}").sample(files, min(images, len(files))):
            if not (dst / "train" / "good" / file.name).exists():
                os.symlink(file.resolve(), dst / "train" / "good" / file.name)
        print(f"{category}: {min(images, len(files))} of {len(files)} training images", flush=True)


def score(model: Path, root: Path, params_path: Path, cache_dir: str | None) -> dict[str, dict[str, dict[str, float]]]:
    import pandas as pd

    from benchmarks.peers import drop_leaked_test_images
    from benchmarks.rule_transfer import RuleMaps, score_rules, test_maps
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector

    detector = OneNIPDetector.load(model).eval()
    params = load_params(params_path, overrides={"train": {"cache_dir": cache_dir}} if cache_dir else None)
    manifest, _ = drop_leaked_test_images(make_manifest(root, detector.categories, progress=False))
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    out = {}
    for category in detector.categories:
        components, labels, masks, boxes = test_maps(detector, manifest, cache, category)
        empty = np.zeros(0)
        maps = RuleMaps(category, [None] * len(components), empty, empty, None, empty, components, labels, masks, boxes)
        out[category] = {}
        for name, (weights, sigma, pool) in CANDIDATES.items():
            row = score_rules(maps, [(weights, sigma)], [pool], "test")
            if row:
                out[category][name] = {m: float(row[0][m]) for m in SCORED if m in row[0]}
        print(f"{category}: " + ", ".join(f"{n} {v['image_AUROC']:.3f}" for n, v in out[category].items()), flush=True)
    return out


def utility(metrics: dict[str, float]) -> float:
    return float(np.mean([metrics[m] for m in SCORED if m in metrics]))


def loco(files: list[Path]) -> dict[str, object]:
    runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    for file in files:
        for category, rules in json.loads(file.read_text())["categories"].items():
            runs.setdefault(category, []).append(rules)
    mean = {c: {n: {m: float(np.mean([r[n][m] for r in rs])) for m in rs[0][n]} for n in rs[0] if all(n in r for r in rs)} for c, rs in runs.items()}
    names = [n for n in CANDIDATES if all(n in rules for rules in mean.values())]
    folds = {}
    for held in mean:
        others = [c for c in mean if c != held]
        chosen = max(names, key=lambda n: np.mean([utility(mean[c][n]) for c in others]))
        folds[held] = {"chosen": chosen, "held_out": mean[held][chosen], "held_out_utility": utility(mean[held][chosen]),
                       "current": mean[held][CURRENT], "current_utility": utility(mean[held][CURRENT]), "runs": len(runs[held])}  # fmt: skip
    return {"candidates": {n: list(CANDIDATES[n]) for n in names}, "current": CURRENT, "per_category": mean, "folds": folds,
            "mean_held_out_utility": float(np.mean([f["held_out_utility"] for f in folds.values()])),
            "mean_current_utility": float(np.mean([f["current_utility"] for f in folds.values()]))}  # fmt: skip


def table(result: dict[str, object]) -> str:
    cats = list(result["per_category"])  # type: ignore[arg-type]
    lines = ["| rule | " + " | ".join(cats) + " | mean |", "|---|" + "---|" * (len(cats) + 1)]
    for name in result["candidates"]:  # type: ignore[union-attr]
        values = [utility(result["per_category"][c][name]) for c in cats]  # type: ignore[index]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |")
    lines += ["", "| held out | chosen on the other categories | its score there | the current fallback's |", "|---|---|---|---|"]
    for held, fold in result["folds"].items():  # type: ignore[union-attr]
        lines.append(f"| {held} | {fold['chosen']} | {fold['held_out_utility']:.4f} | {fold['current_utility']:.4f} |")
    lines.append(f"| mean | | {result['mean_held_out_utility']:.4f} | {result['mean_current_utility']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subsample")
    s.add_argument("source", type=Path)
    s.add_argument("target", type=Path)
    s.add_argument("--images", type=int, default=18)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--categories", nargs="+", default=None)
    c = sub.add_parser("score")
    c.add_argument("model", type=Path)
    c.add_argument("--root", type=Path, required=True)
    c.add_argument("--params", type=Path, default=REPO / "params.yaml")
    c.add_argument("--cache-dir", default=None)
    c.add_argument("--out", type=Path, required=True)
    loo = sub.add_parser("loco")
    loo.add_argument("files", type=Path, nargs="+")
    loo.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "subsample":
        subsample(args.source, args.target, args.images, args.seed, args.categories)
    elif args.command == "score":
        args.out.write_text(json.dumps({"model": str(args.model), "root": str(args.root), "categories": score(args.model, args.root, args.params, args.cache_dir)}, indent=1))
    else:
        result = loco(args.files)
        print(table(result))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
