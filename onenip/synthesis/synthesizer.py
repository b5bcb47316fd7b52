"""``AnomalySynthesizer``: which method makes each anomaly, with which settings, and the checks every result
passes (mask size, visible change, foreground); ``METHODS``, ``VALIDATION_METHODS`` and ``ALL_METHODS``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from onenip.synthesis.brightness import brightness_anomaly
from onenip.synthesis.checks import SynthesisError, check_image, check_range
from onenip.synthesis.colour import is_grey
from onenip.synthesis.cracks import crack_anomaly
from onenip.synthesis.cutpaste import cutpaste_anomaly
from onenip.synthesis.draws import as_generator, choice, randint, uniform
from onenip.synthesis.foreground import FOREGROUND_MODES, ForegroundFn, estimate_foreground
from onenip.synthesis.perlin import perlin_anomaly
from onenip.synthesis.textures import TextureSource, random_texture, texture_to_uint8
from onenip.synthesis.validation_families import VALIDATION_ANOMALIES

METHODS: tuple[str, ...] = ("perlin", "cutpaste_patch", "cutpaste_scar", "crack", "brightness")
VALIDATION_METHODS: tuple[str, ...] = ("warp", "smudge", "spots")
ALL_METHODS: tuple[str, ...] = METHODS + VALIDATION_METHODS


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
        strength: each candidate is faded towards the normal image, ``image + s * (anomaly - image)``
            with ``s`` uniform in this range, before ``min_change`` is checked (the mask is kept: a faint
            defect is still a defect; the fallback patch is not faded). ``(1, 1)`` leaves anomalies at
            full strength and draws nothing.
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
        strength: tuple[float, float] = (1.0, 1.0),
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
        self.perlin_rotation = check_range("perlin_rotation", perlin_rotation, -360, 360)
        if perlin_octaves < 1:
            msg = f"perlin_octaves must be >= 1, got {perlin_octaves}"
            raise SynthesisError(msg)
        self.perlin_octaves = int(perlin_octaves)
        self.texture_opacity = check_range("texture_opacity", texture_opacity, 0, 1)
        if self.texture_opacity[1] <= 0:
            msg = f"texture_opacity must allow a positive opacity, got {texture_opacity}"
            raise SynthesisError(msg)
        self._texture_images = [texture_to_uint8(src, i) for i, src in enumerate(texture_images or ())]
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
        self.crack_width = check_range("crack_width", crack_width, 0.5, 64)
        self.crack_length = check_range("crack_length", crack_length, 0, 1)
        self.brightness_change = check_range("brightness_change", brightness_change, 0, 1)
        self.patch_area = check_range("patch_area", patch_area, 1e-6, 1)
        self.patch_aspect = check_range("patch_aspect", patch_aspect, 1e-3, 1e3)
        self.scar_width = check_range("scar_width", scar_width, 0, 1)
        self.scar_length = check_range("scar_length", scar_length, 0, 1)
        self.scar_rotation = check_range("scar_rotation", scar_rotation, -360, 360)
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
        self.strength = check_range("strength", strength, 0, 1)
        if self.strength[0] <= 0:
            msg = f"strength must be above 0 (0 leaves the image unchanged), got {strength}"
            raise SynthesisError(msg)
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
            "strength",
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
        return self._synthesize(image, as_generator(generator, self._generator), foreground_mask)

    def on_content(self, image: Tensor, generator: torch.Generator | int | None, content: Tensor) -> SynthesisResult:
        """One anomaly on a letterboxed ``(3, H, W)`` image's content only (``content``: ``(H, W)`` or
        ``(1, H, W)``, True on the image, False on the padding): made on the content's box alone, so it is
        sized and checked as on an unpadded image of that content, then pasted back; the padding is left
        as it was and its mask is 0. (The families size anomalies by the short side of what they are
        given: on the padded input, a narrow product's anomalies would be up to twice as large.)"""
        check_image(image)
        inside = content.reshape(image.shape[1:]).to(image.device)
        inside = inside > 0.5 if inside.dtype != torch.bool else inside
        rows, cols = inside.any(dim=1).nonzero().flatten(), inside.any(dim=0).nonzero().flatten()
        if not len(rows):
            msg = "content mask is empty: an anomaly restricted to it cannot be placed"
            raise SynthesisError(msg)
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = inside[top:bottom, left:right]
        made = self._synthesize(image[:, top:bottom, left:right], as_generator(generator, self._generator), None if bool(box.all()) else box)
        out = image.clone()
        out[:, top:bottom, left:right] = made.image
        mask = torch.zeros(1, *image.shape[1:], dtype=made.mask.dtype, device=made.mask.device)
        mask[:, top:bottom, left:right] = made.mask
        return SynthesisResult(out, mask, made.is_anomalous, made.method)

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
        gen = as_generator(generator, self._generator)
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
        check_image(image)
        if image.min().item() < 0 or image.max().item() > 1:
            msg = f"Image values must lie in [0, 1], got [{image.min().item():.3g}, {image.max().item():.3g}]"
            raise SynthesisError(msg)
        _, height, width = image.shape
        if self.anomaly_probability < 1.0 and uniform(generator, 0, 1) >= self.anomaly_probability:
            empty = torch.zeros(height, width, dtype=torch.bool, device=image.device)
            return self._result(image.clone(), empty, "none")
        foreground = self._foreground(image, foreground_mask)
        foreground_area = int(foreground.sum().item()) if foreground is not None else height * width
        required = max(self.min_mask_pixels, math.ceil(self.min_mask_fraction * height * width))
        required = min(required, foreground_area)
        method = self.methods[choice(generator, self._weights)]
        grey = is_grey(image)
        for _ in range(self.max_tries):
            mask, out = self._attempt(method, image, generator, foreground, grey)
            if self.strength != (1.0, 1.0):
                out = image + uniform(generator, *self.strength) * (out - image)
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
        return random_texture(
            height,
            width,
            generator,
            device,
            grey,
            images=self._texture_images,
            image_probability=self.texture_image_probability,
            jitter=self.texture_jitter,
        )

    def _attempt(
        self, method: str, image: Tensor, generator: torch.Generator, foreground: Tensor | None, grey: bool,
    ) -> tuple[Tensor, Tensor]:
        """One candidate of ``method`` with this synthesizer's settings: ``(mask, image)``; the caller checks it."""
        if method == "perlin":
            return perlin_anomaly(
                image,
                generator,
                foreground,
                partial(self._texture, grey=grey),
                perlin_threshold=self.perlin_threshold,
                scale_exp=(self.min_scale_exp, self.max_scale_exp),
                perlin_rotation=self.perlin_rotation,
                perlin_octaves=self.perlin_octaves,
                texture_opacity=self.texture_opacity,
            )
        if method in ("cutpaste_patch", "cutpaste_scar"):
            return cutpaste_anomaly(
                image,
                generator,
                foreground,
                scar=method == "cutpaste_scar",
                grey=grey,
                patch_area=self.patch_area,
                patch_aspect=self.patch_aspect,
                scar_width=self.scar_width,
                scar_length=self.scar_length,
                scar_rotation=self.scar_rotation,
                colour_jitter_strength=self.colour_jitter,
                colour_jitter_hue=self.colour_jitter_hue,
            )
        if method == "crack":
            return crack_anomaly(
                image, generator, foreground, crack_width=self.crack_width, crack_length=self.crack_length
            )
        if method == "brightness":
            return brightness_anomaly(image, generator, foreground, brightness_change=self.brightness_change)
        return VALIDATION_ANOMALIES[method](image, generator, foreground)

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
        centre_y, centre_x = candidates[randint(generator, 0, len(candidates) - 1)].tolist()
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
