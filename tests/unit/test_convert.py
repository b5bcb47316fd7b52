"""Converters into the MVTec AD layout: tiny VisA/BTAD/MVTec trees built in code, real ELPV from its package."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from onenip.data.convert import (
    ELPV_DEFECT_TYPE,
    EXCLUDED_NO_MASK,
    EXCLUDED_TRAIN_ANOMALY,
    FORMATS,
    NOTE_EMPTY_MASK,
    NOTE_MASK_BINARISED,
    NOTE_REENCODED,
    VISA_DEFECT_TYPE,
    CategoryCounts,
    ConversionReport,
    convert,
    convert_btad,
    convert_elpv,
    convert_mvtec,
    convert_visa,
)
from onenip.data.manifest import DatasetError, ImageReadError, file_sha256, make_manifest, read_mask
from tests.helpers.trees import (
    BTAD_EDGE_INSIDE,
    BTAD_EDGE_OUTSIDE,
    BTAD_EXTENSIONS,
    make_btad_tree,
    make_mvtec_tree,
    make_visa_tree,
)

INDUSTRIAL = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "industrial"


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to ``root``."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_counts(manifest: pd.DataFrame) -> dict[tuple[str, str, str], int]:
    return manifest.groupby(["category", "split", "defect_type"]).size().to_dict()


def relative_manifest(root: Path) -> pd.DataFrame:
    """The manifest of ``root`` with paths relative to it, to compare two copies of one dataset."""
    frame = make_manifest(root, progress=False)
    base = root.resolve()
    frame["image_path"] = [str(Path(p).relative_to(base)) for p in frame.image_path]
    frame["mask_path"] = [str(Path(p).relative_to(base)) if pd.notna(p) else None for p in frame.mask_path]
    return frame


def source_mask_values(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L"))


def append_csv_rows(csv_path: Path, *rows: str) -> None:
    with csv_path.open("ab") as handle:
        handle.write("".join(row + "\r\n" for row in rows).encode())


def save_rgb(path: Path, size: int = 32, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


# --- VisA -------------------------------------------------------------------------------------------------


# VisA masks hold 0 and small non-zero values; any non-zero is foreground, as spot-diff's prepare_data binarises.
@pytest.mark.parametrize("mask_value", [1, 7])
def test_visa_converts_into_mvtec_layout_with_binary_masks(tmp_path: Path, mask_value: int) -> None:
    src = make_visa_tree(
        tmp_path / "visa", objects=("candle", "pcb1"), n_train=6, n_test_normal=3, n_anomaly=3, mask_value=mask_value
    )
    out = tmp_path / "out"

    report = convert_visa(src, out, progress=False)
    manifest = make_manifest(out, progress=False)

    for name in ("candle", "pcb1"):
        assert report.categories[name] == CategoryCounts(6, 3, 3, 3, {VISA_DEFECT_TYPE: 3})
        counts = manifest_counts(manifest[manifest.category == name])
        assert counts == {(name, "train", "good"): 6, (name, "test", "good"): 3, (name, "test", "anomaly"): 3}
        # The split comes from 1cls.csv (the tree lists the first n_train normals as train).
        train_names = sorted(Path(p).name for p in manifest.query("category == @name and split == 'train'").image_path)
        assert train_names == [f"{i:04d}.JPG" for i in range(6)]
    assert report.excluded == {}
    assert report.notes == {NOTE_MASK_BINARISED: 6}

    anomalies = manifest[manifest.label_index == 1]
    assert (anomalies.label == "abnormal").all()
    assert anomalies.mask_path.notna().all()
    assert manifest[manifest.label_index == 0].mask_path.isna().all()
    for row in anomalies.itertuples():
        image_path = Path(row.image_path)
        source_image = src / row.category / "Data" / "Images" / "Anomaly" / image_path.name
        source_mask = src / row.category / "Data" / "Masks" / "Anomaly" / f"{image_path.stem}.png"
        assert Path(row.mask_path).name == f"{image_path.stem}_mask.png"
        mask = read_mask(row.mask_path)
        assert set(np.unique(mask)) == {0, 255}
        assert mask.shape == (row.height, row.width)
        np.testing.assert_array_equal(mask == 255, source_mask_values(source_mask) != 0)
        assert row.sha256 == file_sha256(source_image)  # image bytes copied unchanged
    for row in manifest[manifest.label_index == 0].itertuples():
        assert row.sha256 == file_sha256(src / row.category / "Data" / "Images" / "Normal" / Path(row.image_path).name)


def test_visa_conversion_is_byte_identical_across_runs_and_leaves_source_untouched(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", mask_value=7)
    before = tree_hashes(src)

    convert_visa(src, tmp_path / "first", progress=False)
    convert_visa(src, tmp_path / "second", progress=False)

    first, second = tree_hashes(tmp_path / "first"), tree_hashes(tmp_path / "second")
    assert first == second
    assert any(name.endswith("_mask.png") for name in first)
    assert tree_hashes(src) == before


def test_visa_leaves_out_train_anomalies_and_anomalies_without_mask(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",), n_train=4, n_test_normal=2, n_anomaly=2)
    save_rgb(src / "candle/Data/Images/Anomaly/100.JPG")
    save_rgb(src / "candle/Data/Images/Anomaly/101.JPG")
    Image.new("L", (32, 32), 1).save(src / "candle/Data/Masks/Anomaly/100.png")
    append_csv_rows(
        src / "split_csv/1cls.csv",
        "candle,train,anomaly,candle/Data/Images/Anomaly/100.JPG,candle/Data/Masks/Anomaly/100.png",
        "candle,test,anomaly,candle/Data/Images/Anomaly/101.JPG,",
    )

    report = convert_visa(src, tmp_path / "out", progress=False)

    assert report.excluded == {EXCLUDED_TRAIN_ANOMALY: 1, EXCLUDED_NO_MASK: 1}
    assert report.categories["candle"] == CategoryCounts(4, 2, 2, 2, {VISA_DEFECT_TYPE: 2})
    assert not list((tmp_path / "out").rglob("10[01]*"))


def test_visa_category_selection(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle", "pcb1", "fryum"))

    report = convert_visa(src, tmp_path / "out", categories=["pcb1"], progress=False)

    assert list(report.categories) == ["pcb1"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pcb1"]
    expected = r"Unknown categories \['capsule'\].*available: \['candle', 'fryum', 'pcb1'\]"
    with pytest.raises(DatasetError, match=expected):
        convert_visa(src, tmp_path / "other", categories=["capsule"], progress=False)


def test_visa_reencodes_images_whose_extension_is_not_an_image_extension(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",))
    gif = src / "candle/Data/Images/Normal/0999.gif"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(gif)
    append_csv_rows(src / "split_csv/1cls.csv", "candle,train,normal,candle/Data/Images/Normal/0999.gif,")

    report = convert_visa(src, tmp_path / "out", progress=False)

    converted = tmp_path / "out/candle/train/good/0999.png"
    assert report.notes[NOTE_REENCODED] == 1
    with Image.open(converted) as image, Image.open(gif) as original:
        assert image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(original.convert("RGB")))


def test_visa_without_split_file_says_what_layout_is_expected(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa")
    (src / "split_csv/1cls.csv").unlink()

    with pytest.raises(DatasetError, match=r"VisA split file not found: .*split_csv/1cls\.csv"):
        convert_visa(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("candle,val,normal,candle/Data/Images/Normal/0000.JPG,", r"Unknown split 'val' at .*1cls\.csv line \d+"),
        ("candle,test,broken,candle/Data/Images/Normal/0000.JPG,", r"Unknown label 'broken' at .*line \d+"),
        ("candle,train,normal,candle/Data/Images/Normal/4242.JPG,", r"missing: .*candle/Data/Images/Normal/4242\.JPG"),
        ("candle,train,normal,../../etc/passwd,", r"'\.\./\.\./etc/passwd' .* points outside the dataset root"),
        ("../x,train,normal,candle/Data/Images/Normal/0000.JPG,", r"Invalid object '\.\./x'"),
        ("candle,test,normal,candle/Data/Images/Normal/0000.JPG,", r"0000\.JPG is listed twice: as candle/train/good"),
        ("candle,test,normal,candle/Data/Images/Anomaly/000.JPG,", r"listed twice"),
    ],
)
def test_visa_rejects_bad_split_rows_with_the_line(tmp_path: Path, row: str, message: str) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",))
    append_csv_rows(src / "split_csv/1cls.csv", row)

    with pytest.raises(DatasetError, match=message):
        convert_visa(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # planning fails before anything is written


def test_visa_rejects_two_images_that_would_land_on_one_file(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",))
    save_rgb(src / "candle/Data/Images/Extra/0000.JPG")
    append_csv_rows(src / "split_csv/1cls.csv", "candle,train,normal,candle/Data/Images/Extra/0000.JPG,")

    with pytest.raises(DatasetError, match=r"same place candle/train/good/0000\.JPG: .*Normal/0000\.JPG and .*Extra"):
        convert_visa(src, tmp_path / "out", progress=False)


def test_visa_rejects_a_header_without_the_documented_columns(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",))
    (src / "split_csv/1cls.csv").write_text("object,set,label,image_path\ncandle,train,normal,x.JPG\n")

    with pytest.raises(DatasetError, match=r"lacks columns \['split', 'image', 'mask'\]"):
        convert_visa(src, tmp_path / "out")


def test_visa_rejects_a_mask_whose_size_differs_from_its_image(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",), size=32)
    Image.new("L", (16, 16), 1).save(src / "candle/Data/Masks/Anomaly/001.png")

    with pytest.raises(DatasetError, match=r"Mask .*001\.png is 16x16 but its image .*001\.JPG is 32x32"):
        convert_visa(src, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # a failure while writing leaves no half dataset


# --- BTAD -------------------------------------------------------------------------------------------------


def test_btad_converts_ok_to_good_and_binarises_masks_at_mid_grey(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("01", "02", "03"), n_train=5, n_test_ok=2, n_test_ko=3)
    out = tmp_path / "out"

    report = convert_btad(src, out, progress=False)
    manifest = make_manifest(out, progress=False)

    for name in ("01", "02", "03"):
        assert report.categories[name] == CategoryCounts(5, 2, 3, 3, {"ko": 3})
        assert manifest_counts(manifest[manifest.category == name]) == {
            (name, "train", "good"): 5,
            (name, "test", "good"): 2,
            (name, "test", "ko"): 3,
        }
        image_ext = BTAD_EXTENSIONS[name][0]
        assert {Path(p).suffix for p in manifest[manifest.category == name].image_path} == {image_ext}
    assert report.notes == {NOTE_MASK_BINARISED: 9}

    anomalies = manifest[manifest.label_index == 1]
    assert anomalies.mask_path.notna().all()
    for row in anomalies.itertuples():
        image_path = Path(row.image_path)
        source_image = src / row.category / "test" / "ko" / image_path.name
        mask_ext = BTAD_EXTENSIONS[row.category][1]
        source_values = source_mask_values(src / row.category / "ground_truth" / "ko" / f"{image_path.stem}{mask_ext}")
        # The soft edge has grey on both sides of mid-grey, so the threshold really decides something here.
        assert {BTAD_EDGE_INSIDE, BTAD_EDGE_OUTSIDE} <= set(np.unique(source_values))
        mask = read_mask(row.mask_path)
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask == 255, source_values > 127)
        assert row.sha256 == file_sha256(source_image)


def test_btad_masks_stored_as_zero_one_labels_keep_their_foreground(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("02",), n_test_ko=1)
    mask_path = src / "02/ground_truth/ko/0003.png"
    labels = (source_mask_values(mask_path) > 127).astype(np.uint8)
    Image.fromarray(labels).save(mask_path)

    convert_btad(src, tmp_path / "out", progress=False)

    mask = read_mask(tmp_path / "out/02/ground_truth/ko/0003_mask.png")
    np.testing.assert_array_equal(mask == 255, labels == 1)


def test_btad_reports_empty_masks_and_leaves_out_images_without_mask(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("02",), n_test_ok=2, n_test_ko=3)
    (src / "02/ground_truth/ko/0002.png").unlink()
    Image.new("L", (32, 32), 0).save(src / "02/ground_truth/ko/0003.png")
    (src / "02/train/ok/notes.txt").write_text("not an image")

    report = convert_btad(src, tmp_path / "out", progress=False)

    assert report.categories["02"] == CategoryCounts(6, 2, 2, 2, {"ko": 2})
    assert report.excluded == {EXCLUDED_NO_MASK: 1, "not an image file": 1}
    assert report.notes[NOTE_EMPTY_MASK] == 1


def test_btad_with_wrong_layout_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "btad" / "images").mkdir(parents=True)

    with pytest.raises(DatasetError, match=r"No BTAD categories .*expected <src>/<NN>/train/ok/"):
        convert_btad(tmp_path / "btad", tmp_path / "out")


def test_btad_unreadable_mask_is_named_and_leaves_out_empty(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("01",))
    (src / "01/ground_truth/ko/0004.png").write_bytes(b"not a png")

    with pytest.raises(ImageReadError, match=r"Cannot decode mask .*01/ground_truth/ko/0004\.png"):
        convert_btad(src, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


# --- MVTec AD (identity) ----------------------------------------------------------------------------------


def test_make_mvtec_tree_is_what_make_manifest_reads(tmp_path: Path) -> None:
    shape = {"categories": ("widget", "gadget"), "defect_types": ("scratch", "stain")}
    root = make_mvtec_tree(tmp_path / "a", **shape)

    manifest = make_manifest(root, progress=False)

    assert manifest_counts(manifest[manifest.category == "widget"]) == {
        ("widget", "train", "good"): 12,
        ("widget", "test", "good"): 4,
        ("widget", "test", "scratch"): 2,
        ("widget", "test", "stain"): 2,
    }
    assert (manifest.width == 32).all() and (manifest.height == 32).all()
    defects = manifest[manifest.label_index == 1]
    assert defects.mask_path.notna().all()
    for mask_path in defects.mask_path:
        values = set(np.unique(read_mask(mask_path)))
        assert values == {0, 255}
    assert tree_hashes(make_mvtec_tree(tmp_path / "b", **shape)) == tree_hashes(root)  # same seed, same bytes
    assert tree_hashes(make_mvtec_tree(tmp_path / "c", seed=1)) != tree_hashes(make_mvtec_tree(tmp_path / "d", seed=0))


def test_mvtec_identity_copies_every_file_unchanged(tmp_path: Path) -> None:
    src = make_mvtec_tree(tmp_path / "src", categories=("widget", "gadget"), defect_types=("scratch", "stain"))
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    (src / "widget" / "readme.txt").write_text("widget readme")

    report = convert_mvtec(src, tmp_path / "out", progress=False)

    assert tree_hashes(tmp_path / "out") == tree_hashes(src)
    assert report.categories["widget"] == CategoryCounts(12, 4, 4, 4, {"scratch": 2, "stain": 2})
    pd.testing.assert_frame_equal(relative_manifest(tmp_path / "out"), relative_manifest(src))


def test_mvtec_category_selection_and_bad_layout(tmp_path: Path) -> None:
    src = make_mvtec_tree(tmp_path / "src", categories=("widget", "gadget"), n_train=2, n_test_good=1, n_test_bad=1)

    report = convert_mvtec(src, tmp_path / "out", categories=["gadget"], progress=False)

    assert list(report.categories) == ["gadget"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gadget"]
    (tmp_path / "flat").mkdir()
    save_rgb(tmp_path / "flat" / "image.png")
    with pytest.raises(DatasetError, match=r"No MVTec AD categories .*expected <src>/<category>/train/good/"):
        convert_mvtec(tmp_path / "flat", tmp_path / "out2")


@pytest.mark.integration
def test_mvtec_identity_on_real_bottle_files(tmp_path: Path) -> None:
    bottle = INDUSTRIAL / "bottle"
    if not bottle.is_dir():
        pytest.skip(f"real data not found at {bottle} (expected ../shared/datasets/industrial beside the repo)")
    src = tmp_path / "src"
    picks = [
        *sorted((bottle / "train" / "good").iterdir())[:3],
        *sorted((bottle / "test" / "good").iterdir())[:2],
        *sorted((bottle / "test" / "broken_large").iterdir())[:2],
        *sorted((bottle / "test" / "contamination").iterdir())[:2],
    ]
    for path in picks:
        target = src / "bottle" / path.relative_to(bottle)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if path.parent.name != "good":
            mask = bottle / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            (src / "bottle" / "ground_truth" / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mask, src / "bottle" / "ground_truth" / path.parent.name / mask.name)
    shutil.copyfile(bottle / "license.txt", src / "bottle" / "license.txt")

    report = convert_mvtec(src, tmp_path / "out", progress=False)

    assert tree_hashes(tmp_path / "out") == tree_hashes(src)
    assert report.categories["bottle"] == CategoryCounts(3, 2, 4, 4, {"broken_large": 2, "contamination": 2})
    manifest = make_manifest(tmp_path / "out", progress=False)
    assert manifest.mask_path.notna().sum() == 4
    assert (manifest.label_index == manifest.mask_path.notna()).all()


# --- ELPV (real data from the elpv-dataset package) -------------------------------------------------------


def elpv_labels() -> pd.DataFrame:
    """The package's labels.csv read independently of the converter (whitespace-separated, no header)."""
    spec_dir = Path(pytest.importorskip("elpv_dataset").__file__).parent
    labels = pd.read_csv(spec_dir / "data" / "labels.csv", sep=r"\s+", header=None, names=["path", "prob", "type"])
    labels["root"] = str(spec_dir / "data")
    return labels


def test_elpv_full_conversion_counts_split_rule_and_reproducible_bytes(tmp_path: Path) -> None:
    labels = elpv_labels()

    report = convert_elpv(tmp_path / "first", progress=False)
    convert_elpv(tmp_path / "second", progress=False)

    first = tree_hashes(tmp_path / "first")
    assert first == tree_hashes(tmp_path / "second")  # DVC sees the same hashes on every machine and run
    assert sorted(report.categories) == ["mono", "poly"]
    for cell_type, rows in labels.groupby("type"):
        normal_names = [Path(p).name for p in rows[rows.prob == 0.0].path]  # file order within the type
        test_names = normal_names[4::5]  # every 5th normal (5th, 10th, ...) goes to test/good
        defect_names = [Path(p).name for p in rows[rows.prob == 1.0].path]
        counts = report.categories[cell_type]
        num_train, num_test, num_defect = len(normal_names) - len(test_names), len(test_names), len(defect_names)
        assert counts == CategoryCounts(num_train, num_test, num_defect, 0, {ELPV_DEFECT_TYPE: num_defect})
        test_dir = tmp_path / "first" / cell_type / "test"
        assert sorted(p.name for p in (test_dir / "good").iterdir()) == sorted(test_names)
        assert sorted(p.name for p in (test_dir / "defect").iterdir()) == sorted(defect_names)
    uncertain = labels[(labels.prob > 0) & (labels.prob < 1)]
    assert report.num_excluded == len(uncertain) > 0
    assert report.num_images + report.num_excluded == len(labels)
    package_data = Path(labels.root.iloc[0])
    assert first["mono/test/defect/cell0001.png"] == file_sha256(package_data / "images" / "cell0001.png")

    manifest = make_manifest(tmp_path / "first", progress=False)
    assert len(manifest) == report.num_images
    assert manifest.mask_path.isna().all()


def test_elpv_from_a_source_folder_agrees_with_the_package_loader(tmp_path: Path) -> None:
    load_dataset = pytest.importorskip("elpv_dataset.utils").load_dataset
    labels = elpv_labels()
    # A small labels.csv in the package's own format, with both cell types and all four probabilities.
    subset = pd.concat([rows.head(6) for _, rows in labels.groupby(["type", "prob"])])
    source = tmp_path / "elpv"
    (source / "images").mkdir(parents=True)
    for path in subset.path:
        shutil.copyfile(Path(subset.root.iloc[0]) / path, source / path)
    text = "".join(f"{row.path}  {row.prob!r}  {row.type}\n" for row in subset.itertuples())
    (source / "labels.csv").write_text(text)
    images, probs, types = load_dataset(str(source / "labels.csv"))

    report = convert_elpv(tmp_path / "out", source=source, test_every=3, progress=False)

    expected = {}
    for image, prob, cell_type, path in zip(images, probs, types, subset.path, strict=True):
        if prob in (0.0, 1.0):
            expected[(cell_type, Path(path).name)] = image
    found = {(p.parts[-4], p.name): p for p in (tmp_path / "out").rglob("*.png")}
    assert set(found) == set(expected)
    for key, path in found.items():
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image), expected[key])
    for cell_type in ("mono", "poly"):
        assert report.categories[cell_type] == CategoryCounts(4, 2, 6, 0, {ELPV_DEFECT_TYPE: 6})
    assert report.excluded == {"uncertain defect probability 0.333": 12, "uncertain defect probability 0.667": 12}


def test_elpv_category_selection(tmp_path: Path) -> None:
    report = convert_elpv(tmp_path / "out", categories=["poly"], progress=False)

    assert list(report.categories) == ["poly"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["poly"]


@pytest.mark.parametrize("test_every", [0, 1, 2.5, True])
def test_elpv_rejects_a_test_every_below_two(tmp_path: Path, test_every: object) -> None:
    with pytest.raises(ValueError, match=r"test_every must be an integer >= 2"):
        convert_elpv(tmp_path / "out", test_every=test_every)  # type: ignore[arg-type]


def test_elpv_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"Source path does not exist: .*no_such_elpv"):
        convert_elpv(tmp_path / "out", source=tmp_path / "no_such_elpv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"ELPV labels file not found: .*empty/labels\.csv"):
        convert_elpv(tmp_path / "out", source=tmp_path / "empty")


def test_elpv_malformed_labels_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "elpv").mkdir()
    (tmp_path / "elpv" / "labels.csv").write_text("images/cell0001.png  0.0  mono\nimages/cell0002.png  maybe  mono\n")

    with pytest.raises(DatasetError, match=r"Defect probability 'maybe' at .*labels\.csv line 2"):
        convert_elpv(tmp_path / "out", source=tmp_path / "elpv")


# --- Output folder, dispatcher, report --------------------------------------------------------------------


def test_refuses_a_non_empty_out_unless_overwrite_which_replaces_it(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("01",))
    out = tmp_path / "out"
    (out / "old_category" / "train" / "good").mkdir(parents=True)
    save_rgb(out / "old_category" / "train" / "good" / "stale.png")

    with pytest.raises(DatasetError, match=r"Output folder is not empty: .*out; pass overwrite=True"):
        convert_btad(src, out)
    assert (out / "old_category").is_dir()

    convert_btad(src, out, overwrite=True, progress=False)

    assert sorted(p.name for p in out.iterdir()) == ["01"]
    assert make_manifest(out, progress=False).category.unique().tolist() == ["01"]


def test_refuses_an_out_that_overlaps_the_source(tmp_path: Path) -> None:
    src = make_mvtec_tree(tmp_path / "src", n_train=1, n_test_good=1, n_test_bad=1)
    before = tree_hashes(src)

    with pytest.raises(DatasetError, match=r"overlaps the source"):
        convert_mvtec(src, src / "converted")
    with pytest.raises(DatasetError, match=r"overlaps the source"):
        convert_mvtec(src, tmp_path, overwrite=True)
    assert tree_hashes(src) == before


def test_convert_dispatches_by_format_name(tmp_path: Path) -> None:
    src = make_btad_tree(tmp_path / "btad", categories=("02",))

    report = convert("BTAD", src, tmp_path / "out", progress=False)

    assert isinstance(report, ConversionReport)
    assert report.format == "btad"
    assert report.out == (tmp_path / "out").resolve()
    assert report.src == src.resolve()
    assert FORMATS == ("mvtec", "visa", "btad", "elpv")


def test_convert_unknown_format_names_the_valid_ones(tmp_path: Path) -> None:
    expected = r"Unknown dataset format 'kolektor'; valid formats: mvtec, visa, btad, elpv"
    with pytest.raises(DatasetError, match=expected):
        convert("kolektor", tmp_path, tmp_path / "out")


@pytest.mark.parametrize("fmt", ["mvtec", "visa", "btad"])
def test_convert_missing_source_names_the_path(tmp_path: Path, fmt: str) -> None:
    missing = tmp_path / "not_downloaded_yet"

    with pytest.raises(DatasetError, match=rf"Source path does not exist: {missing}"):
        convert(fmt, missing, tmp_path / "out")
    with pytest.raises(DatasetError, match=rf"A source folder is required for format '{fmt}'"):
        convert(fmt, None, tmp_path / "out")


def test_report_table_and_text(tmp_path: Path) -> None:
    src = make_visa_tree(tmp_path / "visa", objects=("candle",), n_train=4, n_test_normal=2, n_anomaly=2)
    append_csv_rows(src / "split_csv/1cls.csv", "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,")

    report = convert("visa", src, tmp_path / "out", progress=False)

    frame = report.to_frame()
    assert frame.iloc[0].to_dict() == {
        "category": "candle",
        "train_normal": 4,
        "test_normal": 2,
        "test_anomalous": 2,
        "masks": 2,
        "defect_types": "anomaly=2",
    }
    text = str(report)
    assert text.startswith(f"visa -> {tmp_path / 'out'}: 8 images in 1 category")
    assert f"{EXCLUDED_NO_MASK}: 1" in text
