"""Does onboarding's choice of scoring carry over to a defect type it never saw? Validation data only.

For each left-out category of the few-shot benchmark (its generalist trained on the others, as
``fewshot.py --trained`` keeps them), each k and each of ``fewshot.py``'s seeded prompt sets, onboarding's
validation is built as onboarding builds it (the category's calibration normals, one synthetic anomaly
of the validation families on each of 32 of them) and every candidate scores it. Then, for each
validation family in turn, a selection rule chooses on the other families (and on the even-numbered
normals) and the chosen candidate's image AUROC is measured on the held-out family (against the
odd-numbered normals): how well each rule picks for a defect type it did not see, which is what real
defects are. Rules: ``pooled`` (the margin rule on all families together, the default so far) and
``every_family`` (``generalist.trained_every_family``: ``inctrl`` must also win on each family alone).
No test image is read: the benchmark's test split stays the judge of what the rule does.

``--onenip MODEL`` asks the same of a saved OneNIP model's rule selection: its validation set is rebuilt
as training built it, and per category and held-out family the rule is chosen with the refiner margin
alone (``pooled``) and with ``validation.refiner_every_family`` (``every_family``: a rule with more
refiner weight must also win on each family alone); the choice's selection score (image AUROC, pixel
AUROC, pixel AP, AUPRO) is measured on the held-out family and the odd-numbered held-out normals.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/selection_transfer.py --elpv /work/elpv \
        --trained '/work/gen/gen-{left_out}/model' --out R/selection_transfer.json
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/selection_transfer.py --onenip R/.../model \
        --cache-dir C --out R/selection_transfer_onenip.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RULES = {"pooled": False, "every_family": True}


def held_out_family_aurocs(scores: dict[tuple[str, float], np.ndarray], labels: np.ndarray, families: np.ndarray,
                           margin_se: float) -> list[dict[str, Any]]:  # fmt: skip
    """For each family: every rule's choice made on the other families and the even normals, and the
    chosen candidate's AUROC on that family against the odd normals."""
    from onenip.fewshot import pick_scoring
    from onenip.metrics import image_auroc

    normal = np.flatnonzero(labels == 0)
    choose_normals, judge_normals = normal[0::2], normal[1::2]
    out = []
    for family in sorted(set(families[labels == 1])):
        choose = np.r_[choose_normals, np.flatnonzero((labels == 1) & (families != family))]
        judge = np.r_[judge_normals, np.flatnonzero(families == family)]
        if not (labels[choose] == 1).any() or (labels[judge] == 1).sum() < 2:  # nothing to choose on, or to judge by
            continue
        row: dict[str, Any] = {"family": str(family), "anomalies": int((labels[judge] == 1).sum())}
        for rule, every_family in RULES.items():
            chosen, _, _ = pick_scoring({c: v[choose] for c, v in scores.items()}, labels[choose], margin_se, families[choose],
                                        every_family=every_family)  # fmt: skip
            row[rule] = {"choice": list(chosen), "held_out_AUROC": float(image_auroc(scores[chosen][judge], labels[judge]))}
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "industrial")
    parser.add_argument("--elpv", type=Path, default=None, help="an ELPV root in MVTec layout (mono, poly)")
    parser.add_argument("--left-out", nargs="*", default=None)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trained", help="folder pattern with {left_out} of the generalists fewshot.py trained")
    parser.add_argument("--onenip", type=Path, default=None, help="a saved OneNIP model folder: study its rule selection instead")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir (with --onenip)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "selection_transfer.json")
    args = parser.parse_args()

    from benchmarks.fewshot import joined_root
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.fewshot import family_aurocs, prepare_onboarding, validation_scores

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.onenip is not None:
        overrides = {"train": {"cache_dir": args.cache_dir}} if args.cache_dir else None
        cells = onenip_cells(args.onenip, load_params(args.params, overrides=overrides), args.root)
        args.out.write_text(json.dumps({"model": str(args.onenip), "rules": list(RULES), "cells": cells}, indent=1))
        table = summarise([{"left_out": c["category"], "held_out": c["held_out"]} for c in cells], column="category", metric="score")
        print(table)
        args.out.with_suffix(".md").write_text(table + "\n")
        return 0
    if not args.trained:
        parser.error("--trained is required without --onenip")
    params = load_params(args.params)
    margin = params.generalist.trained_margin_se
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root, categories = joined_root([args.root] + ([args.elpv] if args.elpv else []), Path(tmp) / "root")
        for left_out in args.left_out or categories:
            manifest = make_manifest(root, [left_out], progress=False)
            normals = sorted(manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]["image_path"])
            for shots in args.shots:
                for trial in range(args.trials):
                    prompts = random.Random(1000 * shots + trial).sample(normals, shots)  # fewshot.py's prompt sets
                    started = time.perf_counter()
                    state = prepare_onboarding(args.trained.format(left_out=left_out), root, left_out, shots, params,
                                               progress=False, prompt_paths=prompts)  # fmt: skip
                    normal_features = state.features.select(state.calibration).to(state.device)
                    validation = validation_scores(state.detector, state.index, normal_features, state.validation_paths(), state.params, state.device)
                    scores, labels, families = validation.flat()
                    cell = {"left_out": left_out, "shots": shots, "trial": trial, "seconds": time.perf_counter() - started,
                            "family_AUROC": {f"{r}:{w}": family_aurocs(v, labels, families) for (r, w), v in scores.items()},
                            "held_out": held_out_family_aurocs(scores, labels, families, margin)}  # fmt: skip
                    cells.append(cell)
                    summary = ", ".join(f"{h['family']}: " + " / ".join(f"{h[r]['held_out_AUROC']:.3f}" for r in RULES) for h in cell["held_out"])
                    print(f"{left_out} k={shots} trial {trial} ({cell['seconds']:.0f} s) held-out AUROC pooled / every_family: {summary}", flush=True)
                    args.out.write_text(json.dumps({"margin_se": margin, "rules": list(RULES), "cells": cells}, indent=1))
    table = summarise(cells)
    print(table)
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


def onenip_cells(model: Path, params: Any, root: Path) -> list[dict[str, Any]]:
    """Per category and held-out family of a saved OneNIP model's rebuilt validation set: each rule's
    choice on the other families (and even normals), scored on that family (and odd normals)."""
    import torch

    from onenip.data.manifest import make_manifest
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector
    from onenip.training import prepare_category_data
    from onenip.metrics.bootstrap import PerImage
    from onenip.scoring_selection import (SELECTION_DOWNSCALE, CategoryValidation, downscaled, rule_maps, select_one,
                                   build_category_validation, validation_components)  # fmt: skip

    detector = OneNIPDetector.load(model).eval()
    manifest = make_manifest(root, detector.categories, progress=False)
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    cells = []
    for index, category in enumerate(detector.categories):
        started = time.perf_counter()
        with torch.no_grad():
            item = prepare_category_data(manifest, params, cache, category, index, detector.geometry(category), False)
            validation = build_category_validation(category, item.holdout_images, item.holdout_valid, detector.feature_extractor, params,
                                                   seed=params.train.seed + item.index)  # fmt: skip
            components = validation_components(detector, validation)
        labels = validation.labels.numpy()
        methods = np.array(validation.methods)
        normal = np.flatnonzero(labels == 0)
        masks = (downscaled(validation.masks.float(), SELECTION_DOWNSCALE) >= 0.5)[:, 0].numpy()
        valid = None if validation.valid is None else downscaled(validation.valid.float(), SELECTION_DOWNSCALE) >= 0.5

        def subset(rows: np.ndarray) -> tuple[CategoryValidation, list[Any]]:
            picked = torch.as_tensor(rows)
            part = CategoryValidation(category, validation.features.select(rows.tolist()), validation.labels[picked], validation.masks[picked],
                                      None if validation.valid is None else validation.valid[picked], [validation.methods[i] for i in rows])  # fmt: skip
            return part, [None if c is None else c[picked] for c in components]

        held_out = []
        for family in sorted(set(methods[labels == 1])):
            choose = np.r_[normal[0::2], np.flatnonzero((labels == 1) & (methods != family))]
            judge = np.r_[normal[1::2], np.flatnonzero(methods == family)]
            counts = np.zeros(len(labels))
            counts[judge] = 1
            row: dict[str, Any] = {"family": str(family), "anomalies": int((methods == family).sum())}
            for rule_name, every_family in RULES.items():
                cfg = params.validation.model_copy(update={"refiner_every_family": every_family})
                part, part_components = subset(choose)
                _, rule, _, _ = select_one(part, part_components, cfg)
                maps = rule_maps(rule, components, valid)
                score = float(np.mean(list(PerImage.from_maps(maps[1], labels, list(maps[0]), list(masks)).metrics(counts).values())))
                row[rule_name] = {"choice": rule.to_dict(), "held_out_score": score}
            held_out.append(row)
            print(f"{category} {family}: " + " / ".join(f"{row[r]['held_out_score']:.4f} {row[r]['choice']['weights']}" for r in RULES), flush=True)
        cells.append({"category": category, "seconds": time.perf_counter() - started, "held_out": held_out})
    return cells


def summarise(cells: list[dict[str, Any]], column: str = "left out", metric: str = "AUROC") -> str:
    """Mean held-out-family AUROC (or selection score) of each rule per category and overall, and how often they differ."""
    lines = [f"| {column} | held-out cells | choices differ | pooled | every_family | every_family - pooled |", "|---|---|---|---|---|---|"]
    groups = sorted({c["left_out"] for c in cells}) + ["all"]
    for group in groups:
        rows = [h for c in cells if group in ("all", c["left_out"]) for h in c["held_out"]]
        if not rows:
            continue
        pooled = np.array([h["pooled"][f"held_out_{metric}"] for h in rows])
        every = np.array([h["every_family"][f"held_out_{metric}"] for h in rows])
        differ = sum(h["pooled"]["choice"] != h["every_family"]["choice"] for h in rows)
        lines.append(f"| {group} | {len(rows)} | {differ} | {pooled.mean():.4f} | {every.mean():.4f} | {every.mean() - pooled.mean():+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
