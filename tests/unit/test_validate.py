"""Great Expectations validation of a manifest: each planted fault is reported by expectation name and file.

Trees are written in code (``tests.helpers.trees.make_mvtec_tree``: 32x32 PNGs, 0/255 masks), so every
fault is covered without the shared real data (``tests/integration/test_validate_real.py`` repeats the
faults on a copy of real MVTec bottle images). The planters live in ``tests.helpers.faults``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from onenip.data.manifest import DatasetError, make_manifest
from onenip.data.validate import (
    DataValidationError,
    ValidationResult,
    probe_manifest,
    validate_dataset,
    validate_manifest,
)
from tests.helpers.faults import (
    DECODABLE,
    FAULTS,
    MASK_BINARY,
    MASK_PRESENT,
    MASK_READABLE,
    MASK_SIZE,
    MIN_TRAIN,
    NO_LEAKAGE,
    NORMAL_NO_MASK,
    ONE_PROMPT,
    TEST_ANOMALOUS,
    TEST_NORMAL,
    TRAIN_NORMAL,
    Planter,
    PlantedTree,
    first_anomalous,
    good_test_images,
    plant_and_validate,
    plant_mask_not_binary,
    plant_truncated_jpeg,
    train_images,
)
from tests.helpers.trees import make_mvtec_tree

CATEGORY = "widget"


# ------------------------------------- planters beyond the shared FAULTS: category folder in, files to name out


def plant_empty_train_and_test(category_dir: Path) -> list[Path]:
    # All empty files share one sha256: an empty train file and an empty test file are not a leak.
    victims = [train_images(category_dir)[0], good_test_images(category_dir)[0]]
    for victim in victims:
        victim.write_bytes(b"")
    return victims


def plant_unreadable_train_images(category_dir: Path) -> list[Path]:
    victims = train_images(category_dir)[:3]  # 9 readable of 12 left: below 10
    for victim in victims:
        victim.write_bytes(b"")
    return victims


def plant_mask_one_and_255(category_dir: Path) -> list[Path]:
    victim, mask = first_anomalous(category_dir)
    array = np.asarray(Image.open(mask).convert("L")).copy()
    array[0, 0] = 1
    Image.fromarray(array).save(mask)
    return [victim]


def plant_zero_one_masks(category_dir: Path) -> list[Path]:
    for mask in (category_dir / "ground_truth").rglob("*_mask.png"):
        array = np.asarray(Image.open(mask).convert("L"))
        Image.fromarray((array > 0).astype(np.uint8)).save(mask)
    return []


def plant_nothing(category_dir: Path) -> list[Path]:
    return []


# Category name -> (planter, every expectation that must fail in that category; the first names the files).
MATRIX: dict[str, tuple[Planter, list[str]]] = {
    **{name: (plant, [expectation]) for name, (plant, expectation) in FAULTS.items()},
    "clean": (plant_nothing, []),
    "masks_zero_one": (plant_zero_one_masks, []),  # {0, 1} masks are binary too
    "mask_one_and_255": (plant_mask_one_and_255, [MASK_BINARY]),
    "empty_train_and_test": (plant_empty_train_and_test, [DECODABLE]),
    "unreadable_not_counted": (plant_unreadable_train_images, [DECODABLE, MIN_TRAIN]),
}


def _issues_for(result: ValidationResult, expectation: str, category: str | None = None) -> list:
    return [issue for issue in result.issues if issue.expectation == expectation and category in (None, issue.category)]


def _resolved(paths: list[Path]) -> list[str]:
    return [str(path.resolve()) for path in paths]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_mvtec_tree(tmp_path / "data", categories=(CATEGORY,), n_train=12, n_test_good=4, n_test_bad=4, seed=3)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> PlantedTree:
    """One tree, one category per planted fault, validated once (each GX run costs about a second)."""
    root = make_mvtec_tree(
        tmp_path_factory.mktemp("matrix"), categories=tuple(MATRIX), n_train=12, n_test_good=4, n_test_bad=4, seed=7
    )
    return plant_and_validate(root, {name: plant for name, (plant, _) in MATRIX.items()})


# ---------------------------------------------------------------------------------------------- tests


def test_clean_tree_passes_every_check(tree: Path) -> None:
    result = validate_dataset(tree, progress=False)

    assert result.success, result.to_markdown()
    assert result.issues == []
    assert result.num_images == 20
    assert result.num_categories == 1
    assert all(check.success for check in result.checks)
    assert {check.expectation for check in result.checks} >= {
        DECODABLE, TRAIN_NORMAL, MASK_PRESENT, MASK_READABLE, MASK_SIZE, MASK_BINARY,
        NORMAL_NO_MASK, NO_LEAKAGE, MIN_TRAIN, TEST_NORMAL, TEST_ANOMALOUS,
    }  # fmt: skip
    stats = result.statistics["per_category"][CATEGORY]
    assert (stats["num_train_normal"], stats["num_test_normal"], stats["num_test_anomalous"], stats["num_masks"]) == (
        12,
        4,
        4,
        4,
    )
    assert stats["masks_required"] is True
    assert result.raise_for_failure() is result
    assert result.to_markdown().startswith("# Dataset validation: PASSED")


@pytest.mark.parametrize("case", list(MATRIX))
def test_planted_fault_is_reported_by_name_and_file(matrix: PlantedTree, case: str) -> None:
    offending, result = matrix.offending, matrix.result
    expected = MATRIX[case][1]

    # Exactly the planted fault fails in this category: every other expectation still passes there.
    failed_here = sorted({issue.expectation for issue in result.issues if issue.category == case})
    assert failed_here == sorted(expected), result.to_markdown()
    if not expected:
        return
    issues = _issues_for(result, expected[0], case)
    assert len(issues) == 1
    assert set(_resolved(offending[case])) <= set(issues[0].files)
    if not offending[case]:  # category-level checks name the category and the count found
        assert issues[0].files == []
        assert issues[0].observed
    with pytest.raises(DataValidationError) as caught:
        result.raise_for_failure()
    message = str(caught.value)
    assert issues[0].summary().split(":")[0] in message
    for path in _resolved(offending[case])[:1]:
        assert path in message or len(issues[0].files) > 5


def test_matrix_fails_overall_and_leaves_files_untouched(matrix: PlantedTree) -> None:
    assert not matrix.result.success
    assert matrix.unchanged  # validation only reads
    assert matrix.result.num_categories == len(MATRIX)


def test_unreadable_image_reason_is_the_decoder_error(matrix: PlantedTree) -> None:
    offending, result = matrix.offending, matrix.result
    for case in ("truncated_png", "truncated_jpeg"):
        victim = _resolved(offending[case])[0]
        assert "truncated" in _issues_for(result, DECODABLE, case)[0].details[victim].lower()
    assert (
        "empty"
        in _issues_for(result, DECODABLE, "zero_byte_image")[0].details[_resolved(offending["zero_byte_image"])[0]]
    )


def test_leak_names_both_files_and_each_other(matrix: PlantedTree) -> None:
    offending, result = matrix.offending, matrix.result
    train_file, test_file = _resolved(offending["train_test_leak"])
    issue = _issues_for(result, NO_LEAKAGE, "train_test_leak")[0]
    assert issue.files == sorted([train_file, test_file])
    assert test_file in issue.details[train_file]
    assert train_file in issue.details[test_file]


def test_mask_problems_are_described(matrix: PlantedTree) -> None:
    offending, result = matrix.offending, matrix.result
    victim = _resolved(offending["mask_wrong_size"])[0]
    assert _issues_for(result, MASK_SIZE, "mask_wrong_size")[0].details[victim] == "mask 30x32 vs image 32x32 (WxH)"
    victim = _resolved(offending["mask_one_and_255"])[0]
    assert "{0, 1, 255}" in _issues_for(result, MASK_BINARY, "mask_one_and_255")[0].details[victim]


def test_result_serialises_and_reports(matrix: PlantedTree) -> None:
    root, offending, result = matrix.root, matrix.offending, matrix.result

    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["success"] is False
    assert as_dict["statistics"]["per_category"]["clean"]["num_masks"] == 4
    assert set(as_dict["statistics"]["seconds"]) == {"probe", "great_expectations"}
    assert {issue["expectation"] for issue in as_dict["issues"]} == {
        e for _, expected in MATRIX.values() for e in expected
    }

    report = result.to_markdown()
    assert report.startswith("# Dataset validation: FAILED")
    assert "**FAIL**" in report
    assert "| pass |" in report
    relative = str(offending["mask_wrong_size"][0].resolve().relative_to(root.resolve()))
    assert f"- `{relative}`: mask 30x32 vs image 32x32" in report
    assert f"`{MIN_TRAIN}` failed: num_train_normal = 5 (expected >= 10)" in report


def test_error_is_a_dataset_error_listing_failures(matrix: PlantedTree) -> None:
    result = matrix.result
    with pytest.raises(DatasetError) as caught:
        result.raise_for_failure()
    assert isinstance(caught.value, DataValidationError)
    assert caught.value.result is result
    message = str(caught.value)
    for expectation in {e for _, expected in MATRIX.values() for e in expected}:
        assert expectation in message


def test_truncated_image_is_caught_even_with_lenient_pil(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some libraries switch PIL to lenient loading globally; validation must still see the damage.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    victim = plant_truncated_jpeg(tree / CATEGORY)[0]
    result = validate_dataset(tree, progress=False)
    assert result.failed_expectations == [DECODABLE]
    assert _issues_for(result, DECODABLE)[0].files == [str(victim.resolve())]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # "some": one mask removed, so the category still has masks; "none": an image-level category (ELPV).
        ("auto", {"some": 1, "none": 0}),
        ("always", {"some": 1, "none": 4}),
        ("never", {"some": 0, "none": 0}),
    ],
)
def test_require_masks_policy(tmp_path: Path, policy: str, expected: dict[str, int]) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=("some", "none"), n_train=10, seed=2)
    masks = {name: sorted((root / name / "ground_truth").rglob("*_mask.png")) for name in ("some", "none")}
    masks["some"][0].unlink()
    for mask in masks["none"]:
        mask.unlink()

    result = validate_dataset(root, require_masks=policy, progress=False)

    missing = {name: sum(len(issue.files) for issue in _issues_for(result, MASK_PRESENT, name)) for name in expected}
    assert missing == expected
    assert result.failed_expectations == ([MASK_PRESENT] if any(expected.values()) else [])
    assert result.statistics["per_category"]["none"]["masks_required"] is (policy == "always")


def test_min_train_images_is_a_parameter(tree: Path) -> None:
    manifest = make_manifest(tree, progress=False)
    assert validate_manifest(manifest, min_train_images=12, progress=False).success
    result = validate_manifest(manifest, min_train_images=13, progress=False)
    assert result.failed_expectations == [MIN_TRAIN]
    assert _issues_for(result, MIN_TRAIN)[0].observed == "num_train_normal = 12 (expected >= 13)"


def test_leak_across_categories_is_reported(tmp_path: Path) -> None:
    # One model serves every category, so another category's train image in test is still a leak.
    root = make_mvtec_tree(tmp_path / "data", categories=("alpha", "beta"), n_train=10, seed=5)
    source = train_images(root / "alpha")[0]
    copy = root / "beta" / "test" / "good" / "zz_from_alpha.png"
    shutil.copyfile(source, copy)
    result = validate_dataset(root, progress=False)
    assert result.failed_expectations == [NO_LEAKAGE]
    named = {(issue.category, path) for issue in _issues_for(result, NO_LEAKAGE) for path in issue.files}
    assert named == {("alpha", str(source.resolve())), ("beta", str(copy.resolve()))}


def test_category_without_images_fails_count_checks(tree: Path) -> None:
    for split in ("train/good", "test/good"):
        (tree / "empty" / split).mkdir(parents=True)
    result = validate_dataset(tree, progress=False)
    assert result.failed_expectations == sorted([MIN_TRAIN, TEST_NORMAL, TEST_ANOMALOUS])
    assert {issue.category for issue in result.issues} == {"empty"}


def test_prompt_column_needs_exactly_one_prompt_per_category(tree: Path) -> None:
    manifest = make_manifest(tree, progress=False)
    manifest["is_prompt"] = False
    train_rows = manifest.index[manifest["split"] == "train"]
    manifest.loc[train_rows[0], "is_prompt"] = True
    assert validate_manifest(manifest, progress=False).success

    manifest.loc[train_rows[1], "is_prompt"] = True
    result = validate_manifest(manifest, progress=False)
    assert result.failed_expectations == [ONE_PROMPT]
    assert result.issues[0].observed == "num_prompts = 2 (expected 1)"


def test_probe_adds_fact_columns(tree: Path) -> None:
    plant_mask_not_binary(tree / CATEGORY)
    rows = probe_manifest(make_manifest(tree, progress=False), progress=False)
    anomalous = rows[rows["label_index"] == 1]
    normal = rows[rows["label_index"] == 0]
    assert rows["decodable"].all()
    assert anomalous["mask_readable"].tolist() == [True] * 4
    assert sorted(anomalous["mask_binary"].tolist()) == [False, True, True, True]
    assert normal["mask_binary"].isna().all()  # no mask: nothing to check, GX skips nulls
    assert anomalous["mask_required"].all()
    assert not normal["mask_required"].any()


def test_bad_arguments_are_rejected(tree: Path) -> None:
    manifest = make_manifest(tree, progress=False)
    with pytest.raises(ValueError, match="require_masks"):
        validate_manifest(manifest, require_masks="sometimes", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_train_images"):
        validate_manifest(manifest, min_train_images=0, progress=False)
    with pytest.raises(DatasetError, match="sha256"):
        validate_manifest(manifest.drop(columns=["sha256"]), progress=False)
    with pytest.raises(DatasetError, match="no rows"):
        validate_manifest(manifest.iloc[:0], progress=False)


def test_manifest_with_missing_file_reports_it(tree: Path) -> None:
    manifest = make_manifest(tree, progress=False)
    ghost = str(tree.resolve() / CATEGORY / "train" / "good" / "ghost.png")
    extra = manifest.iloc[[0]].assign(image_path=ghost, sha256="0" * 64)
    result = validate_manifest(pd.concat([manifest, extra], ignore_index=True), progress=False)
    issue = _issues_for(result, DECODABLE)[0]
    assert issue.files == [ghost]
    assert "not found" in issue.details[ghost]
