"""``AnomalySynthesizer``: which method makes each anomaly, with which settings, and the checks every result
passes (mask size, visible change, foreground); ``METHODS``, ``VALIDATION_METHODS`` and ``ALL_METHODS``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from onenip.synthesis.brightness import brightness_anomaly
from onenip.synthesis.checks import SynthesisError, check_image
from onenip.synthesis.colour import is_grey
from onenip.synthesis.cracks import crack_anomaly
from onenip.synthesis.cutpaste import cutpaste_anomaly
from onenip.synthesis.draws import as_generator, choice, randint, uniform
from onenip.synthesis.foreground import estimate_foreground
from onenip.synthesis.perlin import perlin_anomaly
from onenip.synthesis.settings import (
    AcceptanceSettings,
    BrightnessSettings,
    CrackSettings,
    CutPasteSettings,
    PerlinSettings,
    TextureSettings,
)
from onenip.synthesis.textures import random_texture, texture_to_uint8
from onenip.synthesis.validation_families import VALIDATION_ANOMALIES

METHODS: tuple[str, ...] = ("perlin", "cutpaste_patch", "cutpaste_scar", "crack", "brightness")
VALIDATION_METHODS: tuple[str, ...] = ("warp", "smudge", "spots", "missing", "misplaced")
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


def checked_methods(methods: Sequence[str], probabilities: Sequence[float] | None) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Distinct known methods and one non-negative weight each (equal by default), or one clear error."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        msg = f"methods must be distinct entries of {ALL_METHODS}, got {methods}"
        raise SynthesisError(msg)
    weights = tuple(float(p) for p in (probabilities if probabilities is not None else [1.0] * len(methods)))
    if len(weights) != len(methods) or min(weights) < 0 or sum(weights) <= 0:
        msg = f"probabilities must give one non-negative weight per method {methods} with a positive sum, got {weights}"
        raise SynthesisError(msg)
    return methods, weights


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
        perlin, texture, cutpaste, crack, brightness: each method family's settings
            (``onenip.synthesis.settings``; the defaults follow DRAEM, CutPaste and the OneNIP reference).
        acceptance: what every result must pass (foreground, mask size, visible change, tries) and how
            much candidates are faded (``strength``).
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
        perlin: PerlinSettings = PerlinSettings(),
        texture: TextureSettings = TextureSettings(),
        cutpaste: CutPasteSettings = CutPasteSettings(),
        crack: CrackSettings = CrackSettings(),
        brightness: BrightnessSettings = BrightnessSettings(),
        acceptance: AcceptanceSettings = AcceptanceSettings(),
        seed: int | None = None,
    ) -> None:
        self.methods, self.probabilities = checked_methods(methods, probabilities)
        self._weights = torch.tensor(self.probabilities, dtype=torch.float64)
        if not 0.0 <= anomaly_probability <= 1.0:
            msg = f"anomaly_probability must be in [0, 1], got {anomaly_probability}"
            raise SynthesisError(msg)
        self.anomaly_probability = float(anomaly_probability)
        self.perlin, self.texture, self.cutpaste = perlin.checked(), texture.checked(), cutpaste.checked()
        self.crack, self.brightness, self.acceptance = crack.checked(), brightness.checked(), acceptance.checked()
        self._texture_images = [texture_to_uint8(src, i) for i, src in enumerate(self.texture.images or ())]
        self.seed = seed
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in ("methods", "probabilities", "anomaly_probability", "perlin", "acceptance"))
        return f"{type(self).__name__}({settings}, texture_images={len(self._texture_images)})"

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
        required = max(self.acceptance.min_mask_pixels, math.ceil(self.acceptance.min_mask_fraction * height * width))
        required = min(required, foreground_area)
        method = self.methods[choice(generator, self._weights)]
        grey = is_grey(image)
        for _ in range(self.acceptance.max_tries):
            mask, out = self._attempt(method, image, generator, foreground, grey)
            if self.acceptance.strength != (1.0, 1.0):
                out = image + uniform(generator, *self.acceptance.strength) * (out - image)
            if int(mask.sum().item()) >= required and self._change(image, out, mask) >= self.acceptance.min_change:
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
            if self.acceptance.foreground == "none":
                return None
            if self.acceptance.foreground == "auto":
                return estimate_foreground(image)[0]
            foreground_mask = self.acceptance.foreground(image)  # type: ignore[operator]
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
            image_probability=self.texture.image_probability,
            jitter=self.texture.jitter,
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
                perlin_threshold=self.perlin.threshold,
                scale_exp=(self.perlin.min_scale_exp, self.perlin.max_scale_exp),
                perlin_rotation=self.perlin.rotation,
                perlin_octaves=self.perlin.octaves,
                texture_opacity=self.texture.opacity,
            )
        if method in ("cutpaste_patch", "cutpaste_scar"):
            return cutpaste_anomaly(
                image,
                generator,
                foreground,
                scar=method == "cutpaste_scar",
                grey=grey,
                patch_area=self.cutpaste.patch_area,
                patch_aspect=self.cutpaste.patch_aspect,
                scar_width=self.cutpaste.scar_width,
                scar_length=self.cutpaste.scar_length,
                scar_rotation=self.cutpaste.scar_rotation,
                colour_jitter_strength=self.cutpaste.colour_jitter,
                colour_jitter_hue=self.cutpaste.colour_jitter_hue,
            )
        if method == "crack":
            return crack_anomaly(
                image, generator, foreground, crack_width=self.crack.width, crack_length=self.crack.length
            )
        if method == "brightness":
            return brightness_anomaly(image, generator, foreground, brightness_change=self.brightness.change)
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
        if self._change(image, out, mask) < self.acceptance.min_change:
            out = torch.where(mask, 1 - image, image)  # texture matched the image: invert instead
        return mask, out
