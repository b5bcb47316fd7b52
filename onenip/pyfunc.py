"""The registered model: an ``mlflow.pyfunc`` wrapper around ``onenip.serving.load_predictor`` (the
exported graph in ONNX Runtime without importing torch when the version carries one, else torch).

Input: a DataFrame with a column ``image`` (base64 of an encoded image file: PNG, JPEG, TIFF, BMP)
and an optional ``category`` column (a version serves its own category only: any other gets a 400
naming the model to use), or a uint8 array (N, H, W, 3) / (H, W, 3). Output: one row per
image with ``category``, ``score``, ``threshold``, ``is_anomaly`` and, with the parameter
``return_map=True``, ``anomaly_map`` (nested lists at the model's input size).

The weights travel as an artifact (safetensors + JSON, no pickle of objects); loading needs no
network. The serving environment must have ``onenip`` installed (``pip install -e .`` of this
repository; ``mlflow models serve --env-manager local``).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from onenip.data.manifest import ImageReadError, decode_image

MODEL_ARTIFACT = "onenip_model"
MAX_BATCH = 64
"""Images per request; larger batches are refused (memory stays bounded per request)."""

PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    f"mlflow=={mlflow.__version__}",
    "safetensors",
    "pillow",
    "numpy",
    "pandas",
    "pydantic",
    "pyyaml",
    "scikit-learn",
]

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "category", required=False), ColSpec("string", "station", required=False)]),
    outputs=Schema(
        [ColSpec("string", "category"), ColSpec("double", "score"), ColSpec("double", "threshold"), ColSpec("boolean", "is_anomaly"),
         ColSpec("string", "model_version"), ColSpec("string", "prediction_id")],
    ),
    # threshold: judge this request against its own threshold (-1: the version's operating point)
    params=ParamSchema([ParamSpec("return_map", "boolean", False), ParamSpec("threshold", "double", -1.0)]),
)


def _bad_input(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE makes the scoring server answer 400 with this message (not 500).
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def encode_image(image: Image.Image | np.ndarray | bytes | str | Path) -> str:
    """Base64 of a PNG (or of the file's own bytes): the ``image`` column's format."""
    if isinstance(image, (str, Path)):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_row(value: Any, row: int) -> Image.Image:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            msg = f"Row {row}: 'image' is not valid base64 ({error})"
            raise _bad_input(msg) from None
    else:
        msg = f"Row {row}: 'image' must be a base64 string, got {type(value).__name__}"
        raise _bad_input(msg)
    try:
        return decode_image(data, source=f"in row {row}")
    except ImageReadError as error:
        raise _bad_input(str(error)) from None


class OneNIPPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the detector from the ``onenip_model`` artifact; the category comes from model_config."""

    def load_context(self, context: Any) -> None:
        from onenip.serving import load_predictor

        config = context.model_config or {}
        # A version serves only the category it was registered (and gated) for.
        self.predictor = load_predictor(
            context.artifacts[MODEL_ARTIFACT],
            served_category=config.get("category"),
            model_name_pattern=config.get("model_name_pattern"),
            # ONENIP_RUNTIME overrides the registered choice (torch | onnx | openvino | auto)
            runtime=os.environ.get("ONENIP_RUNTIME") or config.get("runtime", "torch"),
        )
        # onenip serve names the version it serves (models:/NAME/VERSION): its operating point is read
        # from the registry, and the prediction log (when on) gets every prediction
        self.model_version = os.environ.get("ONENIP_MODEL_URI")
        if self.model_version and self.model_version.startswith("models:/"):
            from onenip.registry_thresholds import RegistryThreshold

            self.predictor.threshold_source = RegistryThreshold.from_uri(self.model_version)
        self.log = None
        if os.environ.get("ONENIP_PREDICTION_LOG"):
            from onenip.monitoring.log import PredictionLog
            from onenip.monitoring.store import ImageStore

            store = os.environ.get("ONENIP_PREDICTION_STORE")
            max_bytes = int(float(os.environ.get("ONENIP_PREDICTION_STORE_MB", "2048")) * 1e6)
            self.log = PredictionLog(os.environ["ONENIP_PREDICTION_LOG"], ImageStore(store, max_bytes) if store else None)

    # No type hints here: MLflow would try to derive a schema from them; SIGNATURE is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        started = time.perf_counter()
        return_map = bool((params or {}).get("return_map", False))
        threshold = (params or {}).get("threshold")
        threshold = None if threshold is None or float(threshold) < 0 else float(threshold)
        images, categories = self._images(model_input)
        stations = self._stations(model_input, len(images))
        log = getattr(self, "log", None)
        if not images:
            msg = "Empty batch: send at least one image"
            raise _bad_input(msg)
        if len(images) > MAX_BATCH:
            msg = f"Batch of {len(images)} images; at most {MAX_BATCH} per request"
            raise _bad_input(msg)
        rows: list[dict[str, Any]] = [{} for _ in images]
        scored: list[Any] = [None] * len(images)
        groups: dict[str | None, list[int]] = {}
        for i, category in enumerate(categories):
            groups.setdefault(category, []).append(i)
        for category, positions in groups.items():
            try:
                predictions = self.predictor.predict(
                    [images[i] for i in positions], category, return_maps=return_map or log is not None, threshold=threshold,
                )
            except ValueError as error:  # unknown category, bad array shape
                raise _bad_input(str(error)) from None
            for i, prediction in zip(positions, predictions, strict=True):
                scored[i] = prediction
                rows[i] = {
                    "category": prediction.category,
                    "score": prediction.score,
                    "threshold": prediction.threshold,
                    "is_anomaly": prediction.is_anomaly,
                    "model_version": getattr(self, "model_version", None),
                    "prediction_id": None,
                }
                if return_map:
                    rows[i]["anomaly_map"] = prediction.anomaly_map.round(5).tolist()
        if log is not None:
            self._log(log, images, scored, rows, stations, (time.perf_counter() - started) * 1000 / len(images))
        return pd.DataFrame(rows)

    def _log(self, log: Any, images: list[Any], predictions: list[Any], rows: list[dict[str, Any]], stations: list[str | None],
             latency_ms: float) -> None:  # fmt: skip
        """Hand every prediction to the log's background writer: never fails, never waits for the database;
        each answer row gets its log id."""
        from onenip.monitoring.log import LoggedPrediction

        records = [LoggedPrediction.of(prediction, image, station=station, model_version=row["model_version"], latency_ms=latency_ms)
                   for image, prediction, row, station in zip(images, predictions, rows, stations, strict=True)]  # fmt: skip
        for row, record in zip(rows, records, strict=True):
            row["prediction_id"] = record.id
        log.submit(records)

    @staticmethod
    def _stations(model_input: Any, count: int) -> list[str | None]:
        if isinstance(model_input, pd.DataFrame) and "station" in model_input.columns:
            return [None if pd.isna(s) else str(s) for s in model_input["station"].tolist()]
        return [None] * count

    @staticmethod
    def _images(model_input: Any) -> tuple[list[Any], list[str | None]]:
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                msg = f"Input needs a column 'image' (base64-encoded image file); got columns {list(model_input.columns)}"
                raise _bad_input(msg)
            images = [_decode_row(value, row) for row, value in enumerate(model_input["image"].tolist())]
            if "category" in model_input.columns:
                categories = [None if pd.isna(c) else str(c) for c in model_input["category"].tolist()]
            else:
                categories = [None] * len(images)
            return images, categories
        if isinstance(model_input, np.ndarray):
            array = model_input[None] if model_input.ndim in (2, 3) and model_input.shape[-1] in (3, 4) else model_input
            if array.ndim == 2:
                array = array[None]
            return list(array), [None] * len(array)
        msg = f"Unsupported input type {type(model_input).__name__}: send a DataFrame with an 'image' column or an array"
        raise _bad_input(msg)


def log_pyfunc_model(
    model_dir: str | Path, category: str, example_image: Image.Image, model_name_pattern: str | None = None, runtime: str | None = None,
) -> Any:
    """Log the pyfunc model into the active run; returns MLflow's ModelInfo.

    The model serves ``category`` only, on ``runtime`` (default ``serving_runtime``);
    ``model_name_pattern`` (``onenip-elpv-{category}``) names the models of the other categories in
    the refusal a request for one of them gets.
    """
    runtime = runtime or serving_runtime(model_dir)
    config: dict[str, str] = {"category": category, "runtime": runtime}
    if model_name_pattern:
        config["model_name_pattern"] = model_name_pattern
    requirements = list(PIP_REQUIREMENTS)
    if runtime in ("onnx", "openvino"):
        if runtime not in export_for_serving(model_dir, category):
            msg = f"runtime {runtime!r} cannot serve {model_dir}: it is not installed"
            raise ValueError(msg)
        package = {"onnx": "onnxruntime", "openvino": "openvino"}[runtime]
        requirements.append(f"{package}=={_version(package)}")
    example = pd.DataFrame({"image": [encode_image(example_image.resize((64, 64)))], "category": [category]})
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models from code: no pickle
        artifacts={MODEL_ARTIFACT: str(model_dir)},
        model_config=config,
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=requirements,
    )


def export_for_serving(model_dir: str | Path, category: str) -> list[str]:
    """Export ``category``'s whole scoring graph into ``model_dir/export`` (ONNX, plus OpenVINO IR where
    OpenVINO is installed) unless an export of these weights is there already: it travels with the
    weights, the served model's fast path. Returns the installed runtimes that can serve it (empty: a
    generalist model, or no graph runtime installed; torch serves)."""
    from onenip.runtime import EXPORT_FOLDER, exported_runtimes, safe_name

    if serving_runtime(model_dir) == "torch":
        return []
    runtimes = exported_runtimes()
    from onenip.serving import export_matches

    folder, weights = Path(model_dir) / EXPORT_FOLDER / safe_name(category), Path(model_dir) / "model.safetensors"
    if not all(export_matches(folder, weights, runtime) for runtime in runtimes):
        from onenip.export import export_category
        from onenip.models.detector import OneNIPDetector

        fmt = "openvino" if "openvino" in runtimes else "onnx"
        export_category(OneNIPDetector.load(model_dir), category, folder, fmt=fmt, weights=weights)
    return runtimes


def serving_runtime(model_dir: str | Path) -> str:
    """onnx when ONNX Runtime is installed (the graph is exported at registration), else torch; a
    generalist (onboarded) model runs in torch."""
    import json

    from onenip.runtime import resolve_runtime

    config = Path(model_dir) / "onenip.json"
    if config.is_file() and json.loads(config.read_text()).get("kind") == "inctrl":
        return "torch"
    return resolve_runtime("auto")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
