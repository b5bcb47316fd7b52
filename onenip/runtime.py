"""Run an exported scoring graph (``onenip.export``) in ONNX Runtime or OpenVINO, without torch.

This module and everything it imports stay free of torch: a served model that runs its exported
graph starts in about half the time and with a fraction of the memory when torch is never loaded.
``tests/unit/test_runtime.py`` checks that in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

EXPORT_JSON = "export.json"
OPSET = 17
EXPORT_FOLDER = "export"
"""Inside a model folder: ``export/<category>/`` holds that category's exported graph."""


class ExportError(RuntimeError):
    """A runtime that is not installed, or an export folder without the files it needs."""


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def resolve_runtime(runtime: str) -> str:
    """torch | onnx | openvino; ``auto`` is onnx when ONNX Runtime is installed, else torch."""
    if runtime == "auto":
        return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"
    if runtime not in ("torch", "onnx", "openvino"):
        msg = f"Unknown runtime {runtime!r}: use torch, onnx, openvino or auto"
        raise ValueError(msg)
    package = {"onnx": "onnxruntime", "openvino": "openvino"}.get(runtime)
    if package and importlib.util.find_spec(package) is None:
        msg = f"Runtime {runtime!r} needs the package {package!r}: pip install {package}"
        raise ValueError(msg)
    return runtime


def exported_runtimes() -> list[str]:
    """The installed runtimes that run exported graphs, in order of preference on a tie."""
    return [name for name, package in (("onnx", "onnxruntime"), ("openvino", "openvino")) if importlib.util.find_spec(package) is not None]


def served_runtime(folder: str | Path) -> str | None:
    """The runtime registration chose for an export folder (``served_runtime`` in ``export.json``: the
    fastest whose graph agreed with torch), when it is installed here; else None."""
    try:
        recorded = json.loads((Path(folder) / EXPORT_JSON).read_text()).get("served_runtime")
    except (OSError, ValueError):
        return None
    return recorded if recorded in exported_runtimes() else None


def record_served_runtime(folder: str | Path, runtime: str) -> None:
    """Write the runtime chosen at registration into the export folder's ``export.json``."""
    path = Path(folder) / EXPORT_JSON
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | {"served_runtime": runtime}, indent=2))


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def runtime_threads() -> int | None:
    """The thread count the runtime should use: ``OMP_NUM_THREADS`` when set."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass(frozen=True)
class ExportInfo:
    """What ``export.json`` records beside the graph: enough to feed and read it."""

    category: str
    height: int
    width: int
    letterbox: bool
    threshold: float
    format: str
    opset: int = OPSET

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def read(cls, folder: str | Path) -> tuple[ExportInfo, dict[str, Any]]:
        """``folder/export.json`` -> the info and the raw record (graph file names)."""
        path = Path(folder) / EXPORT_JSON
        if not path.is_file():
            msg = f"{folder} is not an onenip export (no {EXPORT_JSON})"
            raise ExportError(msg)
        meta = json.loads(path.read_text())
        return cls(**{k: meta[k] for k in ("category", "height", "width", "letterbox", "threshold", "format", "opset")}), meta


def import_optional(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        msg = f"Runtime {module!r} is not installed: pip install {package}"
        raise ExportError(msg) from error


def onnx_session_options(threads: int) -> Any:
    """ONNX Runtime's options for a scoring graph, set on purpose (the profiler uses the same)."""
    ort = import_optional("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fusions and the NCHWc layout
    options.intra_op_num_threads = threads  # the cores this process is given, not the machine's
    options.inter_op_num_threads = 1  # one chain of nodes: a second pool would only compete for them
    options.add_free_dimension_override_by_name("batch", 1)
    # denormals flushed to zero: the attention's blocked logits (-inf) underflow in the softmax's exp, and
    # on x86 every operation on a denormal is slow (a lone Softmax of the mono graph's shape: 4.0 -> 0.3 ms)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


class GraphScorer:
    """Runs an exported graph: ``(images (B, 3, H, W) float32 in [0, 1], valid or None) -> (maps, scores)``.

    The graph runs one image at a time with its batch axis fixed at 1: every shape in it is then a
    constant, so the runtime folds the shape arithmetic the exporter wrote for a dynamic batch and fuses
    what it could not fuse around it (ONNX Runtime: 757 -> 321 nodes on a full OneNIP graph). A batch
    is scored image by image; on a CPU a batch of 16 is no faster per image than one (the graph is
    compute-bound there), and memory stays that of one image whatever the request.
    """

    def __init__(self, graph: str | Path, runtime: Literal["onnx", "openvino"], threads: int | None = None) -> None:
        self.runtime = runtime
        path = Path(graph)
        if not path.is_file():
            msg = f"No exported graph at {path}"
            raise ExportError(msg)
        threads = threads or available_cores()
        if runtime == "onnx":
            ort = import_optional("onnxruntime", "onnxruntime")
            options = onnx_session_options(threads)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
        else:
            ov = import_optional("openvino", "openvino")
            core = ov.Core()
            model = core.read_model(str(path))
            model.reshape({port.get_any_name(): [1, *(d.get_length() for d in list(port.get_partial_shape())[1:])] for port in model.inputs})
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            self.compiled = core.compile_model(model, "CPU", config)
            # every name of every input: a port's "any" name may be another tensor name of it than the
            # one exported (OpenVINO named the letterbox mask "/Cast_7_output_0"), and an input left
            # unfed is read as uninitialised memory, not refused
            self.inputs = [name for port in self.compiled.inputs for name in port.get_names()]
            self._local = threading.local()

    def __call__(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if "valid" in self.inputs and valid is None:
            valid = np.ones((images.shape[0], 1, *images.shape[-2:]), dtype=np.float32)
        outputs = [self._run(images[i : i + 1], None if valid is None else valid[i : i + 1]) for i in range(images.shape[0])]
        if not outputs:
            msg = "GraphScorer needs at least one image"
            raise ValueError(msg)
        return np.concatenate([m for m, _ in outputs]), np.concatenate([s for _, s in outputs])

    def _run(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"images": images}
        if "valid" in self.inputs:
            feeds["valid"] = np.ascontiguousarray(valid, dtype=np.float32)
        elif valid is not None:
            msg = "this graph takes no letterbox mask ('valid'), but one was given"
            raise ExportError(msg)
        if self.runtime == "onnx":
            anomaly_map, scores = self.session.run(["anomaly_map", "score"], feeds)
        else:
            # one infer request per thread: a compiled model's implicit request is not thread-safe (a
            # server scores concurrent requests from several threads)
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            result = request.infer(feeds)
            # copies: the request's output tensors are overwritten by its next image
            anomaly_map, scores = np.array(result[self.compiled.output("anomaly_map")]), np.array(result[self.compiled.output("score")])
        return np.asarray(anomaly_map), np.asarray(scores)


def load_export(folder: str | Path, runtime: Literal["onnx", "openvino"], threads: int | None = None) -> tuple[ExportInfo, GraphScorer]:
    """An export folder (``export.json`` + graph) -> its info and a scorer on ``runtime``."""
    folder = Path(folder)
    info, meta = ExportInfo.read(folder)
    graph = folder / (meta["onnx"] if runtime == "onnx" else meta["graph"])
    if runtime == "openvino" and graph.suffix != ".xml":
        graph = folder / meta["onnx"]  # OpenVINO reads ONNX directly
    return info, GraphScorer(graph, runtime, threads)
