"""The synthesizer's settings, one object per method family plus what every result must pass. Each
``checked()`` returns the settings validated (ranges ordered and within bounds) or raises one
``SynthesisError`` naming the setting, so ``AnomalySynthesizer`` takes a handful of objects instead of
twenty-eight arguments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from onenip.synthesis.checks import SynthesisError, check_range
from onenip.synthesis.foreground import FOREGROUND_MODES, ForegroundFn
from onenip.synthesis.textures import TextureSource

Range = tuple[float, float]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SynthesisError(message)


@dataclass(frozen=True)
class PerlinSettings:
    """DRAEM's Perlin-noise masks."""

    threshold: float = 0.5
    """mask = noise > threshold (noise is about [-1, 1]; DRAEM uses 0.5)."""
    min_scale_exp: int = 1
    max_scale_exp: int = 5
    """Noise cells along each axis are ``2^a``, ``a`` uniform in this integer range (DRAEM: 2^0..2^5)."""
    rotation: Range = (-90.0, 90.0)
    """Rotation of the noise in degrees (DRAEM: -90..90)."""
    octaves: int = 1

    def checked(self) -> PerlinSettings:
        _require(-1.0 < self.threshold < 1.0, f"perlin_threshold must be in (-1, 1) (noise range), got {self.threshold}")
        _require(0 <= self.min_scale_exp <= self.max_scale_exp <= 8,
                 f"Need 0 <= min_scale_exp <= max_scale_exp <= 8, got {self.min_scale_exp} and {self.max_scale_exp}")  # fmt: skip
        _require(self.octaves >= 1, f"perlin_octaves must be >= 1, got {self.octaves}")
        return replace(self, threshold=float(self.threshold), min_scale_exp=int(self.min_scale_exp), max_scale_exp=int(self.max_scale_exp),
                       rotation=check_range("perlin_rotation", self.rotation, -360, 360), octaves=int(self.octaves))  # fmt: skip


@dataclass(frozen=True)
class TextureSettings:
    """What fills a Perlin mask: procedural textures, or images of other categories."""

    opacity: Range = (0.2, 1.0)
    """Weight of the texture inside the mask (DRAEM's ``1 - beta``)."""
    images: Sequence[TextureSource] | None = None
    """Images of *other* categories used as textures (tensors or paths; read once)."""
    image_probability: float = 0.5
    """Chance of an image texture when ``images`` is given."""
    jitter: float = 0.3
    """Colour-jitter strength applied to every texture."""

    def checked(self) -> TextureSettings:
        opacity = check_range("texture_opacity", self.opacity, 0, 1)
        _require(opacity[1] > 0, f"texture_opacity must allow a positive opacity, got {self.opacity}")
        _require(0.0 <= self.image_probability <= 1.0, f"texture_image_probability must be in [0, 1], got {self.image_probability}")
        _require(self.jitter >= 0, f"Jitter strengths must be >= 0, got texture_jitter={self.jitter}")
        return replace(self, opacity=opacity, image_probability=float(self.image_probability), jitter=float(self.jitter))


@dataclass(frozen=True)
class CutPasteSettings:
    """CutPaste patches and scars."""

    patch_area: Range = (0.02, 0.15)
    """Patch area as a fraction of the image (paper: 0.02..0.15)."""
    patch_aspect: Range = (0.3, 3.3)
    """Patch height / width, log-uniform (paper: 0.3..3.3)."""
    scar_width: Range = (2 / 256, 16 / 256)
    scar_length: Range = (0.10, 0.25)
    """Scar size as fractions of the shorter image side (the paper's 2..16 x 10..25 px at 256 px)."""
    scar_rotation: Range = (-90.0, 90.0)
    """Degrees. The paper uses -45..45 on a vertical scar; real scratches run in every direction."""
    colour_jitter: float = 0.4
    """Brightness / contrast / saturation jitter (OneNIP reference: 0.4)."""
    colour_jitter_hue: float = 0.1
    """Hue jitter in turns (OneNIP reference: 0.1)."""

    def checked(self) -> CutPasteSettings:
        _require(self.colour_jitter >= 0, f"Jitter strengths must be >= 0, got colour_jitter={self.colour_jitter}")
        return replace(
            self, patch_area=check_range("patch_area", self.patch_area, 1e-6, 1), patch_aspect=check_range("patch_aspect", self.patch_aspect, 1e-3, 1e3),
            scar_width=check_range("scar_width", self.scar_width, 0, 1), scar_length=check_range("scar_length", self.scar_length, 0, 1),
            scar_rotation=check_range("scar_rotation", self.scar_rotation, -360, 360), colour_jitter=float(self.colour_jitter),
            colour_jitter_hue=float(self.colour_jitter_hue),
        )  # fmt: skip


@dataclass(frozen=True)
class CrackSettings:
    width: Range = (1.0, 4.0)
    """Crack width in pixels."""
    length: Range = (0.15, 0.6)
    """Crack length as a fraction of the shorter image side."""

    def checked(self) -> CrackSettings:
        return replace(self, width=check_range("crack_width", self.width, 0.5, 64), length=check_range("crack_length", self.length, 0, 1))


@dataclass(frozen=True)
class BrightnessSettings:
    change: Range = (0.1, 0.35)
    """Relative intensity change inside a ``brightness`` region (darker or brighter)."""

    def checked(self) -> BrightnessSettings:
        return replace(self, change=check_range("brightness_change", self.change, 0, 1))


@dataclass(frozen=True)
class AcceptanceSettings:
    """What every result must pass, whatever made it."""

    foreground: str | ForegroundFn = "none"
    """``"none"``, ``"auto"`` (``estimate_foreground``) or a callable mapping a ``(3, H, W)`` image to a
    ``(H, W)`` / ``(1, H, W)`` mask; anomalies stay inside it."""
    min_mask_pixels: int = 16
    min_mask_fraction: float = 0.001
    """A mask needs at least ``max(min_mask_pixels, min_mask_fraction * H * W)`` pixels (capped at the
    foreground area)."""
    min_change: float = 0.01
    """Mean absolute change inside the mask (over channels, in [0, 1] units) a candidate needs."""
    max_tries: int = 10
    """Candidates tried with the chosen method before the fallback (a small texture patch, never empty)."""
    strength: Range = (1.0, 1.0)
    """Each candidate is faded towards the normal image, ``image + s * (anomaly - image)``, ``s`` uniform
    in this range, before ``min_change`` is checked; ``(1, 1)`` draws nothing."""

    def checked(self) -> AcceptanceSettings:
        _require(callable(self.foreground) or self.foreground in FOREGROUND_MODES,
                 f"foreground must be one of {FOREGROUND_MODES} or a callable, got {self.foreground!r}")  # fmt: skip
        _require(self.min_mask_pixels >= 1 and 0.0 <= self.min_mask_fraction < 1.0,
                 f"Need min_mask_pixels >= 1 and 0 <= min_mask_fraction < 1, got {self.min_mask_pixels} and {self.min_mask_fraction}")  # fmt: skip
        _require(0.0 <= self.min_change < 1.0, f"min_change must be in [0, 1), got {self.min_change}")
        _require(self.max_tries >= 1, f"max_tries must be >= 1, got {self.max_tries}")
        strength = check_range("strength", self.strength, 0, 1)
        _require(strength[0] > 0, f"strength must be above 0 (0 leaves the image unchanged), got {self.strength}")
        return replace(self, min_mask_pixels=int(self.min_mask_pixels), min_mask_fraction=float(self.min_mask_fraction),
                       min_change=float(self.min_change), max_tries=int(self.max_tries), strength=strength)  # fmt: skip
