"""Preview grids: a PNG of original | synthesized | mask per image, for a person to inspect (``onenip synthesize``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from onenip.synthesis.checks import SynthesisError
from onenip.synthesis.foreground import erode
from onenip.synthesis.synthesizer import AnomalySynthesizer
from onenip.synthesis.textures import read_image_tensor


def _to_pil(image: Tensor) -> Image.Image:
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _mask_overlay(image: Tensor, mask: Tensor) -> Tensor:
    """Synthesized image with the mask tinted red and its outline drawn in pure red."""
    m = mask[0].bool()
    red = torch.tensor([1.0, 0.0, 0.0], device=image.device)[:, None, None]
    tinted = torch.where(m, 0.5 * image + 0.5 * red, image)
    outline = m & ~erode(m, 3)
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
