"""The synthetic anomalies training learns to restore: a pool of ``pool_size`` anomalous copies per
image whose features are computed once (``SyntheticPool``) and refreshed every ``regenerate_every`` epochs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from onenip.config import Params, SynthesisParams
from onenip.data.photometric import jittered_images, tint_strength
from onenip.features import extract_features
from onenip.models.features import Features
from onenip.models.loss import area_pool_masks
from onenip.synthesis.settings import AcceptanceSettings, PerlinSettings, TextureSettings
from onenip.synthesis.synthesizer import AnomalySynthesizer
from onenip.training.data import CategoryData
from onenip.training.schedule import epoch_subset

def build_synthesizer(cfg: SynthesisParams, texture_images: Sequence[Tensor] = ()) -> AnomalySynthesizer:
    return AnomalySynthesizer(
        methods=cfg.methods,
        probabilities=cfg.probabilities,
        perlin=PerlinSettings(threshold=cfg.perlin_threshold, min_scale_exp=cfg.min_scale_exp, max_scale_exp=cfg.max_scale_exp),
        texture=TextureSettings(images=list(texture_images) or None),
        acceptance=AcceptanceSettings(foreground=cfg.foreground),
    )


@dataclass
class DriftDraws:
    """Which synthetic copies are made on a photometrically jittered image (``synthesis.jittered_fraction``), and
    the jitter: the statistics' strengths (``model.statistics_jitter``, ``statistics_colour_jitter`` on colour
    categories). Its own generator, so the anomalies drawn are those drawn without it."""

    fraction: float
    strength: float
    colour: float
    generator: torch.Generator

    @classmethod
    def for_pool(cls, data: CategoryData, params: Params, seed: int, generation: int) -> DriftDraws:
        model = params.model
        colour = tint_strength(data.fit_images, model.statistics_colour_jitter) if params.synthesis.jittered_fraction > 0 else 0.0
        generator = torch.Generator().manual_seed(int(seed) * 6007 + generation * 7727 + data.index)
        return cls(params.synthesis.jittered_fraction, model.statistics_jitter, colour, generator)

    def maybe(self, image: Tensor, valid: Tensor | None) -> Tensor:
        """(3, H, W) in [0, 1] -> the image, or with probability ``fraction`` its jittered copy."""
        if self.fraction <= 0 or float(torch.rand((), generator=self.generator)) >= self.fraction:
            return image
        return jittered_images(image[None], valid, self.strength, self.generator, self.colour)[0]


@dataclass
class SyntheticPool:
    """``pool_size`` synthesized copies of training images of one category: features and masks.

    Masks are stored area-pooled to the refiner's resolution (what the Dice loss compares with).
    ``rows`` maps an image index to its first row (-1: not synthesized), so a pool may hold only the
    images an epoch uses (``train.max_images_per_epoch``)."""

    features: Features  # (M * K, ...) float16, copy j of the image in pool slot s at s * K + j
    masks: Tensor  # (M * K, 1, 4h, 4w) float16
    pool_size: int
    generation: int = 0
    rows: Tensor | None = None  # (N,) long: image index -> pool slot; None: slot == image index

    def positions(self, idx: Tensor, variant: Tensor) -> Tensor:
        """Rows of copy ``variant`` of images ``idx`` (indices into the category's fit images)."""
        slots = idx if self.rows is None else self.rows[idx]
        if bool((slots < 0).any()):
            msg = f"images {idx[slots < 0].tolist()} were not synthesized in this pool"
            raise IndexError(msg)
        return slots * self.pool_size + variant

    @classmethod
    def build(
        cls,
        data: CategoryData,
        synthesizer: AnomalySynthesizer,
        extractor: torch.nn.Module,
        params: Params,
        *,
        seed: int,
        generation: int = 0,
        progress: bool = True,
        indices: Tensor | None = None,
    ) -> SyntheticPool:
        """Synthesize ``pool_size`` copies of each fit image, or of the images ``indices`` only."""
        k = params.synthesis.pool_size
        batch_size = params.train.feature_batch_size
        generator = torch.Generator().manual_seed(int(seed) * 7919 + generation * 104729 + data.index)
        grid = data.geometry.grid(params.model.backbone.feature_stride)
        refiner_size = (grid[0] * 4, grid[1] * 4)
        chosen = list(range(len(data.fit_images))) if indices is None else sorted(set(indices.tolist()))
        rows = None
        if indices is not None:
            rows = torch.full((len(data.fit_images),), -1, dtype=torch.long)
            rows[torch.tensor(chosen, dtype=torch.long)] = torch.arange(len(chosen))
        parts: list[Features] = []
        masks: list[Tensor] = []
        pending: list[Tensor] = []
        bar = tqdm(total=len(chosen) * k, desc=f"Synthetic anomalies ({data.name})", unit="img", disable=not progress)

        def flush() -> None:
            out = extract_features(extractor, torch.stack(pending), params.model.backbone, batch_size)
            parts.append(Features(out.coarse.half(), None if out.fine is None else out.fine.half()))
            bar.update(len(pending))
            pending.clear()

        drift = DriftDraws.for_pool(data, params, seed, generation)
        for i in chosen:
            image = data.fit_images[i].float() / 255
            foreground = None if data.fit_valid is None else data.fit_valid[i, 0]
            for _ in range(k):
                source = drift.maybe(image, None if data.fit_valid is None else data.fit_valid[i : i + 1])
                # a letterboxed image's anomaly is made on its content, sized as on an unpadded image
                result = synthesizer(source, generator) if foreground is None else synthesizer.on_content(source, generator, foreground)
                pending.append(result.image)
                masks.append(area_pool_masks(result.mask[None], refiner_size)[0].half())
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        bar.close()
        return cls(Features.cat(parts), torch.stack(masks), k, generation, rows)


def generation_indices(
    size: int, position: int, cap: int | None, seed: int, generation: int, regenerate_every: int, epochs: int,
) -> Tensor | None:
    """The images a pool generation must synthesize: the union of the subsets of its epochs
    (``None``: all images, when there is no cap, the category is under it, or one pool serves the run)."""
    if cap is None or size <= cap or regenerate_every == 0:
        return None
    first = generation * regenerate_every
    epochs_of_generation = range(first, min(first + regenerate_every, epochs))
    used = [epoch_subset(size, cap, seed, epoch, position) for epoch in epochs_of_generation]
    return torch.unique(torch.cat(used))  # type: ignore[arg-type]
