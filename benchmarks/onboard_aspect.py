"""Onboarding at a category's own aspect or at the generalist's square, judged on validation data only.

Onboarding's validation synthesises its anomalies on the images at the category's input, sized by the
input's short side, so a square and a native-aspect input are judged on different anomalies (on
kolektor the square's cover about 2.5 times more of the surface). Here every validation image gets ONE
anomaly at its own resolution (seeded by its file name), and that image is resized to each input as the
normals are; both inputs are then scored on the same anomalies. Per left-out category, k and
``fewshot.py``'s seeded prompt sets: each input's validation AUROC of the neighbourhood residual and of the
candidate ``pick_scoring`` chooses, on onboarding's own calibration normals and validation images. No
test image is read.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/onboard_aspect.py --trained '/work/gen/gen-{left_out}/model' --out R/onboard_aspect.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def anomalous_original(path: str, params: Any) -> tuple[torch.Tensor, str]:
    """(3, H, W) the image at its own resolution with one validation-family anomaly, and its family."""
    from onenip.data.manifest import read_image
    from onenip.data.transforms import image_to_tensor
    from onenip.synthesis import AnomalySynthesizer

    picture = image_to_tensor(read_image(path))
    generator = torch.Generator().manual_seed(params.train.seed + zlib.crc32(Path(path).name.encode()))
    made = AnomalySynthesizer(methods=params.validation.methods)(picture, generator=generator)
    return made.image, str(made.method)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "industrial")
    parser.add_argument("--left-out", nargs="+", default=["kolektor"])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trained", required=True, help="folder pattern with {left_out} of fewshot.py's generalists")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onboard_aspect.json")
    args = parser.parse_args()

    from tqdm.auto import tqdm

    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.features import extract_features
    from onenip.models.features import Features
    from onenip.fewshot import ValidationScores, candidate_scores, pick_scoring, prepare_onboarding
    from onenip.metrics import image_auroc

    base = load_params(args.params)
    if "neighbourhood_rotated" in base.generalist.residuals:
        raise SystemExit("onboard_aspect.py does not build the rotated bank: leave neighbourhood_rotated out of generalist.residuals")
    inputs = {name: base.model_copy(update={"generalist": base.generalist.model_copy(update={"keep_aspect": keep})})
              for name, keep in (("square", False), ("native", True))}  # fmt: skip
    originals: dict[str, tuple[torch.Tensor, str]] = {}
    anomaly_features: dict[tuple[str, str], Features] = {}
    cells: list[dict[str, Any]] = []
    for left_out in args.left_out:
        manifest = make_manifest(args.root, [left_out], progress=False)
        normals = sorted(manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]["image_path"])
        generalist = Path(args.trained.format(left_out=left_out))
        jobs = [(k, t) for k in args.shots for t in range(args.trials)]
        for k, trial in tqdm(jobs, desc=f"{left_out}: cells"):
            prompts = random.Random(1000 * k + trial).sample(normals, k)  # fewshot.py's prompt sets
            cell: dict[str, Any] = {"left_out": left_out, "shots": k, "trial": trial}
            for name, params in inputs.items():
                state = prepare_onboarding(generalist, args.root, left_out, k, params, progress=False, prompt_paths=prompts)
                if len(state.calibration) < params.validation.min_normals:  # onboarding would not choose here either
                    continue
                detector, index = state.detector, state.index
                geometry = detector.geometry(index)
                paths = state.validation_paths()
                for path in paths:
                    if path not in originals:
                        originals[path] = anomalous_original(path, base)
                    key = (path, geometry.key())
                    if key not in anomaly_features:
                        # resized, rounded to 8 bits as onboarding's validation images are, float16 as features are cached
                        image = (geometry.apply(originals[path][0]) * 255).round() / 255
                        found = extract_features(detector.feature_extractor, image[None].to(state.device), detector.backbone_cfg, 1)
                        anomaly_features[key] = Features(found.coarse.half().float().cpu(), found.fine.half().float().cpu())  # type: ignore[union-attr]
                anomalies = Features.cat([anomaly_features[(p, geometry.key())] for p in paths]).to(state.device)
                normal_features = state.features.select(state.calibration).to(state.device)
                normal, anomalous = candidate_scores(detector, index, normal_features.float(), anomalies, params)
                scores, labels, families = ValidationScores(normal, anomalous, [originals[p][1] for p in paths]).flat()
                chosen, aurocs, _ = pick_scoring(scores, labels, params.generalist.trained_margin_se, families,
                                                 every_family=params.generalist.trained_every_family)  # fmt: skip
                cell[name] = {"input_size": list(geometry.size), "neighbourhood_AUROC": aurocs[("neighbourhood", 0.0)],
                              "chosen": list(chosen), "chosen_AUROC": float(image_auroc(scores[chosen], labels)),
                              "normals": int((labels == 0).sum()), "anomalies": int((labels == 1).sum())}  # fmt: skip
            if all(name in cell for name in inputs):
                cells.append(cell)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"cells": cells}, indent=2))
    lines = ["| left out | cells | neighbourhood: square | native | chosen: square | native | native higher (neighbourhood / chosen) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    for left_out in args.left_out:
        rows = [c for c in cells if c["left_out"] == left_out]
        means = {(n, m): float(np.mean([c[n][m] for c in rows])) for n in inputs for m in ("neighbourhood_AUROC", "chosen_AUROC")}
        higher = [sum(c["native"][m] > c["square"][m] for c in rows) for m in ("neighbourhood_AUROC", "chosen_AUROC")]
        summary[left_out] = {f"{n}_{m}": v for (n, m), v in means.items()} | {"native_higher": higher, "cells": len(rows)}
        lines.append(f"| {left_out} | {len(rows)} | {means[('square', 'neighbourhood_AUROC')]:.4f} | {means[('native', 'neighbourhood_AUROC')]:.4f} "
                     f"| {means[('square', 'chosen_AUROC')]:.4f} | {means[('native', 'chosen_AUROC')]:.4f} | {higher[0]} / {higher[1]} |")  # fmt: skip
    args.out.write_text(json.dumps({"summary": summary, "cells": cells}, indent=2))
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
