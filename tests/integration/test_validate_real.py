"""Validation on real data: plant each fault in a small copy of MVTec bottle and assert it is reported by name.

The copy holds one category per fault (12 train images of its own, 3 ``test/good``, 3 ``test/broken_large``
with masks), so one validation run covers every fault and shows that the other categories (and the other
expectations in the faulty one) still pass. The planters are the unit tests' (``tests.helpers.faults``),
with subtler damage where real images are large. The full bottle, kolektor and magnetic_tile trees are
validated as they are.
"""

from __future__ import annotations

import filecmp
import shutil
import time
from functools import partial
from pathlib import Path

import pytest

from onenip.data.validate import DataValidationError, validate_dataset
from tests.helpers import faults
from tests.helpers.faults import NO_LEAKAGE, Planter, PlantedTree, plant_and_validate

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

# Real images are hundreds of kilobytes: damage that leaves most of a file in place is the harder case.
REAL_IMAGE_PLANTERS: dict[str, Planter] = {
    "truncated_png": partial(faults.plant_truncated_png, cut_bytes=4000),  # most of the pixels are still there
    "truncated_jpeg": partial(faults.plant_truncated_jpeg, cut_bytes=2000),
    "unreadable_mask": partial(faults.plant_unreadable_mask, keep_bytes=100),  # a PNG header, no pixels
    "mask_wrong_size": partial(faults.plant_mask_wrong_size, scale=0.5),
    "mask_not_binary": partial(faults.plant_mask_not_binary, bilinear=True),
    "too_few_train": partial(faults.plant_too_few_train, keep=6),
}
# Fault name -> (planter, expectation): the shared registry with the real-image planters swapped in.
FAULTS: dict[str, tuple[Planter, str]] = {
    name: (REAL_IMAGE_PLANTERS.get(name, plant), expectation) for name, (plant, expectation) in faults.FAULTS.items()
}


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


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedTree:
    root = tmp_path_factory.mktemp("bottle_faults")
    names = ["clean", *FAULTS]
    for index, name in enumerate(names):
        _copy_bottle_subset(root / name, train_offset=index * NUM_TRAIN)
    return plant_and_validate(root, {name: plant for name, (plant, _) in FAULTS.items()})


def test_clean_copy_of_bottle_passes(tmp_path: Path) -> None:
    _copy_bottle_subset(tmp_path / "bottle", train_offset=0)
    result = validate_dataset(tmp_path, progress=False)
    assert result.success, result.to_markdown()
    assert result.num_images == NUM_TRAIN + NUM_TEST_GOOD + NUM_TEST_BAD


@pytest.mark.parametrize("fault", list(FAULTS))
def test_planted_fault_in_real_images_is_reported(planted: PlantedTree, fault: str) -> None:
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


def test_untouched_category_passes_and_files_are_unchanged(planted: PlantedTree) -> None:
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
    if "kolektor" in categories:  # the known leak must be found, not merely tolerated
        assert set(result.failed_expectations) == {NO_LEAKAGE}, result.to_markdown()
        leaked = {Path(path).name for issue in result.issues for path in issue.files if "/kolektor/test/" in str(path)}
        assert len(leaked) >= 3, leaked  # the three kolektor test/good images the benchmark drops
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
