"""A saved OneNIP model's scoring rule chosen again on its rebuilt validation set two ways, both scored on test.

Rebuilds the model's validation set exactly as training built it (held-out training normals + seeded
anomalies of the validation families; no test image) and chooses the rule twice. ``--compare smoothing``
(the default): with the current smoothing (a normalised blur of the content, ``masked_gaussian_smooth``)
and with the former one (blur everything, then zero the padding); only letterboxed categories can differ.
``--compare strength``: with the validation anomalies faded as ``validation.anomaly_strength`` says and at
full strength. ``--compare jittered``: without and with ``validation.jittered_normals`` (each held-out
normal again under the statistics' photometric jitter, as a normal). ``--test-root`` scores the rules on
other test sets too (``shifted_copy.py``'s drifted copies). The test columns are a record: nothing is
chosen from them. Prints a table and writes JSON:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/selection_smoothing.py R/.../model --cache-dir C --out R/smoothing.json
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/selection_smoothing.py R/.../model --compare strength --out R/strength.json
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")


@contextmanager
def former_smoothing() -> Iterator[None]:
    """Blur first, then zero the padding: what validation and scoring did before."""
    import onenip.models.scoring as scoring
    import onenip.scoring_selection as validation
    from onenip.models.blur import gaussian_smooth

    def blur_then_mask(maps, sigma, valid):  # noqa: ANN001, ANN202
        out = gaussian_smooth(maps, sigma)
        return out if valid is None else out * valid.to(out.dtype)

    saved = validation.masked_gaussian_smooth, scoring.masked_gaussian_smooth
    validation.masked_gaussian_smooth = scoring.masked_gaussian_smooth = blur_then_mask
    try:
        yield
    finally:
        validation.masked_gaussian_smooth, scoring.masked_gaussian_smooth = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder (onenip.json + model.safetensors)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--compare", choices=("smoothing", "strength", "jittered"), default="smoothing")
    parser.add_argument("--seed", type=int, default=None, help="train.seed the model was trained with (its held-out split)")
    parser.add_argument("--test-root", type=Path, nargs="+", default=[], help="more roots whose test splits score the rules too")
    args = parser.parse_args()

    import torch

    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import Params, load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector
    from onenip.training import prepare_category_data
    from onenip.training.calibration import fallback_rule
    from onenip.scoring_selection import build_category_validation, select_scoring, validation_components

    detector = OneNIPDetector.load(args.model).eval()
    overrides = {"train": {"cache_dir": args.cache_dir}} if args.cache_dir else None
    params = load_params(args.params, overrides=overrides)
    if args.seed is not None:
        params = params.model_copy(update={"train": params.train.model_copy(update={"seed": args.seed})})
    full = make_manifest(args.root, detector.categories, progress=False)
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    default = fallback_rule(detector, params)

    def rebuilt(variant: Params) -> list:  # noqa: ANN202
        per_category = []
        with torch.no_grad():
            for index, category in enumerate(detector.categories):
                item = prepare_category_data(full, variant, cache, category, index, detector.geometry(category), False)
                validation = build_category_validation(category, item.holdout_images, item.holdout_valid, detector.feature_extractor,
                                                       variant, seed=variant.train.seed + item.index)  # fmt: skip
                per_category.append((validation, validation_components(detector, validation)))
        return per_category

    if args.compare == "smoothing":
        shared = rebuilt(params)
        variants = [("content-only blur (now)", shared, params, None), ("blur, then mask (before)", shared, params, former_smoothing)]
    elif args.compare == "jittered":
        jittered = params.model_copy(update={"validation": params.validation.model_copy(update={"jittered_normals": True})})
        variants = [("held-out normals (before)", rebuilt(params), params, None),
                    ("and their jittered copies", rebuilt(jittered), jittered, None)]  # fmt: skip
    else:
        full_strength = params.model_copy(update={"validation": params.validation.model_copy(update={"anomaly_strength": (1.0, 1.0)})})
        low, high = params.validation.anomaly_strength
        variants = [(f"strength {low:g}-{high:g} (params)", rebuilt(params), params, None),
                    ("full strength", rebuilt(full_strength), full_strength, None)]  # fmt: skip
    stored = dict(detector.scoring)
    tests = {"test": drop_leaked_test_images(full)[0]}
    for root in args.test_root:
        found = [c for c in detector.categories if (root / c).is_dir()]
        tests[root.name] = drop_leaked_test_images(make_manifest(root, found, progress=False))[0]
    report: dict[str, dict[str, object]] = {}
    for name, per_category, variant, context in variants:
        with context() if context else _nothing():
            selection = select_scoring(per_category, variant.validation, default)
            detector.scoring = dict(selection.rules)
            evaluated = {split: evaluate(detector, manifest, cache, None, sorted(set(manifest["category"])), num_heatmaps=0, progress=False)
                         for split, manifest in tests.items()}  # fmt: skip
        report[name] = {
            category: {"rule": selection.rules[category].to_dict(), "validation": selection.metrics.get(category, {}),
                       **{split: {m: found[category].metrics.get(m) for m in METRICS} for split, found in evaluated.items() if category in found}}
            for category in detector.categories
        }  # fmt: skip
    detector.scoring = stored
    print(f"| category | {args.compare} | rule (weights, sigma, pool) | validation score | test " + " / ".join(METRICS) + " |\n|---|---|---|---|---|")
    for name, rows in report.items():
        for category, row in rows.items():
            rule, found = row["rule"], row["validation"]  # type: ignore[index]
            score = sum(found.get(m, 0.0) for m in METRICS) / len(METRICS) if found else float("nan")  # type: ignore[union-attr]
            test = "; ".join(f"{split} " + " / ".join(f"{row[split][m]:.4f}" for m in METRICS) for split in tests if split in row)  # type: ignore[index]
            print(f"| {category} | {name} | {rule['weights']}, {rule['smoothing_sigma']}, {rule['score_pool_size']} | {score:.4f} | {test} |")  # type: ignore[index]
    print(f"stored rule: { {c: r.to_dict() for c, r in stored.items()} }")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(args.model), "stored": {c: r.to_dict() for c, r in stored.items()}, "runs": report}, indent=2))
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    raise SystemExit(main())
