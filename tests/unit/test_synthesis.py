"""Tests for ``onenip.synthesis``: masks, reproducibility, foreground restriction, preview PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from onenip.synthesis import (
    ALL_METHODS,
    METHODS,
    VALIDATION_METHODS,
    PROCEDURAL_TEXTURES,
    AcceptanceSettings,
    AnomalySynthesizer,
    PerlinSettings,
    TextureSettings,
    SynthesisError,
    SynthesisResult,
    colour_jitter,
    estimate_foreground,
    make_preview_grid,
    perlin_noise,
    preview_grid_size,
    procedural_texture,
    read_image_tensor,
)

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "industrial"


def textured_image(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth colour gradient plus mild noise: every pixel differs from its neighbours a little."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.2 + 0.6 * ys, 0.3 + 0.4 * xs, 0.5 + 0.2 * (ys - xs)])
    return (base + 0.05 * torch.rand(3, size, size, generator=generator)).clamp(0, 1)


def object_on_background(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured disk (the object) on a plain grey background with faint noise; returns (image, disk)."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    disk = (ys - size * 0.5) ** 2 + (xs - size * 0.55) ** 2 < (size * 0.28) ** 2
    image = torch.full((3, size, size), 0.15) + 0.01 * torch.rand(3, size, size, generator=generator)
    obj = torch.stack(
        [0.7 + 0.2 * torch.sin(xs / 3), 0.5 + 0.2 * torch.cos(ys / 4), torch.full_like(xs, 0.3)]
    )
    image = torch.where(disk, obj, image).clamp(0, 1)
    return image, disk


def required_area(synth: AnomalySynthesizer, size: int) -> int:
    return max(synth.acceptance.min_mask_pixels, int(np.ceil(synth.acceptance.min_mask_fraction * size * size)))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("size", "num_seeds"), [(64, 25), (256, 4)])
def test_anomalous_results_always_have_a_mask(method: str, size: int, num_seeds: int) -> None:
    image = textured_image(size)
    synth = AnomalySynthesizer(methods=(method,))
    for seed in range(num_seeds):
        result = synth(image, torch.Generator().manual_seed(seed))
        assert isinstance(result, SynthesisResult)
        assert bool(result.is_anomalous)
        assert result.method in (method, "fallback")
        assert result.image.shape == (3, size, size) and result.image.dtype == image.dtype
        assert result.mask.shape == (1, size, size) and result.mask.dtype == image.dtype
        assert set(result.mask.unique().tolist()) <= {0.0, 1.0}
        assert result.mask.sum().item() >= required_area(synth, size), f"seed {seed}"
        assert result.image.min().item() >= 0.0 and result.image.max().item() <= 1.0
        # The image changed visibly inside the mask (min_change) ...
        changed = (result.image - image).abs().mean(0)[result.mask[0].bool()].mean().item()
        assert changed >= synth.acceptance.min_change
        # ... and not at all outside it.
        outside = ~result.mask[0].bool()
        assert torch.equal(result.image[:, outside], image[:, outside])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_is_bitwise_reproducible_and_seeds_differ(method: str) -> None:
    image = textured_image(64)
    synth = AnomalySynthesizer(methods=(method,))
    first = synth(image, torch.Generator().manual_seed(7))
    again = AnomalySynthesizer(methods=(method,))(image, 7)  # int seed, fresh instance
    assert torch.equal(first.image, again.image)
    assert torch.equal(first.mask, again.mask)
    others = [synth(image, torch.Generator().manual_seed(seed)) for seed in (8, 9)]
    assert any(not torch.equal(first.mask, other.mask) for other in others)
    assert all(not torch.equal(first.image, other.image) for other in others)


def test_constructor_seed_gives_a_reproducible_sequence() -> None:
    image = textured_image(64)
    a, b = AnomalySynthesizer(seed=3), AnomalySynthesizer(seed=3)
    for _ in range(4):
        ra, rb = a(image), b(image)
        assert torch.equal(ra.image, rb.image) and torch.equal(ra.mask, rb.mask)
    assert not torch.equal(a(image).image, AnomalySynthesizer(seed=4)(image).image)


def test_no_global_rng_use() -> None:
    image = textured_image(64)
    torch.manual_seed(0)
    expected = torch.rand(5)
    torch.manual_seed(0)
    AnomalySynthesizer()(image, 1)
    assert torch.equal(torch.rand(5), expected)


def test_method_choice_follows_probabilities() -> None:
    image = textured_image(64)
    synth = AnomalySynthesizer(probabilities=(0.0, 1.0, 0.0, 0.0, 0.0))
    generator = torch.Generator().manual_seed(0)
    assert {synth(image, generator).method for _ in range(10)} == {"cutpaste_patch"}
    mixed = AnomalySynthesizer()
    assert {mixed(image, generator).method for _ in range(40)} >= set(METHODS)
    assert not set(METHODS) & set(VALIDATION_METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_explicit_foreground_mask_is_respected(method: str) -> None:
    image, disk = object_on_background(64)
    synth = AnomalySynthesizer(methods=(method,))
    for seed in range(15):
        result = synth(image, seed, foreground_mask=disk)
        mask = result.mask[0].bool()
        assert mask.any()
        assert not (mask & ~disk).any(), f"seed {seed}: mask leaves the foreground"
        assert torch.equal(result.image[:, ~disk], image[:, ~disk])


def test_foreground_callable_is_respected() -> None:
    image, _ = object_on_background(64)
    calls: list[tuple[int, ...]] = []

    def left_half(img: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(img.shape))
        mask = torch.zeros(img.shape[1:], dtype=torch.bool)
        mask[:, : img.shape[2] // 2] = True
        return mask

    synth = AnomalySynthesizer(acceptance=AcceptanceSettings(foreground=left_half))
    for seed in range(10):
        mask = synth(image, seed).mask[0].bool()
        assert mask.any() and not mask[:, 32:].any()
    assert calls and calls[0] == (3, 64, 64)


def test_estimate_foreground_finds_the_object() -> None:
    image, disk = object_on_background(96)
    foreground = estimate_foreground(image)
    assert foreground.shape == (1, 96, 96) and foreground.dtype == torch.bool
    iou = (foreground[0] & disk).sum() / (foreground[0] | disk).sum()
    assert iou.item() > 0.9


def test_estimate_foreground_is_whole_image_without_a_clear_object() -> None:
    flat = torch.full((3, 48, 48), 0.4)
    assert estimate_foreground(flat).all()
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert estimate_foreground(noise).all()


@pytest.mark.parametrize("method", METHODS)
def test_auto_foreground_keeps_anomalies_on_the_object(method: str) -> None:
    image, _ = object_on_background(64, seed=1)
    foreground = estimate_foreground(image)[0]
    synth = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(foreground="auto"))
    for seed in range(10):
        mask = synth(image, seed).mask[0].bool()
        assert mask.any() and not (mask & ~foreground).any()


def test_fallback_when_no_candidate_fits() -> None:
    image = textured_image(64)
    # Threshold above the noise maximum: every Perlin candidate is empty.
    synth = AnomalySynthesizer(methods=("perlin",), perlin=PerlinSettings(threshold=0.999), acceptance=AcceptanceSettings(max_tries=2))
    for seed in range(5):
        result = synth(image, seed)
        assert result.method == "fallback" and bool(result.is_anomalous)
        assert result.mask.sum().item() >= required_area(synth, 64)
        outside = ~result.mask[0].bool()
        assert torch.equal(result.image[:, outside], image[:, outside])


def test_tiny_foreground_still_gives_a_mask_inside_it() -> None:
    image = textured_image(64)
    foreground = torch.zeros(64, 64, dtype=torch.bool)
    foreground[10:12, 40:43] = True  # 6 pixels, fewer than min_mask_pixels
    for method in ALL_METHODS:
        synth = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(max_tries=3))
        for seed in range(5):
            mask = synth(image, seed, foreground_mask=foreground).mask[0].bool()
            # The minimum area is capped at the foreground area, so the mask is all of it.
            assert torch.equal(mask, foreground), f"{method}, seed {seed}"


def test_plain_image_never_returns_an_invisible_anomaly() -> None:
    # CutPaste on a black image cannot change anything (jitter keeps black black); the fallback
    # must still change the pixels.
    flat = torch.zeros(3, 32, 32)
    result = AnomalySynthesizer(methods=("cutpaste_patch",), acceptance=AcceptanceSettings(max_tries=3))(flat, 0)
    mask = result.mask[0].bool()
    assert result.method == "fallback" and mask.any()
    assert (result.image - flat).abs().mean(0)[mask].mean().item() >= 0.01


def test_anomaly_probability_zero_returns_normal_samples() -> None:
    image = textured_image(64)
    result = AnomalySynthesizer(anomaly_probability=0.0)(image, 0)
    assert not bool(result.is_anomalous) and result.method == "none"
    assert result.mask.sum().item() == 0 and torch.equal(result.image, image)
    half = AnomalySynthesizer(anomaly_probability=0.5, seed=0)
    labels = [bool(half(image).is_anomalous) for _ in range(40)]
    assert 5 < sum(labels) < 35


def test_batch_matches_sequential_calls() -> None:
    images = torch.stack([textured_image(64, seed) for seed in range(3)])
    synth = AnomalySynthesizer()
    batch = synth.synthesize_batch(images, torch.Generator().manual_seed(5))
    assert batch.image.shape == (3, 3, 64, 64) and batch.mask.shape == (3, 1, 64, 64)
    assert batch.is_anomalous.shape == (3,) and batch.is_anomalous.all()
    assert len(batch.method) == 3
    generator = torch.Generator().manual_seed(5)
    for i in range(3):
        single = synth(images[i], generator)
        assert torch.equal(single.image, batch.image[i]) and torch.equal(single.mask, batch.mask[i])
    via_call = synth(images, 5)  # a 4-D input is routed to synthesize_batch
    assert torch.equal(via_call.image, batch.image)


def test_texture_images_from_tensors_and_paths(tmp_path: Path) -> None:
    other = torch.zeros(3, 40, 50)
    other[0] = 1.0  # pure red "other category", nothing like the test image
    path = tmp_path / "other.png"
    Image.fromarray(np.full((30, 30, 3), (0, 0, 255), dtype=np.uint8)).save(path)
    synth = AnomalySynthesizer(
        methods=("perlin",),
        texture=TextureSettings(images=[other, path], image_probability=1.0, jitter=0.0, opacity=(1.0, 1.0)),
    )
    image = torch.full((3, 64, 64), 0.5)
    image[1] = 0.4  # a colour image: textures keep their colours (a grey one would get grey textures)
    colours = set()
    for seed in range(12):
        result = synth(image, seed)
        if result.method != "perlin":
            continue
        inside = result.image[:, result.mask[0].bool()]
        colours.add(tuple(inside.mean(1).round(decimals=2).tolist()))
    assert colours == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}


def test_procedural_textures_are_valid_and_varied() -> None:
    generator = torch.Generator().manual_seed(0)
    for kind in PROCEDURAL_TEXTURES:
        texture = procedural_texture(kind, 48, 80, generator=generator)
        assert texture.shape == (3, 48, 80)
        assert texture.min().item() >= 0.0 and texture.max().item() <= 1.0
        assert texture.std().item() > 0.01, kind
    with pytest.raises(SynthesisError, match="Unknown texture kind"):
        procedural_texture("plaid", 8, 8, generator=generator)


def test_perlin_noise_range_scale_and_rotation() -> None:
    noise = perlin_noise(128, 96, (4, 8), generator=torch.Generator().manual_seed(0))
    assert noise.shape == (128, 96)
    assert noise.abs().max().item() <= 1.0 + 1e-5 and noise.std().item() > 0.1
    rotated = perlin_noise(128, 96, (4, 8), generator=torch.Generator().manual_seed(0), angle=45)
    assert not torch.allclose(noise, rotated)
    # More cells -> higher frequency -> larger differences between neighbouring pixels.
    fine = perlin_noise(128, 128, (16, 16), generator=torch.Generator().manual_seed(0))
    coarse = perlin_noise(128, 128, (2, 2), generator=torch.Generator().manual_seed(0))
    assert fine.diff(dim=1).abs().mean() > 3 * coarse.diff(dim=1).abs().mean()


def test_colour_jitter_stays_in_range_and_zero_is_identity() -> None:
    image = textured_image(32)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(colour_jitter(image, 0.0, generator), image)
    jittered = colour_jitter(image, 0.5, generator)
    assert jittered.min().item() >= 0 and jittered.max().item() <= 1
    assert not torch.allclose(jittered, image)


def test_grey_images_get_grey_anomalies() -> None:
    """On a grey product every training and validation family keeps the channels equal: the refiner
    must not learn "colour = defect" on kolektor or magnetic tiles."""
    grey = textured_image(64).mean(0, keepdim=True).expand(3, -1, -1).contiguous()
    colourful = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for method in ALL_METHODS:
        synth = AnomalySynthesizer(methods=(method,), texture=TextureSettings(images=colourful, image_probability=0.5))
        for seed in range(8):
            out = synth(grey, seed).image
            assert (out.amax(0) - out.amin(0)).max().item() < 1e-5, f"{method}, seed {seed}"
    # a colour image still gets colour jitter (CutPaste's hue jitter is 0.1 of a turn, as the reference)
    patch = AnomalySynthesizer(methods=("cutpaste_patch",))
    assert patch.cutpaste.colour_jitter == 0.4 and patch.cutpaste.colour_jitter_hue == 0.1


def test_cracks_are_thin_and_brightness_regions_are_smooth() -> None:
    image = textured_image(256)
    widths = []
    for seed in range(10):
        result = AnomalySynthesizer(methods=("crack",))(image, seed)
        if result.method != "crack":
            continue
        mask = result.mask[0].bool()
        # a 1-4 px wide line: eroding it with a 5x5 square leaves (almost) nothing; only where the
        # curve bends back on itself can a 5x5 block fit
        eroded = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 5, stride=1, padding=2)[0, 0]
        assert eroded.sum() <= 0.05 * mask.sum(), f"seed {seed}"
        widths.append(mask.sum().item())
    assert widths, "no crack was drawn"
    result = AnomalySynthesizer(methods=("brightness",))(image, 0)
    ratio = (result.image / image.clamp_min(1e-3))[:, result.mask[0].bool()]
    # the same factor on every channel of a pixel: intensity changes, hue does not
    assert (ratio.amax(0) - ratio.amin(0)).max().item() < 1e-3


def test_non_square_images() -> None:
    image = torch.rand(3, 40, 120, generator=torch.Generator().manual_seed(0))
    for method in ALL_METHODS:
        synthesizer = AnomalySynthesizer(methods=(method,))
        result = synthesizer(image, 0)
        mask = result.mask[0].bool()
        assert result.mask.shape == (1, 40, 120)
        assert mask.sum().item() >= synthesizer.acceptance.min_mask_pixels, method  # the configured floor on the wide image too
        change = (result.image - image).abs()
        assert change.amax(0)[~mask].max().item() == 0.0, method  # nothing outside the mask changes
        assert change.mean(0)[mask].mean().item() >= synthesizer.acceptance.min_change, method  # and the anomaly is visible


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ("perlin", "draem")}, "methods"),
        ({"methods": ()}, "methods"),
        ({"probabilities": (1.0, 1.0)}, "probabilities"),
        ({"probabilities": (0.0, 0.0, 0.0)}, "probabilities"),
        ({"perlin": PerlinSettings(min_scale_exp=4, max_scale_exp=2)}, "scale_exp"),
        ({"texture": TextureSettings(opacity=(0.8, 0.2))}, "texture_opacity"),
        ({"acceptance": AcceptanceSettings(foreground="object")}, "foreground"),
        ({"acceptance": AcceptanceSettings(max_tries=0)}, "max_tries"),
        ({"anomaly_probability": 1.5}, "anomaly_probability"),
        ({"texture": TextureSettings(images=[torch.zeros(4, 8, 8)])}, r"texture_images\[0\]"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(SynthesisError, match=match):
        AnomalySynthesizer(**kwargs)


def test_invalid_inputs_raise_clear_errors() -> None:
    synth = AnomalySynthesizer()
    with pytest.raises(SynthesisError, match=r"\(3, H, W\)"):
        synth(torch.rand(1, 32, 32), 0)
    with pytest.raises(SynthesisError, match=r"\[0, 1\]"):
        synth(torch.rand(3, 32, 32) * 2, 0)
    with pytest.raises(SynthesisError, match="float"):
        synth(torch.zeros(3, 32, 32, dtype=torch.uint8), 0)
    with pytest.raises(SynthesisError, match="empty"):
        synth(torch.rand(3, 32, 32), 0, foreground_mask=torch.zeros(32, 32, dtype=torch.bool))
    with pytest.raises(SynthesisError, match="generator"):
        synth(torch.rand(3, 32, 32), "seed")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_follows_the_input_device() -> None:
    image = textured_image(64).cuda()
    for method in METHODS:
        result = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(foreground="auto"))(image, 0)
        assert result.image.device == image.device and result.mask.device == image.device
        assert result.mask.sum().item() > 0


def test_preview_grid_png(tmp_path: Path) -> None:
    images: list[torch.Tensor | Path] = [textured_image(64, 0), object_on_background(48)[0]]
    path = tmp_path / "grid_input.png"
    Image.fromarray(np.full((40, 80, 3), 128, dtype=np.uint8)).save(path)
    images.append(path)
    target = tmp_path / "sub" / "preview.png"
    out = make_preview_grid(images, AnomalySynthesizer(), seed=0, path=target, tile_size=64)
    assert out == target
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG" and png.mode == "RGB"
        # 2 columns x 2 rows of groups; a group is 3 tiles + 2 pads wide, a caption + a tile high.
        expected = (2 * 4 + 2 * (3 * 64 + 8) + 12, 2 * 4 + 2 * (16 + 64) + 12)
        assert png.size == preview_grid_size(3, 2, 64) == expected
        pixels = np.asarray(png)
    # The mask overlay paints pure red somewhere.
    assert ((pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 2] == 0)).any()
    again = make_preview_grid(images, AnomalySynthesizer(), seed=0, path=tmp_path / "again.png", tile_size=64)
    with Image.open(again) as png2:
        assert np.array_equal(np.asarray(png2), pixels)


@pytest.mark.integration
def test_real_bottle_image() -> None:
    folder = DATASETS / "bottle" / "train" / "good"
    paths = sorted(folder.glob("*.png"))[:2] if folder.is_dir() else []
    if not paths:
        pytest.skip(f"real data not found at {folder}")
    image = read_image_tensor(paths[0])
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    foreground = estimate_foreground(image)[0]
    assert 0.3 < foreground.float().mean().item() < 0.9  # the bottle, not the whole picture
    for method in METHODS:
        synth = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(foreground="auto"))
        for seed in range(3):
            result = synth(image, seed)
            mask = result.mask[0].bool()
            assert mask.sum().item() >= required_area(synth, image.shape[1])
            assert not (mask & ~foreground).any()
            assert torch.equal(result.image[:, ~mask], image[:, ~mask])


@pytest.mark.parametrize("method", VALIDATION_METHODS)
def test_strength_fades_the_anomaly_towards_the_normal_image_and_keeps_its_mask(method: str) -> None:
    image = textured_image(64)
    # every candidate accepted, so both keep their first (a retry would follow the strength's draw)
    accept = {"min_change": 0.0, "min_mask_pixels": 1, "min_mask_fraction": 0.0}
    full = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(**accept))(image, torch.Generator().manual_seed(3))
    half = AnomalySynthesizer(methods=(method,), acceptance=AcceptanceSettings(strength=(0.5, 0.5), **accept))(image, torch.Generator().manual_seed(3))
    assert half.method == full.method == method
    assert torch.equal(half.mask, full.mask)
    torch.testing.assert_close(half.image, image + 0.5 * (full.image - image))
    assert (half.image - image).abs().sum() > 0


def test_full_strength_draws_nothing_so_seeded_anomalies_stay_as_they_were() -> None:
    image = textured_image(64)
    default = AnomalySynthesizer(methods=VALIDATION_METHODS)
    explicit = AnomalySynthesizer(methods=VALIDATION_METHODS, acceptance=AcceptanceSettings(strength=(1.0, 1.0)))
    first, second = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(4):
        assert torch.equal(default(image, first).image, explicit(image, second).image)
    assert torch.equal(first.get_state(), second.get_state())


@pytest.mark.parametrize("strength", [(0.0, 1.0), (0.8, 0.4), (0.5, 1.5)])
def test_strength_outside_zero_one_is_refused(strength: tuple[float, float]) -> None:
    with pytest.raises(SynthesisError, match="strength"):
        AnomalySynthesizer(acceptance=AcceptanceSettings(strength=strength))


def test_a_candidate_faded_below_min_change_is_retried() -> None:
    image = textured_image(64)
    faint = AnomalySynthesizer(methods=("spots",), acceptance=AcceptanceSettings(strength=(0.02, 0.02), min_change=0.05, max_tries=3))
    result = faint(image, torch.Generator().manual_seed(0))
    assert result.method == "fallback"  # every faded candidate changed the image too little


@pytest.mark.parametrize("methods", [("perlin", "crack"), ("warp", "smudge", "spots")])
def test_a_letterboxed_images_anomaly_is_made_on_its_content_alone(methods: tuple[str, ...]) -> None:
    """on_content: the anomaly is exactly the one an unpadded image of the content gets (same draws, so
    sized by the content's short side, not the padded input's), pasted back; the padding is untouched."""
    synthesizer = AnomalySynthesizer(methods=methods)
    content = torch.rand(3, 64, 24, generator=torch.Generator().manual_seed(3))
    padded = torch.zeros(3, 64, 64)
    padded[:, :, 20:44] = content
    valid = torch.zeros(64, 64, dtype=torch.bool)
    valid[:, 20:44] = True
    made = synthesizer.on_content(padded, torch.Generator().manual_seed(5), valid)
    alone = synthesizer(content, torch.Generator().manual_seed(5))
    assert made.method == alone.method and bool(made.is_anomalous)
    torch.testing.assert_close(made.image[:, :, 20:44], alone.image)
    torch.testing.assert_close(made.mask[:, :, 20:44], alone.mask)
    assert made.mask[:, :, :20].sum() == 0 and made.mask[:, :, 44:].sum() == 0
    assert torch.equal(made.image[:, :, :20], padded[:, :, :20]) and torch.equal(made.image[:, :, 44:], padded[:, :, 44:])
    with pytest.raises(SynthesisError, match="content mask is empty"):
        synthesizer.on_content(padded, 0, torch.zeros(64, 64, dtype=torch.bool))


def striped_image(size: int) -> torch.Tensor:
    """Fine vertical stripes: structure a hole removes and a turned part breaks."""
    xs = torch.arange(size, dtype=torch.float32)
    stripes = 0.5 + 0.3 * torch.sin(xs * 2 * math.pi / 6)
    return stripes.expand(3, size, size).clone()


def test_missing_removes_the_structure_inside_its_region() -> None:
    image = striped_image(128)
    for seed in range(4):
        result = AnomalySynthesizer(methods=("missing",))(image, seed)
        mask = result.mask[0].bool()
        inner = (-F.max_pool2d(-mask[None, None].float(), 7, stride=1, padding=3))[0, 0] > 0.5  # away from the break edge
        assert result.method == "missing" and inner.sum() >= 10
        # stripes vary by about 0.2 (std); the fill is a smooth shade plus a little grain
        assert result.image[0][inner].std() < 0.5 * image[0][inner].std()
        assert result.image[0][inner].mean() < image[0][inner].mean()  # a cavity is darker than the surface


def test_misplaced_turns_a_part_so_its_stripes_no_longer_line_up() -> None:
    image = striped_image(128)
    for seed in range(4):
        result = AnomalySynthesizer(methods=("misplaced",))(image, seed)
        mask = result.mask[0].bool()
        assert result.method == "misplaced"
        assert torch.equal(result.image[:, ~mask], image[:, ~mask])
        # the turned part's stripes are no longer vertical: neighbouring rows differ inside it
        rows_differ = (result.image[0, 1:] - result.image[0, :-1]).abs()[mask[1:] & mask[:-1]]
        assert rows_differ.mean() > 0.02
