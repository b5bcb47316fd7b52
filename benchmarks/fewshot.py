"""Few-shot generalist benchmark (issue "Few-shot generalist mode"): leave one category out.

For each left-out category: train the InCTRL generalist on all the others, then score the left-out
category from k in ``--shots`` normal prompt images, ``--trials`` random prompt sets each (mean and std),
next to anomalib PatchCore fitted on the same k images (its memory bank is the k images). Image AUROC,
image AP, pixel AUROC and AUPRO where masks exist, onboarding seconds, generalist training minutes.
Categories from several roots (``../shared/datasets/industrial``, an ELPV root from
``onenip.data.convert.convert_elpv``) are joined through a temporary folder of symlinks.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/fewshot.py --elpv /tmp/elpv --out benchmarks/results/fewshot
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
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
METRICS = ("image_AUROC", "image_AP", "pixel_AUROC", "pixel_AUPRO")


def joined_root(roots: list[Path], folder: Path) -> tuple[Path, list[str]]:
    categories = []
    folder.mkdir(parents=True, exist_ok=True)
    for root in roots:
        for category in sorted(p for p in root.iterdir() if (p / "train" / "good").is_dir()):
            (folder / category.name).symlink_to(category.resolve(), target_is_directory=True)
            categories.append(category.name)
    return folder, categories


def summarise(values: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in (*METRICS, "seconds"):
        series = [v[metric] for v in values if v.get(metric) is not None]
        if series:
            out[metric] = {"mean": float(np.mean(series)), "std": float(np.std(series))}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--elpv", type=Path, default=None, help="an ELPV root in MVTec layout (mono, poly)")
    parser.add_argument("--left-out", nargs="*", default=None, help="only these left-out categories")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override generalist.epochs")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fewshot")
    args = parser.parse_args()

    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.generalist import onboard_category, train_generalist

    overrides = {"generalist": {"epochs": args.epochs}} if args.epochs else None
    params = load_params(args.params, overrides=overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root, categories = joined_root([args.root] + ([args.elpv] if args.elpv else []), Path(tmp) / "root")
        for left_out in args.left_out or categories:
            auxiliary = [c for c in categories if c != left_out]
            started = time.perf_counter()
            trained = train_generalist(root, auxiliary, params, Path(tmp) / f"gen-{left_out}", progress=True)
            train_minutes = (time.perf_counter() - started) / 60
            manifest = make_manifest(root, [left_out], progress=False)
            normals = sorted(manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]["image_path"])
            for shots in args.shots:
                generalist_runs, patchcore_runs = [], []
                for trial in range(args.trials):
                    prompts = random.Random(1000 * shots + trial).sample(normals, shots)
                    result = onboard_category(trained.model_dir, root, left_out, shots, params, Path(tmp) / f"on-{left_out}-{shots}-{trial}",
                                              progress=False, prompt_paths=prompts)  # fmt: skip
                    generalist_runs.append({m: result.metrics.get(m) for m in METRICS} | {"seconds": result.seconds})
                    if not args.no_patchcore:
                        from benchmarks.peers import run_peer

                        few = manifest[(manifest["split"] == "test") | manifest["image_path"].isin(prompts)]
                        peer = run_peer("patchcore", left_out, root, coreset_ratio=1.0, manifest=few, num_timed_single=1)
                        patchcore_runs.append({m: peer["metrics"].get(m) for m in METRICS} | {"seconds": peer["train_minutes"] * 60})
                row = {"left_out": left_out, "auxiliary": auxiliary, "shots": shots, "trials": args.trials,
                       "generalist_train_minutes": train_minutes, "generalist_validation": trained.validation,
                       "generalist": summarise(generalist_runs), "patchcore": summarise(patchcore_runs)}  # fmt: skip
                rows.append(row)
                g, p = row["generalist"], row["patchcore"]
                print(f"{left_out} k={shots}: generalist I-AUROC {g['image_AUROC']['mean']:.3f} +- {g['image_AUROC']['std']:.3f}"
                      + (f", PatchCore {p['image_AUROC']['mean']:.3f} +- {p['image_AUROC']['std']:.3f}" if p else ""), flush=True)  # fmt: skip
                (args.out / "fewshot.json").write_text(json.dumps(rows, indent=2))
    lines = ["| left out | k | generalist I-AUROC | PatchCore I-AUROC | generalist P-AUROC | generalist AUPRO | onboarding s | generalist train min |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(block: dict[str, Any], metric: str) -> str:
        return f"{block[metric]['mean']:.3f} +- {block[metric]['std']:.3f}" if metric in block else "-"

    for row in rows:
        lines.append(f"| {row['left_out']} | {row['shots']} | {cell(row['generalist'], 'image_AUROC')} | {cell(row['patchcore'], 'image_AUROC')} "
                     f"| {cell(row['generalist'], 'pixel_AUROC')} | {cell(row['generalist'], 'pixel_AUPRO')} "
                     f"| {cell(row['generalist'], 'seconds')} | {row['generalist_train_minutes']:.1f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    (args.out / "fewshot.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
