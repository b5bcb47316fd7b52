"""Perlin (gradient) noise: the smooth random fields behind Perlin masks, textures and brightness regions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from onenip.synthesis.checks import SynthesisError

_SQRT2 = math.sqrt(2.0)


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
