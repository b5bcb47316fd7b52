"""OneNIP's own transfer to an unseen category: a unified OneNIP network trained on other categories,
prompted with k normal images of the new one, no training, no per-category statistics.

This is the baseline the few-shot generalist must beat (issue "Few-shot generalist mode"): each query
is reconstructed once per prompt and keeps, per position, the smallest reconstruction error over the
k prompts (k = 1 is the paper's one-prompt setting). The whitening statistics, scale calibration and
refiner blend that a trained category gets need that category's training data, so the map is the
raw reconstruction error (the paper's unsupervised map), smoothed like the generalist's; the image
score is its maximum. The interface is the one ``onenip.evaluation.evaluate`` uses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onenip.data.geometry import InputGeometry, square_geometry
from onenip.models.features import Features
from onenip.models.detector import DetectorOutput, OneNIPDetector
from onenip.models.blur import masked_gaussian_smooth


class OneNIPTransfer(nn.Module):
    """A trained ``OneNIPDetector`` applied to one unseen ``category`` with ``prompts`` (k, ...)."""

    def __init__(self, detector: OneNIPDetector, category: str, prompts: Features, smoothing_sigma: float = 4.0) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.categories = [category]
        self.geometry_: InputGeometry = square_geometry(detector.cfg.backbone.input_size)
        self.smoothing_sigma = float(smoothing_sigma)
        self.register_buffer("prompt_coarse", prompts.coarse.detach().float().clone())
        self.register_buffer("prompt_fine", None if prompts.fine is None else prompts.fine.detach().float().clone())
        self.register_buffer("score_threshold", torch.tensor([float("inf")]))
        self.to(detector.device)  # the prompts where the trained network is (CUDA after GPU training)

    @property
    def device(self) -> torch.device:
        return self.score_threshold.device

    def category_index(self, category: str) -> int:
        if category not in self.categories:
            msg = f"Unknown category {category!r}; this transfer model scores {self.categories}"
            raise ValueError(msg)
        return 0

    def geometry(self, category: str | int) -> InputGeometry:
        return self.geometry_

    def prompt(self, k: int) -> Features:
        return Features(self.prompt_coarse, self.prompt_fine)

    def standardized(self, coarse: Tensor) -> Tensor:
        """As the network reads a category's features (``model.feature_standardization``): standardised per
        channel, here with the k prompts' statistics (the new category has no other data); ``position``
        centres each position on the prompts' mean there when there are at least two."""
        mode = self.detector.cfg.feature_standardization
        if mode == "none":
            return coarse
        if mode == "position" and len(self.prompt_coarse) > 1:
            mean = self.prompt_coarse.mean(dim=0)
        else:
            mean = self.prompt_coarse.mean(dim=(0, 2, 3))[:, None, None]
        std = self.prompt_coarse.std(dim=(0, 2, 3))[:, None, None].clamp_min(1e-6)
        return (coarse - mean) / std

    def recon_error(self, features: Features) -> Tensor:
        """(B, 1, H, W): per position, the smallest reconstruction error over the k prompts."""
        best: Tensor | None = None
        for j in range(self.prompt_coarse.shape[0]):
            fine = None if self.prompt_fine is None else self.prompt_fine[j : j + 1]
            out = self.detector.model(self.standardized(features.coarse), self.standardized(self.prompt_coarse[j : j + 1]), features.fine, fine,
                                      image_size=self.geometry_.size)  # fmt: skip
            best = out.recon_map if best is None else torch.minimum(best, out.recon_map)
        assert best is not None  # at least one prompt
        return best

    def forward_features(self, features: Features, category: int, valid: Tensor | None = None) -> DetectorOutput:
        anomaly_map = masked_gaussian_smooth(self.recon_error(features), self.smoothing_sigma, valid)
        scores = anomaly_map.flatten(1).amax(dim=1)
        return DetectorOutput(anomaly_map, scores, [anomaly_map, None, None])
