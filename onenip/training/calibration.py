"""What is fitted on training normals without gradient steps: the per-position Gaussians, the memory
banks, the feature standardisation, the reconstruction-error statistics, the map scales and the
decision threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from onenip.config import Params
from onenip.data.photometric import evenly_spread, jittered_images, tint_strength
from onenip.models.detector import OneNIPDetector
from onenip.models.features import Features
from onenip.models.gaussian import fit_position_gaussian
from onenip.models.memory import kcenter_greedy
from onenip.models.scoring import ScoringRule, padded_weights
from onenip.training.data import CategoryData

STATISTICS_IMAGES = 256
"""Training normals per category that the residual statistics are estimated on (evenly spread)."""
JITTERED_IMAGES = 128
"""Jittered copies per category (``add_jittered_normals``): each costs about 0.4 MB of float16 features, kept
through training (256 put the unified three categories' peak RSS at 4.0 GB)."""
STATISTICS_CHUNK = 16
"""Images per chunk when the residual statistics are summed (bounds the float64 temporaries)."""


def error_statistics(
    residuals: Tensor, weights: Tensor, prior: float = 10.0, whiten: bool = True, ridge: float = 0.01, std_floor: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Statistics that turn a residual map into z-scores: ``(mean (C, h, w), whitening (C, C), std (C, h, w))``.

    ``mean``: per position and channel, weighted by ``weights`` (N, 1, h, w: 1 where the cell holds image
    content), shrunk towards the channel's mean by ``prior`` pseudo-images (a position few images
    cover gets the channel's statistics). ``whitening``: ``L^-1`` of the Cholesky factor of the
    channels' covariance of the centred residual, pooled over positions, with a ``ridge`` of the mean
    variance on the diagonal (identity when ``whiten`` is false): correlated channels (neighbouring
    backbone channels often move together) then count once. ``std``: per position and channel of the
    whitened residual, shrunk alike, and at least ``std_floor`` times the root mean square over channels
    (a channel that never varies on the training normals would otherwise turn any change into a huge
    z-score). The z-score is ``whitening @ (r - mean) / std``.
    """
    # Three passes over chunks of images, sums in float64: the residuals stay in their own dtype, so
    # memory is the input plus one chunk (a whole-batch float64 copy of the stride-8 residuals of 256
    # images was over a gigabyte, several times over in temporaries).
    channels = residuals.shape[1]
    chunks = [slice(start, start + STATISTICS_CHUNK) for start in range(0, len(residuals), STATISTICS_CHUNK)]

    def part(index: slice) -> tuple[Tensor, Tensor]:
        return residuals[index].double(), weights[index].double()

    weight = weights.double().sum(0)  # (1, h, w)
    total_weight = weight.sum()
    weighted = sum((r * w).sum(0) for r, w in map(part, chunks))  # (C, h, w)
    channel_mean = weighted.sum(dim=(1, 2)) / total_weight

    def shrunk(total: Tensor, channel: Tensor) -> Tensor:
        return (total + prior * channel[:, None, None]) / (weight + prior)

    mean = shrunk(weighted, channel_mean)
    if whiten:
        covariance = torch.zeros(channels, channels, dtype=torch.float64)
        for r, w in map(part, chunks):
            flat = ((r - mean) * w.sqrt()).permute(0, 2, 3, 1).reshape(-1, channels)
            covariance += flat.t() @ flat
        covariance /= total_weight
        covariance += ridge * covariance.diagonal().mean() * torch.eye(channels, dtype=covariance.dtype)
        whitening = torch.linalg.inv(torch.linalg.cholesky(covariance))
    else:
        whitening = torch.eye(channels, dtype=torch.float64)
    squares = torch.zeros_like(mean)
    for r, w in map(part, chunks):
        centred = r - mean
        if whiten:
            centred = torch.einsum("ij,njhw->nihw", whitening, centred)
        squares += (centred.pow(2) * w).sum(0)
    channel_sq = squares.sum(dim=(1, 2)) / total_weight
    second = shrunk(squares, channel_sq)
    floor = std_floor * float(channel_sq.mean().clamp_min(0).sqrt()) + 1e-6
    return mean.float(), whitening.float(), second.clamp_min(0).sqrt().clamp_min(floor).float()


@torch.no_grad()
def calibrate_error_statistics(detector: OneNIPDetector, data: Sequence[CategoryData], device: torch.device) -> None:
    """Per category, the z-score statistics (``error_statistics``) of the reconstruction residual and of
    the fine prompt residual on up to ``STATISTICS_IMAGES`` fit images (``model.error_normalization``),
    counting a grid cell only where it holds image content (letterboxing). Fit images, not the held-out
    ones: those stay for calibration and validation."""
    from onenip.models.onenip import prompt_residual

    if detector.cfg.error_normalization == "none":
        return
    cfg = detector.cfg
    whiten = cfg.error_normalization == "whitened"
    detector.eval()
    stride = detector.cfg.backbone.feature_stride
    for item in data:
        recon, recon_w, fine, fine_w = [], [], [], []
        for source, source_valid, index in _statistics_images(item):
            for start in range(0, len(index), 16):
                chosen = index[start : start + 16]
                features = source.select(chosen).float().to(device)
                prompt = detector.choose_prompts(features, item.index)
                query = detector.network_input(item.index, features.coarse)
                residual = detector.model.reconstruct(query, detector.network_input(item.index, prompt.coarse)) - query
                valid = None if source_valid is None else source_valid[chosen].float().to(device)
                recon.append(residual.half().cpu())
                recon_w.append(_cell_weight(valid, residual.shape[-2:], stride, len(chosen), device).cpu())
                if features.fine is not None:
                    _, fine_residual = prompt_residual(features.fine, prompt.fine, window=detector.model.residual_window)
                    fine.append(fine_residual.half().cpu())
                    fine_w.append(_cell_weight(valid, fine_residual.shape[-2:], stride // 2, len(chosen), device).cpu())
        for which, residuals, weights in (("recon", recon, recon_w), ("fine", fine, fine_w)):
            if residuals:
                stats = error_statistics(torch.cat(residuals), torch.cat(weights), cfg.statistics_prior, whiten, cfg.whitening_ridge, cfg.error_std_floor)
                detector.set_error_statistics(item.index, which, *stats)


def _statistics_images(item: CategoryData) -> list[tuple[Features, Tensor | None, Tensor]]:
    """(features, valid, index) that the error statistics are estimated on: up to ``STATISTICS_IMAGES``
    evenly spread fit images, and every jittered copy (``add_jittered_normals``)."""
    count = len(item.fit_features)
    sources = [(item.fit_features, item.fit_valid, evenly_spread(count, STATISTICS_IMAGES))]
    if item.jittered is not None:
        sources.append((item.jittered, item.jittered_valid, torch.arange(len(item.jittered))))
    return sources


@torch.no_grad()
def add_jittered_normals(detector: OneNIPDetector, data: Sequence[CategoryData], strength: float, seed: int, colour: float = 0.0) -> None:
    """Per category, up to ``JITTERED_IMAGES`` evenly spread fit images again under a seeded random exposure
    gain and tone-curve gamma, each ``exp(U(-strength, strength))`` (letterbox padding left as it is), their
    features kept on the item (``CategoryData.jittered``). The per-position statistics (Gaussian, error
    z-scores) then count a change of lighting as normal: a position that barely varies on the training
    normals would otherwise turn it into a large z-score over the whole image (benchmarks/README, "Unseen
    A's signature reproduced"). On a category of colour images each copy also gets one gain per channel,
    ``exp(U(-colour, colour))``: a white-balance drift (a grey camera's images never tint, so grey categories
    get none). Nothing to do when both strengths are 0."""
    from onenip.features import extract_features

    if strength <= 0 and colour <= 0:
        return
    for item in data:
        index = evenly_spread(len(item.fit_images), JITTERED_IMAGES)
        generator = torch.Generator().manual_seed(int(seed) * 7919 + 4099 + item.index)
        valid = None if item.fit_valid is None else item.fit_valid[index]
        fit = item.fit_images[index]
        tint = tint_strength(fit, colour)
        images = jittered_images(fit.float() / 255, valid, strength, generator, tint)
        chunks = [extract_features(detector.feature_extractor, images[i : i + STATISTICS_CHUNK], detector.cfg.backbone).half()
                  for i in range(0, len(images), STATISTICS_CHUNK)]  # fmt: skip
        item.jittered = Features.cat(chunks)
        item.jittered_valid = valid


@torch.no_grad()
def fit_standardization(detector: OneNIPDetector, data: Sequence[CategoryData]) -> None:
    """Per category, the statistics the network's inputs and targets are standardised with
    (``model.feature_standardization``; nothing to do for ``none``), over its fit images' content cells:
    each coarse channel's mean (``category``) or mean per grid position (``position``, a position no fit
    image covers takes the channel's mean), and each channel's standard deviation around that mean."""
    mode = detector.cfg.feature_standardization
    if mode == "none":
        return
    stride = detector.cfg.backbone.feature_stride
    for item in data:
        total = sums = squares = None  # per position: weight, weighted sum, weighted sum of squares
        for start in range(0, len(item.fit_features), STATISTICS_CHUNK):
            coarse = item.fit_features.coarse[start : start + STATISTICS_CHUNK].double()
            valid = None if item.fit_valid is None else item.fit_valid[start : start + STATISTICS_CHUNK].float()
            weight = _cell_weight(valid, coarse.shape[-2:], stride, len(coarse), torch.device("cpu")).double()
            parts = (weight.sum(dim=0), (coarse * weight).sum(dim=0), (coarse.pow(2) * weight).sum(dim=0))
            total, sums, squares = parts if sums is None else (total + parts[0], sums + parts[1], squares + parts[2])
        channel_mean = sums.sum(dim=(1, 2)) / total.sum()
        if mode == "position":
            covered = total > 0
            mean = torch.where(covered, sums / total.clamp_min(1e-12), channel_mean[:, None, None])
            # the squared deviations from each position's own mean, summed over positions
            spread = (squares - sums.pow(2) / total.clamp_min(1e-12)).clamp_min(0) * covered
        else:
            mean = channel_mean
            spread = squares - total * channel_mean[:, None, None].pow(2)
        variance = spread.sum(dim=(1, 2)).clamp_min(0) / total.sum()
        std = variance.sqrt().clamp_min(1e-3 * float(channel_mean.abs().mean()) + 1e-6)
        detector.set_standardization(item.index, mean.float().to(detector.device), std.float().to(detector.device))


@torch.no_grad()
def fit_gaussians(detector: OneNIPDetector, data: Sequence[CategoryData]) -> None:
    """Per category, the per-position Gaussian (``onenip.models.gaussian``) of ALL its fit images'
    features (PaDiM's full covariance needs many images: on magnetic_tile's validation data 256 of
    its 685 gave image AUROC 0.90, all of them 0.95) and of their jittered copies, a letterboxed cell
    counting where it holds image content. Nothing to do when ``model.gaussian_channels`` is 0."""
    if not detector.has_gaussian:
        return
    backbone = detector.cfg.backbone
    stride = backbone.fine_stride if detector.has_fine else backbone.feature_stride
    for item in data:
        chunks = []
        for features, valids in ((item.fit_features, item.fit_valid), (item.jittered, item.jittered_valid)):
            for start in range(0, 0 if features is None else len(features), STATISTICS_CHUNK):
                index = slice(start, start + STATISTICS_CHUNK)
                source = detector.gaussian_source(features.select(index))
                valid = None if valids is None else valids[index].float()
                chunks.append((source, _cell_weight(valid, source.shape[-2:], stride, len(source), torch.device("cpu"))))
        mean, precision = fit_position_gaussian(chunks, detector.cfg.statistics_prior)
        detector.set_gaussian(item.index, mean.to(detector.device), precision.to(detector.device))


@torch.no_grad()
def fit_memory_banks(detector: OneNIPDetector, data: Sequence[CategoryData], seed: int) -> None:
    """Per category, PatchCore's memory bank (``onenip.models.memory``) of its fit images: k-center
    greedy picks ``model.memory_patches`` of a seeded uniform sample (at most ``model.memory_candidates``
    per bank patch) of all their locally aware patches, letterbox padding excluded; with
    ``model.memory_jitter`` the jittered copies' patches (``add_jittered_normals``) are sampled too. A
    category with fewer patches than the bank keeps every patch (repeated to fill it). Nothing to do when
    ``model.memory_patches`` is 0."""
    if not detector.has_memory:
        return
    size = detector.cfg.memory_patches
    for item in data:
        sources = [(item.fit_features, item.fit_valid)]
        if detector.cfg.memory_jitter and item.jittered is not None:
            sources.append((item.jittered, item.jittered_valid))
        chunks = [(features, valid, start) for features, valid in sources for start in range(0, len(features), STATISTICS_CHUNK)]
        contents = [_content_cells(detector, *chunk) for chunk in chunks]
        counts = [int(content.sum()) for content in contents]
        generator = torch.Generator().manual_seed(seed * 7919 + item.index)
        sample = torch.randperm(sum(counts), generator=generator)[: size * detector.cfg.memory_candidates].sort().values
        candidates, offset = [], 0
        for (features, _, start), content, count in zip(chunks, contents, counts, strict=True):
            chunk = features.select(slice(start, start + STATISTICS_CHUNK)).float()
            embedding = detector.memory_embedding(chunk.to(detector.device)).cpu()
            patches = embedding.flatten(2).transpose(1, 2)[content]  # (count, C) in image, row, column order
            lo, hi = torch.searchsorted(sample, torch.tensor([offset, offset + count]))
            candidates.append(patches[sample[lo:hi] - offset])
            offset += count
        points = torch.cat(candidates)
        chosen = kcenter_greedy(points, size, generator)
        bank = points[chosen.repeat(-(-size // len(chosen)))[:size]]
        detector.set_memory(item.index, bank.to(detector.device))


def _content_cells(detector: OneNIPDetector, features: Features, valid: Tensor | None, start: int) -> Tensor:
    """(n, h*w) bool: the patches of the chunk of ``STATISTICS_CHUNK`` images from ``start`` that hold image content."""
    stride = detector.cfg.backbone.fine_stride if detector.has_fine else detector.cfg.backbone.feature_stride
    chunk = features.select(slice(start, start + STATISTICS_CHUNK))
    grid = (chunk.fine if chunk.fine is not None else chunk.coarse).shape[-2:]
    valid = None if valid is None else valid[start : start + STATISTICS_CHUNK].float()
    return _cell_weight(valid, grid, stride, len(chunk), torch.device("cpu")).flatten(1) > 0.5


def _cell_weight(valid: Tensor | None, grid: tuple[int, int] | torch.Size, stride: int, count: int, device: torch.device) -> Tensor:
    """(N, 1, h, w): 1 where a grid cell is mostly image content (always, without letterboxing)."""
    if valid is None:
        return torch.ones(count, 1, *grid, device=device)
    return (torch.nn.functional.avg_pool2d(valid, stride) >= 0.5).float()


@torch.no_grad()
def calibrate_scales(
    detector: OneNIPDetector, data: Sequence[CategoryData], device: torch.device, weights: Sequence[float] | None = None,
) -> None:
    """Per category, the typical maximum of each error map on held-out training normals.

    ``recon_scale`` / ``residual_scale`` / ``gaussian_scale`` / ``memory_scale`` = the mean over held-out
    normals of each image's maximum of the reconstruction-error / prompt-residual / Gaussian-distance /
    memory-distance map, so after division a normal image peaks near 1.
    The reference code uses the *test set's* (max + min) / 2; we never look at test data. With no
    holdout (fraction 0) the fit images are used, which is optimistic and documented as such.
    """
    detector.eval()
    for item in data:
        features = item.holdout_features if len(item.holdout_features) else item.fit_features
        detector.recon_scale[item.index] = 1.0
        detector.residual_scale[item.index] = 1.0
        detector.gaussian_scale[item.index] = 1.0
        detector.memory_scale[item.index] = 1.0
        recon_max, residual_max, gaussian_max, memory_max = [], [], [], []
        valid = item.holdout_valid if len(item.holdout_features) else item.fit_valid
        for start in range(0, len(features), 16):
            chunk = features.select(slice(start, start + 16)).float().to(device)
            recon, _, residual, gaussian, memory = detector.components(chunk, item.index, weights=weights)
            mask = None if valid is None else valid[start : start + 16].to(device)
            if recon is not None:
                recon_max.append(_masked_max(recon, mask))
            if residual is not None:
                residual_max.append(_masked_max(residual, mask))
            if gaussian is not None:
                gaussian_max.append(_masked_max(gaussian, mask))
            if memory is not None:
                memory_max.append(_masked_max(memory, mask))
        if recon_max:
            detector.recon_scale[item.index] = float(torch.cat(recon_max).mean().clamp_min(1e-6))
        if residual_max:
            detector.residual_scale[item.index] = float(torch.cat(residual_max).mean().clamp_min(1e-6))
        if gaussian_max:
            detector.gaussian_scale[item.index] = float(torch.cat(gaussian_max).mean().clamp_min(1e-6))
        if memory_max:
            detector.memory_scale[item.index] = float(torch.cat(memory_max).mean().clamp_min(1e-6))


def _masked_max(maps: Tensor, valid: Tensor | None) -> Tensor:
    if valid is not None:
        maps = maps * valid.to(maps.dtype)
    return maps.flatten(1).amax(dim=1).cpu()


def scale_refiner(detector: OneNIPDetector, category: str, components: list[Tensor | None]) -> list[Tensor | None]:
    """Set category's ``refiner_scale`` to the midpoint of its normalised reconstruction error's range on
    its validation images, as the reference scales the refiner's probability before blending (it takes
    the TEST set's (max + min) / 2; validation images are training data), and scale the validation
    refiner map alike. Maxima and minima of the quarter-size maps, as validation sees them."""
    k = detector.category_index(category)
    recon, refiner = components[0], components[1]
    if recon is None or refiner is None:
        return components
    previous = float(detector.refiner_scale[k])
    scale = float((recon.amax() + recon.amin()) / 2)
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    detector.refiner_scale[k] = scale
    return [components[0], refiner * (scale / previous), *components[2:]]


STATISTICS_ONLY = (False, False, False, True, True)
"""The maps a statistics-only model (``train.network: none``) may use: the Gaussian and the memory bank."""


def fallback_rule(detector: OneNIPDetector, params: Params, statistics_only: bool = False) -> ScoringRule:
    """The rule of a category too small to validate: ``validation.small_category_weights`` over the maps the
    model has (a statistics-only model: not the network's), renormalised, with ``model.scoring``'s smoothing
    and pooling. None of them there: ``model.scoring`` (a statistics-only model: its memory bank alone, the
    Gaussian without a bank). The default, Gaussian + memory 0.5 / 0.5, was chosen leave-one-category-out on
    the five development categories cut to 18 training images (benchmarks/README, "Categories too small")."""
    scoring = params.model.scoring
    network = not statistics_only
    present = (network, network, network and detector.has_fine, detector.has_gaussian, detector.has_memory)
    weights = [w if ok else 0.0 for w, ok in zip(params.validation.small_category_weights, present, strict=True)]
    if sum(weights) <= 0 and network:
        return ScoringRule(padded_weights(scoring.weights), scoring.smoothing_sigma, scoring.score_pool_size)
    if sum(weights) <= 0:
        weights = [0.0, 0.0, 0.0, 0.0, 1.0] if detector.has_memory else [0.0, 0.0, 0.0, 1.0, 0.0]
    total = sum(weights)
    return ScoringRule(tuple(w / total for w in weights), scoring.smoothing_sigma, scoring.score_pool_size)


@torch.no_grad()
def calibrate_threshold(
    detector: OneNIPDetector, data: Sequence[CategoryData], threshold_quantile: float, device: torch.device, *, calibrated: bool = False,
) -> dict[str, list[float]]:
    """Map statistics and scales (unless ``calibrated``: ``validate`` has just set them for the current
    weights), then the decision threshold per category: the ``threshold_quantile`` of the held-out
    training normals' image scores under the model's scoring rule. Returns those scores per category
    (saved with the model: ``onenip threshold --fpr`` sets an operating point from them later)."""
    if not calibrated:
        calibrate_error_statistics(detector, data, device)
        calibrate_scales(detector, data, device)
    calibration: dict[str, list[float]] = {}
    for item in data:
        holdout = len(item.holdout_features) > 0
        features = item.holdout_features if holdout else item.fit_features
        valid = item.holdout_valid if holdout else item.fit_valid
        scores = []
        for start in range(0, len(features), 16):
            chunk = features.select(slice(start, start + 16)).float().to(device)
            mask = None if valid is None else valid[start : start + 16].to(device)
            scores.append(detector.forward_features(chunk, item.index, mask).pred_score.float().cpu())
        detector.score_threshold[item.index] = float(torch.quantile(torch.cat(scores), threshold_quantile))
        calibration[detector.categories[item.index]] = [round(float(s), 6) for s in torch.cat(scores)]
    return calibration
