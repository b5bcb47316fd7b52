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
specks), the default set; ``missing`` (material broken off) and ``misplaced`` (a part turned and
moved) can be added (chosen leave-one-category-out, they ranked real defects no better). Choices made on validation data (blend weights, smoothing, the epoch) therefore measure how
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

Modules, one job each:

* ``synthesizer``: ``AnomalySynthesizer`` (method choice, settings, retries, fallback), ``METHODS``,
  ``VALIDATION_METHODS``, ``ALL_METHODS``, ``SynthesisResult``;
* the methods: ``perlin``, ``cutpaste``, ``cracks``, ``brightness``, ``validation_families`` (warp, smudge, spots, missing, misplaced);
* their ingredients: ``noise`` (Perlin noise), ``textures``, ``colour`` (jitter, grey images), ``foreground``,
  ``draws`` (random numbers from the CPU generator), ``checks`` (``SynthesisError``);
* ``preview``: ``make_preview_grid``.

Everything below is re-exported here, so ``from onenip.synthesis import AnomalySynthesizer`` keeps working.
"""

from __future__ import annotations

from onenip.synthesis.checks import SynthesisError
from onenip.synthesis.colour import colour_jitter, is_grey
from onenip.synthesis.foreground import FOREGROUND_MODES, ForegroundFn, estimate_foreground
from onenip.synthesis.noise import perlin_noise
from onenip.synthesis.perlin import MIN_PERLIN_CELL_PX
from onenip.synthesis.preview import (
    PREVIEW_CAPTION,
    PREVIEW_GROUP_GAP,
    PREVIEW_PAD,
    make_preview_grid,
    preview_grid_size,
)
from onenip.synthesis.settings import (
    AcceptanceSettings,
    BrightnessSettings,
    CrackSettings,
    CutPasteSettings,
    PerlinSettings,
    TextureSettings,
)
from onenip.synthesis.synthesizer import (
    ALL_METHODS,
    METHODS,
    VALIDATION_METHODS,
    AnomalySynthesizer,
    SynthesisResult,
)
from onenip.synthesis.textures import PROCEDURAL_TEXTURES, TextureSource, procedural_texture, read_image_tensor

__all__ = [
    "ALL_METHODS",
    "FOREGROUND_MODES",
    "METHODS",
    "MIN_PERLIN_CELL_PX",
    "PREVIEW_CAPTION",
    "PREVIEW_GROUP_GAP",
    "PREVIEW_PAD",
    "PROCEDURAL_TEXTURES",
    "VALIDATION_METHODS",
    "AcceptanceSettings",
    "AnomalySynthesizer",
    "BrightnessSettings",
    "CrackSettings",
    "CutPasteSettings",
    "PerlinSettings",
    "TextureSettings",
    "ForegroundFn",
    "SynthesisError",
    "SynthesisResult",
    "TextureSource",
    "colour_jitter",
    "estimate_foreground",
    "is_grey",
    "make_preview_grid",
    "perlin_noise",
    "preview_grid_size",
    "procedural_texture",
    "read_image_tensor",
]
