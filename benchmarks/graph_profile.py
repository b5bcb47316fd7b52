"""Where an exported scoring graph spends its milliseconds: ONNX Runtime's profiler per operator type and
per module of the model, and OpenVINO's per-layer counters, one image at a time with the batch axis fixed
at 1 (as ``onenip.runtime.GraphScorer`` runs it). Prints tables and writes JSON.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/graph_profile.py MODEL_DIR CATEGORY --out profile.json

MODEL_DIR is a saved model folder; its ``export/<category>`` is used when present, else the category is
exported into a temporary folder first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def module_of(node: str) -> str:
    """A node name's module: the first two parts of ``/model/encoder.0/self_attn/...``, else the node."""
    parts = [part for part in node.split("/") if part]
    return "/".join(parts[:2]) if len(parts) > 2 else f"(top) {parts[0] if parts else node}"


def feeds(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = {"images": rng.random((1, 3, meta["height"], meta["width"]), dtype=np.float32)}
    if meta["letterbox"]:
        inputs["valid"] = np.ones((1, 1, meta["height"], meta["width"]), np.float32)
    return inputs


def profile_onnx(folder: Path, meta: dict[str, Any], threads: int, runs: int) -> dict[str, Any]:
    import onnxruntime as ort

    from onenip.runtime import onnx_session_options

    options = onnx_session_options(threads)  # as the product runs the graph
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(folder / meta["onnx"]), options, providers=["CPUExecutionProvider"])
    inputs = feeds(meta)
    for _ in range(3):
        session.run(None, inputs)
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, inputs)
    wall = (time.perf_counter() - started) / runs * 1000
    by_type: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"] / 1000 / (runs + 3)
            by_module[module_of(event["name"][: -len("_kernel_time")])] += event["dur"] / 1000 / (runs + 3)
    return {"wall_ms": wall, "kernel_ms": sum(by_type.values()), "by_type": dict(by_type.most_common()), "by_module": dict(by_module.most_common())}


def profile_openvino(folder: Path, meta: dict[str, Any], threads: int, runs: int) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(folder / (meta.get("graph") or meta["onnx"])))
    model.reshape({port.get_any_name(): [1, *(d.get_length() for d in list(port.get_partial_shape())[1:])] for port in model.inputs})
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    inputs = feeds(meta)
    for _ in range(3):
        request.infer(inputs)
    by_type: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    for _ in range(runs):
        request.infer(inputs)
        for layer in request.profiling_info:
            ms = layer.real_time.total_seconds() * 1000 / runs
            by_type[layer.node_type] += ms
            by_module[module_of(layer.node_name)] += ms
    wall = (time.perf_counter() - started) / runs * 1000
    return {"wall_ms": wall, "kernel_ms": sum(by_type.values()), "by_type": dict(by_type.most_common()), "by_module": dict(by_module.most_common())}


def export_folder(model_dir: Path, category: str) -> Path:
    from onenip.runtime import EXPORT_FOLDER, EXPORT_JSON, exported_runtimes, safe_name

    folder = model_dir / EXPORT_FOLDER / safe_name(category)
    if (folder / EXPORT_JSON).is_file():
        return folder
    from onenip.export import export_category
    from onenip.models.detector import OneNIPDetector

    folder = Path(tempfile.mkdtemp(prefix="onenip-profile-")) / safe_name(category)
    fmt = "openvino" if "openvino" in exported_runtimes() else "onnx"
    export_category(OneNIPDetector.load(model_dir), category, folder, fmt=fmt)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("category")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=12, help="rows per table")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from onenip.runtime import available_cores, exported_runtimes

    threads = int(os.environ.get("OMP_NUM_THREADS", available_cores()))
    folder = export_folder(args.model_dir, args.category)
    meta = json.loads((folder / "export.json").read_text())
    profilers = {"onnx": profile_onnx, "openvino": profile_openvino}
    result: dict[str, Any] = {"model_dir": str(args.model_dir), "category": args.category, "threads": threads, "runtimes": {}}
    for runtime in exported_runtimes():
        profile = profilers[runtime](folder, meta, threads, args.runs)
        result["runtimes"][runtime] = profile
        print(f"\n{args.category} on {runtime}: {profile['wall_ms']:.1f} ms per image, {profile['kernel_ms']:.1f} ms in kernels ({threads} threads)")
        for table in ("by_type", "by_module"):
            print(f"| {table.replace('_', ' ')} | ms |\n|---|---|")
            for name, ms in list(profile[table].items())[: args.top]:
                print(f"| {name} | {ms:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
