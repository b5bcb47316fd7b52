"""What a multi-category model is to the code that scores with it, torch-free: the one ``category_index``
(``CategoryIndex``, shared by both detectors and the predictors' category choice) and the
``CategoryDetector`` protocol, the part of a detector that ``TorchPredictor`` and evaluation call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the protocol names torch types; importing this module never imports torch
    import torch

    from onenip.data.geometry import InputGeometry
    from onenip.models.features import Features


class CategoryIndex:
    """``categories`` and the index of one of them, with one clear error naming the known ones."""

    categories: list[str]

    def category_index(self, category: str) -> int:
        try:
            return self.categories.index(category)
        except ValueError:
            msg = f"Unknown category {category!r}; this model knows {self.categories}"
            raise ValueError(msg) from None


class CategoryDetector(Protocol):
    """A detector that scores images of its categories (``OneNIPDetector``, ``GeneralistDetector``)."""

    categories: list[str]
    score_threshold: torch.Tensor

    @property
    def device(self) -> torch.device: ...

    def category_index(self, category: str) -> int: ...

    def geometry(self, category: str) -> InputGeometry: ...

    def extract(self, images: torch.Tensor) -> Features: ...

    def forward_features(self, features: Features, category: int, valid: torch.Tensor | None = None) -> Any: ...
