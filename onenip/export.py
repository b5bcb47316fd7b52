"""Export one category's whole scoring graph to ONNX (and OpenVINO IR) and run it.

The graph: preprocessed images (B, 3, H, W) in [0, 1] at the category's input geometry, plus for a
letterboxed category the content mask (B, 1, H, W) -> backbone -> OneNIP reconstruction -> refiner
-> the category's scoring rule -> (anomaly map (B, 1, H, W), image score (B,)). The category's
prompt features and the encoder's pass over them are constants of the graph; the batch is dynamic,
the input size fixed per category. Decoding and resizing stay in Python (``Predictor``): the same
code feeds every runtime, so the runtimes differ only in the graph.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from onenip.features import Features
from onenip.inference import safe_name
from onenip.models.detector import OneNIPDetector
from onenip.models.scoring import score_maps

Runtime = Literal["torch", "onnx", "openvino"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "openvino")
EXPORT_JSON = "export.json"
OPSET = 17


class ExportError(RuntimeError):
    """A runtime that is not installed, or an export folder without the files it needs."""


class CategoryScorer(nn.Module):
    """One category of a detector as a plain ``forward(images[, valid]) -> (map, score)`` module."""

    def __init__(self, detector: OneNIPDetector, category: str) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.k = detector.category_index(category)
        self.rule = detector.scoring[category]
        self.letterbox = detector.geometry(category).letterbox
        bank = detector.prompt(self.k)
        with torch.no_grad():
            encoded = detector.model.encode(bank.coarse)
        # copies, so that the graph's constants do not alias the detector's (mutable) buffers
        self.register_buffer("prompt_coarse", bank.coarse.clone())
        self.register_buffer("prompt_fine", None if bank.fine is None else bank.fine.clone())
        self.register_buffer("encoded_prompt", encoded.clone())
        # torch.onnx.export restores the wrapper's mode on the whole tree afterwards: keep it eval, or
        # the detector would come back in training mode (dropout on)
        self.eval()

    def forward(self, images: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:

        features = self.detector.extract(images)
        bank = Features(self.prompt_coarse, self.prompt_fine)
        components = self.detector.bank_components(features, self.k, bank, self.encoded_prompt)
        anomaly_map, scores = score_maps(components, self.rule, valid)
        return anomaly_map, scores


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


def export_category(
    detector: OneNIPDetector, category: str, out_dir: str | Path, fmt: Literal["onnx", "openvino"] = "onnx",
) -> Path:
    """Write ``<category>.onnx`` (and ``<category>.xml/.bin`` for OpenVINO) plus ``export.json``; returns the graph file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer = CategoryScorer(detector.float().cpu(), category)
    geometry = detector.geometry(category)
    example = (torch.rand(2, 3, geometry.height, geometry.width),)
    names = ["images"]
    dynamic: dict[str, dict[int, str]] = {"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}}
    if geometry.letterbox:
        example = (*example, torch.ones(2, 1, geometry.height, geometry.width))
        names.append("valid")
        dynamic["valid"] = {0: "batch"}
    onnx_path = out / f"{safe_name(category)}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            scorer, example, str(onnx_path), input_names=names, output_names=["anomaly_map", "score"],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    graph = onnx_path
    if fmt == "openvino":
        ov = _import("openvino", "openvino")
        model = ov.convert_model(str(onnx_path))
        graph = out / f"{safe_name(category)}.xml"
        ov.save_model(model, str(graph), compress_to_fp16=False)
    threshold = float(detector.score_threshold[detector.category_index(category)])
    info = ExportInfo(category, geometry.height, geometry.width, geometry.letterbox, threshold, fmt)
    (out / EXPORT_JSON).write_text(json.dumps(info.to_dict() | {"graph": graph.name, "onnx": onnx_path.name}, indent=2))
    return graph


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        msg = f"Runtime {module!r} is not installed: pip install {package}"
        raise ExportError(msg) from error


class GraphScorer:
    """Runs an exported graph: ``(images (B, 3, H, W) float32 in [0, 1], valid or None) -> (maps, scores)``."""

    def __init__(self, graph: str | Path, runtime: Literal["onnx", "openvino"], threads: int | None = None) -> None:
        self.runtime = runtime
        path = Path(graph)
        if not path.is_file():
            msg = f"No exported graph at {path}"
            raise ExportError(msg)
        if runtime == "onnx":
            ort = _import("onnxruntime", "onnxruntime")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
        else:
            ov = _import("openvino", "openvino")
            config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
            model = ov.Core().read_model(str(path))
            self.compiled = ov.Core().compile_model(model, "CPU", config | {"INFERENCE_PRECISION_HINT": "f32"})
            self.inputs = [i.get_any_name() for i in self.compiled.inputs]
            self._local = threading.local()

    def __call__(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"images": np.ascontiguousarray(images, dtype=np.float32)}
        if "valid" in self.inputs:
            if valid is None:
                valid = np.ones((images.shape[0], 1, *images.shape[-2:]), dtype=np.float32)
            feeds["valid"] = np.ascontiguousarray(valid, dtype=np.float32)
        if self.runtime == "onnx":
            anomaly_map, scores = self.session.run(["anomaly_map", "score"], feeds)
        else:
            # one infer request per thread: a compiled model's implicit request is not thread-safe (a
            # server scores concurrent requests from several threads)
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            result = request.infer(feeds)
            anomaly_map, scores = result[self.compiled.output("anomaly_map")], result[self.compiled.output("score")]
        return np.asarray(anomaly_map), np.asarray(scores)


def load_export(folder: str | Path, runtime: Literal["onnx", "openvino"], threads: int | None = None) -> tuple[ExportInfo, GraphScorer]:
    """An export folder (``export.json`` + graph) -> its info and a scorer on ``runtime``."""
    folder = Path(folder)
    meta_path = folder / EXPORT_JSON
    if not meta_path.is_file():
        msg = f"{folder} is not an onenip export (no {EXPORT_JSON})"
        raise ExportError(msg)
    meta = json.loads(meta_path.read_text())
    graph = folder / (meta["onnx"] if runtime == "onnx" else meta["graph"])
    if runtime == "openvino" and graph.suffix != ".xml":
        graph = folder / meta["onnx"]  # OpenVINO reads ONNX directly
    info = ExportInfo(**{k: meta[k] for k in ("category", "height", "width", "letterbox", "threshold", "format", "opset")})
    return info, GraphScorer(graph, runtime, threads)


class ExportedModel:
    """What ``Predictor`` needs of a detector (categories, geometry, thresholds), read from the export
    folders alone: serving an exported graph builds no torch model (faster start-up, less memory)."""

    def __init__(self, categories: list[str], infos: dict[str, ExportInfo]) -> None:
        self.categories = list(categories)
        self.infos = infos
        self.score_threshold = torch.tensor([infos[c].threshold if c in infos else float("inf") for c in self.categories])
        self.device = torch.device("cpu")

    def eval(self) -> ExportedModel:
        return self

    def category_index(self, category: str) -> int:
        try:
            return self.categories.index(category)
        except ValueError:
            msg = f"Unknown category {category!r}; this model knows {self.categories}"
            raise ValueError(msg) from None

    def geometry(self, category: str | int) -> Any:
        from onenip.data.geometry import InputGeometry

        name = self.categories[category] if isinstance(category, int) else category
        self.category_index(name)
        if name not in self.infos:
            msg = f"No exported graph for category {name!r}; load the model with runtime='torch'"
            raise ValueError(msg)
        info = self.infos[name]
        return InputGeometry(info.height, info.width, info.letterbox)

    @classmethod
    def from_folder(cls, model_dir: str | Path, categories: list[str]) -> ExportedModel | None:
        """None unless every one of ``categories`` has an export under ``model_dir/export``."""
        from onenip.inference import EXPORT_FOLDER, safe_name

        model_dir = Path(model_dir)
        config = model_dir / "onenip.json"
        if not config.is_file() or not categories:
            return None
        known = json.loads(config.read_text()).get("categories", [])
        infos = {}
        for category in categories:
            meta = model_dir / EXPORT_FOLDER / safe_name(category) / EXPORT_JSON
            if category not in known or not meta.is_file():
                return None
            data = json.loads(meta.read_text())
            infos[category] = ExportInfo(**{k: data[k] for k in ("category", "height", "width", "letterbox", "threshold", "format", "opset")})
        return cls(known, infos)
