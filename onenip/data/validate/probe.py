"""Probe (pandas + PIL, read only): decode every image and mask of a manifest and record the facts the
expectations test, per file (``probe_manifest``) and per category (``summarize_categories``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import ImageFile
from tqdm.auto import tqdm

from onenip.data.manifest import ImageReadError, LabelName, Split, read_image, read_mask

RequireMasks = Literal["auto", "always", "never"]
REQUIRE_MASKS_OPTIONS: tuple[str, ...] = ("auto", "always", "never")
BINARY_MASK_VALUE_SETS: tuple[frozenset[int], ...] = (frozenset({0, 255}), frozenset({0, 1}))
# Below this many images a progress bar is noise (same threshold as ``make_manifest``).
PROGRESS_MIN_IMAGES = 200
# Decoding is zlib/libjpeg work that releases the GIL, so a few threads overlap it with file reads.
PROBE_MAX_WORKERS = 4


def probe_manifest(
    manifest: pd.DataFrame, *, require_masks: RequireMasks = "auto", progress: bool = True
) -> pd.DataFrame:
    """Decode every image and mask of ``manifest`` and add one column per fact the expectations test.

    Added columns (``None`` where a fact does not apply, which GX map expectations skip):
    ``decodable``, ``decode_error``, ``decoded_width``, ``decoded_height``, ``has_mask``,
    ``mask_readable``, ``mask_size_matches``, ``mask_binary``, ``mask_problem``, ``mask_required``,
    ``leaks_across_splits``, ``leak_partners``.
    """
    rows = manifest.reset_index(drop=True).copy()
    # pandas 3 stores a missing path as NaN in a str column; an object column keeps it None, one value
    # for "no mask" that GX treats as null.
    rows["mask_path"] = pd.Series(
        [None if pd.isna(path) else str(path) for path in rows["mask_path"]], index=rows.index, dtype=object
    )
    for column in ("image_path", "category", "split"):
        rows[column] = rows[column].astype(str).astype(object)

    pairs = list(zip(rows["image_path"], rows["mask_path"], strict=True))
    workers = max(1, min(PROBE_MAX_WORKERS, os.cpu_count() or 1))
    bar = tqdm(
        total=len(pairs), desc="Validating images", unit="img", disable=not progress or len(pairs) < PROGRESS_MIN_IMAGES
    )
    with _strict_decoding(), ThreadPoolExecutor(max_workers=workers) as pool, bar:
        facts = []
        for fact in pool.map(_probe_file, *zip(*pairs, strict=True)):
            facts.append(fact)
            bar.update()
    rows = pd.concat([rows, pd.DataFrame(facts, index=rows.index, dtype=object)], axis=1)

    rows["mask_required"] = _masks_required(rows, require_masks)
    rows["leaks_across_splits"], rows["leak_partners"] = _find_leaks(rows)
    return rows


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files even if some library switched on lenient loading globally.

    ``LOAD_TRUNCATED_IMAGES`` is process-wide, so it is restored right after the probe.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _probe_file(image_path: str, mask_path: str | None) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "decodable": True,
        "decode_error": None,
        "decoded_width": None,
        "decoded_height": None,
        "has_mask": mask_path is not None,
        "mask_readable": None,
        "mask_size_matches": None,
        "mask_binary": None,
        "mask_problem": None,
    }
    try:
        image = read_image(image_path)
        fact["decoded_width"], fact["decoded_height"] = image.size
    except ImageReadError as error:
        fact["decodable"] = False
        fact["decode_error"] = str(error)
    if mask_path is None:
        return fact

    try:
        mask = read_mask(mask_path)
    except ImageReadError as error:
        fact["mask_readable"] = False
        fact["mask_problem"] = str(error)
        return fact
    fact["mask_readable"] = True
    problems = []
    if fact["decodable"]:
        mask_height, mask_width = mask.shape[:2]
        fact["mask_size_matches"] = (mask_width, mask_height) == (fact["decoded_width"], fact["decoded_height"])
        if not fact["mask_size_matches"]:
            problems.append(
                f"mask {mask_width}x{mask_height} vs image {fact['decoded_width']}x{fact['decoded_height']} (WxH)",
            )
    values = frozenset(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
    fact["mask_binary"] = any(values <= allowed for allowed in BINARY_MASK_VALUE_SETS)
    if not fact["mask_binary"]:
        shown = sorted(values)
        listed = ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
        problems.append(f"mask values {{{listed}}} are not only {{0, 255}} or only {{0, 1}}")
    fact["mask_problem"] = "; ".join(problems) or None
    return fact


def _masks_required(rows: pd.DataFrame, require_masks: RequireMasks) -> pd.Series:
    anomalous_test = (rows["split"] == Split.TEST.value) & (rows["label_index"] == int(LabelName.ABNORMAL))
    if require_masks == "never":
        return pd.Series(False, index=rows.index)
    if require_masks == "always":
        return anomalous_test
    with_masks = set(rows.loc[anomalous_test & rows["has_mask"].astype(bool), "category"])
    return anomalous_test & rows["category"].isin(with_masks)


def _find_leaks(rows: pd.DataFrame) -> tuple[list[bool | None], list[str | None]]:
    """Flag readable images whose bytes (sha256) occur in both train and test, with the files they match.

    Checked across categories too: OneNIP is one model for all categories, so a test image that is
    some other category's train image was still seen in training. Unreadable files are left out: all
    empty files share one hash and are already reported as unreadable.
    """
    usable = rows[rows["decodable"].astype(bool) & rows["sha256"].notna()]
    splits_per_hash = usable.groupby("sha256")["split"].agg(lambda s: set(s))
    leaked = {h for h, splits in splits_per_hash.items() if {Split.TRAIN.value, Split.TEST.value} <= splits}
    paths_per_hash: dict[str, list[tuple[str, str]]] = {}
    for path, digest, split in zip(usable["image_path"], usable["sha256"], usable["split"], strict=True):
        if digest in leaked:
            paths_per_hash.setdefault(digest, []).append((path, split))

    flags: list[bool | None] = []
    partners: list[str | None] = []
    for digest, split, decodable in zip(rows["sha256"], rows["split"], rows["decodable"], strict=True):
        if not decodable or pd.isna(digest):
            flags.append(None)
            partners.append(None)
        elif digest in leaked:
            others = sorted(other for other, other_split in paths_per_hash[digest] if other_split != split)
            flags.append(True)
            partners.append(f"same sha256 ({digest[:12]}...) as {', '.join(others)}")
        else:
            flags.append(False)
            partners.append(None)
    return flags, partners


def summarize_categories(rows: pd.DataFrame, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per category with the counts the category checks test (readable images only)."""
    readable = rows[rows["decodable"].astype(bool)]
    is_train = readable["split"] == Split.TRAIN.value
    is_test = readable["split"] == Split.TEST.value
    is_normal = readable["label_index"] == int(LabelName.NORMAL)
    names = sorted(set(rows["category"]) | set(categories or ()))

    def count(mask: pd.Series) -> pd.Series:
        return readable[mask].groupby("category").size().reindex(names, fill_value=0).astype(int)

    summary = pd.DataFrame(
        {
            "category": names,
            "num_images": rows.groupby("category").size().reindex(names, fill_value=0).astype(int).to_numpy(),
            "num_train_normal": count(is_train & is_normal).to_numpy(),
            "num_test_normal": count(is_test & is_normal).to_numpy(),
            "num_test_anomalous": count(is_test & ~is_normal).to_numpy(),
            "num_masks": rows.groupby("category")["has_mask"].sum().reindex(names, fill_value=0).astype(int).to_numpy(),
            "masks_required": rows.groupby("category")["mask_required"]
            .any()
            .reindex(names, fill_value=False)
            .astype(bool)
            .to_numpy(),
        },
    )
    if "is_prompt" in rows.columns:
        prompts = rows["is_prompt"].fillna(False).astype(bool)
        summary["num_prompts"] = (
            rows[prompts].groupby("category").size().reindex(names, fill_value=0).astype(int).to_numpy()
        )
    return summary
