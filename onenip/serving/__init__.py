"""Scoring new images: a torch-free base (``base``: the prediction record, the category a request is for,
the one batching / letterbox / crop loop), one predictor per runtime (``exported``: ONNX Runtime and
OpenVINO without torch; ``torch_predictor``: torch), ``load_predictor`` choosing between them (``loader``),
and scoring files (``files``). Every import points one way: base <- runtimes <- loader <- files' callers.

``TorchPredictor`` is not imported here: importing ``onenip.serving`` must not import torch (a served
model with an exported graph never does); import it from ``onenip.serving.torch_predictor``."""

from onenip.serving.base import BasePredictor, CategoryNotServed, ImagePredictor, Prediction, as_rgb_uint8, crop_content, image_to_array
from onenip.serving.exported import ExportedPredictor, export_matches
from onenip.serving.files import PredictReport, collect_images, predict_files
from onenip.serving.loader import load_predictor

__all__ = [
    "BasePredictor", "CategoryNotServed", "ExportedPredictor", "ImagePredictor", "PredictReport", "Prediction", "as_rgb_uint8",
    "collect_images", "crop_content", "export_matches", "image_to_array", "load_predictor", "predict_files",
]  # fmt: skip
