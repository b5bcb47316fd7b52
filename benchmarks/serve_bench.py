"""Inference cost of a registered (or saved) onenip model: `onenip predict` throughput and a served
model's requests/s and latency.

Measures, on real images of one folder, for each runtime (torch, onnx, openvino) side by side:
  * predict: images/s of ``onenip.serving.predict_files`` (decode, resize, the scoring graph, maps,
    CSV; heatmap PNGs off) at batch 1 and batch 16, peak RSS of a process that does only that, and the
    per-stage milliseconds at batch 1;
  * serving: ``mlflow models serve -m <uri> --env-manager local`` on 127.0.0.1 with ``ONENIP_RUNTIME``
    set; POSTs of one image each from 1 and from 4 concurrent clients (requests/s, latency p50/p95),
    of 16 images each (images/s), start-up seconds and the server's peak RSS (VmHWM).
Prints a table and writes JSON.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/serve_bench.py \\
        --model models:/onenip-elpv-mono@champion --images data/elpv/mono/test --out benchmarks/results/serve.json
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/serve_bench.py --all-champions --runtimes onnx
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


def bench_predict(model_dir: Path, category: str | None, images: list[Path], batch_size: int, runtime: str) -> float:
    from onenip.serving import predict_files
    from onenip.serving import load_predictor

    predictor = load_predictor(model_dir, category, runtime=runtime)
    with tempfile.TemporaryDirectory() as out:
        predict_files(predictor, images[: min(4, len(images))], out, batch_size=batch_size, heatmaps=False, progress=False)  # warm-up
        started = time.perf_counter()
        predict_files(predictor, images, out, batch_size=batch_size, heatmaps=False, progress=False)
        return len(images) / (time.perf_counter() - started)


def profile_stages(model_dir: Path, category: str | None, images: list[Path], runtime: str) -> dict[str, float]:
    """Milliseconds per image at batch 1: decode, resize (geometry), backbone + head (torch: split),
    the whole graph (exported runtimes: numpy preprocessing, no torch), map crop."""
    from onenip.data.manifest import decode_image
    from onenip.serving import ExportedPredictor, as_rgb_uint8, crop_content, image_to_array
    from onenip.serving import load_predictor

    predictor = load_predictor(model_dir, category, runtime=runtime)
    exported = isinstance(predictor, ExportedPredictor)  # else torch (or a graph exported on first use)
    name = predictor._category(None)
    geometry = predictor.geometry(name) if exported else predictor.detector.geometry(name)
    totals = dict.fromkeys(("decode", "resize", "backbone", "head", "graph", "crop"), 0.0)
    for step, path in enumerate([images[0], *images]):  # the first pass warms up
        t0 = time.perf_counter()
        image = decode_image(path.read_bytes(), source=str(path))
        if not exported:
            import torch

            from onenip.data.transforms import image_to_tensor

            picture = image_to_tensor(as_rgb_uint8(image))
            t1 = time.perf_counter()
            batch = geometry.apply(picture)[None]
            valid = geometry.valid_mask(*picture.shape[-2:])[None, None] if geometry.letterbox else None
            t2 = time.perf_counter()
            k = predictor.detector.category_index(name)
            with torch.no_grad():
                if runtime == "torch":
                    features = predictor.detector.extract(batch)
                    t3 = time.perf_counter()
                    anomaly_map = predictor.detector.forward_features(features, k, valid).anomaly_map.numpy()
                else:
                    t3 = t2
                    anomaly_map, _ = predictor.graph(name)(batch.numpy(), None if valid is None else valid.numpy())
            t4 = time.perf_counter()
            spent = {"backbone": t3 - t2, "head": t4 - t3}
        else:
            picture = image_to_array(image)
            t1 = time.perf_counter()
            batch = geometry.apply_array(picture)[None]
            valid = geometry.valid_mask_array(*picture.shape[-2:])[None, None].astype("float32") if geometry.letterbox else None
            t2 = time.perf_counter()
            anomaly_map, _ = predictor.graph(name)(batch, valid)
            t4 = time.perf_counter()
            spent = {"graph": t4 - t2}
        crop_content(geometry, anomaly_map[0, 0], *picture.shape[-2:])
        t5 = time.perf_counter()
        if step:
            for key, value in {"decode": t1 - t0, "resize": t2 - t1, "crop": t5 - t4, **spent}.items():
                totals[key] += value
    return {key: 1000 * value / len(images) for key, value in totals.items() if value}


def predict_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One runtime in its own process (its own peak RSS)."""
    from onenip.config import load_params
    from onenip.serving import collect_images
    from onenip.registry import resolve_model

    resolved = resolve_model(args.model, load_params(args.params), Path.cwd())
    images = collect_images([args.images])[: args.limit]
    started = time.perf_counter()
    from onenip.serving import load_predictor

    category = resolved.category or args.category
    load_predictor(resolved.folder, category, runtime=args.runtime).predict([_open(images[0])])
    return {
        "load_and_first_image_s": time.perf_counter() - started,
        "images_per_s_batch1": bench_predict(resolved.folder, category, images, 1, args.runtime),
        "images_per_s_batch16": bench_predict(resolved.folder, category, images, 16, args.runtime),
        "stages_ms_batch1": profile_stages(resolved.folder, category, images[:32], args.runtime),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _open(path: Path) -> Any:
    from PIL import Image

    return Image.open(path).convert("RGB")


def logged_env(uri: str, folder: Path) -> dict[str, str]:
    """What ``onenip serve`` adds with the prediction log on: the pinned version (its operating point is
    read from the registry) and a log database + image store, here in a scratch folder."""
    from mlflow.tracking import MlflowClient

    name, _, alias = uri.removeprefix("models:/").partition("@")
    pinned = f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}" if alias else uri
    return {"ONENIP_MODEL_URI": pinned, "ONENIP_PREDICTION_LOG": f"sqlite:///{folder / 'predictions.db'}",
            "ONENIP_PREDICTION_STORE": str(folder / "store"), "ONENIP_PREDICTION_STORE_MB": "2048"}  # fmt: skip


def bench_serving(uri: str, images: list[Path], requests_count: int, project_root: Path, runtime: str, log: bool = False) -> dict[str, Any]:
    """The served model's figures; ``log``: with the prediction log on, as ``onenip serve`` runs it."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "ONENIP_RUNTIME": runtime}
    scratch = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)  # the server's workers may still be writing as it stops
    if log:
        env.update(logged_env(uri, Path(scratch.name)))
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
        local = __import__("threading").local()
        errors: list[str] = []

        def post(batch: list[str]) -> float:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            t0 = time.perf_counter()
            response = session.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[b] for b in batch]}},
                                    timeout=120)  # fmt: skip
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:300]}")
            return time.perf_counter() - t0

        post(encoded[:1])  # warm-up
        latencies = [post([encoded[i % len(encoded)]]) for i in range(requests_count)]
        batch16 = [post([encoded[(i * 16 + j) % len(encoded)] for j in range(16)]) for i in range(max(2, requests_count // 16))]
        quantiles = statistics.quantiles(latencies, n=20)
        with ThreadPoolExecutor(4) as pool:  # four clients at once
            t0 = time.perf_counter()
            concurrent = list(pool.map(lambda i: post([encoded[i % len(encoded)]]), range(requests_count)))
            wall = time.perf_counter() - t0
        quantiles4 = statistics.quantiles(concurrent, n=20)
        return {
            "startup_s": startup,
            "requests_per_s_batch1": len(latencies) / sum(latencies),
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p95_ms": quantiles[18] * 1000,
            "images_per_s_batch16": 16 * len(batch16) / sum(batch16),
            "clients4_requests_per_s": len(concurrent) / wall,
            "clients4_latency_p50_ms": statistics.median(concurrent) * 1000,
            "clients4_latency_p95_ms": quantiles4[18] * 1000,
            "failed_requests": len(errors),
            "first_errors": errors[:3],
            "server_peak_rss_mb": _tree_peak_rss_mb(process.pid),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)
        scratch.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or a model folder")
    parser.add_argument("--images", type=Path, help="folder of real images (searched recursively)")
    parser.add_argument("--category", help="the category of a model folder that holds several (a registered version has its own)")
    parser.add_argument("--all-champions", action="store_true",
                        help="every champion of the project's registry, each on the images of --images-pattern")
    parser.add_argument("--images-pattern", default="data/{dataset}/{category}/test",
                        help="with --all-champions: a champion's image folder, from its dataset and category tags")
    parser.add_argument("--limit", type=int, default=64, help="images used for predict throughput")
    parser.add_argument("--requests", type=int, default=48, help="single-image requests to the server (per client setting)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "openvino"], choices=["torch", "onnx", "openvino"])
    parser.add_argument("--no-serving", action="store_true", help="predict only")
    parser.add_argument("--log", action="store_true", help="also serve with the prediction log on (as onenip serve does) and report both")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(predict_worker(args)))
        return 0
    if args.all_champions:
        return bench_all_champions(args)
    if args.model is None or args.images is None:
        parser.error("--model and --images are required (or --all-champions)")
    result = bench_model(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"Wrote {args.out}")
    return 0


def champions(params_path: Path) -> list[tuple[str, str, str, str]]:
    """(model name, version, dataset, category) of every champion in the project's registry."""
    from onenip import registry
    from onenip.config import load_params

    client = registry.connect(load_params(params_path), Path.cwd())
    found = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        if registry.CHAMPION in model.aliases:
            version = client.get_model_version(model.name, model.aliases[registry.CHAMPION])
            if version.tags.get("onenip.kind") == registry.KIND_GENERALIST:
                continue  # the generalist serves nothing alone
            found.append((model.name, str(version.version), version.tags.get("onenip.dataset", ""), version.tags.get("onenip.category", "")))
    return found


def bench_all_champions(args: argparse.Namespace) -> int:
    """``bench_model`` for every champion, one table row per champion and runtime."""
    results = []
    for name, version, dataset, category in champions(args.params):
        args.model = f"models:/{name}@champion"
        args.images = Path(args.images_pattern.format(dataset=dataset, category=category))
        print(f"== {args.model} (version {version}) on {args.images}", flush=True)
        results.append({"version": version, "category": category} | bench_model(args))
    print()
    print("| champion | runtime | predict img/s batch 1 / 16 | stages at batch 1 (ms) | served p50 / p95 (ms) | with the log on | start-up (s) | server peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        for runtime, entry in result["runtimes"].items():
            serving = entry.get("serving", {})
            stages = ", ".join(f"{k} {v:.1f}" for k, v in entry["stages_ms_batch1"].items())
            served = f"{serving['latency_p50_ms']:.0f} / {serving['latency_p95_ms']:.0f}" if serving else "-"
            logged = entry.get("serving_logged")
            with_log = f"{logged['latency_p50_ms']:.0f} / {logged['latency_p95_ms']:.0f}" if logged else "-"
            print(f"| {result['model']} (v{result['version']}) | {runtime} | {entry['images_per_s_batch1']:.1f} / {entry['images_per_s_batch16']:.1f} "
                  f"| {stages} | {served} | {with_log} | {serving.get('startup_s', float('nan')):.1f} | {serving.get('server_peak_rss_mb', float('nan')):.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"champions": results, "threads": os.environ.get("OMP_NUM_THREADS")}, indent=2))
    print(f"Wrote {args.out}")
    return 0


def bench_model(args: argparse.Namespace) -> dict[str, Any]:
    """Predict (and, for a registered model, serving) figures of ``args.model`` for each runtime; prints its table."""
    from onenip.serving import collect_images

    images = collect_images([args.images])[: args.limit]
    result: dict[str, Any] = {"model": args.model, "images": len(images), "threads": os.environ.get("OMP_NUM_THREADS"), "runtimes": {}}
    for runtime in args.runtimes:
        worker = subprocess.run(
            [sys.executable, __file__, "--worker", "--runtime", runtime, "--model", args.model, "--images", str(args.images),
             "--limit", str(args.limit), "--params", str(args.params), *(["--category", args.category] if args.category else [])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if worker.returncode:
            print(f"{runtime}: predict failed\n{worker.stderr[-2000:]}", file=sys.stderr)
            continue
        entry = json.loads(worker.stdout.strip().splitlines()[-1])
        if args.model.startswith("models:/") and not args.no_serving:
            entry["serving"] = bench_serving(args.model, images, args.requests, Path.cwd(), runtime)
            if args.log:
                entry["serving_logged"] = bench_serving(args.model, images, args.requests, Path.cwd(), runtime, log=True)
        result["runtimes"][runtime] = entry
    names = list(result["runtimes"])
    rows: list[tuple[str, list[str]]] = [
        ("predict, batch 1 (img/s)", [f"{result['runtimes'][r]['images_per_s_batch1']:.1f}" for r in names]),
        ("predict, batch 16 (img/s)", [f"{result['runtimes'][r]['images_per_s_batch16']:.1f}" for r in names]),
        ("predict peak RSS (MB)", [f"{result['runtimes'][r]['peak_rss_mb']:.0f}" for r in names]),
        ("batch-1 stages (ms/img)", [", ".join(f"{k} {v:.1f}" for k, v in result["runtimes"][r]["stages_ms_batch1"].items()) for r in names]),
    ]
    if all("serving" in result["runtimes"][r] for r in names):
        serving = [result["runtimes"][r]["serving"] for r in names]
        rows += [
            ("served, 1 client (req/s)", [f"{s['requests_per_s_batch1']:.1f}" for s in serving]),
            ("served p50 / p95, 1 client (ms)", [f"{s['latency_p50_ms']:.0f} / {s['latency_p95_ms']:.0f}" for s in serving]),
            ("served, 4 clients (req/s)", [f"{s['clients4_requests_per_s']:.1f}" for s in serving]),
            ("served p50 / p95, 4 clients (ms)", [f"{s['clients4_latency_p50_ms']:.0f} / {s['clients4_latency_p95_ms']:.0f}" for s in serving]),
            ("served, 16 images/request (img/s)", [f"{s['images_per_s_batch16']:.1f}" for s in serving]),
            ("server peak RSS (MB)", [f"{s['server_peak_rss_mb']:.0f}" for s in serving]),
            ("server start-up (s)", [f"{s['startup_s']:.1f}" for s in serving]),
        ]
    print(f"| measure ({len(images)} images of {args.images}, {result['threads']} threads) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(values) + " |")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
