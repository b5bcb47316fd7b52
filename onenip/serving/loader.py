"""Which predictor scores a saved model: ``load_predictor``, the one entry point of ``onenip predict`` and the
MLflow pyfunc model. Torch is imported only when the torch predictor is chosen."""

from __future__ import annotations

from pathlib import Path

from onenip.runtime import EXPORT_FOLDER, resolve_runtime, safe_name, served_runtime
from onenip.serving.base import ImagePredictor
from onenip.serving.exported import ExportedPredictor


def load_predictor(
    model_dir: str | Path,
    default_category: str | None = None,
    device: str = "cpu",
    *,
    served_category: str | None = None,
    model_name_pattern: str | None = None,
    runtime: str = "torch",
) -> ImagePredictor:
    """The predictor for a saved model: its exported graphs when ``runtime`` is onnx/openvino (or auto
    with ONNX Runtime installed), the device is the CPU and the categories asked for were exported;
    otherwise the ``TorchPredictor`` (which exports on first use when a graph runtime is asked for).

    ``device``: cpu, cuda[:N] or auto (CUDA when a driver is present and torch sees a GPU).
    """
    if runtime == "auto":
        # the runtime registration chose for this category (the fastest export that agreed with torch)
        category = served_category or default_category
        if category is not None:
            runtime = served_runtime(Path(model_dir) / EXPORT_FOLDER / safe_name(category)) or runtime
    resolved = resolve_runtime(runtime)
    if resolved != "torch" and _cpu(device):
        wanted = [c for c in (served_category, default_category) if c]
        exported = ExportedPredictor.from_folder(
            model_dir, resolved, wanted, default_category=default_category,
            served_category=served_category, model_name_pattern=model_name_pattern,
        )  # fmt: skip
        if exported is not None:
            if exported.default_category is not None:
                exported.graph(exported.default_category)  # load now: a broken graph fails here, not on a request
            return exported
    from onenip.device import resolve_device
    from onenip.serving.torch_predictor import TorchPredictor

    return TorchPredictor.load(
        model_dir, default_category, device=resolve_device(device), served_category=served_category,
        model_name_pattern=model_name_pattern, runtime=runtime,
    )  # fmt: skip


def _cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "auto":
        from onenip.device import cuda_present

        return not cuda_present()
    return False
