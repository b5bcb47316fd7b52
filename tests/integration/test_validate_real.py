"""Validation on real data: plant each fault in a small copy of MVTec bottle and assert it is reported by name.

The copy holds one category per fault (12 train images of its own, 3 ``test/good``, 3 ``test/broken_large``
with masks), so one validation run covers every fault and shows that the other categories (and the other
expectations in the faulty one) still pass. The full bottle, kolektor and magnetic_tile trees are
validated as they are.
"""

from __future__ import annotations

import filecmp
import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from onenip.data.validate import DataValidationError, ValidationResult, validate_dataset

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "industrial"
BOTTLE = DATA_ROOT / "bottle"
DEFECT = "broken_large"
NUM_TRAIN, NUM_TEST_GOOD, NUM_TEST_BAD = 12, 3, 3

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not BOTTLE.is_dir(), reason=f"real data not found at {DATA_ROOT} (../shared/datasets/industrial)"
    ),
]

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


def _copy_bottle_subset(category_dir: Path, train_offset: int) -> None:
    """12 train images starting at ``train_offset`` (distinct per category), 3 good and 3 broken test images."""
    train = sorted((BOTTLE / "train" / "good").glob("*.png"))[train_offset : train_offset + NUM_TRAIN]
    test_good = sorted((BOTTLE / "test" / "good").glob("*.png"))[:NUM_TEST_GOOD]
    test_bad = sorted((BOTTLE / "test" / DEFECT).glob("*.png"))[:NUM_TEST_BAD]
    copies = [(path, category_dir / "train" / "good" / path.name) for path in train]
    copies += [(path, category_dir / "test" / "good" / path.name) for path in test_good]
    for path in test_bad:
        copies.append((path, category_dir / "test" / DEFECT / path.name))
        mask = BOTTLE / "ground_truth" / DEFECT / f"{path.stem}_mask.png"
        copies.append((mask, category_dir / "ground_truth" / DEFECT / mask.name))
    for source, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _train(category_dir: Path) -> list[Path]:
    return sorted((category_dir / "train" / "good").glob("*.png"))


def _anomalous(category_dir: Path) -> tuple[Path, Path]:
    image = sorted((category_dir / "test" / DEFECT).glob("*.png"))[0]
    return image, category_dir / "ground_truth" / DEFECT / f"{image.stem}_mask.png"


def _zero_byte(d: Path) -> list[Path]:
    _train(d)[0].write_bytes(b"")
    return _train(d)[:1]


def _garbage(d: Path) -> list[Path]:
    victim = d / "train" / "good" / "zz_garbage.png"
    victim.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    return [victim]


def _truncated_png(d: Path) -> list[Path]:
    victim, _ = _anomalous(d)
    victim.write_bytes(victim.read_bytes()[:-4000])  # most of the pixels are still there
    return [victim]


def _truncated_jpeg(d: Path) -> list[Path]:
    victim = d / "train" / "good" / "zz_truncated.jpg"
    with Image.open(_train(d)[0]) as image:
        image.convert("RGB").save(victim, quality=95)
    victim.write_bytes(victim.read_bytes()[:-2000])
    return [victim]


def _anomalous_in_train(d: Path) -> list[Path]:
    source, _ = _anomalous(d)
    victim = d / "train" / DEFECT / "zz_defect.png"
    victim.parent.mkdir()
    with Image.open(source) as image:
        image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(victim)
    return [victim]


def _missing_mask(d: Path) -> list[Path]:
    victim, mask = _anomalous(d)
    mask.unlink()
    return [victim]


def _unreadable_mask(d: Path) -> list[Path]:
    victim, mask = _anomalous(d)
    mask.write_bytes(mask.read_bytes()[:100])
    return [victim]


def _mask_wrong_size(d: Path) -> list[Path]:
    victim, mask = _anomalous(d)
    with Image.open(mask) as image:
        image.load()
    image.resize((image.width // 2, image.height // 2), Image.Resampling.NEAREST).save(mask)
    return [victim]


def _mask_not_binary(d: Path) -> list[Path]:
    victim, mask = _anomalous(d)
    with Image.open(mask) as image:
        image.load()
    # Bilinear up/down sampling leaves grey edges: the classic way a mask stops being binary.
    image.resize((image.width // 3, image.height // 3), Image.Resampling.BILINEAR).resize(
        image.size, Image.Resampling.BILINEAR
    ).save(mask)
    return [victim]


def _normal_with_mask(d: Path) -> list[Path]:
    victim = sorted((d / "test" / "good").glob("*.png"))[0]
    with Image.open(victim) as image:
        size = image.size
    mask = d / "ground_truth" / "good" / f"{victim.stem}_mask.png"
    mask.parent.mkdir()
    Image.new("L", size, 0).save(mask)
    return [victim]


def _leak(d: Path) -> list[Path]:
    source = _train(d)[0]
    copy = d / "test" / "good" / "zz_leaked.png"
    shutil.copyfile(source, copy)
    return [source, copy]


def _too_few_train(d: Path) -> list[Path]:
    for path in _train(d)[6:]:
        path.unlink()
    return []


def _no_anomalous_test(d: Path) -> list[Path]:
    shutil.rmtree(d / "test" / DEFECT)
    shutil.rmtree(d / "ground_truth")
    return []


def _no_normal_test(d: Path) -> list[Path]:
    shutil.rmtree(d / "test" / "good")
    return []


FAULTS: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    "zero_byte_image": (_zero_byte, DECODABLE),
    "garbage_bytes_image": (_garbage, DECODABLE),
    "truncated_png": (_truncated_png, DECODABLE),
    "truncated_jpeg": (_truncated_jpeg, DECODABLE),
    "anomalous_train_image": (_anomalous_in_train, TRAIN_NORMAL),
    "missing_mask": (_missing_mask, MASK_PRESENT),
    "unreadable_mask": (_unreadable_mask, MASK_READABLE),
    "mask_wrong_size": (_mask_wrong_size, MASK_SIZE),
    "mask_not_binary": (_mask_not_binary, MASK_BINARY),
    "normal_test_with_mask": (_normal_with_mask, NORMAL_NO_MASK),
    "train_test_leak": (_leak, NO_LEAKAGE),
    "too_few_train": (_too_few_train, MIN_TRAIN),
    "test_without_anomalous": (_no_anomalous_test, TEST_ANOMALOUS),
    "test_without_normal": (_no_normal_test, TEST_NORMAL),
}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Planted(NamedTuple):
    root: Path
    offending: dict[str, list[Path]]
    result: ValidationResult
    unchanged: bool


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    root = tmp_path_factory.mktemp("bottle_faults")
    names = ["clean", *FAULTS]
    for index, name in enumerate(names):
        _copy_bottle_subset(root / name, train_offset=index * NUM_TRAIN)
    offending = {name: plant(root / name) for name, (plant, _) in FAULTS.items()}
    before = _hashes(root)
    result = validate_dataset(root, progress=False)
    return Planted(root, offending, result, unchanged=_hashes(root) == before)


def test_clean_copy_of_bottle_passes(tmp_path: Path) -> None:
    _copy_bottle_subset(tmp_path / "bottle", train_offset=0)
    result = validate_dataset(tmp_path, progress=False)
    assert result.success, result.to_markdown()
    assert result.num_images == NUM_TRAIN + NUM_TEST_GOOD + NUM_TEST_BAD


@pytest.mark.parametrize("fault", list(FAULTS))
def test_planted_fault_in_real_images_is_reported(planted: Planted, fault: str) -> None:
    offending, result = planted.offending, planted.result
    expectation = FAULTS[fault][1]

    assert sorted({issue.expectation for issue in result.issues if issue.category == fault}) == [expectation], (
        result.to_markdown()
    )
    (issue,) = [issue for issue in result.issues if issue.category == fault]
    assert {str(path.resolve()) for path in offending[fault]} <= set(issue.files)
    if not offending[fault]:
        assert issue.files == []
        assert issue.observed


def test_untouched_category_passes_and_files_are_unchanged(planted: Planted) -> None:
    result = planted.result
    assert planted.unchanged  # validation only reads
    assert not [issue for issue in result.issues if issue.category == "clean"]
    assert sorted(result.failed_expectations) == sorted({expectation for _, expectation in FAULTS.values()})
    with pytest.raises(DataValidationError, match="leaks_across_splits"):
        result.raise_for_failure()


def test_real_trees_pass_every_check_but_known_leaks() -> None:
    """Full bottle, kolektor and magnetic_tile (about 2,000 images): every check passes except leakage.

    KolektorSDD as converted holds byte-identical images in train/good and test/good; validation must find
    exactly such pairs and nothing else.
    """
    categories = [name for name in ("bottle", "kolektor", "magnetic_tile") if (DATA_ROOT / name).is_dir()]
    started = time.perf_counter()
    result = validate_dataset(DATA_ROOT, categories, progress=False)
    seconds = time.perf_counter() - started

    assert result.num_categories == len(categories)
    assert set(result.failed_expectations) <= {NO_LEAKAGE}, result.to_markdown()
    named = [Path(path) for issue in result.issues for path in issue.files]
    train = [path for path in named if path.parent.parent.name == "train"]
    test = [path for path in named if path.parent.parent.name == "test"]
    assert len(train) + len(test) == len(named)
    for path in test:  # every reported test image has a byte-identical train twin, and the other way round
        assert any(filecmp.cmp(path, other, shallow=False) for other in train), path
    for path in train:
        assert any(filecmp.cmp(path, other, shallow=False) for other in test), path
    print(f"validated {result.num_images} real images in {seconds:.1f}s: {result.statistics['seconds']}")
