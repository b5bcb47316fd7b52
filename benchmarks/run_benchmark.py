"""OneNIP against anomalib's PatchCore and PaDiM, the protocol a sceptical reviewer accepts.

Default protocol (``make bench``), on an idle machine, one fit at a time, 2 threads:

* groups: one unified network over bottle + kolektor + magnetic_tile (``../shared/datasets/industrial``)
  and one over ELPV mono + poly (converted from the installed ``elpv-dataset`` package);
* OneNIP with the defaults of params.yaml at several seeds (``train.seed``), and per category four rows
  scored by the same trained model: ``default`` (the rule validation chose), ``paper`` (OneNIP as the
  paper scores it: reconstruction error + refiner 0.5 / 0.5, no smoothing, 16 px pooling: the network
  alone), ``network`` (the rule validation chose among the network's maps alone) and ``statistics``
  (the rule chosen among the Gaussian and the memory bank alone: no network needed, whose minutes are
  a ``train.network: none`` fit of the same group);
* peers as their authors run them (``benchmarks/peers.py``: anomalib's PatchCore with its default 10 %
  coreset, PaDiM with anomalib's defaults), at the SAME input as OneNIP's per category, and a 256 x 256
  row of every method (OneNIP with ``keep_aspect: false``, one seed) so the aspect's effect shows for all;
* every row's metrics from the same code (``onenip.metrics``) at mask resolution, training minutes and
  peak RSS of its own process; for each OneNIP row the difference to the best fair peer (same input) per
  metric, the mean over seeds with a paired bootstrap 95 % interval over test images
  (``onenip.metrics.bootstrap``): "ahead" only when the interval excludes 0.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/run_benchmark.py --out benchmarks/results/R
    .venv/bin/python benchmarks/run_benchmark.py --aggregate benchmarks/results/R      # the table again

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

INDUSTRIAL = REPO.parent / "shared" / "datasets" / "industrial"
DEFAULT_GROUPS = ("bottle,kolektor,magnetic_tile", "mono,poly")
METRICS = ("image_AUROC", "image_AP", "image_F1max", "pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")
COMPARED = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AP")
TIE_TOLERANCE = 0.005
"""A OneNIP row counts as at least the best peer when its interval's lower bound is at or above -this."""
PAPER_RULE = {"weights": [0.5, 0.5, 0.0, 0.0, 0.0], "smoothing_sigma": 0.0, "score_pool_size": 16}
"""OneNIP as the reference scores it: reconstruction error and refiner 0.5 / 0.5, no smoothing, the
maximum of the 16 x 16 average-pooled map (gaobb/OneNIP tools/train_val.py, utils/eval_helper.py)."""


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


def benchmark_root(folder: Path, elpv: Path | None) -> Path:
    """One root holding every benchmark category (symlinks): the industrial set and ELPV in MVTec layout
    (converted from the installed ``elpv-dataset`` package into ``elpv`` when not given)."""
    if elpv is None:
        elpv = folder / "elpv"
        if not (elpv / "mono" / "train").is_dir():
            from onenip.data.convert.elpv import convert_elpv

            convert_elpv(elpv, overwrite=True, progress=False)
    root = folder / "root"
    root.mkdir(parents=True, exist_ok=True)
    for source in (INDUSTRIAL, elpv):
        if not source.is_dir():
            print(f"benchmark data missing, its categories are skipped: {source}", file=sys.stderr)
            continue
        for category in sorted(p for p in source.iterdir() if (p / "train" / "good").is_dir()):
            link = root / category.name
            if not link.exists():
                link.symlink_to(category.resolve(), target_is_directory=True)
    return root


def _variant_rules(detector: Any, category: str) -> dict[str, dict[str, Any] | None]:
    restricted = (detector.metadata.get("selection") or {}).get("restricted") or {}
    return {
        "default": detector.scoring[category].to_dict(),
        "paper": PAPER_RULE,
        "network": (restricted.get("network") or {}).get(category, {}).get("rule"),
        "statistics": (restricted.get("statistics") or {}).get(category, {}).get("rule"),
    }


def run_onenip(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Worker: train one OneNIP network on a group (or fit statistics only), then score its test splits
    under each row's rule; per-image summaries beside the JSON."""
    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate_category
    from onenip.features import FeatureCache
    from onenip.models.scoring import ScoringRule
    from onenip.training import train_onenip

    overrides: dict[str, Any] = {"train": {"seed": args.seed, "network": args.network}}
    if args.cache_dir:
        overrides["train"]["cache_dir"] = args.cache_dir
    if args.square:
        overrides["model"] = {"keep_aspect": False, "input_sizes": {}}
    params = load_params(args.params, overrides=overrides)
    manifest, dropped = drop_leaked_test_images(make_manifest(args.root, args.categories, progress=False))
    started = time.perf_counter()
    result = train_onenip(manifest, params, args.run_dir, args.categories, resume=False, progress=args.progress)
    train_minutes = (time.perf_counter() - started) / 60
    detector = result.detector.eval()
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    variants = ("statistics",) if args.network == "none" else ("default", "paper", "network", "statistics")
    rows = []
    for category in args.categories:
        k = detector.category_index(category)
        chosen = detector.scoring[category]
        rules = _variant_rules(detector, category)
        if args.network == "none":
            rules["statistics"] = chosen.to_dict()
        inference = {"images_per_s_batch1": measure_throughput(detector, k, 1, 32),
                     "images_per_s_batch16": measure_throughput(detector, k, 16, 4)}  # fmt: skip
        for variant in variants:
            if rules[variant] is None:
                continue
            detector.scoring[category] = ScoringRule.from_dict(rules[variant])
            per_image = args.run_dir / f"{category}-{variant}.npz"
            evaluation = evaluate_category(detector, manifest, category, cache, None, num_heatmaps=0, progress=False, per_image=per_image)
            rows.append({
                "method": "onenip", "variant": variant, "input": "256" if args.square else "native", "seed": args.seed,
                "category": category, "group": "+".join(args.categories), "network": args.network,
                "metrics": {m: evaluation.metrics.get(m) for m in METRICS}, "per_image": os.path.relpath(per_image, args.json.parent),
                "train_minutes": train_minutes, "train_minutes_scope": "the whole group", "kept_epoch": detector.metadata.get("kept_epoch"),
                "scoring_rule": rules[variant], "input_geometry": detector.geometry(category).to_dict(),
                "validation_metrics": ((detector.metadata.get("selection") or {}).get("metrics") or {}).get(category),
                "network_adds": ((detector.metadata.get("selection") or {}).get("network_adds") or {}).get(category),
                "network_probe": detector.metadata.get("network_probe"),
                "inference": inference if variant == "default" else None,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "dropped_test_images": [p for p in dropped if f"/{category}/" in p],
            })  # fmt: skip
        detector.scoring[category] = chosen
    return rows


def onenip_geometries(root: Path, params_path: Path, categories: Sequence[str]) -> dict[str, tuple[int, int]]:
    """OneNIP's (height, width) input per category, as training will choose it (the peers' same input)."""
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.training import choose_geometries

    params = load_params(params_path)
    manifest = make_manifest(root, list(categories), progress=False)
    return {c: g.size for c, g in choose_geometries(manifest, params, list(categories)).items()}


def _run(command: list[str], json_path: Path, timeout: float | None) -> list[dict[str, Any]]:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return []
    rows = json.loads(json_path.read_text())
    return rows if isinstance(rows, list) else [rows]


def plan_jobs(args: argparse.Namespace, root: Path, out: Path) -> list[tuple[str, list[str], Path]]:
    """(name, command, json) of every fit of the protocol, OneNIP first."""
    jobs = []
    groups = [g.split(",") for g in args.groups]
    for group in groups:
        variants = [(seed, "onenip", False) for seed in args.seeds] + [(args.seeds[0], "none", False)]
        variants += [(args.seeds[0], "onenip", True)] if args.square_rows else []
        for seed, network, square in variants:
            name = f"onenip-{'+'.join(group)}-seed{seed}" + ("-statistics" if network == "none" else "") + ("-256" if square else "")
            command = [sys.executable, __file__, "--worker", "--root", str(root), "--params", str(args.params), "--run-dir", str(out / name),
                       "--json", str(out / f"{name}.json"), "--seed", str(seed), "--network", network, "--categories", *group]  # fmt: skip
            command += ["--square"] if square else []
            command += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            jobs.append((name, command, out / f"{name}.json"))
    categories = [c for group in groups for c in group]
    geometries = onenip_geometries(root, args.params, categories)
    for method in args.peers:
        for category in categories:
            sizes = {"native": geometries[category]}
            if args.square_rows and geometries[category] != (256, 256):
                sizes["256"] = (256, 256)
            for label, (height, width) in sizes.items():
                name = f"{method}-{category}-{label}"
                command = [sys.executable, str(REPO / "benchmarks" / "peers.py"), "--method", method, "--category", category,
                           "--root", str(root), "--json", str(out / f"{name}.json"), "--input-size", str(height), str(width),
                           "--per-image", str(out / f"{name}.npz")]  # fmt: skip
                jobs.append((name, command, out / f"{name}.json"))
    return jobs


def peer_row(row: dict[str, Any], json_path: Path) -> dict[str, Any]:
    """A ``peers.py`` row in this benchmark's shape (input label from its file name)."""
    label = json_path.stem.rsplit("-", 1)[1]
    return row | {"variant": "", "input": label, "seed": row["config"]["seed"], "per_image": json_path.with_suffix(".npz").name}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=list(DEFAULT_GROUPS), help="comma-separated categories trained as one network each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peers", nargs="*", default=["patchcore", "padim"], choices=["patchcore", "padim"])
    parser.add_argument("--no-square-rows", dest="square_rows", action="store_false", help="skip the 256 x 256 rows")
    parser.add_argument("--elpv", type=Path, default=None, help="ELPV in MVTec layout (default: converted from the elpv-dataset package)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these jobs (names as printed, e.g. onenip-mono+poly-seed0, patchcore-mono-native)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    parser.add_argument("--aggregate", type=Path, default=None, help="only print and write the table of an earlier run's folder")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the intervals")
    parser.add_argument("--progress", action="store_true")
    # internal: one OneNIP fit in this process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--categories", nargs="*", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--network", default="onenip", help=argparse.SUPPRESS)
    parser.add_argument("--square", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.json.write_text(json.dumps(run_onenip(args), indent=2))
        return 0
    from benchmarks.benchmark_table import write_summary

    if args.aggregate:
        print(write_summary(args.aggregate, args.resamples))
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = benchmark_root(out, args.elpv)
    jobs = plan_jobs(args, root, out)
    if args.only:
        jobs = [job for job in jobs if job[0] in args.only]
    (out / "run.json").write_text(json.dumps({"git_sha": _git_sha(), "machine": platform.platform(), "cpu_count": os.cpu_count(),
                                              "threads": os.environ.get("OMP_NUM_THREADS"), "argv": sys.argv[1:],
                                              "jobs": [name for name, _, _ in jobs]}, indent=2))  # fmt: skip
    for name, command, json_path in jobs:
        started = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        rows = _run(command, json_path, args.timeout)
        if rows and not name.startswith("onenip"):
            json_path.write_text(json.dumps([peer_row(row, json_path) for row in rows], indent=2))
        print(f"    {len(rows)} rows in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    print(write_summary(out, args.resamples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
