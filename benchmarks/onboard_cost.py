"""Where onboarding's seconds go (issue "Few-shot generalist mode": onboarding < 1 minute on 2 cores).

Onboards one category twice per k, with a cold and then a warm feature cache, and profiles the warm run:
choosing the residual and head weight (calibration normals + synthetic validation anomalies), the test
split's evaluation, and inside both the nearest-patch searches. A float32 matmul probe of the search's
shape says how fast this machine multiplies, so figures from different days can be compared.

Without ``--generalist`` an untrained generalist is used: the searches, which are most of the time, do not
depend on its weights (only which residual is chosen does).

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/onboard_cost.py --category magnetic_tile --shots 1 8 --out R
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
# (label, file suffix, function name) of the phases read from the profile
PHASES = (
    ("choose residual + head weight", "onenip/fewshot/selection.py", "choose_scoring"),
    ("evaluate the test split", "onenip/evaluation.py", "evaluate"),
    ("neighbourhood search (all)", "onenip/models/inctrl.py", "nearest_patches"),
    ("InCTRL cosine search (all)", "onenip/models/inctrl.py", "patch_residual"),
)


def matmul_gflops(rows: int = 256, channels: int = 153, bank: int = 8192, repeats: int = 30) -> float:
    """float32 GFLOP/s of one search tile's product (lite0's neighbourhood features against k = 8 prompts)."""
    import torch

    a, b = torch.randn(rows, channels), torch.randn(channels, bank)
    torch.matmul(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return repeats * 2 * rows * channels * bank / (time.perf_counter() - started) / 1e9


def phase_seconds(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = dict.fromkeys((label for label, _, _ in PHASES), 0.0)
    for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
        for label, suffix, function in PHASES:
            if name == function and filename.endswith(suffix):
                out[label] += cumulative
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--generalist", type=Path, help="a trained generalist folder (default: an untrained one)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onboard-cost")
    args = parser.parse_args()

    from onenip.config import load_params
    from onenip.fewshot import onboard_category
    from onenip.models.generalist import GeneralistDetector

    params = load_params(args.params)
    work = Path(tempfile.mkdtemp(prefix="onboard-cost-"))
    params = params.model_copy(update={"train": params.train.model_copy(update={"cache_dir": str(work / "cache")})})
    generalist = args.generalist
    if generalist is None:
        generalist = GeneralistDetector(params.model.backbone, pretrained=True, smoothing_sigma=params.generalist.smoothing_sigma,
                                        holistic_input=params.generalist.holistic_input).save(
            work / "generalist", metadata={"auxiliary_categories": [], "real_anomalies": False, "untrained": True})  # fmt: skip
    rows = []
    for shots in args.shots:
        started = time.perf_counter()
        onboard_category(generalist, args.root, args.category, shots, params, work / f"cold-{shots}", progress=True)
        cold = time.perf_counter() - started
        profile = cProfile.Profile()
        profile.enable()
        result = onboard_category(generalist, args.root, args.category, shots, params, work / f"warm-{shots}", progress=False)
        profile.disable()
        # the cache is per image and every k reads all normals: only the first k's first run is cold
        rows.append({"shots": shots, "first_seconds": cold, "first_cache": "cold" if not rows else "warm",
                     "warm_seconds": result.seconds, "residual": result.residual, **phase_seconds(profile)})  # fmt: skip
    report = {"category": args.category, "generalist": str(args.generalist or "untrained"),
              "threads": os.environ.get("OMP_NUM_THREADS"), "matmul_gflops": matmul_gflops(), "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onboard_cost.json").write_text(json.dumps(report, indent=2))
    labels = [label for label, _, _ in PHASES]
    print(f"{args.category}, generalist {report['generalist']}, float32 matmul {report['matmul_gflops']:.0f} GFLOP/s\n")
    print("| k | first run s (cache) | warm s | residual chosen | " + " | ".join(f"{label} s" for label in labels) + " |")
    print("|---" * (4 + len(labels)) + "|")
    for row in rows:
        print(f"| {row['shots']} | {row['first_seconds']:.1f} ({row['first_cache']}) | {row['warm_seconds']:.1f} | {row['residual']} | "
              + " | ".join(f"{row[label]:.1f}" for label in labels) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
