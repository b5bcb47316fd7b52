"""Peak resident memory of a OneNIP training run, per stage (issue "OneNIP quality": peak RSS <= 4 GB).

Follows the stages of ``onenip.training.train_onenip`` through its ``TrainCallback.on_stage`` hook (data
preparation, statistics, validation set, synthetic pools, the training steps, validation, checkpoint,
threshold, save) and samples the process's RSS every 0.2 s; prints the peak per stage and writes JSON.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/train_memory.py --epochs 1 --out memory.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from collections.abc import Iterator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class StageMemory:
    """The current stage's name and the peak RSS seen in each stage (sampled in a thread)."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process()
        self.stage = "start"
        self.peaks: dict[str, float] = {}
        self.interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = self.process.memory_info().rss / 2**20
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss)
            time.sleep(self.interval)

    @contextlib.contextmanager
    def on_stage(self, name: str) -> Iterator[None]:
        """``TrainCallback.on_stage``: the RSS sampled while ``name`` runs counts for it."""
        previous, self.stage = self.stage, name
        try:
            yield
        finally:
            self.stage = previous

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> bool:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "industrial")
    parser.add_argument("--categories", nargs="+", default=["bottle", "kolektor", "magnetic_tile"])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (the stages repeat every epoch)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args()

    memory = StageMemory()
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.training import train_onenip

    overrides = {"train": {"epochs": args.epochs}} if args.epochs else None
    params = load_params(args.params, overrides=overrides)
    manifest = make_manifest(args.root, args.categories, progress=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train_onenip(manifest, params, out, args.categories, resume=False, progress=False, callbacks=[memory])  # type: ignore[list-item]
        memory.stage = "end"
    time.sleep(2 * memory.interval)
    result = {
        "categories": args.categories, "epochs": params.train.epochs, "minutes": (time.perf_counter() - started) / 60,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_mb_by_stage": {k: round(v) for k, v in memory.peaks.items()},
    }  # fmt: skip
    print("| stage | peak RSS (MB) |\n|---|---|")
    for stage, peak in sorted(result["peak_rss_mb_by_stage"].items(), key=lambda item: -item[1]):
        print(f"| {stage} | {peak} |")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['minutes']:.1f} min, {result['epochs']} epoch(s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
