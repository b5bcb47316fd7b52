"""Test metrics of a saved OneNIP model with each of its maps alone, the paper blend and the chosen rule.

A record of what each map contributes, for the benchmark write-up: the model is re-scored on the test
split with one map's weight set to 1 (the chosen sigma and pooling kept), nothing is chosen from it.
Only cached backbone features and the network run. Prints a markdown table and writes JSON:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/maps_alone.py R/onenip-unified-.../model \\
        --out benchmarks/results/maps-alone.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")
RULES: tuple[tuple[str, tuple[float, ...] | None], ...] = (
    ("recon error", (1, 0, 0, 0, 0)),
    ("refiner", (0, 1, 0, 0, 0)),
    ("prompt residual", (0, 0, 1, 0, 0)),
    ("Gaussian", (0, 0, 0, 1, 0)),
    ("memory bank", (0, 0, 0, 0, 1)),
    ("paper blend 0.5 / 0.5", (0.5, 0.5, 0, 0, 0)),
    ("chosen", None),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder (onenip.json + model.safetensors)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--categories", nargs="+", default=None, help="only these of the model's categories (default: all)")
    parser.add_argument("--maps", nargs="+", default=None, choices=[name for name, _ in RULES], metavar="NAME",
                        help=f"only these rows (default: all): {', '.join(repr(name) for name, _ in RULES)}")
    parser.add_argument("--prompts", type=int, default=None,
                        help="score with this many stored prompts per category, chosen anew from the fit images (statistics and scales refitted)")
    parser.add_argument("--prompt-reduction", default="min", choices=("nearest", "min"), help="with --prompts: model.prompt_reduction")
    parser.add_argument("--seed", type=int, default=None, help="with --prompts: train.seed the model was trained with (its held-out split)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector
    from onenip.models.scoring import ScoringRule

    detector = OneNIPDetector.load(args.model)
    train = ({"cache_dir": args.cache_dir} if args.cache_dir else {}) | ({"seed": args.seed} if args.seed is not None else {})
    params = load_params(args.params, overrides={"train": train} if train else None)
    categories = args.categories or detector.categories
    unknown = sorted(set(categories) - set(detector.categories))
    if unknown:
        parser.error(f"--categories: {unknown} not in the model ({detector.categories})")
    rules = [(name, weights) for name, weights in RULES if args.maps is None or name in args.maps]
    manifest, _ = drop_leaked_test_images(make_manifest(args.root, categories, progress=False))
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    if args.prompts:
        from benchmarks.rule_transfer import refit_variant, variant

        detector = variant(detector, {"prompts": args.prompts, "prompt_reduction": args.prompt_reduction})
        for category in categories:
            refit_variant(detector, manifest, params, cache, category)
    chosen = dict(detector.scoring)
    results: dict[str, dict[str, dict[str, float | None]]] = {c: {} for c in categories}
    for name, weights in rules:
        for category in categories:
            rule = chosen[category]
            detector.scoring[category] = rule if weights is None else ScoringRule(weights, rule.smoothing_sigma, rule.score_pool_size)
        try:
            evaluated = evaluate(detector, manifest, cache, None, categories, num_heatmaps=0, progress=False)
        except ValueError as error:  # a map this model lacks (no fine path, no Gaussian, no memory bank) cannot be scored alone
            print(f"{name}: not scored ({error})", flush=True)
            continue
        for category in categories:
            metrics = evaluated[category].metrics
            results[category][name] = {m: metrics.get(m) for m in METRICS}
    detector.scoring = chosen

    names = [name for name, _ in rules]
    lines = ["| category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for category, rows in results.items():
        cells = [" / ".join("-" if rows.get(n, {}).get(m) is None else f"{rows[n][m]:.3f}" for m in METRICS) for n in names]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    print(f"columns: {' / '.join(METRICS)}\n" + "\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        prompts = {"prompts": args.prompts, "prompt_reduction": args.prompt_reduction} if args.prompts else {}
        args.out.write_text(json.dumps({"model": str(args.model), **prompts, "metrics": METRICS, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
