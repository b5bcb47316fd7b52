"""Inference cost of a registered (or saved) onenip model: `onenip predict` throughput and a served
model's requests/s and latency.

Measures, on real images of one folder:
  * predict: images/s of ``onenip.inference.predict_files`` (decode, resize, backbone, OneNIP, maps,
    CSV; heatmap PNGs off) at batch 1 and batch 16, and this process's peak RSS;
  * serving: ``mlflow models serve -m <uri> --env-manager local`` on 127.0.0.1; sequential POSTs of one
    image each (requests/s, latency p50/p95) and of 16 images each (images/s), and the server's peak
    RSS (VmHWM).
Prints a table and writes JSON.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/serve_bench.py \\
        --model models:/onenip-elpv-mono@champion --images data/elpv/mono/test --out benchmarks/results/serve.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _tree_peak_rss_mb(pid: int) -> float:
    """Largest peak RSS in the server's process tree (mlflow's CLI execs uvicorn in a child process)."""
    import psutil

    pids = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return max(_peak_rss_mb(p) for p in pids)


def bench_predict(model_dir: Path, category: str | None, images: list[Path], batch_size: int) -> float:
    from onenip.inference import Predictor, predict_files

    predictor = Predictor.load(model_dir, category)
    with tempfile.TemporaryDirectory() as out:
        predict_files(predictor, images[: min(4, len(images))], out, batch_size=batch_size, heatmaps=False, progress=False)  # warm-up
        started = time.perf_counter()
        predict_files(predictor, images, out, batch_size=batch_size, heatmaps=False, progress=False)
        return len(images) / (time.perf_counter() - started)


def bench_serving(uri: str, images: list[Path], requests_count: int, project_root: Path) -> dict[str, Any]:
    import requests

    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=project_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                msg = f"mlflow models serve exited with {process.returncode}"
                raise RuntimeError(msg)
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > 300:
                msg = "server did not start in 300 s"
                raise RuntimeError(msg)
            time.sleep(0.5)
        startup = time.monotonic() - started
        encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in images]
        session = requests.Session()

        def post(batch: list[str]) -> float:
            t0 = time.perf_counter()
            response = session.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[b] for b in batch]}},
                                    timeout=120)  # fmt: skip
            response.raise_for_status()
            return time.perf_counter() - t0

        post(encoded[:1])  # warm-up
        latencies = [post([encoded[i % len(encoded)]]) for i in range(requests_count)]
        batch16 = [post([encoded[(i * 16 + j) % len(encoded)] for j in range(16)]) for i in range(max(2, requests_count // 16))]
        quantiles = statistics.quantiles(latencies, n=20)
        return {
            "startup_s": startup,
            "requests_per_s_batch1": len(latencies) / sum(latencies),
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p95_ms": quantiles[18] * 1000,
            "images_per_s_batch16": 16 * len(batch16) / sum(batch16),
            "server_peak_rss_mb": _tree_peak_rss_mb(process.pid),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a model folder")
    parser.add_argument("--images", type=Path, required=True, help="folder of real images (searched recursively)")
    parser.add_argument("--limit", type=int, default=64, help="images used for predict throughput")
    parser.add_argument("--requests", type=int, default=48, help="sequential single-image requests to the server")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()

    from onenip.config import load_params
    from onenip.inference import collect_images
    from onenip.registry import resolve_model

    params = load_params(args.params)
    model_dir, category = resolve_model(args.model, params, Path.cwd())
    images = collect_images([args.images])[: args.limit]
    result: dict[str, Any] = {
        "model": args.model,
        "images": len(images),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "predict_images_per_s_batch1": bench_predict(model_dir, category, images, 1),
        "predict_images_per_s_batch16": bench_predict(model_dir, category, images, 16),
        "predict_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.model.startswith("models:/"):
        result["serving"] = bench_serving(args.model, images, args.requests, Path.cwd())
    serving = result.get("serving", {})
    rows = [
        ("predict, batch 1", f"{result['predict_images_per_s_batch1']:.1f} img/s"),
        ("predict, batch 16", f"{result['predict_images_per_s_batch16']:.1f} img/s"),
        ("predict peak RSS", f"{result['predict_peak_rss_mb']:.0f} MB"),
    ]
    if serving:
        rows += [
            ("served, 1 image/request", f"{serving['requests_per_s_batch1']:.1f} req/s"),
            ("served latency p50 / p95", f"{serving['latency_p50_ms']:.0f} / {serving['latency_p95_ms']:.0f} ms"),
            ("served, 16 images/request", f"{serving['images_per_s_batch16']:.1f} img/s"),
            ("server peak RSS", f"{serving['server_peak_rss_mb']:.0f} MB"),
            ("server start-up", f"{serving['startup_s']:.1f} s"),
        ]
    print(f"| measure ({len(images)} images of {args.images}, {result['threads']} threads) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
