"""Supervised refiner: turns the reconstruction residual into a sharp anomaly logit map."""

from __future__ import annotations

from torch import Tensor, nn


class Refiner(nn.Module):
    """Two blocks of [3x3 conv, BN, ReLU, 2x transposed conv], then a 1x1 conv to one logit map.

    Input (B, C, h, w) = ``|reconstruction - features|`` on the stride-16 grid; output (B, 1, 4h, 4w).
    The caller upsamples the logits to the image size (OneNIP Sec. 3.4, "unsupervised reconstruction
    error -> supervised mask").
    """

    def __init__(self, in_features: int, hidden_dim: int = 128, num_blocks: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_features
        for _ in range(num_blocks):
            blocks += [
                nn.Conv2d(channels, hidden_dim, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(hidden_dim, hidden_dim, kernel_size=2, stride=2),
            ]
            channels = hidden_dim
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, residual: Tensor) -> Tensor:
        return self.head(self.blocks(residual))
