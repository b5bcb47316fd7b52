"""Export one category's whole scoring graph to ONNX (and OpenVINO IR).

The graph: preprocessed images (B, 3, H, W) in [0, 1] at the category's input geometry, plus for a
letterboxed category the content mask (B, 1, H, W) -> backbone -> OneNIP reconstruction -> refiner
-> the category's scoring rule -> (anomaly map (B, 1, H, W), image score (B,)). The category's
prompt features and the encoder's pass over them are constants of the graph; the batch is dynamic,
the input size fixed per category. Decoding and resizing stay in Python (``onenip.serving``): the same
arithmetic feeds every runtime, so the runtimes differ only in the graph. Running an exported graph needs no
torch: ``onenip.runtime``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from onenip.models.features import Features
from onenip.models.detector import OneNIPDetector
from onenip.models.scoring import score_maps
from onenip.runtime import EXPORT_JSON, OPSET, ExportInfo, import_optional, file_sha256, safe_name
from onenip.runtime import ExportError, GraphScorer, load_export  # noqa: F401  (running a graph lives in onenip.runtime)

Runtime = Literal["torch", "onnx", "openvino"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "openvino")


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
            encoded = detector.encode_prompt(self.k, bank.coarse)
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
        components = self.detector.bank_components(features, self.k, bank, self.encoded_prompt, self.rule.weights)
        anomaly_map, scores = score_maps(components, self.rule, valid)
        return anomaly_map, scores


def export_category(
    detector: OneNIPDetector, category: str, out_dir: str | Path, fmt: Literal["onnx", "openvino"] = "onnx",
    *, weights: str | Path | None = None,
) -> Path:
    """Write ``<category>.onnx`` (and ``<category>.xml/.bin`` for OpenVINO) plus ``export.json``; returns the graph file.

    ``weights``: the saved ``model.safetensors`` the detector was loaded from; its hash is recorded so
    that a predictor never serves this graph for different weights."""
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
        ov = import_optional("openvino", "openvino")
        model = ov.convert_model(str(onnx_path))
        graph = out / f"{safe_name(category)}.xml"
        ov.save_model(model, str(graph), compress_to_fp16=False)
    threshold = float(detector.score_threshold[detector.category_index(category)])
    info = ExportInfo(category, geometry.height, geometry.width, geometry.letterbox, threshold, fmt)
    record = info.to_dict() | {"graph": graph.name, "onnx": onnx_path.name}
    if weights is not None:
        record["weights_sha256"] = file_sha256(weights)
    (out / EXPORT_JSON).write_text(json.dumps(record, indent=2))
    return graph
