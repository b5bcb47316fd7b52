"""Few-shot generalist benchmark (issue "Few-shot generalist mode"): leave one category out.

For each left-out category: train the InCTRL generalist on all the others, then score the left-out
category from k in ``--shots`` normal prompt images, ``--trials`` random prompt sets each (mean and std),
next to anomalib PatchCore fitted on the same k images (its memory bank is the k images). Image AUROC,
image AP, pixel AUROC and AUPRO where masks exist, onboarding seconds, the onboarded model's images/s at
batch 1 and 16 (the first prompt set of each k: speed depends on k and the input, not on which images),
generalist training minutes.
``--transfer`` adds OneNIP's own transfer on the same prompt sets: a unified OneNIP trained on the others
(``--transfer-profile``, default ``fast``), prompted with the k images (``onenip.models.transfer``).
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
    for metric in (*METRICS, "seconds", "head_weight", "neighbourhood", "neighbourhood_rotated"):
        series = [v[metric] for v in values if v.get(metric) is not None]
        if series:
            out[metric] = {"mean": float(np.mean(series)), "std": float(np.std(series))}
    return out


def onboarded_throughput(model_dir: Path) -> dict[str, float]:
    """Images/s of an onboarded model (backbone, residual, map and score) at batch 1 and 16, on
    preprocessed tensors at its input, after warm-up (``run_benchmark.measure_throughput``)."""
    from benchmarks.run_benchmark import measure_throughput
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector.load(model_dir)
    return {"images_per_s_batch1": measure_throughput(detector, 0, 1, 16), "images_per_s_batch16": measure_throughput(detector, 0, 16, 2)}


def onenip_transfer(root: Path, left_out: str, auxiliary: list[str], params: Any, prompt_sets: dict[int, list[list[str]]],
                    out: Path) -> tuple[float, dict[int, list[dict[str, float]]]]:  # fmt: skip
    """Train a unified OneNIP on ``auxiliary``; score ``left_out`` with each prompt set (``OneNIPTransfer``:
    minimum reconstruction error over the k prompts). Returns training minutes and runs per k."""
    from onenip.data.geometry import square_geometry
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.models.transfer import OneNIPTransfer
    from onenip.training import train_networks

    started = time.perf_counter()
    manifest = make_manifest(root, auxiliary, progress=False)
    detector = train_networks(manifest, params, out, auxiliary, mode="unified", resume=False, progress=True)["unified"].detector.eval()
    train_minutes = (time.perf_counter() - started) / 60
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    target = make_manifest(root, [left_out], progress=False)
    geometry = square_geometry(params.model.backbone.input_size)
    runs: dict[int, list[dict[str, float]]] = {}
    for shots, sets in prompt_sets.items():
        for prompts in sets:
            t0 = time.perf_counter()
            rows = target.set_index("image_path").loc[prompts]
            features = cache.get(list(prompts), rows["sha256"].tolist(), geometry, progress=False)
            model = OneNIPTransfer(detector, left_out, features, smoothing_sigma=params.generalist.smoothing_sigma)
            metrics = evaluate(model, target, cache, None, [left_out], num_heatmaps=0, progress=False)[left_out].metrics  # type: ignore[arg-type]
            runs.setdefault(shots, []).append({m: metrics.get(m) for m in METRICS} | {"seconds": time.perf_counter() - t0})
    return train_minutes, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--elpv", type=Path, default=None, help="an ELPV root in MVTec layout (mono, poly)")
    parser.add_argument("--left-out", nargs="*", default=None, help="only these left-out categories")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override generalist.epochs")
    parser.add_argument("--real-anomalies", action="store_true",
                        help="generalist.real_anomalies: also train on the auxiliary categories' real anomalies (InCTRL's protocol)")
    parser.add_argument("--holistic-input", choices=("map", "sorted"), default=None, help="override generalist.holistic_input")
    parser.add_argument("--trained-margin-se", type=float, default=None, help="override generalist.trained_margin_se (0: the plain highest AUROC)")
    parser.add_argument("--trained-every-family", choices=("true", "false"), default=None,
                        help="override generalist.trained_every_family (false: the pooled margin alone)")
    parser.add_argument("--keep-aspect", choices=("true", "false"), default=None,
                        help="override generalist.keep_aspect (true: each left-out category onboarded at its own aspect)")
    parser.add_argument("--residuals", nargs="+", default=None, help="override generalist.residuals (what onboarding chooses among)")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--patchcore-input", nargs=2, type=int, default=None, metavar=("HEIGHT", "WIDTH"),
                        help="fit PatchCore at this input instead of 256 x 256 (e.g. an onboarded category's own aspect)")
    parser.add_argument("--patchcore-from", type=Path, default=None,
                        help="reuse PatchCore's rows of an earlier fewshot.json (same left-out, k and trials: the prompt sets are "
                             "seeded, so they are the same images) instead of refitting it")  # fmt: skip
    parser.add_argument("--trained", default=None,
                        help="folder pattern with {left_out} of generalists already trained on the other categories with the same "
                             "params (their saved train_seconds and validation are reported) instead of training them here; a fold "
                             "whose folder has no model yet is trained and saved there (the pattern must end in /model)")  # fmt: skip
    parser.add_argument("--transfer", action="store_true", help="also OneNIP's transfer: a unified OneNIP trained on the others")
    parser.add_argument("--no-generalist", action="store_true", help="skip the generalist (e.g. a transfer-only run)")
    parser.add_argument("--transfer-profile", default="fast", help="params profile for the transfer OneNIP (default fast)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fewshot")
    args = parser.parse_args()

    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.fewshot import onboard_category, train_generalist

    generalist = {"epochs": args.epochs, "holistic_input": args.holistic_input, "real_anomalies": True if args.real_anomalies else None,
                  "trained_margin_se": args.trained_margin_se,
                  "trained_every_family": None if args.trained_every_family is None else args.trained_every_family == "true",
                  "keep_aspect": None if args.keep_aspect is None else args.keep_aspect == "true", "residuals": tuple(args.residuals) if args.residuals else None}  # fmt: skip
    overrides = {"generalist": {key: value for key, value in generalist.items() if value is not None}}
    params = load_params(args.params, overrides=overrides)
    transfer_params = load_params(args.params, profile=args.transfer_profile) if args.transfer else None
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    earlier = {}
    if args.patchcore_from:
        earlier = {(r["left_out"], r["shots"], r["trials"]): r["patchcore"] for r in json.loads(args.patchcore_from.read_text()) if r.get("patchcore")}
    with tempfile.TemporaryDirectory() as tmp:
        root, categories = joined_root([args.root] + ([args.elpv] if args.elpv else []), Path(tmp) / "root")
        for left_out in args.left_out or categories:
            auxiliary = [c for c in categories if c != left_out]
            manifest = make_manifest(root, [left_out], progress=False)
            normals = sorted(manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]["image_path"])
            # the same random prompt sets for every method
            prompt_sets = {k: [random.Random(1000 * k + t).sample(normals, k) for t in range(args.trials)] for k in args.shots}
            trained, train_minutes = None, None
            existing = Path(args.trained.format(left_out=left_out)) if args.trained else None
            if not args.no_generalist and existing is not None and (existing / "onenip.json").is_file():
                from onenip.fewshot import GeneralistResult
                from onenip.models.generalist import GeneralistDetector

                loaded = GeneralistDetector.load(existing)
                if sorted(loaded.metadata.get("auxiliary_categories", [])) != sorted(auxiliary):
                    raise SystemExit(f"{existing} was trained on {loaded.metadata.get('auxiliary_categories')}, not {auxiliary}")
                if loaded.head.holistic_input != params.generalist.holistic_input:
                    raise SystemExit(f"{existing} has holistic_input {loaded.head.holistic_input!r}, params say {params.generalist.holistic_input!r}")
                if loaded.metadata.get("real_anomalies", params.generalist.real_anomalies) != params.generalist.real_anomalies:
                    raise SystemExit(f"{existing} was trained with real_anomalies={loaded.metadata.get('real_anomalies', False)}")
                trained = GeneralistResult(loaded, existing, loaded.metadata.get("history", []), loaded.metadata["train_seconds"],
                                           loaded.metadata.get("validation", {}))  # fmt: skip
                train_minutes = trained.train_seconds / 60
            elif not args.no_generalist:
                started = time.perf_counter()
                # with --trained, a fold trained here is kept there for later runs
                folder = existing.parent if existing is not None else Path(tmp) / f"gen-{left_out}"
                trained = train_generalist(root, auxiliary, params, folder, progress=True)
                train_minutes = (time.perf_counter() - started) / 60
            transfer_minutes, transfer_runs = None, {}
            if transfer_params is not None:
                transfer_minutes, transfer_runs = onenip_transfer(root, left_out, auxiliary, transfer_params, prompt_sets, Path(tmp) / f"onenip-{left_out}")
            for shots in args.shots:
                generalist_runs, patchcore_runs, trial_runs = [], [], []
                generalist_speed, patchcore_speed = None, None
                for trial, prompts in enumerate(prompt_sets[shots]):
                    if trained is not None:
                        result = onboard_category(trained.model_dir, root, left_out, shots, params, Path(tmp) / f"on-{left_out}-{shots}-{trial}",
                                                  progress=False, prompt_paths=prompts)  # fmt: skip
                        generalist_runs.append({m: result.metrics.get(m) for m in METRICS} | {"seconds": result.seconds, "head_weight": result.head_weight,
                                                                                                      "neighbourhood": float(result.residual == "neighbourhood"),
                                                                                                      "neighbourhood_rotated": float(result.residual == "neighbourhood_rotated")})
                        if trial == 0:
                            generalist_speed = onboarded_throughput(result.model_dir)
                        val = result.selection.get("val_image_AUROC") or {}
                        trial_runs.append({"trial": trial, "image_AUROC": result.metrics.get("image_AUROC"), "residual": result.residual,
                                           "input_size": list(result.input_size),
                                           "head_weight": result.head_weight, "val_image_AUROC_inctrl": max(val.values(), default=None),
                                           "val_image_AUROC_neighbourhood": result.selection.get("val_image_AUROC_neighbourhood"),
                                           "val_image_AUROC_neighbourhood_rotated": result.selection.get("val_image_AUROC_neighbourhood_rotated"),
                                           "val_inctrl_lead": result.selection.get("val_inctrl_lead")})  # fmt: skip
                    if not args.no_patchcore and (left_out, shots, args.trials) not in earlier:
                        from benchmarks.peers import run_peer

                        few = manifest[(manifest["split"] == "test") | manifest["image_path"].isin(prompts)]
                        peer = run_peer("patchcore", left_out, root, coreset_ratio=1.0, manifest=few, num_timed_single=1,
                                        input_size=tuple(args.patchcore_input) if args.patchcore_input else None)  # fmt: skip
                        patchcore_runs.append({m: peer["metrics"].get(m) for m in METRICS} | {"seconds": peer["train_minutes"] * 60})
                        patchcore_speed = patchcore_speed or peer.get("inference")
                row = {"left_out": left_out, "auxiliary": auxiliary, "shots": shots, "trials": args.trials,
                       "generalist_train_minutes": train_minutes, "generalist_validation": trained.validation if trained else None,
                       "generalist": summarise(generalist_runs),
                       "patchcore": earlier.get((left_out, shots, args.trials)) or summarise(patchcore_runs),
                       "patchcore_input": list(args.patchcore_input) if args.patchcore_input and not earlier else [256, 256],
                       "onenip_transfer": summarise(transfer_runs.get(shots, [])), "onenip_transfer_train_minutes": transfer_minutes,
                       "generalist_trials": trial_runs, "generalist_inference": generalist_speed,
                       "patchcore_inference": patchcore_speed}  # fmt: skip
                rows.append(row)
                parts = [f"{name} {block['image_AUROC']['mean']:.3f} +- {block['image_AUROC']['std']:.3f}"
                         for name, block in (("generalist", row["generalist"]), ("PatchCore", row["patchcore"]), ("OneNIP transfer", row["onenip_transfer"]))
                         if block]  # fmt: skip
                print(f"{left_out} k={shots}: I-AUROC " + ", ".join(parts), flush=True)
                (args.out / "fewshot.json").write_text(json.dumps(rows, indent=2))
    lines = ["| left out | k | generalist I-AUROC | PatchCore I-AUROC | OneNIP transfer I-AUROC | generalist P-AUROC | generalist AUPRO "
             "| PatchCore AUPRO | onboarding s | img/s b1 / b16 | head weight | neighbourhood share | rotated share | generalist train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(block: dict[str, Any], metric: str) -> str:
        return f"{block[metric]['mean']:.3f} +- {block[metric]['std']:.3f}" if metric in block else "-"

    def speed(block: dict[str, Any] | None) -> str:
        return "-" if not block else f"{block['images_per_s_batch1']:.1f} / {block['images_per_s_batch16']:.1f}"

    for row in rows:
        minutes = "-" if row["generalist_train_minutes"] is None else f"{row['generalist_train_minutes']:.1f}"
        lines.append(f"| {row['left_out']} | {row['shots']} | {cell(row['generalist'], 'image_AUROC')} | {cell(row['patchcore'], 'image_AUROC')} "
                     f"| {cell(row['onenip_transfer'], 'image_AUROC')} | {cell(row['generalist'], 'pixel_AUROC')} "
                     f"| {cell(row['generalist'], 'pixel_AUPRO')} | {cell(row['patchcore'], 'pixel_AUPRO')} | {cell(row['generalist'], 'seconds')} "
                     f"| {speed(row.get('generalist_inference'))} | {cell(row['generalist'], 'head_weight')} | {cell(row['generalist'], 'neighbourhood')} "
                     f"| {cell(row['generalist'], 'neighbourhood_rotated')} | {minutes} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    (args.out / "fewshot.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
