"""Ablation of the OneNIP quality changes, one step at a time, per category (issue "OneNIP quality").

Rows, each adding one change to the row above (per-category networks, same data, seed and metric code):

1. ``mask fix alone``: the reference's neighbour mask; otherwise the earlier model: images squashed to
   256 x 256, no fine path, the paper's 0.5 / 0.5 blend (sigma 4, pool 16), the earlier synthesis
   (Perlin, CutPaste patch and scar; a fixed pool of 4 copies), the last epoch;
2. ``+ validation choices``: blend, sigma, pooling and epoch chosen on validation data (held-out
   training normals + unseen synthetic families);
3. ``+ synthesis``: cracks and uneven brightness, fresh anomalies every epoch;
4. ``+ aspect``: each category at its own aspect (letterboxed where aspects vary);
5. ``+ resolution``: the refiner's fine skip path (stride-8 prompt residual) and the residual map;
6. ``+ epochs``: the default number of epochs (rows 1-5 use ``--short-epochs``).

Grey-aware synthesis, CutPaste's 0.4 colour jitter and the error maps as whitened per-position z-scores
of the residuals on training normals (``model.error_normalization: whitened``) are in every row: row 1
is therefore "the mask fix and the whitened error maps". Every row is
a subprocess (its own peak RSS). Prints a markdown table and writes ``ablation.json``/``.md``:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/ablation.py --categories kolektor magnetic_tile
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
METRICS = ("image_AUROC", "image_AP", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")


def steps(short_epochs: int) -> list[tuple[str, dict[str, Any]]]:
    """(row name, params overrides) for the cumulative ablation."""
    earlier = {
        "model": {"keep_aspect": False, "backbone": {"fine_indices": []}},
        "synthesis": {"methods": ["perlin", "cutpaste_patch", "cutpaste_scar"], "pool_size": 4, "regenerate_every": 0},
        "validation": {"select": False},
        "train": {"epochs": short_epochs},
    }
    rows = [("mask fix alone", earlier)]

    def then(name: str, change: dict[str, Any]) -> None:
        rows.append((name, _merge(rows[-1][1], change)))

    then("+ validation choices", {"validation": {"select": True}})
    then("+ synthesis", {"synthesis": {"methods": ["perlin", "cutpaste_patch", "cutpaste_scar", "crack", "brightness"],
                                       "pool_size": 1, "regenerate_every": 1}})  # fmt: skip
    then("+ aspect", {"model": {"keep_aspect": True}})
    then("+ resolution", {"model": {"backbone": {"fine_indices": [2, 3]}}})
    rows.append(("+ epochs", _without_epochs(rows[-1][1])))
    return rows


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = json.loads(json.dumps(base))
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _without_epochs(overrides: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(overrides))
    out["train"].pop("epochs", None)
    return out


def run_row(args: argparse.Namespace) -> dict[str, Any]:
    """Worker: train one category with the row's overrides, evaluate on its test split."""
    import resource

    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.training import train_onenip

    overrides = json.loads(args.overrides)
    if args.cache_dir:
        overrides.setdefault("train", {})["cache_dir"] = args.cache_dir
    params = load_params(args.params, overrides=overrides)
    manifest, _ = drop_leaked_test_images(make_manifest(args.root, [args.category], progress=False))
    started = time.perf_counter()
    result = train_onenip(manifest, params, args.run_dir, [args.category], resume=False, progress=False)
    minutes = (time.perf_counter() - started) / 60
    detector = result.detector
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    metrics = evaluate(detector, manifest, cache, None, [args.category], num_heatmaps=0, progress=False)[args.category].metrics
    return {
        "category": args.category,
        "row": args.row,
        "metrics": {m: metrics.get(m) for m in METRICS},
        "train_minutes": minutes,
        "epochs": params.train.epochs,
        "kept_epoch": detector.metadata.get("kept_epoch"),
        "scoring_rule": detector.scoring[args.category].to_dict(),
        "input_geometry": detector.geometry(args.category).to_dict(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "overrides": overrides,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| category | step | I-AUROC | I-AP | P-AUROC | P-AP | AUPRO | epochs (kept) | rule (w recon/refiner/residual, sigma, pool) | train min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]
        rule = row["scoring_rule"]
        weights = "/".join(f"{w:g}" for w in rule["weights"])
        cells = " | ".join("-" if m.get(k) is None else f"{m[k]:.3f}" for k in METRICS)
        lines.append(
            f"| {row['category']} | {row['row']} | {cells} | {row['epochs']} ({row['kept_epoch']}) "
            f"| {weights}, {rule['smoothing_sigma']:g}, {rule['score_pool_size']} | {row['train_minutes']:.1f} |",
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--categories", nargs="+", default=["kolektor", "magnetic_tile"])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--short-epochs", type=int, default=4, help="epochs of every row but the last")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation")
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (names as in the table)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.json.write_text(json.dumps(run_row(args), indent=2))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for category in args.categories:
        for index, (name, overrides) in enumerate(steps(args.short_epochs)):
            if args.only and name not in args.only:
                continue
            json_path = args.out / f"{category}-{index}.json"
            command = [sys.executable, __file__, "--worker", "--category", category, "--row", name, "--root", str(args.root),
                       "--params", str(args.params), "--overrides", json.dumps(overrides),
                       "--run-dir", str(args.out / f"{category}-{index}"), "--json", str(json_path)]  # fmt: skip
            if args.cache_dir:
                command += ["--cache-dir", args.cache_dir]
            print(f"[{time.strftime('%H:%M:%S')}] {category}: {name} ...", flush=True)
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                print(completed.stderr[-3000:], file=sys.stderr)
                continue
            results.append(json.loads(json_path.read_text()))
            (args.out / "ablation.json").write_text(json.dumps(results, indent=2))
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
    table = format_table(results)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
