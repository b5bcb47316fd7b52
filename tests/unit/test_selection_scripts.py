"""The leave-one-category-out scripts' own logic: ``family_transfer.subset`` keeps the normals and one
family set's anomalies, ``selection_loco`` applies the refiner margin as the product's selection does, and
``option_loco`` chooses an option on the other categories only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import option_loco, selection_loco
from benchmarks.family_transfer import subset
from benchmarks.rule_transfer import SCORED, RuleMaps
from benchmarks.selection_loco import Procedure, choose


def _maps() -> RuleMaps:
    methods = np.array(["normal", "normal", "warp", "missing", "spots", "missing"])
    labels = (methods != "normal").astype(int)
    val = [np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 4), np.float32) + k for k in range(5)]
    test = [np.zeros((2, 8, 8), np.float32) for _ in range(5)]
    return RuleMaps("plate", val, labels, np.zeros((6, 4, 4), bool), None, methods, test, np.array([0, 1]), None, np.array([[0, 0, 8, 8]] * 2))


def test_a_family_subset_keeps_every_normal_and_only_those_families_anomalies() -> None:
    part = subset(_maps(), ("missing",))
    assert part.val_methods.tolist() == ["normal", "normal", "missing", "missing"]
    assert part.val_labels.tolist() == [0, 0, 1, 1]
    assert [float(c[i, 0, 0]) for c in part.val_components[:1] for i in range(4)] == [0.0, 1.0, 3.0, 5.0]


def _row(refiner: float, score: float) -> dict:
    return {"weights": [0.0, refiner, 0.0, 0.0, 1.0 - refiner], "smoothing_sigma": 0.0, "score_pool_size": 8,
            "val": dict.fromkeys(SCORED, score), "test": dict.fromkeys(SCORED, score)}  # fmt: skip


@pytest.mark.parametrize(("lead", "spread", "kept_refiner"), [(0.010, 0.002, 0.5), (0.002, 0.010, 0.0)])
def test_more_refiner_weight_must_win_beyond_the_margin(monkeypatch: pytest.MonkeyPatch, lead: float, spread: float, kept_refiner: float) -> None:
    table = [_row(0.5, 0.90 + lead), _row(0.25, 0.90), _row(0.0, 0.90)]
    rng = np.random.default_rng(0)
    draws = lead + spread * rng.standard_normal(200)  # bootstrap draws of (more refiner - less refiner)
    monkeypatch.setattr(selection_loco, "_differences", lambda first, second, maps: dict.fromkeys(SCORED, draws))
    procedure = Procedure("refiner margin 1", SCORED, (True,) * 5, refiner_margin_se=1.0)
    assert choose(procedure, table, _maps())["weights"][1] == kept_refiner
    assert choose(Procedure("no margin"), table, _maps())["weights"][1] == 0.5


def _run(folder, rows: dict[str, tuple[float, float | None, float | None]], variant: str = "statistics") -> str:
    folder.mkdir()
    records = [{"method": "onenip", "variant": variant, "input": "native", "category": c,
                "metrics": {"image_AUROC": i, "pixel_AUROC": p, "pixel_AUPRO": a}} for c, (i, p, a) in rows.items()]  # fmt: skip
    records.append({"method": "onenip", "variant": variant, "input": "256", "category": "plate", "metrics": {"image_AUROC": 0.0}})
    (folder / "onenip-plate+tile-seed0.json").write_text(json.dumps(records))
    return str(folder)


def test_an_option_is_chosen_on_the_other_categories_and_reported_on_the_held_out_one(tmp_path) -> None:
    # variant b is better on plate and cells, worse on tile: held out, each category gets the others' choice
    a = _run(tmp_path / "a", {"plate": (0.9, 0.9, 0.9), "tile": (0.8, 0.8, 0.8), "cells": (0.7, None, None)})
    b = _run(tmp_path / "b", {"plate": (1.0, 1.0, 1.0), "tile": (0.6, 0.6, 0.6), "cells": (0.75, None, None)})
    table = {"a": option_loco.utilities([tmp_path / "a"], "statistics"), "b": option_loco.utilities([tmp_path / "b"], "statistics")}
    assert table["a"] == pytest.approx({"plate": 0.9, "tile": 0.8, "cells": 0.7})  # the 256 x 256 row is not counted
    folds = option_loco.leave_one_out(table)
    assert {c: f["chosen"] for c, f in folds.items()} == {"plate": "a", "tile": "b", "cells": "a"}
    assert folds["tile"]["utility"] == pytest.approx(0.6) and folds["plate"]["utility"] == pytest.approx(0.9)
    assert option_loco.utilities([tmp_path / "a"], "default") == {}


@pytest.mark.parametrize("kind", ["photo", "pose"])
def test_a_shifted_copy_changes_the_test_images_and_keeps_masks_with_them(tmp_path, kind: str) -> None:
    import random

    from PIL import Image

    from benchmarks.shifted_copy import copy_category

    source = tmp_path / "src" / "plate"
    for folder in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (source / folder).mkdir(parents=True)
    picture = np.tile(np.linspace(40, 200, 32, dtype=np.uint8), (32, 1))
    for name in ("train/good/000.png", "test/good/000.png", "test/dent/000.png"):
        Image.fromarray(picture).save(source / name)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:10, 20:28] = 255
    Image.fromarray(mask).save(source / "ground_truth/dent/000_mask.png")
    target = tmp_path / "out" / "plate"
    assert copy_category(source, target, kind, random.Random(0), 1.0) == (2 if kind == "photo" else 3)
    train, test = (np.asarray(Image.open(target / f"{s}/000.png")) for s in ("train/good", "test/dent"))
    moved = np.asarray(Image.open(target / "ground_truth/dent/000_mask.png"))
    assert not np.array_equal(test, picture)
    if kind == "photo":  # the training image is the original; the mask stays where the defect is
        assert (target / "train/good/000.png").is_symlink() and np.array_equal(train, picture) and np.array_equal(moved, mask)
    else:  # every image moved, the mask with it (nearest: still binary)
        assert not np.array_equal(train, picture) and not np.array_equal(moved, mask) and set(np.unique(moved)) <= {0, 255}


def test_the_small_category_fallback_is_chosen_on_the_other_categories_and_seeds_are_averaged(tmp_path) -> None:
    """``small_categories.loco``: each held-out category gets the rule best on the others (its own numbers
    never count), several subsample files of a category are averaged, and ``subsample`` keeps N seeded
    training images per category with the test split linked."""
    from benchmarks import small_categories as sc

    names = list(sc.CANDIDATES)
    good_elsewhere, good_here = names[5], names[4]

    def rules(category: str, bonus: float) -> dict:
        out = {n: {"image_AUROC": 0.80} for n in names}
        out[good_elsewhere] = {"image_AUROC": 0.80 + (0.0 if category == "c" else bonus)}
        out[good_here] = {"image_AUROC": 0.90 if category == "c" else 0.70}
        return out

    files = []
    for seed, bonus in ((0, 0.10), (1, 0.02)):
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps({"categories": {c: rules(c, bonus) for c in "abc"}}))
        files.append(path)
    result = sc.loco(files)
    assert result["folds"]["c"]["chosen"] == good_elsewhere  # c's own favourite does not count for c
    assert result["folds"]["c"]["held_out_utility"] == pytest.approx(0.80)
    assert result["folds"]["a"]["chosen"] == good_elsewhere and result["folds"]["a"]["runs"] == 2
    assert result["per_category"]["a"][good_elsewhere]["image_AUROC"] == pytest.approx(0.86)  # the mean of 0.90 and 0.82
    assert "| c | " + good_elsewhere in sc.table(result)

    source = tmp_path / "root"
    for category in ("plate", "disk"):
        (source / category / "train" / "good").mkdir(parents=True)
        (source / category / "test" / "good").mkdir(parents=True)
        for i in range(30):
            (source / category / "train" / "good" / f"{i:03d}.png").write_bytes(b"x")
    sc.subsample(source, tmp_path / "small", 18, 0, None)
    kept = sorted(p.name for p in (tmp_path / "small" / "plate" / "train" / "good").iterdir())
    assert len(kept) == 18 and (tmp_path / "small" / "plate" / "test").is_symlink()
    sc.subsample(source, tmp_path / "again", 18, 0, ["plate"])
    assert sorted(p.name for p in (tmp_path / "again" / "plate" / "train" / "good").iterdir()) == kept  # seeded
    assert not (tmp_path / "again" / "disk").exists()


def test_a_variant_refitted_with_the_models_own_settings_reproduces_its_saved_statistics(tmp_path) -> None:
    """``rule_transfer.refit_variant`` (and ``maps_alone.py --prompts``) recompute a variant's prompts,
    error statistics and scales: with the model's own settings (one prompt) they must be what training
    saved, jittered copies counted as training counts them; with four prompts, four are stored."""
    import torch

    from benchmarks.rule_transfer import refit_variant, variant
    from onenip.data.manifest import make_manifest
    from onenip.features import FeatureCache
    from tests.helpers.trees import make_mvtec_tree
    from tests.unit.test_training import tiny_params, train_onenip

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=12, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    params = tiny_params(tmp_path, epochs=1, holdout_fraction=0.3)
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    assert detector.cfg.statistics_jitter > 0  # the default: the statistics count jittered copies
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    same = variant(detector, {"prompts": 1, "prompt_reduction": "min"})
    refit_variant(same, manifest, params, cache, "plate")
    for which in ("recon", "fine"):
        for saved, refitted in zip(detector.error_statistics(0, which), same.error_statistics(0, which), strict=True):
            torch.testing.assert_close(refitted, saved)
    torch.testing.assert_close(same.recon_scale, detector.recon_scale)
    four = variant(detector, {"prompts": 4, "prompt_reduction": "min"})
    refit_variant(four, manifest, params, cache, "plate")
    assert len(four.prompt(0)) == 4 and four.cfg.prompt_reduction == "min"
    for name, value in detector.model.state_dict().items():  # the same trained network
        assert torch.equal(four.model.state_dict()[name], value)


def test_a_shuffled_prompt_moves_each_fine_block_with_its_coarse_cell() -> None:
    """``prompt_ablation``'s shuffled prompt: a permutation of the grid cells, the fine grid (twice as
    fine) moved in 2 x 2 blocks with its coarse cell, so the two grids still describe the same places."""
    import torch

    from benchmarks.prompt_ablation import _constant, _shuffled
    from onenip.models.features import Features

    h, w = 3, 4
    cell = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    fine = cell.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).repeat(1, 2, 1, 1)  # (1, 2, 6, 8)
    fine[:, 1] += 100 * torch.arange(4.0).view(2, 2).repeat(h, w)  # each block's position inside it, on channel 1
    shuffled = _shuffled(Features(cell, fine), torch.Generator().manual_seed(0))
    assert sorted(shuffled.coarse.flatten().tolist()) == list(range(h * w)) and not torch.equal(shuffled.coarse, cell)
    coarse_up = shuffled.coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(shuffled.fine[:, :1], coarse_up)  # every fine block sits under its own cell
    torch.testing.assert_close(shuffled.fine[:, 1] - coarse_up[:, 0], 100 * torch.arange(4.0).view(2, 2).repeat(h, w)[None])
    constant = _constant(Features(cell, fine))
    assert torch.all(constant.coarse == cell.mean()) and torch.all(constant.fine[:, 0] == fine[:, 0].mean())


def test_the_mean_reconstruction_control_replaces_the_network_only_inside_its_block() -> None:
    """``prompt_ablation --controls``: inside the block every query's reconstruction is the given mean map
    (whatever the query and prompt), and the network's own reconstruction is back after it."""
    import torch

    from benchmarks.prompt_ablation import _reconstruction
    from onenip.models.onenip import OneNIP

    torch.manual_seed(0)
    model = OneNIP(in_features=6, max_grid=(4, 4), embed_dim=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                   neighbor_size=(3, 3), refiner_dim=4).eval()  # fmt: skip
    query, prompt, mean = torch.randn(3, 6, 4, 4), torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        network = model.reconstruct(query, prompt)
        with _reconstruction(model, mean):
            inside = model(query, prompt).recon_features
        after = model.reconstruct(query, prompt)
    torch.testing.assert_close(inside, mean.expand(3, -1, -1, -1))
    torch.testing.assert_close(after, network)
    assert not torch.allclose(network, inside)
