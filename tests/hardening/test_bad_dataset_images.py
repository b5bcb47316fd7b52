"""Bad files in a dataset: validation names each one with its reason and nothing else is touched."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from onenip.data.validate import validate_dataset
from tests.helpers.trees import make_mvtec_tree


def test_every_bad_file_is_named_with_its_reason(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=("widget",), n_train=12, size=32)
    good = root / "widget" / "train" / "good"
    png = (good / "000.png").read_bytes()
    (good / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (good / "truncated.png").write_bytes(png[: len(png) // 2])
    (good / "empty.png").write_bytes(b"")
    (good / "notes.jpg").write_text("a text file with an image extension")
    Image.new("RGB", (8, 8), (90, 90, 90)).save(good / "tiny.png")
    Image.new("1", (20000, 20000)).save(good / "huge.png")
    before = sorted((p.name, p.stat().st_size) for p in good.iterdir())

    result = validate_dataset(root, min_train_images=5)
    assert not result.success
    decode = [i for i in result.issues if "(decodable)" in i.expectation]
    assert len(decode) == 1
    errors = {Path(path).name: reason for path, reason in decode[0].details.items()}
    assert set(errors) == {"corrupt.png", "truncated.png", "empty.png", "notes.jpg", "tiny.png", "huge.png"}
    assert "0 bytes" in errors["empty.png"]
    assert "at least 16" in errors["tiny.png"] and "8x8" in errors["tiny.png"]
    assert "limit of 64,000,000 pixels" in errors["huge.png"]
    markdown = result.to_markdown()
    assert "tiny.png" in markdown and "huge.png" in markdown
    assert sorted((p.name, p.stat().st_size) for p in good.iterdir()) == before  # nothing moved or rewritten
