"""OneNIP vs anomalib's PatchCore and PaDiM on the same images, weights, input size and metric code.

Trains OneNIP in unified mode (one network for all categories) and per category, fits the peers
(``benchmarks/peers.py``) in the same run, and writes a table (markdown + JSON) with I-AUROC, I-AP,
P-AUROC, P-AP, AUPRO, F1-max, training minutes, inference images/s at batch 1 and 16 and peak RSS.
Every fit runs in its own subprocess so peak RSS is that fit's own.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/run_benchmark.py \
        --root ../shared/datasets/industrial --out benchmarks/results

Threads come from OMP_NUM_THREADS / MKL_NUM_THREADS (never ``torch.set_num_threads``, which breaks
PaDiM's batched matrix inverse with this torch build).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
# Same OpenMP wait policy for every fit (children inherit it), as benchmarks/peers.py sets: with the
# default ACTIVE policy any other busy process makes spinning threads starve each other (measured
# 2.3 s instead of 0.05 s per PatchCore image); on an idle machine ACTIVE is about 2x faster.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
CATEGORIES = ("bottle", "magnetic_tile", "kolektor")
METRICS = ("image_AUROC", "image_AP", "image_F1max", "pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure_throughput(detector: Any, category_index: int, batch_size: int, repeats: int) -> float:
    """Images/s of ``detector(images)`` (backbone + OneNIP + maps + scores) on preprocessed tensors at the
    category's input geometry, after warm-up."""
    import torch

    device = detector.device
    height, width = detector.geometry(category_index).size
    images = torch.rand(batch_size, 3, height, width, device=device)
    with torch.no_grad():
        for _ in range(2):
            detector(images, category_index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            detector(images, category_index)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - started)


def run_onenip(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Worker: train one OneNIP network (unified or one category), evaluate, time, report rows."""
    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate, prompt_sensitivity
    from onenip.features import FeatureCache
    from onenip.training import train_onenip

    params = load_params(args.params)
    overrides = {}
    epochs = _category_epochs(args.category_epochs).get(args.categories[0]) if len(args.categories) == 1 else None
    if epochs or args.epochs:
        overrides["epochs"] = epochs or args.epochs
    if args.cache_dir:
        overrides["cache_dir"] = args.cache_dir
    if overrides:
        params = params.model_copy(update={"train": params.train.model_copy(update=overrides)})
    manifest, dropped = drop_leaked_test_images(make_manifest(args.root, args.categories, progress=False))
    started = time.perf_counter()
    result = train_onenip(manifest, params, args.run_dir, args.categories, resume=False, progress=args.progress)
    train_wall = time.perf_counter() - started
    detector = result.detector.eval()
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    evaluation = evaluate(detector, manifest, cache, Path(args.run_dir) / "eval", num_heatmaps=params.eval.num_heatmaps, progress=False)
    selection = detector.metadata.get("selection") or {}
    rows = []
    for category in args.categories:
        k = detector.category_index(category)
        sensitivity = (
            prompt_sensitivity(detector, manifest, category, cache, params.eval.prompt_trials)
            if params.eval.prompt_trials
            else {}
        )
        rows.append(
            {
                "method": f"onenip-{args.mode}",
                "category": category,
                "metrics": {m: evaluation[category].metrics.get(m) for m in METRICS},
                "prompt_sensitivity": sensitivity,
                "train_minutes": train_wall / 60,
                "train_minutes_scope": "whole network (all categories)" if args.mode == "unified" else "this category",
                "epochs": params.train.epochs,
                "kept_epoch": detector.metadata.get("kept_epoch"),
                "scoring_rule": detector.scoring[category].to_dict(),
                "validation_metrics": (selection.get("metrics") or {}).get(category),
                "input_geometry": detector.geometry(category).to_dict(),
                "inference": {
                    "images_per_s_batch1": measure_throughput(detector, k, 1, 32),
                    "images_per_s_batch16": measure_throughput(detector, k, 16, 4),
                },
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "dropped_test_images": [p for p in dropped if f"/{category}/" in p],
                "config": params.model.model_dump(mode="json") | {"train": params.train.model_dump(mode="json"),
                                                                   "synthesis": params.synthesis.model_dump(mode="json"),
                                                                   "validation": params.validation.model_dump(mode="json")},
            },
        )
    return rows


def write_synthesis_previews(root: Path, categories: Sequence[str], params_path: Path, out: Path) -> list[Path]:
    """Per category, the training synthesis and the validation families as PNG grids, so a person can
    judge how realistic the anomalies are (``onenip synthesize`` writes the same)."""
    from onenip.config import load_params
    from onenip.jobs import synthesis_preview

    params = load_params(params_path)
    written = []
    for category in categories:
        for validation in (False, True):
            name = f"{category}-{'validation' if validation else 'training'}.png"
            written.append(synthesis_preview(root, category, params, out / "synthesis" / name, 8, validation=validation))
    return written


def _category_epochs(items: Sequence[str] | None) -> dict[str, int]:
    """``["magnetic_tile=8"]`` -> ``{"magnetic_tile": 8}`` (epochs for per-category fits)."""
    result = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if not value.isdigit():
            msg = f"--category-epochs expects CATEGORY=N, got {item!r}"
            raise SystemExit(msg)
        result[name] = int(value)
    return result


def _subprocess_rows(command: list[str], json_path: Path, timeout: float | None) -> list[dict[str, Any]]:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return []
    rows = json.loads(json_path.read_text())
    return rows if isinstance(rows, list) else [rows]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| category | method | I-AUROC | I-AP | P-AUROC | P-AP | AUPRO | I-F1max | P-F1max | train min | img/s b1 | img/s b16 | peak RSS MB |"
    lines = [head, "|" + "---|" * 13]
    for row in sorted(rows, key=lambda r: (r["category"], r["method"])):
        m = row["metrics"]

        def f(name: str) -> str:
            return "-" if m.get(name) is None else f"{m[name]:.3f}"

        inf = row.get("inference", {})
        lines.append(
            f"| {row['category']} | {row['method']} | {f('image_AUROC')} | {f('image_AP')} | {f('pixel_AUROC')} | {f('pixel_AP')} "
            f"| {f('pixel_AUPRO')} | {f('image_F1max')} | {f('pixel_F1max')} | {row['train_minutes']:.1f} "
            f"| {inf.get('images_per_s_batch1', 0):.1f} | {inf.get('images_per_s_batch16', 0):.1f} | {row['peak_rss_mb']:.0f} |",
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--modes", nargs="*", default=["unified", "per-category"], choices=["unified", "per-category"])
    parser.add_argument("--peers", nargs="*", default=["patchcore", "padim"], choices=["patchcore", "padim"])
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--category-coreset", nargs="*", default=None, metavar="CATEGORY=RATIO",
                        help="PatchCore coreset ratio of one category (anomalib's sampler is slow on large ones)")
    parser.add_argument("--merge", nargs="*", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only print and write one table from results.json files of runs started together")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--category-epochs", nargs="*", default=None, metavar="CATEGORY=N",
                        help="epochs of a per-category fit (default: --epochs or train.epochs)")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    parser.add_argument("--progress", action="store_true")
    # internal: one OneNIP fit in this process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="unified", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.json.write_text(json.dumps(run_onenip(args), indent=2))
        return 0

    if args.merge:
        merged = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
        args.out.mkdir(parents=True, exist_ok=True)
        sources = {str(p): json.loads(p.read_text()).get("git_sha") for p in args.merge}
        (args.out / "results.json").write_text(json.dumps({"rows": merged, "merged_from": sources}, indent=2))
        (args.out / "results.md").write_text(format_table(merged) + "\n")
        print(format_table(merged))
        return 0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    if args.modes:
        write_synthesis_previews(args.root, args.categories, args.params, out)
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[str, list[str], Path]] = []
    for mode in args.modes:
        groups = [args.categories] if mode == "unified" else [[c] for c in args.categories]
        for group in groups:
            name = f"onenip-{mode}-{'+'.join(group)}"
            json_path = out / f"{name}.json"
            command = [sys.executable, __file__, "--worker", "--mode", mode, "--root", str(args.root), "--params", str(args.params),
                       "--run-dir", str(out / name), "--json", str(json_path), "--categories", *group]  # fmt: skip
            if args.epochs:
                command += ["--epochs", str(args.epochs)]
            if args.category_epochs:
                command += ["--category-epochs", *args.category_epochs]
            if args.cache_dir:
                command += ["--cache-dir", args.cache_dir]
            jobs.append((name, command, json_path))
    coreset = {name: float(value) for name, _, value in (item.partition("=") for item in args.category_coreset or [])}
    for method in args.peers:
        for category in args.categories:
            json_path = out / f"{method}-{category}.json"
            command = [sys.executable, str(REPO / "benchmarks" / "peers.py"), "--method", method, "--category", category,
                       "--root", str(args.root), "--json", str(json_path),
                       "--coreset-ratio", str(coreset.get(category, args.coreset_ratio))]  # fmt: skip
            jobs.append((f"{method}-{category}", command, json_path))

    for name, command, json_path in jobs:
        started = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        new = _subprocess_rows(command, json_path, args.timeout)
        print(f"    {len(new)} rows in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        rows.extend(new)
        (out / "results.json").write_text(json.dumps({"rows": rows, "git_sha": _git_sha(), "machine": platform.platform(),
                                                      "cpu_count": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
                                                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}, indent=2))  # fmt: skip
    table = format_table(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nWrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
