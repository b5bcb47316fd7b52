"""Synthetic anomalies for training the refiner, and others for validating it.

Training families, chosen at random per image by ``AnomalySynthesizer``:

* ``perlin`` (DRAEM, Zavrtanik et al., ICCV 2021): a mask is thresholded Perlin noise at a random
  scale ``2^a x 2^b`` and rotation; inside it the image is blended with a texture,
  ``image * (1 - opacity) + texture * opacity``. DRAEM keeps ``beta ~ U(0, 0.8)`` of the original,
  i.e. ``opacity ~ U(0.2, 1.0)`` here. DTD is not available offline, so textures are generated in
  code (``PROCEDURAL_TEXTURES``) or cropped from user-supplied images of *other* categories.
* ``cutpaste_patch`` / ``cutpaste_scar`` (CutPaste, Li et al., CVPR 2021): a rectangle of the same
  image (area 2-15 %, aspect 0.3-3.3) or a thin long rotated "scar" is cut, colour-jittered
  (brightness, contrast, saturation 0.4, hue 0.1, as the OneNIP reference) and pasted elsewhere.
* ``crack``: a thin (1-4 px) curved line, darker or brighter than the surface (the cracks and
  scratches of KolektorSDD and magnetic tiles).
* ``brightness``: a low-frequency region of uneven brightness (Perlin noise on intensity only), as on
  unevenly lit or worn surfaces.

Validation families (``VALIDATION_METHODS``) are never used for training: ``warp`` (a local
deformation, a dent), ``smudge`` (a blurred, tinted stain) and ``spots`` (small round pits or
specks). Choices made on validation data (blend weights, smoothing, the epoch) therefore measure how
the model transfers to defect types it never saw, not how well it learnt the training synthesis.

Grey images (all channels equal) get grey anomalies: textures and jitter act on intensity only, so
the refiner cannot learn "colour = defect" on a grey product.

Everything is pure torch on the input's device. All random numbers come from a CPU
``torch.Generator`` that is passed down explicitly (never the global RNG), so the same seed gives a
bitwise-identical result on the same device. For object categories the mask can be restricted to
the foreground (``foreground="auto"`` estimates it from the border colour); a result that claims an
anomaly always has a non-empty mask of at least ``min_mask_pixels`` pixels (or the whole foreground
when that is smaller), and pixels outside the mask are returned unchanged.

Written from scratch instead of imgaug (unmaintained, broken on numpy 2). anomalib's
``PerlinAnomalyGenerator`` (``anomalib/data/utils/generators/perlin.py``) is the interface model.

See Also:
    ``make_preview_grid`` writes a PNG for a person to inspect (``onenip synthesize``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from torch import Tensor

METHODS: tuple[str, ...] = ("perlin", "cutpaste_patch", "cutpaste_scar", "crack", "brightness")
VALIDATION_METHODS: tuple[str, ...] = ("warp", "smudge", "spots")
ALL_METHODS: tuple[str, ...] = METHODS + VALIDATION_METHODS
PROCEDURAL_TEXTURES: tuple[str, ...] = ("perlin", "stripes", "checker", "gradient", "blotches", "speckle")

FOREGROUND_MODES: tuple[str, ...] = ("none", "auto")
MIN_PERLIN_CELL_PX = 4
"""Perlin cells are kept at least this many pixels wide, so ``2^5`` cells on a 64 px image become
16 (finer noise is pixel speckle, not a defect shape)."""

ForegroundFn = Callable[[Tensor], Tensor]
TextureSource = Tensor | str | Path

_SQRT2 = math.sqrt(2.0)
# RGB -> YIQ; hue is rotated in the (I, Q) chroma plane, which avoids an RGB <-> HSV round trip.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


class SynthesisError(ValueError):
    """Bad synthesizer settings or inputs (wrong shape, values outside [0, 1], empty foreground)."""


class SynthesisResult(NamedTuple):
    """One synthesized sample, or a batch of them (``synthesize_batch``)."""

    image: Tensor
    """``(3, H, W)`` or ``(B, 3, H, W)`` float in [0, 1], same device and dtype as the input."""
    mask: Tensor
    """``(1, H, W)`` or ``(B, 1, H, W)`` float, 1 where the image was changed, 0 elsewhere."""
    is_anomalous: Tensor
    """``()`` or ``(B,)`` bool; when True the mask is never empty."""
    method: str | tuple[str, ...] = ""
    """The method used (an entry of ``METHODS``, ``"fallback"`` or ``"none"`` for a normal sample)."""


# --------------------------------------------------------------------------------------------
# Random draws: every one goes through the given CPU generator (reproducible on any device).


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _choice(generator: torch.Generator, weights: Tensor) -> int:
    return int(torch.multinomial(weights, 1, generator=generator).item())


def _as_generator(generator: torch.Generator | int | None, default: torch.Generator) -> torch.Generator:
    if generator is None:
        return default
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    if not isinstance(generator, torch.Generator):
        msg = f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}"
        raise SynthesisError(msg)
    if generator.device.type != "cpu":
        # Draws are tiny; keeping them on the CPU makes a seed give the same anomaly on any device.
        msg = f"generator must live on the CPU (random draws are made there), got device {generator.device}"
        raise SynthesisError(msg)
    return generator


# --------------------------------------------------------------------------------------------
# Perlin noise


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _gradient_noise(u: Tensor, v: Tensor, gradients: Tensor) -> Tensor:
    """Perlin gradient noise at cell coordinates ``(u, v)`` over a periodic gradient lattice.

    ``gradients`` is ``(res_y, res_x, 2)`` unit vectors; indices wrap, so rotated coordinates that
    leave ``[0, res)`` still see seamless noise (no border artefacts, no interpolation).
    """
    res_y, res_x = gradients.shape[:2]
    grad_y, grad_x = gradients[..., 0].flatten(), gradients[..., 1].flatten()
    cell_y, cell_x = torch.floor(u), torch.floor(v)
    fy, fx = u - cell_y, v - cell_x
    iy0 = cell_y.long() % res_y
    ix0 = cell_x.long() % res_x
    iy1 = (iy0 + 1) % res_y
    ix1 = (ix0 + 1) % res_x

    def corner(iy: Tensor, ix: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
        index = iy * res_x + ix
        return torch.take(grad_y, index) * dy + torch.take(grad_x, index) * dx

    n00 = corner(iy0, ix0, fy, fx)
    n10 = corner(iy1, ix0, fy - 1, fx)
    n01 = corner(iy0, ix1, fy, fx - 1)
    n11 = corner(iy1, ix1, fy - 1, fx - 1)
    ty, tx = _fade(fy), _fade(fx)
    n0 = torch.lerp(n00, n10, ty)
    n1 = torch.lerp(n01, n11, ty)
    # sqrt(2) scales 2-D Perlin noise to about [-1, 1], as DRAEM's rand_perlin_2d does, so the same
    # threshold (0.5) means the same thing.
    return _SQRT2 * torch.lerp(n0, n1, tx)


def perlin_noise(
    height: int,
    width: int,
    res: tuple[int, int],
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    angle: float = 0.0,
    octaves: int = 1,
    persistence: float = 0.5,
) -> Tensor:
    """2-D Perlin (gradient) noise of shape ``(H, W)``, about [-1, 1] for one octave.

    Args:
        height, width: output size in pixels.
        res: number of noise cells along (y, x); ``(4, 4)`` gives blobs about ``H/4`` wide.
        generator: CPU generator for the gradient directions.
        device: where the noise is computed (default CPU).
        angle: rotation of the noise pattern in degrees (about the image centre).
        octaves: fractal octaves; octave ``k`` has ``2^k`` times the cells and ``persistence^k`` amplitude.

    Example:
        >>> noise = perlin_noise(64, 64, (4, 4), generator=torch.Generator().manual_seed(0))
        >>> noise.shape
        torch.Size([64, 64])
    """
    if res[0] < 1 or res[1] < 1 or octaves < 1:
        msg = f"perlin_noise needs res >= 1 and octaves >= 1, got res={res}, octaves={octaves}"
        raise SynthesisError(msg)
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Rotate the sampling positions instead of the noise image: exact, and no empty corners.
    rot_y = cos * yy - sin * xx + height / 2
    rot_x = sin * yy + cos * xx + width / 2
    total = torch.zeros(height, width, device=device)
    amplitude = 1.0
    for octave in range(octaves):
        res_y, res_x = res[0] * 2**octave, res[1] * 2**octave
        angles = torch.rand(res_y, res_x, generator=generator) * (2 * math.pi)
        gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1).to(device)
        total += amplitude * _gradient_noise(rot_y * (res_y / height), rot_x * (res_x / width), gradients)
        amplitude *= persistence
    return total


# --------------------------------------------------------------------------------------------
# Colour jitter (the OneNIP reference's CutPaste uses torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1);
# this is the same idea in plain torch with the CPU generator).


def _grayscale(image: Tensor) -> Tensor:
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)


def _rotate_hue(image: Tensor, hue: float) -> Tensor:
    theta = 2 * math.pi * hue
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(theta), -math.sin(theta)], [0.0, math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(device=image.device, dtype=image.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, image)


def colour_jitter(
    image: Tensor, strength: float, generator: torch.Generator, *, hue: float | None = None, grey: bool = False,
) -> Tensor:
    """Random brightness, contrast, saturation (factors in ``1 +- strength``) and hue (``+- hue`` of a
    turn, default ``strength``, at most half a turn), applied in that order to a ``(3, H, W)`` image in
    [0, 1]. ``grey``: brightness and contrast only, and the result is grey (a grey product stays grey)."""
    if strength <= 0:
        return _grayscale(image).expand_as(image).clone() if grey else image
    low = max(0.0, 1.0 - strength)
    brightness = _uniform(generator, low, 1.0 + strength)
    contrast = _uniform(generator, low, 1.0 + strength)
    saturation = _uniform(generator, low, 1.0 + strength)
    hue_limit = min(strength if hue is None else hue, 0.5)
    hue_shift = _uniform(generator, -hue_limit, hue_limit)
    if grey:
        image = _grayscale(image).expand_as(image)
    out = (image * brightness).clamp(0, 1)
    mean = _grayscale(out).mean()
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    if grey:
        return out
    gray = _grayscale(out)
    out = (gray + (out - gray) * saturation).clamp(0, 1)
    return _rotate_hue(out, hue_shift).clamp(0, 1)


def is_grey(image: Tensor, tolerance: float = 2.0 / 255) -> bool:
    """True when the channels of a ``(3, H, W)`` image are equal (a grey-scale picture stored as RGB)."""
    return bool((image.amax(0) - image.amin(0)).max().item() <= tolerance)


# --------------------------------------------------------------------------------------------
# Textures


def _random_colours(generator: torch.Generator, count: int, device: torch.device | str | None) -> Tensor:
    return torch.rand(count, 3, generator=generator).to(device)


def _mix(colour_a: Tensor, colour_b: Tensor, weight: Tensor) -> Tensor:
    """``(3,)`` colours mixed by a ``(H, W)`` weight in [0, 1] -> ``(3, H, W)``."""
    return colour_a[:, None, None] * (1 - weight) + colour_b[:, None, None] * weight


def _rotated_coords(
    height: int, width: int, angle: float, device: torch.device | str | None
) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float32) - height / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) - width / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    theta = math.radians(angle)
    return math.cos(theta) * yy - math.sin(theta) * xx, math.sin(theta) * yy + math.cos(theta) * xx


def procedural_texture(
    kind: str,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """A random ``(3, H, W)`` texture in [0, 1], standing in for DTD (not available offline).

    Kinds (``PROCEDURAL_TEXTURES``): ``perlin`` (fractal colour noise), ``stripes`` (sine or square
    waves at a random angle), ``checker`` (rotated checkerboard), ``gradient`` (linear ramp),
    ``blotches`` (soft random-colour blobs on a base colour), ``speckle`` (per-pixel noise around a
    random colour).
    """
    if kind not in PROCEDURAL_TEXTURES:
        msg = f"Unknown texture kind {kind!r}; valid kinds: {', '.join(PROCEDURAL_TEXTURES)}"
        raise SynthesisError(msg)
    short = min(height, width)
    colours = _random_colours(generator, 2, device)
    if kind in ("perlin", "blotches"):
        # Smooth textures: draw at a quarter of the size and upsample (same look, ~16x less work).
        small_h, small_w = max(8, -(-height // 4)), max(8, -(-width // 4))
        small = _smooth_texture(kind, small_h, small_w, colours, generator, device)
        upsampled = F.interpolate(small[None], size=(height, width), mode="bilinear", align_corners=False)
        return upsampled[0].clamp(0, 1)
    if kind in ("stripes", "checker", "gradient"):
        along, across = _rotated_coords(height, width, _uniform(generator, -90, 90), device)
        period = short * _uniform(generator, 0.04, 0.3)
        if kind == "stripes":
            wave = 0.5 + 0.5 * torch.sin(2 * math.pi * across / period + _uniform(generator, 0, 2 * math.pi))
            if _uniform(generator, 0, 1) < 0.5:
                wave = (wave > 0.5).float()
            return _mix(colours[0], colours[1], wave)
        if kind == "checker":
            cells = torch.floor(along / period) + torch.floor(across / period)
            return _mix(colours[0], colours[1], torch.remainder(cells, 2))
        ramp = (across - across.min()) / (across.max() - across.min()).clamp_min(1e-6)
        return _mix(colours[0], colours[1], ramp)
    # speckle
    amplitude = _uniform(generator, 0.1, 0.5)
    noise = torch.rand(3, height, width, generator=generator).to(device) - 0.5
    return (colours[0][:, None, None] + amplitude * noise).clamp(0, 1)


def _smooth_texture(
    kind: str,
    height: int,
    width: int,
    colours: Tensor,
    generator: torch.Generator,
    device: torch.device | str | None,
) -> Tensor:
    if kind == "perlin":
        res = 2 ** _randint(generator, 0, 2)
        noise = perlin_noise(
            height,
            width,
            (res, res),
            generator=generator,
            device=device,
            angle=_uniform(generator, -90, 90),
            octaves=3,
        )
        weight = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-6)
        return _mix(colours[0], colours[1], weight)
    # blotches: soft random-colour blobs over a base colour
    short = min(height, width)
    texture = colours[0][:, None, None].expand(3, height, width).clone()
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    num_blobs = _randint(generator, 3, 12)
    centres = torch.rand(num_blobs, 2, generator=generator) * torch.tensor([height, width])
    radii = short * (0.03 + 0.15 * torch.rand(num_blobs, generator=generator))
    blob_colours = _random_colours(generator, num_blobs, device)
    for (cy, cx), radius, colour in zip(centres.tolist(), radii.tolist(), blob_colours, strict=True):
        weight = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2))
        texture = texture * (1 - weight) + colour[:, None, None] * weight
    return texture


def read_image_tensor(path: str | Path) -> Tensor:
    """Read an image file as a ``(3, H, W)`` float tensor in [0, 1] (RGB; grey images are repeated)."""
    from onenip.data.manifest import read_image  # raises ImageReadError naming the file

    array = np.asarray(read_image(path), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _texture_to_uint8(source: TextureSource, index: int) -> Tensor:
    """Store texture images as CPU uint8 ``(3, h, w)`` (a quarter of the float memory)."""
    if isinstance(source, (str, Path)):
        return (read_image_tensor(source) * 255).round().to(torch.uint8)
    if not isinstance(source, Tensor):
        msg = f"texture_images[{index}] must be a tensor or a path, got {type(source).__name__}"
        raise SynthesisError(msg)
    tensor = source.detach().cpu()
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3) or min(tensor.shape[1:]) < 2:
        msg = f"texture_images[{index}] must have shape (3, H, W) or (1, H, W), got {tuple(tensor.shape)}"
        raise SynthesisError(msg)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point() or tensor.min() < 0 or tensor.max() > 1:
        msg = f"texture_images[{index}] must be uint8 or float in [0, 1] (dtype {tensor.dtype})"
        raise SynthesisError(msg)
    return (tensor * 255).round().to(torch.uint8)


def _crop_resize(
    source: Tensor, height: int, width: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """A random crop (25-100 % of the area, random flips) of a uint8 texture resized to ``(H, W)``."""
    src_h, src_w = source.shape[1:]
    scale = math.sqrt(_uniform(generator, 0.25, 1.0))
    crop_h, crop_w = max(2, round(src_h * scale)), max(2, round(src_w * scale))
    top, left = _randint(generator, 0, src_h - crop_h), _randint(generator, 0, src_w - crop_w)
    crop = source[:, top : top + crop_h, left : left + crop_w].to(device).float() / 255.0
    if _uniform(generator, 0, 1) < 0.5:
        crop = crop.flip(-1)
    if _uniform(generator, 0, 1) < 0.5:
        crop = crop.flip(-2)
    resized = F.interpolate(
        crop[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Foreground


def _box_sum(values: Tensor, kernel: int) -> Tensor:
    """Sum over a ``kernel`` squared (odd) window with zero padding, from running sums.

    Cost does not grow with the kernel, and on CPU it is several times faster than ``max_pool2d``.
    """
    radius = kernel // 2
    out = F.pad(values, (radius + 1, radius)).cumsum(1)
    out = out[:, kernel:] - out[:, :-kernel]
    out = F.pad(out, (0, 0, radius + 1, radius)).cumsum(0)
    return out[kernel:] - out[:-kernel]


def _dilate(mask: Tensor, kernel: int) -> Tensor:
    """Binary dilation of a ``(H, W)`` mask by a ``kernel`` squared square."""
    return _box_sum(mask.float(), kernel) > 0.5


def _erode(mask: Tensor, kernel: int) -> Tensor:
    return ~_dilate(~mask, kernel)


def _otsu_threshold(values: Tensor, bins: int = 256) -> tuple[float, float]:
    """Otsu's threshold of a 1-D float tensor and its separability in [0, 1].

    Separability is the between-class variance at the threshold over the total variance: near 1
    for two well-separated modes (object on a plain background), about 0.6-0.75 for one broad mode
    (a texture), where the "threshold" only splits noise.
    """
    low, high = values.min().item(), values.max().item()
    if high - low < 1e-8:
        return high, 0.0
    hist = torch.histc(values, bins=bins, min=low, max=high).double()
    width = (high - low) / bins
    centres = low + (torch.arange(bins, device=values.device, dtype=torch.float64) + 0.5) * width
    weight0 = torch.cumsum(hist, 0) / hist.sum()
    weight1 = 1 - weight0
    cum_mass = torch.cumsum(hist * centres, 0) / hist.sum()
    mean0 = cum_mass / weight0.clamp_min(1e-12)
    mean1 = (cum_mass[-1] - cum_mass) / weight1.clamp_min(1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    best = int(torch.argmax(between).item())
    total_var = (hist / hist.sum() * (centres - cum_mass[-1]) ** 2).sum().clamp_min(1e-12)
    return low + (best + 1) * width, float((between[best] / total_var).item())


def estimate_foreground(
    image: Tensor, *, min_contrast: float = 0.04, min_separability: float = 0.8, min_fraction: float = 0.005
) -> Tensor:
    """Guess the object of an object-category image as a ``(1, H, W)`` bool mask.

    Rule: the background colour is the per-channel median of a thin border band; each pixel's
    distance to it (max over channels, 5x5-smoothed) is split with Otsu's threshold, then cleaned by
    an opening, a closing and hole filling. When there is no clear object the whole image is
    returned, so restricting to it never makes synthesis impossible: the picture is flat (distance
    below ``min_contrast``), the distances are not bimodal (Otsu separability below
    ``min_separability``; MVTec bottle scores 0.95, the magnetic_tile and kolektor textures 0.57-0.70),
    the "object" covers most of the border, or it is under ``min_fraction`` of the image.
    """
    _check_image(image)
    _, height, width = image.shape
    short = min(height, width)
    band = max(1, round(0.03 * short))
    border = torch.zeros(height, width, dtype=torch.bool, device=image.device)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    background = image[:, border].median(dim=1).values
    distance = (image - background[:, None, None]).abs().amax(0)
    # 5x5 mean (border windows averaged over the pixels they hold) so single noisy pixels don't count.
    distance = _box_sum(distance, 5) / _box_sum(torch.ones_like(distance), 5)
    whole = torch.ones(1, height, width, dtype=torch.bool, device=image.device)
    if distance.max().item() < min_contrast:
        return whole
    threshold, separability = _otsu_threshold(distance.flatten())
    if separability < min_separability:
        return whole
    foreground = distance > threshold
    small, large = max(3, (short // 100) | 1), max(3, (short // 30) | 1)
    foreground = _dilate(_erode(foreground, small), small)  # opening: drop specks
    foreground = _erode(_dilate(foreground, large), large)  # closing: bridge thin gaps
    # Hole filling on the CPU: a few milliseconds, and scipy does it exactly.
    filled = ndimage.binary_fill_holes(foreground.cpu().numpy())
    foreground = torch.from_numpy(filled).to(image.device)
    if foreground[border].float().mean().item() > 0.5 or foreground.float().mean().item() < min_fraction:
        return whole
    return foreground[None]


# --------------------------------------------------------------------------------------------
# Synthesizer


def _check_image(image: Tensor) -> None:
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


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        msg = f"{name} must be a (min, max) pair with {low} <= min <= max <= {high}, got {value}"
        raise SynthesisError(msg)
    return (float(value[0]), float(value[1]))


class AnomalySynthesizer:
    """Make a synthetic anomaly on a ``(3, H, W)`` float image in [0, 1].

    A transform-like callable, modelled on anomalib's ``PerlinAnomalyGenerator``: randomness comes
    only from the ``torch.Generator`` (or int seed) passed in, or from the synthesizer's own
    generator seeded by ``seed``; computation follows the image's device.

    Args:
        methods: subset of ``METHODS``.
        probabilities: relative weight of each method (default: equal).
        anomaly_probability: chance that a sample is made anomalous; otherwise it is returned
            unchanged with an empty mask and ``is_anomalous=False``.
        perlin_threshold: mask = noise > threshold (noise is about [-1, 1]; DRAEM uses 0.5).
        min_scale_exp, max_scale_exp: noise cells along each axis are ``2^a`` with ``a`` uniform in
            this integer range (DRAEM: 2^0..2^5), capped so a cell is at least ``MIN_PERLIN_CELL_PX``.
        perlin_rotation: rotation of the noise in degrees (DRAEM: -90..90).
        perlin_octaves: fractal octaves of the mask noise (DRAEM: 1).
        texture_opacity: weight of the texture inside the mask (DRAEM's ``1 - beta``, 0.2..1.0).
        texture_images: images of *other* categories used as textures (tensors or paths; read once).
        texture_image_probability: chance of an image texture when ``texture_images`` is given.
        texture_jitter: colour-jitter strength applied to every texture.
        patch_area: CutPaste patch area as a fraction of the image (paper: 0.02..0.15).
        patch_aspect: CutPaste patch height/width, log-uniform (paper: 0.3..3.3).
        scar_width, scar_length: scar size as fractions of the shorter image side (2..16 px wide and
            10..25 % long at 256 px; the paper's scars are 2..16 x 10..25 px).
        scar_rotation: scar rotation in degrees. The paper uses -45..45 on a vertical scar; real
            scratches run in every direction, so the default covers -90..90.
        colour_jitter: CutPaste brightness/contrast/saturation jitter (OneNIP reference: 0.4).
        colour_jitter_hue: CutPaste hue jitter in turns (OneNIP reference: 0.1).
        crack_width: crack width in pixels (1-4); crack_length: its length as a fraction of the
            shorter image side.
        brightness_change: relative intensity change inside a ``brightness`` region (darker or brighter).
        foreground: ``"none"``, ``"auto"`` (``estimate_foreground``) or a callable mapping a
            ``(3, H, W)`` image to a ``(H, W)`` / ``(1, H, W)`` mask; anomalies stay inside it.
        min_mask_pixels, min_mask_fraction: a mask needs at least ``max(min_mask_pixels,
            min_mask_fraction * H * W)`` pixels (capped at the foreground area).
        min_change: mean absolute change inside the mask (over channels, in [0, 1] units) a
            candidate needs; rejects invisible anomalies such as background pasted on background.
        max_tries: candidates tried with the chosen method before the fallback (a small texture
            patch around a random foreground pixel, which is never empty).
        seed: seed of the generator used when a call passes none (None: non-deterministic).

    Example:
        >>> synth = AnomalySynthesizer(methods=("perlin",))
        >>> result = synth(torch.rand(3, 64, 64), torch.Generator().manual_seed(0))
        >>> bool(result.is_anomalous), result.mask.shape
        (True, torch.Size([1, 64, 64]))
    """

    def __init__(
        self,
        methods: Sequence[str] = METHODS,
        probabilities: Sequence[float] | None = None,
        *,
        anomaly_probability: float = 1.0,
        perlin_threshold: float = 0.5,
        min_scale_exp: int = 1,
        max_scale_exp: int = 5,
        perlin_rotation: tuple[float, float] = (-90.0, 90.0),
        perlin_octaves: int = 1,
        texture_opacity: tuple[float, float] = (0.2, 1.0),
        texture_images: Sequence[TextureSource] | None = None,
        texture_image_probability: float = 0.5,
        texture_jitter: float = 0.3,
        patch_area: tuple[float, float] = (0.02, 0.15),
        patch_aspect: tuple[float, float] = (0.3, 3.3),
        scar_width: tuple[float, float] = (2 / 256, 16 / 256),
        scar_length: tuple[float, float] = (0.10, 0.25),
        scar_rotation: tuple[float, float] = (-90.0, 90.0),
        colour_jitter: float = 0.4,
        colour_jitter_hue: float = 0.1,
        crack_width: tuple[float, float] = (1.0, 4.0),
        crack_length: tuple[float, float] = (0.15, 0.6),
        brightness_change: tuple[float, float] = (0.1, 0.35),
        foreground: Literal["none", "auto"] | ForegroundFn = "none",
        min_mask_pixels: int = 16,
        min_mask_fraction: float = 0.001,
        min_change: float = 0.01,
        max_tries: int = 10,
        seed: int | None = None,
    ) -> None:
        self.methods = tuple(methods)
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            msg = f"methods must be distinct entries of {ALL_METHODS}, got {self.methods}"
            raise SynthesisError(msg)
        if probabilities is None:
            probabilities = [1.0] * len(self.methods)
        probabilities = tuple(float(p) for p in probabilities)
        if len(probabilities) != len(self.methods) or min(probabilities) < 0 or sum(probabilities) <= 0:
            msg = (
                f"probabilities must give one non-negative weight per method {self.methods} with a positive "
                f"sum, got {probabilities}"
            )
            raise SynthesisError(msg)
        self.probabilities = probabilities
        self._weights = torch.tensor(probabilities, dtype=torch.float64)
        if not 0.0 <= anomaly_probability <= 1.0:
            msg = f"anomaly_probability must be in [0, 1], got {anomaly_probability}"
            raise SynthesisError(msg)
        self.anomaly_probability = float(anomaly_probability)
        if not -1.0 < perlin_threshold < 1.0:
            msg = f"perlin_threshold must be in (-1, 1) (noise range), got {perlin_threshold}"
            raise SynthesisError(msg)
        self.perlin_threshold = float(perlin_threshold)
        if not 0 <= min_scale_exp <= max_scale_exp <= 8:
            msg = f"Need 0 <= min_scale_exp <= max_scale_exp <= 8, got {min_scale_exp} and {max_scale_exp}"
            raise SynthesisError(msg)
        self.min_scale_exp, self.max_scale_exp = int(min_scale_exp), int(max_scale_exp)
        self.perlin_rotation = _check_range("perlin_rotation", perlin_rotation, -360, 360)
        if perlin_octaves < 1:
            msg = f"perlin_octaves must be >= 1, got {perlin_octaves}"
            raise SynthesisError(msg)
        self.perlin_octaves = int(perlin_octaves)
        self.texture_opacity = _check_range("texture_opacity", texture_opacity, 0, 1)
        if self.texture_opacity[1] <= 0:
            msg = f"texture_opacity must allow a positive opacity, got {texture_opacity}"
            raise SynthesisError(msg)
        self._texture_images = [_texture_to_uint8(src, i) for i, src in enumerate(texture_images or ())]
        if not 0.0 <= texture_image_probability <= 1.0:
            msg = f"texture_image_probability must be in [0, 1], got {texture_image_probability}"
            raise SynthesisError(msg)
        self.texture_image_probability = float(texture_image_probability)
        if texture_jitter < 0 or colour_jitter < 0:
            msg = (
                f"Jitter strengths must be >= 0, got texture_jitter={texture_jitter}, "
                f"colour_jitter={colour_jitter}"
            )
            raise SynthesisError(msg)
        self.texture_jitter, self.colour_jitter = float(texture_jitter), float(colour_jitter)
        self.colour_jitter_hue = float(colour_jitter_hue)
        self.crack_width = _check_range("crack_width", crack_width, 0.5, 64)
        self.crack_length = _check_range("crack_length", crack_length, 0, 1)
        self.brightness_change = _check_range("brightness_change", brightness_change, 0, 1)
        self.patch_area = _check_range("patch_area", patch_area, 1e-6, 1)
        self.patch_aspect = _check_range("patch_aspect", patch_aspect, 1e-3, 1e3)
        self.scar_width = _check_range("scar_width", scar_width, 0, 1)
        self.scar_length = _check_range("scar_length", scar_length, 0, 1)
        self.scar_rotation = _check_range("scar_rotation", scar_rotation, -360, 360)
        if not (callable(foreground) or foreground in FOREGROUND_MODES):
            msg = f"foreground must be one of {FOREGROUND_MODES} or a callable, got {foreground!r}"
            raise SynthesisError(msg)
        self.foreground = foreground
        if min_mask_pixels < 1 or not 0.0 <= min_mask_fraction < 1.0:
            msg = (
                "Need min_mask_pixels >= 1 and 0 <= min_mask_fraction < 1, "
                f"got {min_mask_pixels} and {min_mask_fraction}"
            )
            raise SynthesisError(msg)
        self.min_mask_pixels, self.min_mask_fraction = int(min_mask_pixels), float(min_mask_fraction)
        if not 0.0 <= min_change < 1.0:
            msg = f"min_change must be in [0, 1), got {min_change}"
            raise SynthesisError(msg)
        self.min_change = float(min_change)
        if max_tries < 1:
            msg = f"max_tries must be >= 1, got {max_tries}"
            raise SynthesisError(msg)
        self.max_tries = int(max_tries)
        self.seed = seed
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def __repr__(self) -> str:
        fields = (
            "methods",
            "probabilities",
            "anomaly_probability",
            "perlin_threshold",
            "min_scale_exp",
            "max_scale_exp",
            "foreground",
            "min_mask_pixels",
            "min_mask_fraction",
            "min_change",
            "max_tries",
        )
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"{type(self).__name__}({body}, texture_images={len(self._texture_images)})"

    # ---------------------------------------------------------------- public API

    def __call__(
        self,
        image: Tensor,
        generator: torch.Generator | int | None = None,
        *,
        foreground_mask: Tensor | None = None,
    ) -> SynthesisResult:
        """Synthesize one anomaly on ``(3, H, W)`` (a ``(B, 3, H, W)`` batch goes to ``synthesize_batch``).

        Args:
            image: float in [0, 1], any device.
            generator: CPU ``torch.Generator`` or int seed; None uses the synthesizer's own generator.
            foreground_mask: ``(H, W)`` or ``(1, H, W)`` mask overriding the ``foreground`` setting
                (e.g. computed once per training image).
        """
        if isinstance(image, Tensor) and image.ndim == 4:
            return self.synthesize_batch(image, generator, foreground_masks=foreground_mask)
        return self._synthesize(image, _as_generator(generator, self._generator), foreground_mask)

    def synthesize_batch(
        self,
        images: Tensor,
        generator: torch.Generator | int | None = None,
        *,
        foreground_masks: Tensor | None = None,
    ) -> SynthesisResult:
        """``(B, 3, H, W)`` -> batched ``SynthesisResult``, images drawn in order from ``generator``."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            msg = f"Expected a batch of shape (B, 3, H, W), got {shape}"
            raise SynthesisError(msg)
        gen = _as_generator(generator, self._generator)
        results = [
            self._synthesize(image, gen, None if foreground_masks is None else foreground_masks[i])
            for i, image in enumerate(images)
        ]
        return SynthesisResult(
            image=torch.stack([r.image for r in results]),
            mask=torch.stack([r.mask for r in results]),
            is_anomalous=torch.stack([r.is_anomalous for r in results]),
            method=tuple(str(r.method) for r in results),
        )

    # ---------------------------------------------------------------- internals

    def _synthesize(
        self, image: Tensor, generator: torch.Generator, foreground_mask: Tensor | None
    ) -> SynthesisResult:
        _check_image(image)
        if image.min().item() < 0 or image.max().item() > 1:
            msg = f"Image values must lie in [0, 1], got [{image.min().item():.3g}, {image.max().item():.3g}]"
            raise SynthesisError(msg)
        _, height, width = image.shape
        if self.anomaly_probability < 1.0 and _uniform(generator, 0, 1) >= self.anomaly_probability:
            empty = torch.zeros(height, width, dtype=torch.bool, device=image.device)
            return self._result(image.clone(), empty, "none")
        foreground = self._foreground(image, foreground_mask)
        foreground_area = int(foreground.sum().item()) if foreground is not None else height * width
        required = max(self.min_mask_pixels, math.ceil(self.min_mask_fraction * height * width))
        required = min(required, foreground_area)
        method = self.methods[_choice(generator, self._weights)]
        grey = is_grey(image)
        for _ in range(self.max_tries):
            if method == "perlin":
                mask, out = self._perlin(image, generator, foreground, grey)
            elif method in ("cutpaste_patch", "cutpaste_scar"):
                mask, out = self._cutpaste(image, generator, foreground, scar=method == "cutpaste_scar", grey=grey)
            else:
                mask, out = getattr(self, f"_{method}")(image, generator, foreground)
            if int(mask.sum().item()) >= required and self._change(image, out, mask) >= self.min_change:
                return self._result(out, mask, method)
        mask, out = self._fallback(image, generator, foreground, required, grey)
        return self._result(out, mask, "fallback")

    @staticmethod
    def _result(image: Tensor, mask: Tensor, method: str) -> SynthesisResult:
        is_anomalous = torch.tensor(method != "none", device=image.device)
        return SynthesisResult(image, mask[None].to(image.dtype), is_anomalous, method)

    @staticmethod
    def _change(image: Tensor, out: Tensor, mask: Tensor) -> float:
        area = mask.sum()
        if area.item() == 0:
            return 0.0
        return ((out - image).abs().mean(0) * mask).sum().item() / area.item()

    def _foreground(self, image: Tensor, foreground_mask: Tensor | None) -> Tensor | None:
        """``(H, W)`` bool foreground on the image's device, or None for "everywhere"."""
        if foreground_mask is None:
            if self.foreground == "none":
                return None
            if self.foreground == "auto":
                return estimate_foreground(image)[0]
            foreground_mask = self.foreground(image)  # type: ignore[operator]
            source = "foreground callable"
        else:
            source = "foreground_mask"
        mask = foreground_mask
        if not isinstance(mask, Tensor) or mask.shape[-2:] != image.shape[1:] or mask.ndim not in (2, 3):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            msg = (
                f"{source} must be a (H, W) or (1, H, W) tensor matching image "
                f"{tuple(image.shape[1:])}, got {shape}"
            )
            raise SynthesisError(msg)
        mask = mask.reshape(image.shape[1:]).to(image.device)
        mask = mask > 0.5 if mask.dtype != torch.bool else mask
        if not mask.any():
            msg = f"{source} is empty: an anomaly restricted to it cannot be placed"
            raise SynthesisError(msg)
        return mask

    def _texture(
        self, height: int, width: int, generator: torch.Generator, device: torch.device, grey: bool = False,
    ) -> Tensor:
        if self._texture_images and _uniform(generator, 0, 1) < self.texture_image_probability:
            source = self._texture_images[_randint(generator, 0, len(self._texture_images) - 1)]
            texture = _crop_resize(source, height, width, generator, device)
        else:
            kind = PROCEDURAL_TEXTURES[_randint(generator, 0, len(PROCEDURAL_TEXTURES) - 1)]
            texture = procedural_texture(kind, height, width, generator=generator, device=device)
        return colour_jitter(texture, self.texture_jitter, generator, grey=grey)

    def _perlin(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None, grey: bool = False,
    ) -> tuple[Tensor, Tensor]:
        _, height, width = image.shape
        scale_y = 2 ** _randint(generator, self.min_scale_exp, self.max_scale_exp)
        scale_x = 2 ** _randint(generator, self.min_scale_exp, self.max_scale_exp)
        res_y = min(scale_y, max(1, height // MIN_PERLIN_CELL_PX))
        res_x = min(scale_x, max(1, width // MIN_PERLIN_CELL_PX))
        angle = _uniform(generator, *self.perlin_rotation)
        noise = perlin_noise(
            height,
            width,
            (res_y, res_x),
            generator=generator,
            device=image.device,
            angle=angle,
            octaves=self.perlin_octaves,
        )
        mask = noise > self.perlin_threshold
        if foreground is not None:
            mask &= foreground
        if not mask.any():  # skip the texture work; the caller retries
            return mask, image
        texture = self._texture(height, width, generator, image.device, grey).to(image.dtype)
        opacity = _uniform(generator, *self.texture_opacity)
        blended = (image * (1 - opacity) + texture * opacity).clamp(0, 1)
        # where() keeps pixels outside the mask bitwise identical to the input.
        return mask, torch.where(mask, blended, image)

    def _cutpaste(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None, *, scar: bool, grey: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Cut an axis-aligned ``(h, w)`` rectangle, jitter it, paste it rotated by ``angle`` elsewhere."""
        _, height, width = image.shape
        short = min(height, width)
        if scar:
            patch_w = max(1, round(_uniform(generator, *self.scar_width) * short))
            patch_h = max(patch_w + 1, round(_uniform(generator, *self.scar_length) * short))
            angle = _uniform(generator, *self.scar_rotation)
        else:
            area = _uniform(generator, *self.patch_area) * height * width
            log_low, log_high = math.log(self.patch_aspect[0]), math.log(self.patch_aspect[1])
            aspect = math.exp(_uniform(generator, log_low, log_high))
            patch_h = max(1, round(math.sqrt(area * aspect)))
            patch_w = max(1, round(math.sqrt(area / aspect)))
            angle = 0.0  # CutPaste pastes patches unrotated
        patch_h, patch_w = min(patch_h, height), min(patch_w, width)
        src_top = _randint(generator, 0, height - patch_h)
        src_left = _randint(generator, 0, width - patch_w)
        patch = image[:, src_top : src_top + patch_h, src_left : src_left + patch_w]
        patch = colour_jitter(patch, self.colour_jitter, generator, hue=self.colour_jitter_hue, grey=grey)

        theta = math.radians(angle)
        cos, sin = math.cos(theta), math.sin(theta)
        # Half extents of the rotated rectangle's bounding box keep the paste inside the image.
        half_y = min(height / 2, abs(patch_h / 2 * cos) + abs(patch_w / 2 * sin))
        half_x = min(width / 2, abs(patch_h / 2 * sin) + abs(patch_w / 2 * cos))
        if foreground is None:
            centre_y = _randint(generator, 0, height - 1) + 0.5
            centre_x = _randint(generator, 0, width - 1) + 0.5
        else:
            # Centre on a random foreground pixel so the paste lands on the object.
            candidates = foreground.nonzero()
            pick = candidates[_randint(generator, 0, len(candidates) - 1)]
            centre_y, centre_x = (pick.float() + 0.5).tolist()
        # Snap so an unrotated patch's top-left corner is an integer pixel (an exact copy).
        centre_y = min(max(centre_y, half_y), height - half_y) - patch_h / 2
        centre_x = min(max(centre_x, half_x), width - half_x) - patch_w / 2
        centre_y, centre_x = math.floor(centre_y) + patch_h / 2, math.floor(centre_x) + patch_w / 2

        ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None] + 0.5 - centre_y
        xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :] + 0.5 - centre_x
        # Target pixel -> patch coordinates (inverse rotation), then nearest patch pixel.
        patch_y = cos * ys + sin * xs + patch_h / 2
        patch_x = -sin * ys + cos * xs + patch_w / 2
        mask = (patch_y >= 0) & (patch_y < patch_h) & (patch_x >= 0) & (patch_x < patch_w)
        if foreground is not None:
            mask &= foreground
        index_y = patch_y.floor().long().clamp(0, patch_h - 1)
        index_x = patch_x.floor().long().clamp(0, patch_w - 1)
        pasted = patch[:, index_y, index_x]
        return mask, torch.where(mask, pasted, image)

    def _random_point(self, generator: torch.Generator, foreground: Tensor | None, height: int, width: int) -> tuple[float, float]:
        if foreground is None:
            return _uniform(generator, 0, height - 1), _uniform(generator, 0, width - 1)
        candidates = foreground.nonzero()
        y, x = candidates[_randint(generator, 0, len(candidates) - 1)].tolist()
        return float(y), float(x)

    def _crack(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """A thin curved line: a random walk whose heading drifts smoothly, thickened to 1-4 px."""
        _, height, width = image.shape
        short = min(height, width)
        length = max(8, round(_uniform(generator, *self.crack_length) * short))
        y, x = self._random_point(generator, foreground, height, width)
        heading = _uniform(generator, -math.pi, math.pi)
        turn = _uniform(generator, 0.02, 0.15)  # how wavy: radians of drift per pixel
        steps = torch.randn(length, generator=generator) * turn
        headings = heading + torch.cumsum(steps, 0)
        ys = y + torch.cumsum(torch.sin(headings), 0)
        xs = x + torch.cumsum(torch.cos(headings), 0)
        inside = (ys >= 0) & (ys <= height - 1) & (xs >= 0) & (xs <= width - 1)
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[ys[inside].round().long(), xs[inside].round().long()] = True
        line_width = max(1, round(_uniform(generator, *self.crack_width)))
        if line_width > 1:  # any width, odd or even: max-pool and crop back to the image
            pooled = F.max_pool2d(mask[None, None].float(), line_width, stride=1, padding=line_width // 2)
            mask = pooled[0, 0, :height, :width] > 0.5
        mask = mask.to(image.device)
        if foreground is not None:
            mask &= foreground
        if not mask.any():
            return mask, image
        strength = _uniform(generator, 0.3, 0.9)
        local = image.mean(0, keepdim=True)
        target = local * 0.15 if _uniform(generator, 0, 1) < 0.7 else (local + 0.5).clamp(max=1.0)  # mostly dark
        cracked = (image * (1 - strength) + target.expand_as(image) * strength).clamp(0, 1)
        return mask, torch.where(mask, cracked, image)

    def _brightness(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """A low-frequency region whose intensity is scaled (same hue): uneven lighting or wear."""
        _, height, width = image.shape
        res = 2 ** _randint(generator, 0, 2)
        noise = perlin_noise(
            height, width, (res, res), generator=generator, device=image.device,
            angle=_uniform(generator, -90, 90), octaves=2,
        )
        threshold = _uniform(generator, 0.1, 0.5)
        weight = ((noise - threshold) / 0.25).clamp(0, 1)
        weight = torch.where(weight >= 0.2, weight, torch.zeros_like(weight))
        mask = weight > 0
        if foreground is not None:
            mask &= foreground
            weight = weight * mask
        if not mask.any():
            return mask, image
        change = _uniform(generator, *self.brightness_change)
        factor = 1 - change if _uniform(generator, 0, 1) < 0.5 else 1 + change
        out = (image * (1 + (factor - 1) * weight)).clamp(0, 1)
        return mask, torch.where(mask, out, image)

    def _blob(self, generator: torch.Generator, foreground: Tensor | None, height: int, width: int, device: torch.device) -> tuple[Tensor, float, float, float]:
        """A soft elliptical weight (H, W) in [0, 1] around a random (foreground) point, and its centre and radius."""
        short = min(height, width)
        cy, cx = self._random_point(generator, foreground, height, width)
        radius = _uniform(generator, 0.05, 0.15) * short
        aspect = math.exp(_uniform(generator, -0.7, 0.7))
        angle = _uniform(generator, -math.pi, math.pi)
        ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] - cy
        xs = torch.arange(width, device=device, dtype=torch.float32)[None, :] - cx
        along = (math.cos(angle) * ys + math.sin(angle) * xs) / (radius * aspect)
        across = (-math.sin(angle) * ys + math.cos(angle) * xs) / (radius / aspect)
        distance = torch.sqrt(along**2 + across**2)
        return (1 - distance).clamp(0, 1), cy, cx, radius

    def _warp(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Validation only: a local swirl-and-bulge deformation (a dent or a bent part)."""
        _, height, width = image.shape
        weight, cy, cx, radius = self._blob(generator, foreground, height, width, image.device)
        ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None] - cy
        xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :] - cx
        twist = _uniform(generator, 0.6, 1.5) * (1 if _uniform(generator, 0, 1) < 0.5 else -1)
        bulge = _uniform(generator, -0.5, 0.5)
        smooth = weight**2 * (3 - 2 * weight)
        angle = twist * smooth
        scale = 1 - bulge * smooth
        src_y = cy + scale * (torch.cos(angle) * ys - torch.sin(angle) * xs)
        src_x = cx + scale * (torch.sin(angle) * ys + torch.cos(angle) * xs)
        grid = torch.stack((src_x / (width - 1) * 2 - 1, src_y / (height - 1) * 2 - 1), dim=-1)[None]
        warped = F.grid_sample(image[None], grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)[0]
        moved = torch.sqrt((src_y - cy - ys) ** 2 + (src_x - cx - xs) ** 2)
        mask = (moved > 0.75) & ((warped - image).abs().amax(0) > 0.02)
        if foreground is not None:
            mask &= foreground
        return mask, torch.where(mask, warped, image)

    def _smudge(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Validation only: a blurred, slightly darkened or tinted stain (contamination, residue)."""
        _, height, width = image.shape
        weight, _, _, radius = self._blob(generator, foreground, height, width, image.device)
        sigma = max(1.0, _uniform(generator, 0.15, 0.4) * radius)
        from onenip.models.onenip import gaussian_smooth  # one separable blur for the whole project

        blurred = gaussian_smooth(image[:, None], sigma)[:, 0]
        tint = torch.rand(3, generator=generator).to(image.device)
        if is_grey(image):
            tint = tint.mean().expand(3)
        darker = _uniform(generator, 0, 1) < 0.6
        level = _uniform(generator, 0.45, 0.8) if darker else _uniform(generator, 1.2, 1.6)
        stain = blurred * level + tint[:, None, None] * _uniform(generator, 0.0, 0.15)
        alpha = (weight * _uniform(generator, 1.5, 3.0)).clamp(0, 1)
        out = (image * (1 - alpha) + stain.clamp(0, 1) * alpha).clamp(0, 1)
        mask = (alpha > 0.15) & ((out - image).abs().amax(0) > 0.02)
        if foreground is not None:
            mask &= foreground
        return mask, torch.where(mask, out, image)

    def _spots(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Validation only: 1-6 small round pits or specks (2-8 px radius), dark or bright."""
        _, height, width = image.shape
        out = image.clone()
        mask = torch.zeros(height, width, dtype=torch.bool, device=image.device)
        ys = torch.arange(height, device=image.device, dtype=torch.float32)[:, None]
        xs = torch.arange(width, device=image.device, dtype=torch.float32)[None, :]
        cy0, cx0 = self._random_point(generator, foreground, height, width)
        spread = _uniform(generator, 0.02, 0.12) * min(height, width)
        dark = _uniform(generator, 0, 1) < 0.7
        for _ in range(_randint(generator, 1, 6)):
            cy = cy0 + spread * torch.randn((), generator=generator).item()
            cx = cx0 + spread * torch.randn((), generator=generator).item()
            radius = _uniform(generator, 2.0, 8.0) * min(height, width) / 256
            distance = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) / max(radius, 1.0)
            alpha = (1.2 - distance).clamp(0, 1) * _uniform(generator, 0.5, 0.95)
            target = out * 0.1 if dark else (out + 0.6).clamp(max=1.0)
            out = out * (1 - alpha) + target * alpha
            mask |= alpha > 0.1
        if foreground is not None:
            mask &= foreground
        return mask, torch.where(mask, out.clamp(0, 1), image)

    def _fallback(
        self, image: Tensor, generator: torch.Generator, foreground: Tensor | None, required: int, grey: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """A square texture patch around a random foreground pixel; always contains that pixel.

        The square grows until its foreground part reaches ``required`` pixels (``required`` never
        exceeds the foreground area, so this ends).
        """
        _, height, width = image.shape
        if foreground is None:
            allowed = torch.ones(height, width, dtype=torch.bool, device=image.device)
        else:
            allowed = foreground
        candidates = allowed.nonzero()
        centre_y, centre_x = candidates[_randint(generator, 0, len(candidates) - 1)].tolist()
        side = max(2, math.ceil(math.sqrt(max(required, 0.01 * len(candidates)))))
        while True:
            top, left = max(0, centre_y - side // 2), max(0, centre_x - side // 2)
            mask = torch.zeros_like(allowed)
            mask[top : top + side, left : left + side] = True
            mask &= allowed
            if int(mask.sum().item()) >= required or side >= 2 * max(height, width):
                break
            side = math.ceil(side * 1.5)
        texture = self._texture(height, width, generator, image.device, grey).to(image.dtype)
        out = torch.where(mask, texture, image)
        if self._change(image, out, mask) < self.min_change:
            out = torch.where(mask, 1 - image, image)  # texture matched the image: invert instead
        return mask, out


# --------------------------------------------------------------------------------------------
# Preview


def _to_pil(image: Tensor) -> Image.Image:
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _mask_overlay(image: Tensor, mask: Tensor) -> Tensor:
    """Synthesized image with the mask tinted red and its outline drawn in pure red."""
    m = mask[0].bool()
    red = torch.tensor([1.0, 0.0, 0.0], device=image.device)[:, None, None]
    tinted = torch.where(m, 0.5 * image + 0.5 * red, image)
    outline = m & ~_erode(m, 3)
    return torch.where(outline, red.expand_as(image), tinted)


def _fit_tile(picture: Image.Image, tile_size: int) -> Image.Image:
    """Resize keeping the aspect ratio, centred on a dark tile of ``tile_size`` squared."""
    scale = tile_size / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    tile = Image.new("RGB", (tile_size, tile_size), (32, 32, 32))
    offset = ((tile_size - size[0]) // 2, (tile_size - size[1]) // 2)
    tile.paste(picture.resize(size, Image.Resampling.BILINEAR), offset)
    return tile


PREVIEW_PAD = 4
PREVIEW_GROUP_GAP = 12
PREVIEW_CAPTION = 16


def preview_grid_size(num_images: int, columns: int, tile_size: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG ``make_preview_grid`` writes.

    Each source image is a group of three tiles (original | synthesized | mask overlay) under a
    caption line; groups fill ``columns`` per row.
    """
    columns = min(columns, num_images)
    rows = math.ceil(num_images / columns)
    group_w = 3 * tile_size + 2 * PREVIEW_PAD
    group_h = PREVIEW_CAPTION + tile_size
    width = 2 * PREVIEW_PAD + columns * group_w + (columns - 1) * PREVIEW_GROUP_GAP
    height = 2 * PREVIEW_PAD + rows * group_h + (rows - 1) * PREVIEW_GROUP_GAP
    return width, height


def make_preview_grid(
    images: Sequence[Tensor | str | Path],
    synthesizer: AnomalySynthesizer,
    seed: int,
    path: str | Path,
    *,
    columns: int = 2,
    tile_size: int = 192,
    foreground_masks: Sequence[Tensor | None] | None = None,
) -> Path:
    """Write a PNG showing, per source image, original | synthesized | mask in red; return its path.

    Args:
        images: ``(3, H, W)`` float tensors in [0, 1] or image paths (sizes may differ).
        synthesizer: applied to each image in order with one generator seeded by ``seed``.
        path: output PNG (parent folders are created).
        columns: source images per row.
        tile_size: each tile is ``tile_size`` squared; images keep their aspect ratio.
        foreground_masks: per image, where anomalies may go (e.g. the letterbox content), or None.
    """
    if not images:
        msg = "make_preview_grid needs at least one image"
        raise SynthesisError(msg)
    if columns < 1 or tile_size < 16:
        msg = f"Need columns >= 1 and tile_size >= 16, got columns={columns}, tile_size={tile_size}"
        raise SynthesisError(msg)
    generator = torch.Generator().manual_seed(seed)
    columns = min(columns, len(images))
    canvas = Image.new("RGB", preview_grid_size(len(images), columns, tile_size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    group_w = 3 * tile_size + 2 * PREVIEW_PAD + PREVIEW_GROUP_GAP
    group_h = PREVIEW_CAPTION + tile_size + PREVIEW_GROUP_GAP
    for index, source in enumerate(images):
        image = read_image_tensor(source) if isinstance(source, (str, Path)) else source
        foreground = None if foreground_masks is None else foreground_masks[index]
        result = synthesizer(image, generator, foreground_mask=foreground)
        left = PREVIEW_PAD + (index % columns) * group_w
        top = PREVIEW_PAD + (index // columns) * group_h
        label = Path(source).name if isinstance(source, (str, Path)) else f"#{index}"
        area = int(result.mask.sum().item())
        draw.text((left, top + 2), f"{label}: {result.method} ({area} px)", fill=(0, 0, 0), font=font)
        tiles = (image, result.image, _mask_overlay(result.image, result.mask))
        for k, tile in enumerate(tiles):
            position = (left + k * (tile_size + PREVIEW_PAD), top + PREVIEW_CAPTION)
            canvas.paste(_fit_tile(_to_pil(tile), tile_size), position)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
