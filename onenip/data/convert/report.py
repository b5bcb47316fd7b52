"""What a conversion reports: images per category, and what was left out or changed, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

EXCLUDED_TRAIN_ANOMALY = "anomalous image in the train split (MVTec layout trains on normals only)"
EXCLUDED_NO_MASK = "anomalous image without a mask"
EXCLUDED_NOT_IMAGE = "not an image file"
NOTE_MASK_BINARISED = "masks with values other than 0/255 (binarised)"
NOTE_EMPTY_MASK = "anomalous images whose mask is empty after binarising"
NOTE_REENCODED = "images re-encoded as PNG (extension not in IMG_EXTENSIONS)"
NOTE_EXTRA_FILES = "license/readme files copied"


@dataclass
class CategoryCounts:
    """What one category holds after conversion."""

    train_normal: int = 0
    test_normal: int = 0
    test_anomalous: int = 0
    masks: int = 0
    defect_types: dict[str, int] = field(default_factory=dict)  # defect type -> test images

    @property
    def num_images(self) -> int:
        return self.train_normal + self.test_normal + self.test_anomalous


@dataclass
class ConversionReport:
    """Outcome of one conversion: counts per category and what was left out, and why."""

    format: str
    out: Path
    src: Path | None = None
    categories: dict[str, CategoryCounts] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of source images left out
    notes: dict[str, int] = field(default_factory=dict)  # things done to files that were kept
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return sum(counts.num_images for counts in self.categories.values())

    @property
    def num_excluded(self) -> int:
        return sum(self.excluded.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per category: ``train_normal, test_normal, test_anomalous, masks, defect_types``."""
        rows = [
            {
                "category": name,
                "train_normal": counts.train_normal,
                "test_normal": counts.test_normal,
                "test_anomalous": counts.test_anomalous,
                "masks": counts.masks,
                "defect_types": ", ".join(f"{k}={v}" for k, v in sorted(counts.defect_types.items())),
            }
            for name, counts in sorted(self.categories.items())
        ]
        columns = ["category", "train_normal", "test_normal", "test_anomalous", "masks", "defect_types"]
        return pd.DataFrame(rows, columns=columns)

    def __str__(self) -> str:
        num_categories = len(self.categories)
        lines = [
            f"{self.format} -> {self.out}: {self.num_images} images in {num_categories} "
            f"{'category' if num_categories == 1 else 'categories'} ({self.seconds:.1f} s)",
            self.to_frame().to_string(index=False),
        ]
        if self.excluded:
            lines.append(f"excluded ({self.num_excluded}):")
            lines.extend(f"  {reason}: {count}" for reason, count in sorted(self.excluded.items()))
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  {note}: {count}" for note, count in sorted(self.notes.items()))
        return "\n".join(lines)
