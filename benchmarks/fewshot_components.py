"""What each part of the generalist's image score contributes, on left-out categories (image labels only).

For generalists already trained leave-one-category-out (``--trained`` with ``{left_out}``, e.g. by
``benchmarks/fewshot.py`` or ``onenip.fewshot.train_generalist``), score each left-out category's test
images from the same seeded prompt sets as ``fewshot.py`` and report image AUROC of: the final score
(mean of the holistic head and the max patch residual, what onboarding uses), the max patch residual
alone (no trained part), the holistic head alone, the image-level residual head alone. Only cached
backbone features and the head run, so one category takes seconds to a few minutes. Every category is
scored at the generalist's square input, as onboarding did before ``generalist.keep_aspect`` (a record of
the head's parts, not of what onboarding now does on a category with its own aspect, such as kolektor).

    .venv/bin/python benchmarks/fewshot_components.py --elpv /tmp/elpv --trained 'runs/gen-{left_out}/model' \\
        --out benchmarks/results/fewshot-components.json
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
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.fewshot import DEFAULT_ROOT, joined_root  # noqa: E402

COMPONENTS = ("final", "max_residual", "holistic", "image_residual")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--elpv", type=Path, default=None, help="an ELPV root in MVTec layout (mono, poly)")
    parser.add_argument("--trained", required=True, help="folder pattern with {left_out} of the generalists trained without it")
    parser.add_argument("--left-out", nargs="*", default=None)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args()

    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    from onenip.config import load_params
    from onenip.data.geometry import square_geometry
    from onenip.data.manifest import make_manifest
    from onenip.features import FeatureCache
    from onenip.models.generalist import GeneralistDetector

    params = load_params(args.params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        root, categories = joined_root([args.root] + ([args.elpv] if args.elpv else []), Path(tmp) / "root")
        for left_out in args.left_out or categories:
            folder = Path(args.trained.format(left_out=left_out))
            detector = GeneralistDetector.load(folder)
            if left_out in detector.metadata.get("auxiliary_categories", []):
                raise SystemExit(f"{folder} was trained on {left_out}")
            cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, detector.backbone_cfg)
            geometry = square_geometry(detector.backbone_cfg.input_size)
            manifest = make_manifest(root, [left_out], progress=False)
            train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)].sort_values("image_path")
            test = manifest[manifest["split"] == "test"]
            normals = train["image_path"].tolist()
            fit = cache.get(normals, train["sha256"].tolist(), geometry, progress=False)
            queries = cache.get(test["image_path"].tolist(), test["sha256"].tolist(), geometry, progress=True, desc=left_out).float()
            labels = test["label_index"].to_numpy()
            for shots in args.shots:
                aurocs: dict[str, list[float]] = {c: [] for c in COMPONENTS}
                aps = []
                for trial in range(args.trials):
                    prompts = random.Random(1000 * shots + trial).sample(normals, shots)  # fewshot.py's prompt sets
                    out = detector.score_features(queries, fit.select([normals.index(p) for p in prompts]).float())
                    values = {"final": out.score, "max_residual": out.residual_map.flatten(1).amax(1),
                              "holistic": out.holistic_score, "image_residual": out.image_score}  # fmt: skip
                    for name, value in values.items():
                        aurocs[name].append(float(roc_auc_score(labels, value.numpy())))
                    aps.append(float(average_precision_score(labels, out.score.numpy())))
                row = {"left_out": left_out, "shots": shots, "trials": args.trials, "model": str(folder),
                       "holistic_input": detector.head.holistic_input, "real_anomalies": detector.metadata.get("real_anomalies"),
                       "image_AP_final": float(np.mean(aps)),
                       **{f"image_AUROC_{c}": {"mean": float(np.mean(v)), "std": float(np.std(v))} for c, v in aurocs.items()}}  # fmt: skip
                rows.append(row)
                print(f"{left_out} k={shots}: " + ", ".join(f"{c} {np.mean(aurocs[c]):.3f}" for c in COMPONENTS), flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
