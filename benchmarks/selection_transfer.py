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

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/selection_transfer.py --elpv /work/elpv \
        --trained '/work/gen/gen-{left_out}/model' --out R/selection_transfer.json
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
    from onenip.generalist import pick_scoring
    from onenip.metrics import image_auroc

    normal = np.flatnonzero(labels == 0)
    choose_normals, judge_normals = normal[0::2], normal[1::2]
    out = []
    for family in sorted(set(families[labels == 1])):
        choose = np.r_[choose_normals, np.flatnonzero((labels == 1) & (families != family))]
        judge = np.r_[judge_normals, np.flatnonzero(families == family)]
        if len(set(families[choose][labels[choose] == 1])) < 1 or (labels[judge] == 1).sum() < 2:
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
    parser.add_argument("--trained", required=True, help="folder pattern with {left_out} of the generalists fewshot.py trained")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "selection_transfer.json")
    args = parser.parse_args()

    from benchmarks.fewshot import joined_root
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.generalist import family_aurocs, prepare_onboarding, validation_scores

    params = load_params(args.params)
    margin = params.generalist.trained_margin_se
    args.out.parent.mkdir(parents=True, exist_ok=True)
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


def summarise(cells: list[dict[str, Any]]) -> str:
    """Mean held-out-family AUROC of each rule per left-out category and overall, and how often they differ."""
    lines = ["| left out | held-out cells | choices differ | pooled | every_family | every_family - pooled |", "|---|---|---|---|---|---|"]
    groups = sorted({c["left_out"] for c in cells}) + ["all"]
    for group in groups:
        rows = [h for c in cells if group in ("all", c["left_out"]) for h in c["held_out"]]
        if not rows:
            continue
        pooled = np.array([h["pooled"]["held_out_AUROC"] for h in rows])
        every = np.array([h["every_family"]["held_out_AUROC"] for h in rows])
        differ = sum(h["pooled"]["choice"] != h["every_family"]["choice"] for h in rows)
        lines.append(f"| {group} | {len(rows)} | {differ} | {pooled.mean():.4f} | {every.mean():.4f} | {every.mean() - pooled.mean():+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
