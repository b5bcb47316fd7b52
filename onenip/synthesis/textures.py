"""Textures pasted or blended into anomalies: procedural ones (DTD is not available offline) and crops of
user-supplied images of other categories."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from onenip.synthesis.checks import SynthesisError
from onenip.synthesis.colour import colour_jitter
from onenip.synthesis.draws import randint, uniform
from onenip.synthesis.noise import perlin_noise

PROCEDURAL_TEXTURES: tuple[str, ...] = ("perlin", "stripes", "checker", "gradient", "blotches", "speckle")
TextureSource = Tensor | str | Path


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
        along, across = _rotated_coords(height, width, uniform(generator, -90, 90), device)
        period = short * uniform(generator, 0.04, 0.3)
        if kind == "stripes":
            wave = 0.5 + 0.5 * torch.sin(2 * math.pi * across / period + uniform(generator, 0, 2 * math.pi))
            if uniform(generator, 0, 1) < 0.5:
                wave = (wave > 0.5).float()
            return _mix(colours[0], colours[1], wave)
        if kind == "checker":
            cells = torch.floor(along / period) + torch.floor(across / period)
            return _mix(colours[0], colours[1], torch.remainder(cells, 2))
        ramp = (across - across.min()) / (across.max() - across.min()).clamp_min(1e-6)
        return _mix(colours[0], colours[1], ramp)
    # speckle
    amplitude = uniform(generator, 0.1, 0.5)
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
        res = 2 ** randint(generator, 0, 2)
        noise = perlin_noise(
            height,
            width,
            (res, res),
            generator=generator,
            device=device,
            angle=uniform(generator, -90, 90),
            octaves=3,
        )
        weight = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-6)
        return _mix(colours[0], colours[1], weight)
    # blotches: soft random-colour blobs over a base colour
    short = min(height, width)
    texture = colours[0][:, None, None].expand(3, height, width).clone()
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    num_blobs = randint(generator, 3, 12)
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


def texture_to_uint8(source: TextureSource, index: int) -> Tensor:
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
    scale = math.sqrt(uniform(generator, 0.25, 1.0))
    crop_h, crop_w = max(2, round(src_h * scale)), max(2, round(src_w * scale))
    top, left = randint(generator, 0, src_h - crop_h), randint(generator, 0, src_w - crop_w)
    crop = source[:, top : top + crop_h, left : left + crop_w].to(device).float() / 255.0
    if uniform(generator, 0, 1) < 0.5:
        crop = crop.flip(-1)
    if uniform(generator, 0, 1) < 0.5:
        crop = crop.flip(-2)
    resized = F.interpolate(
        crop[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].clamp(0, 1)


def random_texture(
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device,
    grey: bool = False,
    *,
    images: Sequence[Tensor],
    image_probability: float,
    jitter: float,
) -> Tensor:
    """A colour-jittered texture of ``(H, W)``: a crop of one of ``images`` (uint8, from ``texture_to_uint8``)
    with probability ``image_probability``, a procedural one otherwise."""
    if images and uniform(generator, 0, 1) < image_probability:
        source = images[randint(generator, 0, len(images) - 1)]
        texture = _crop_resize(source, height, width, generator, device)
    else:
        kind = PROCEDURAL_TEXTURES[randint(generator, 0, len(PROCEDURAL_TEXTURES) - 1)]
        texture = procedural_texture(kind, height, width, generator=generator, device=device)
    return colour_jitter(texture, jitter, generator, grey=grey)
