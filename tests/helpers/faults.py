"""Fault planters for validation tests: each damages one MVTec-layout category folder in place.

A planter takes a category folder (``train/good``, ``test/good``, ``test/<defect>`` with masks under
``ground_truth/<defect>/<stem>_mask.png``) and returns the files validation must name for the fault
(``[]`` for category-level faults such as too few train images). ``FAULTS`` maps each fault to its
planter and the expectation that must report it. The defaults suit the 32x32 trees of
``tests.helpers.trees.make_mvtec_tree``; keyword arguments give the subtler damage used on large real
images (``tests/integration/test_validate_real.py``).

``plant_and_validate`` plants a set of faults, one category each, and validates the whole tree once
(a Great Expectations run costs about a second), checking that validation wrote nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from onenip.data.validate import ValidationResult, validate_dataset

Planter = Callable[[Path], list[Path]]

# Expectation names as ``onenip.data.validate`` reports them, written out so a rename fails the tests.
DECODABLE = "expect_column_values_to_be_in_set(decodable)"
TRAIN_NORMAL = "expect_column_values_to_be_in_set(label_index where split == 'train')"
MASK_PRESENT = "expect_column_values_to_not_be_null(mask_path where mask_required)"
MASK_READABLE = "expect_column_values_to_be_in_set(mask_readable)"
MASK_SIZE = "expect_column_values_to_be_in_set(mask_size_matches)"
MASK_BINARY = "expect_column_values_to_be_in_set(mask_binary)"
NORMAL_NO_MASK = "expect_column_values_to_be_null(mask_path where label_index == 0)"
NO_LEAKAGE = "expect_column_values_to_be_in_set(leaks_across_splits)"
MIN_TRAIN = "expect_column_values_to_be_between(num_train_normal)"
TEST_NORMAL = "expect_column_values_to_be_between(num_test_normal)"
TEST_ANOMALOUS = "expect_column_values_to_be_between(num_test_anomalous)"
ONE_PROMPT = "expect_column_values_to_be_between(num_prompts)"


# ------------------------------------------------------------------------------ finding the victims


def train_images(category_dir: Path) -> list[Path]:
    """``train/good/*.png``, sorted."""
    return sorted((category_dir / "train" / "good").glob("*.png"))


def good_test_images(category_dir: Path) -> list[Path]:
    """``test/good/*.png``, sorted."""
    return sorted((category_dir / "test" / "good").glob("*.png"))


def first_anomalous(category_dir: Path) -> tuple[Path, Path]:
    """First anomalous test image (defect folders and files sorted) that has a mask, and its mask."""
    for defect_dir in sorted(d for d in (category_dir / "test").iterdir() if d.is_dir() and d.name != "good"):
        for image in sorted(defect_dir.glob("*.png")):
            mask = category_dir / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
            if mask.is_file():
                return image, mask
    raise AssertionError(f"no anomalous test image with a mask under {category_dir}")


# ---------------------------------------------------------------- planters: category folder in, files to name out


def plant_zero_byte(category_dir: Path) -> list[Path]:
    victim = train_images(category_dir)[0]
    victim.write_bytes(b"")
    return [victim]


def plant_garbage_bytes(category_dir: Path) -> list[Path]:
    victim = category_dir / "train" / "good" / "zz_garbage.png"
    victim.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return [victim]


def plant_truncated_png(category_dir: Path, cut_bytes: int | None = None) -> list[Path]:
    """Cut ``cut_bytes`` off the end of the first anomalous image (default: its second half).

    An anomalous image with a mask: the mask checks must not pile on once the image is unreadable.
    """
    victim, _ = first_anomalous(category_dir)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 if cut_bytes is None else len(data) - cut_bytes])
    return [victim]


def plant_truncated_jpeg(category_dir: Path, cut_bytes: int | None = None) -> list[Path]:
    """Add a JPEG copy of the first train image with ``cut_bytes`` cut off its end (default: the last 40%)."""
    victim = category_dir / "train" / "good" / "zz_truncated.jpg"
    with Image.open(train_images(category_dir)[0]) as image:
        image.convert("RGB").save(victim, quality=95)
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.6) if cut_bytes is None else len(data) - cut_bytes])
    return [victim]


def plant_anomalous_train_image(category_dir: Path) -> list[Path]:
    source, _ = first_anomalous(category_dir)
    victim = category_dir / "train" / source.parent.name / "zz_defect.png"
    victim.parent.mkdir(parents=True)
    with Image.open(source) as image:  # mirrored so it is not also a byte copy of a test image
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)
    return [victim]


def plant_missing_mask(category_dir: Path) -> list[Path]:
    victim, mask = first_anomalous(category_dir)
    mask.unlink()
    return [victim]


def plant_unreadable_mask(category_dir: Path, keep_bytes: int | None = None) -> list[Path]:
    """Overwrite the first mask with text, or with its first ``keep_bytes`` bytes (header, no pixels)."""
    victim, mask = first_anomalous(category_dir)
    mask.write_bytes(b"not a png at all" if keep_bytes is None else mask.read_bytes()[:keep_bytes])
    return [victim]


def plant_mask_wrong_size(category_dir: Path, scale: float | None = None) -> list[Path]:
    """Resize the first mask: 2 px narrower by default (``mask 30x32 vs image 32x32``), else by ``scale``."""
    victim, mask = first_anomalous(category_dir)
    with Image.open(mask) as image:
        image.load()
    if scale is None:
        size = (image.width - 2, image.height)
    else:
        size = (int(image.width * scale), int(image.height * scale))
    image.resize(size, Image.Resampling.NEAREST).save(mask)
    return [victim]


def plant_mask_not_binary(category_dir: Path, bilinear: bool = False) -> list[Path]:
    """Give the first mask grey values: four pixels of 128, or (``bilinear``) soft edges from resampling."""
    victim, mask = first_anomalous(category_dir)
    with Image.open(mask) as image:
        image.load()
    if bilinear:
        # Bilinear up/down sampling leaves grey edges: the classic way a mask stops being binary.
        image.resize((image.width // 3, image.height // 3), Image.Resampling.BILINEAR).resize(
            image.size, Image.Resampling.BILINEAR
        ).save(mask)
    else:
        array = np.asarray(image.convert("L")).copy()
        array[0, :4] = 128  # a soft edge, as resizing a mask bilinearly would leave
        Image.fromarray(array).save(mask)
    return [victim]


def plant_normal_with_mask(category_dir: Path) -> list[Path]:
    victim = good_test_images(category_dir)[0]
    with Image.open(victim) as image:
        size = image.size
    mask = category_dir / "ground_truth" / "good" / f"{victim.stem}_mask.png"
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 0).save(mask)
    return [victim]


def plant_leak(category_dir: Path) -> list[Path]:
    source = train_images(category_dir)[0]
    copy = category_dir / "test" / "good" / "zz_copy_of_train.png"
    shutil.copyfile(source, copy)
    return [source, copy]


def plant_too_few_train(category_dir: Path, keep: int = 5) -> list[Path]:
    """Delete all but the first ``keep`` train images."""
    for path in train_images(category_dir)[keep:]:
        path.unlink()
    return []


def plant_no_anomalous_test(category_dir: Path) -> list[Path]:
    for folder in (category_dir / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(category_dir / "ground_truth")
    return []


def plant_no_normal_test(category_dir: Path) -> list[Path]:
    shutil.rmtree(category_dir / "test" / "good")
    return []


# Fault name (a test id and a category name) -> (planter, the one expectation that must report it).
FAULTS: dict[str, tuple[Planter, str]] = {
    "zero_byte_image": (plant_zero_byte, DECODABLE),
    "garbage_bytes_image": (plant_garbage_bytes, DECODABLE),
    "truncated_png": (plant_truncated_png, DECODABLE),
    "truncated_jpeg": (plant_truncated_jpeg, DECODABLE),
    "anomalous_train_image": (plant_anomalous_train_image, TRAIN_NORMAL),
    "missing_mask": (plant_missing_mask, MASK_PRESENT),
    "unreadable_mask": (plant_unreadable_mask, MASK_READABLE),
    "mask_wrong_size": (plant_mask_wrong_size, MASK_SIZE),
    "mask_not_binary": (plant_mask_not_binary, MASK_BINARY),
    "normal_test_with_mask": (plant_normal_with_mask, NORMAL_NO_MASK),
    "train_test_leak": (plant_leak, NO_LEAKAGE),
    "too_few_train": (plant_too_few_train, MIN_TRAIN),
    "test_without_anomalous": (plant_no_anomalous_test, TEST_ANOMALOUS),
    "test_without_normal": (plant_no_normal_test, TEST_NORMAL),
}


# ------------------------------------------------------------------------------ planting and validating


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class PlantedTree(NamedTuple):
    root: Path
    offending: dict[str, list[Path]]
    """Category name -> the files its planter returned."""
    result: ValidationResult
    unchanged: bool
    """Every file hashes the same after validation as before."""


def plant_and_validate(root: Path, planters: Mapping[str, Planter]) -> PlantedTree:
    """Run each planter on the category folder of the same name under ``root``, then validate ``root`` once."""
    offending = {name: plant(root / name) for name, plant in planters.items()}
    before = tree_hashes(root)
    result = validate_dataset(root, progress=False)
    return PlantedTree(root, offending, result, unchanged=tree_hashes(root) == before)
