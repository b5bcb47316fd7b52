"""What the synthesizer accepts: ``SynthesisError`` and the checks of images and setting ranges."""

from __future__ import annotations

from torch import Tensor


class SynthesisError(ValueError):
    """Bad synthesizer settings or inputs (wrong shape, values outside [0, 1], empty foreground)."""



def check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        msg = f"Expected an image tensor of shape (3, H, W), got {shape}"
        raise SynthesisError(msg)
    if not image.is_floating_point():
        msg = f"Expected a float image in [0, 1], got dtype {image.dtype}"
        raise SynthesisError(msg)
    if min(image.shape[1:]) < 8:
        msg = f"Image is too small for synthesis: {tuple(image.shape[1:])}, need at least 8x8"
        raise SynthesisError(msg)


def check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        msg = f"{name} must be a (min, max) pair with {low} <= min <= max <= {high}, got {value}"
        raise SynthesisError(msg)
    return (float(value[0]), float(value[1]))
