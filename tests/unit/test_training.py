"""Training glue on a tiny tree: holdout split, prompt choice, resume == uninterrupted, save/load."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from onenip.config import Params, load_params
from onenip.data.manifest import DatasetError, make_manifest
from onenip.data.transforms import load_image
from onenip.evaluation import evaluate
from onenip.features import FeatureCache
from onenip.models.features import Features
from onenip.models.detector import ModelLoadError, OneNIPDetector
from onenip import training
from onenip.training import (
    StopAfterEpoch, epoch_batches, epoch_subset, generation_indices, select_prompt, split_holdout, train_onenip,
)
from tests.helpers.tiny import TINY_MODEL, TINY_VALIDATION
from tests.helpers.trees import make_mvtec_tree

TINY = {
    "model": TINY_MODEL,
    "synthesis": {"pool_size": 2},
    "train": {"epochs": 3, "batch_size": 4, "warmup_epochs": 1},
    "validation": TINY_VALIDATION,
    "eval": {"num_heatmaps": 2},
}


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    return make_mvtec_tree(root, categories=("plate", "widget"), n_train=10, n_test_good=3, n_test_bad=3, size=64)


def tiny_params(tmp_path: Path, **train: object) -> Params:
    base = Params.model_validate(TINY)
    update = {"cache_dir": str(tmp_path / "cache"), **train}
    return base.model_copy(update={"train": base.train.model_copy(update=update)})


def test_params_yaml_in_repo_loads_and_rejects_typos(tmp_path: Path) -> None:
    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert load_params(repo_params).model.backbone.name == "tf_efficientnet_lite0"
    # make run validates its last epoch only and keeps one synthetic pool (its 15-minute budget)
    fast = load_params(repo_params, profile="fast")
    assert (fast.train.epochs, fast.validation.every_epochs, fast.synthesis.regenerate_every) == (2, 2, 0)
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match="epoch"):
        load_params(bad)


def test_split_holdout_is_per_category_seeded_and_disjoint() -> None:
    frame = pd.DataFrame(
        {"image_path": [f"{c}/{i:03d}.png" for c in "ab" for i in range(20)], "category": ["a"] * 20 + ["b"] * 20},
    )
    fit, holdout = split_holdout(frame, 0.1, 2, seed=0)
    assert holdout.groupby("category").size().to_dict() == {"a": 2, "b": 2}
    assert not set(fit["image_path"]) & set(holdout["image_path"])
    assert len(fit) + len(holdout) == 40
    again_fit, again_holdout = split_holdout(frame, 0.1, 2, seed=0)
    assert again_holdout["image_path"].tolist() == holdout["image_path"].tolist()
    _, other = split_holdout(frame, 0.1, 2, seed=1)
    assert other["image_path"].tolist() != holdout["image_path"].tolist()


def test_select_prompt_picks_the_typical_image() -> None:
    # Five maps along one direction at -2, -1, 0, +1, +2 (shuffled): the mean is the 0 map itself,
    # so the image that IS the mean must be chosen, whatever the order.
    direction = torch.randn(2, 2, 2)
    features = torch.stack([offset * direction for offset in (2.0, -1.0, -2.0, 0.0, 1.0)])
    assert select_prompt(features) == 3
    # An outlier at +10 with -1, 0, +1 moves the mean to +2.5: the +1 map is the nearest (1.5 away).
    features = torch.stack([offset * direction for offset in (10.0, -1.0, 1.0, 0.0)])
    assert select_prompt(features) == 2


def test_resume_matches_uninterrupted_run(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path)
    full = train_onenip(manifest, params, tmp_path / "full", progress=False)

    interrupted = train_onenip(manifest, params, tmp_path / "resumed", progress=False, callbacks=[StopAfterEpoch(1)])
    assert len(interrupted.history) == 1
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = train_onenip(manifest, params, tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for (name, a), (_, b) in zip(full.detector.state_dict().items(), resumed.detector.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_epoch_subset_is_seeded_sized_and_fresh_each_epoch() -> None:
    assert epoch_subset(10, None, 0, 0, 0) is None
    assert epoch_subset(10, 10, 0, 0, 0) is None  # under or at the cap: every image
    first = epoch_subset(100, 30, 0, 0, 1)
    assert first is not None and len(first) == 30 and len(first.unique()) == 30
    assert first.min() >= 0 and first.max() < 100
    assert torch.equal(first, epoch_subset(100, 30, 0, 0, 1))  # resume sees the same subset
    assert not torch.equal(first, epoch_subset(100, 30, 0, 1, 1))  # the next epoch draws anew
    assert not torch.equal(first, epoch_subset(100, 30, 0, 0, 0))  # another category draws its own


def test_epoch_batches_cover_each_subset_once() -> None:
    subset = epoch_subset(20, 7, 0, 3, 1)
    assert subset is not None
    batches = epoch_batches([5, 20], 3, torch.Generator().manual_seed(0), [None, subset])
    by_category = {p: torch.cat([i for q, i in batches if q == p]).sort().values for p in (0, 1)}
    assert by_category[0].tolist() == list(range(5))
    assert torch.equal(by_category[1], subset)
    assert len(batches) == 2 + 3  # ceil(5 / 3) + ceil(7 / 3)
    # no subsets: the batches of before (same draws from the same generator)
    plain = epoch_batches([5, 20], 3, torch.Generator().manual_seed(0))
    again = epoch_batches([5, 20], 3, torch.Generator().manual_seed(0), [None, None])
    assert [(p, i.tolist()) for p, i in plain] == [(p, i.tolist()) for p, i in again]


def test_pool_generation_covers_exactly_the_subsets_of_its_epochs() -> None:
    needed = generation_indices(50, 1, 10, 0, generation=1, regenerate_every=3, epochs=8)
    expected = torch.cat([epoch_subset(50, 10, 0, e, 1) for e in (3, 4, 5)]).unique()  # type: ignore[misc]
    assert needed is not None and torch.equal(needed, expected)
    last = generation_indices(50, 1, 10, 0, generation=2, regenerate_every=3, epochs=8)  # epochs 6, 7 only
    assert last is not None and torch.equal(last, torch.cat([epoch_subset(50, 10, 0, e, 1) for e in (6, 7)]).unique())  # type: ignore[misc]
    assert generation_indices(50, 1, 10, 0, 0, 0, 8) is None  # one pool for the whole run: all images
    assert generation_indices(8, 1, 10, 0, 0, 1, 8) is None  # under the cap
    assert generation_indices(50, 1, None, 0, 0, 1, 8) is None


def test_capped_epochs_train_on_subsets_and_resume_identically(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    base = tiny_params(tmp_path, max_images_per_epoch=5)
    # a pool serves two epochs, so the interruption after epoch 1 falls inside a generation
    params = base.model_copy(update={"synthesis": base.synthesis.model_copy(update={"regenerate_every": 2})})
    built: list[tuple[int, int]] = []
    original = training.SyntheticPool.build.__func__  # type: ignore[attr-defined]

    def recording(cls, data, *args, **kwargs):  # type: ignore[no-untyped-def]
        pool = original(cls, data, *args, **kwargs)
        built.append((len(pool.features), len(kwargs["indices"])))
        return pool

    monkeypatch.setattr(training.SyntheticPool, "build", classmethod(recording))
    full = train_onenip(manifest, params, tmp_path / "full", progress=False)
    # 8 fit images per category, 5 per epoch: 2 steps of 4 per category, a pool only of the used images
    assert all(rows == used * 2 for rows, used in built)  # pool_size 2
    assert [used for _, used in built][2:] == [5, 5]  # the last generation serves epoch 3 alone
    assert len(built) == 4  # two categories, generations {0, 1} and {2}
    train_onenip(manifest, params, tmp_path / "resumed", progress=False, callbacks=[StopAfterEpoch(1)])
    resumed = train_onenip(manifest, params, tmp_path / "resumed", progress=False)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)


def test_a_cap_above_every_category_changes_nothing(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    plain = train_onenip(manifest, tiny_params(tmp_path, epochs=2), tmp_path / "plain", progress=False)
    capped = train_onenip(manifest, tiny_params(tmp_path, epochs=2, max_images_per_epoch=8), tmp_path / "capped", progress=False)
    assert [h["loss"] for h in capped.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-6)


def test_changed_params_do_not_resume_from_foreign_checkpoint(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    train_onenip(manifest, tiny_params(tmp_path), tmp_path / "run", progress=False, callbacks=[StopAfterEpoch(1)])
    other = tiny_params(tmp_path, lr=1e-3, epochs=2)
    result = train_onenip(manifest, other, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]  # started over


def test_saved_model_reloads_and_evaluates_identically(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path, epochs=2)
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "onenip.json").is_file()
    detector = result.detector.eval()
    assert torch.isfinite(detector.score_threshold).all()
    assert (detector.recon_scale > 0).all()
    loaded = OneNIPDetector.load(model_dir)
    assert loaded.categories == ["plate", "widget"]
    assert loaded.metadata["prompt_paths"].keys() == {"plate", "widget"}

    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    first = evaluate(detector, manifest, cache, tmp_path / "eval", num_heatmaps=2, progress=False)
    second = evaluate(loaded, manifest, cache, None, progress=False)
    for category in ("plate", "widget"):
        assert first[category].metrics == pytest.approx(second[category].metrics)
        assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= first[category].metrics.keys()
        assert (tmp_path / "eval" / category / "curves.png").is_file()
        assert len(list((tmp_path / "eval" / category / "heatmaps").glob("*.png"))) == 2
    # images through the backbone give the same scores as cached features (float16 cache)
    plate = manifest[manifest["category"] == "plate"].iloc[:4]
    geometry = loaded.geometry("plate")
    images = torch.stack([load_image(p, geometry) for p in plate["image_path"]])
    direct = loaded(images, 0).pred_score
    features = cache.get(plate["image_path"].tolist(), plate["sha256"].tolist(), geometry, progress=False)
    cached = loaded.forward_features(features, 0).pred_score
    assert torch.allclose(direct, cached, rtol=2e-2, atol=1e-3)


def test_loading_a_folder_that_is_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model.safetensors|onenip.json"):
        OneNIPDetector.load(tmp_path)


def test_per_category_mode_and_prompt_sensitivity(tiny_tree: Path, tmp_path: Path) -> None:
    from onenip.evaluation import prompt_sensitivity
    from onenip.training import train_networks

    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path, epochs=1)
    results = train_networks(manifest, params, tmp_path / "run", mode="per-category", progress=False)
    assert set(results) == {"plate", "widget"}
    assert results["plate"].detector.categories == ["plate"]
    assert (tmp_path / "run" / "widget" / "model" / "onenip.json").is_file()

    detector = results["plate"].detector
    stored = detector.prompt(0)
    stored = (stored.coarse.clone(), stored.fine.clone())
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    report = prompt_sensitivity(detector, manifest, "plate", cache, trials=3)
    assert report["prompt_trials"] == 3
    # the tiny tree's defects are blobs of the complementary colour: every prompt finds them
    assert report["prompt_image_AUROC_mean"] >= 0.9 and report["stored_prompt_image_AUROC"] >= 0.9
    assert torch.equal(detector.prompt(0).coarse, stored[0]) and torch.equal(detector.prompt(0).fine, stored[1])
    with pytest.raises(ValueError, match="mode"):
        train_networks(manifest, params, tmp_path / "other", mode="sideways", progress=False)


def test_cached_prompt_encoding_matches_and_follows_changes(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path, epochs=1)
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    from onenip.models.scoring import ScoringRule

    detector.scoring = dict.fromkeys(detector.categories, ScoringRule((0.5, 0.5, 0.0, 0.0, 0.0), 4.0, 16))  # the network's maps (a tiny category falls back to statistics)
    extractor = detector.feature_extractor
    features = Features(torch.randn(3, extractor.num_features, 4, 4), torch.randn(3, extractor.num_fine_features, 8, 8))
    k = 0
    with torch.no_grad():
        cached = detector.forward_features(features, k).anomaly_map
        again = detector.forward_features(features, k).anomaly_map
    uncached = detector.forward_features(features, k).anomaly_map.detach()  # grad enabled: no cache
    assert torch.equal(cached, again)
    assert torch.allclose(cached, uncached, atol=1e-5)
    with torch.no_grad():
        detector.prompt_0 += 1.0
        changed = detector.forward_features(features, k).anomaly_map
        for param in detector.model.parameters():
            param.mul_(1.01)
        reweighted = detector.forward_features(features, k).anomaly_map
    assert not torch.allclose(changed, cached)
    assert torch.allclose(reweighted, detector.forward_features(features, k).anomaly_map.detach(), atol=1e-5)


def test_non_square_category_keeps_its_aspect_end_to_end(tmp_path: Path) -> None:
    """A 1:2.5 product gets a 1:2.5 input (about the square's area), a non-square grid, maps at its own
    resolution and metrics at the masks' resolution; the geometry is stored with the model."""
    root = make_mvtec_tree(tmp_path / "tree", ("strip",), n_train=10, n_test_good=2, n_test_bad=2, shapes={"strip": (160, 64)})
    manifest = make_manifest(root, progress=False)
    params = tiny_params(tmp_path, epochs=1)
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    geometry = result.detector.geometry("strip")
    assert (geometry.height, geometry.width, geometry.letterbox) == (96, 48, False)  # 2.5:1 -> 2:1 at 64^2 area, stride 16
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    assert loaded.geometry("strip") == geometry
    cache = FeatureCache(params.train.cache_dir, loaded.feature_extractor, params.model.backbone)
    report = evaluate(loaded, manifest, cache, None, progress=False)["strip"]
    assert {"image_AUROC", "pixel_AUROC"} <= report.metrics.keys()
    features = cache.get(manifest["image_path"][:2].tolist(), manifest["sha256"][:2].tolist(), geometry, progress=False)
    assert features.coarse.shape[-2:] == (6, 3) and features.fine.shape[-2:] == (12, 6)
    assert loaded.forward_features(features, 0).anomaly_map.shape == (2, 1, 96, 48)


def test_input_sizes_override_and_a_window_that_blocks_the_grid_is_refused(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "tree", ("strip",), n_train=6, n_test_good=1, n_test_bad=1, shapes={"strip": (64, 32)})
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=1)
    params = base.model_copy(update={"model": base.model.model_copy(update={"input_sizes": {"strip": (64, 48)}})})
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert result.detector.geometry("strip").size == (64, 48)
    blocked = base.model_copy(update={"model": base.model.model_copy(update={"neighbor_size": 7, "input_sizes": {"strip": (64, 32)}})})
    with pytest.raises(ValueError, match="strip.*blocks the whole 4x2"):
        train_onenip(manifest, blocked, tmp_path / "other", progress=False)
    odd = base.model_copy(update={"model": base.model.model_copy(update={"input_sizes": {"strip": (50, 32)}})})
    with pytest.raises(ValueError, match="multiples of the feature stride"):
        train_onenip(manifest, odd, tmp_path / "odd", progress=False)


def test_scoring_rule_and_epoch_are_chosen_on_validation_and_stored(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=2, holdout_fraction=0.3)
    result = train_onenip(manifest, base, tmp_path / "run", progress=False)
    selection = result.selection
    assert selection is not None and selection.table["plate"]  # 5 held-out normals >= min_normals: a choice was made
    assert [h["epoch"] for h in result.history] == [1, 2] and all("val_score" in h for h in result.history)
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    assert loaded.scoring == selection.rules
    meta = loaded.metadata["selection"]
    assert meta["validation_methods"] == ["warp", "smudge", "spots"]
    assert meta["validation_anomaly_strength"] == [0.3, 1.0]
    assert meta["validation_images"]["plate"] == 5 * 2  # 5 normals + 1 anomaly each
    # the latest epoch within epoch_tolerance of the best validation score is kept
    top = max(h["val_score"] for h in result.history)
    kept = max(h["epoch"] for h in result.history if h["val_score"] >= top - base.validation.epoch_tolerance)
    assert loaded.metadata["kept_epoch"] == kept
    # the candidates are the weight simplex (step 0.5 with the residual, the Gaussian and the memory
    # map: 15 points) x sigmas x pools; the refiner's weight is capped at 0.5: (0, 1, 0, 0, 0) is not a candidate
    assert len(selection.table["plate"]) == 14 * 2 * 2
    assert bool(loaded.memory_fitted[0]) and float(loaded.memory_scale[0]) != 1.0
    assert bool(loaded.gaussian_fitted[0]) and float(loaded.gaussian_scale[0]) != 1.0  # fitted in training, scaled on held-out normals
    scored = [row for row in selection.table["plate"] if row["score"] is not None]  # the AUPRO finalists (8, and 2 per refiner weight) x pools
    assert 0 < len(scored) <= (8 + 2 * 2) * 2
    from onenip.models.scoring import ScoringRule

    chosen = [row for row in scored if ScoringRule.from_dict(row) == selection.rules["plate"]]
    assert len(chosen) == 1 and chosen[0]["score"] == pytest.approx(selection.score)  # the best, or the best with less refiner within the noise
    assert max(row["score"] for row in scored) >= selection.score

    fixed = base.model_copy(update={"validation": base.validation.model_copy(update={"select": False})})
    kept = train_onenip(manifest, fixed, tmp_path / "fixed", progress=False)
    assert kept.selection is None and kept.detector.scoring["plate"].weights == (0.5, 0.5, 0.0, 0.0, 0.0)


def test_validation_every_n_epochs_and_the_kept_last_epoch_is_not_validated_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    from onenip import training

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=3, holdout_fraction=0.3)
    # every 2nd epoch and the last; a huge tolerance keeps the latest validated epoch (the last)
    params = base.model_copy(update={"validation": base.validation.model_copy(update={"every_epochs": 2, "epoch_tolerance": 1.0})})
    calls: list[int] = []
    real_validate, real_threshold = training.validate, training.calibrate_threshold
    monkeypatch.setattr(training.loop, "validate", lambda *a, **k: calls.append(1) or real_validate(*a, **k))
    compared: list[tuple[bool, torch.Tensor, torch.Tensor]] = []

    def threshold(detector, data, quantile, device, *, calibrated=False):  # noqa: ANN001, ANN202
        real_threshold(detector, data, quantile, device, calibrated=calibrated)
        fresh = copy.deepcopy(detector)
        real_threshold(fresh, data, quantile, device, calibrated=False)  # statistics and scales recomputed
        compared.append((calibrated, detector.score_threshold.clone(), fresh.score_threshold.clone()))

    monkeypatch.setattr(training.loop, "calibrate_threshold", threshold)
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert [("val_score" in h) for h in result.history] == [False, True, True]
    assert result.detector.metadata["kept_epoch"] == 3
    # epochs 2 and 3 validated; the kept last epoch's selection is reused, not recomputed
    assert len(calls) == 2
    [(calibrated, kept, recomputed)] = compared
    assert calibrated and torch.allclose(kept, recomputed)


def test_the_latest_epoch_within_tolerance_of_the_best_is_kept() -> None:
    from onenip.training import BestEpoch, keeps

    best = None
    kept = []
    for epoch, score in enumerate([0.80, 0.85, 0.84, 0.82, 0.86, 0.83], start=1):
        if keeps(best, score, 0.02):
            top = score if best is None else max(best.top_score, score)
            best = BestEpoch(epoch, score, {}, top)
        else:
            best.top_score = max(best.top_score, score)
        kept.append(best.epoch)
    # 0.84 is within 0.02 of 0.85 (kept, later); 0.82 is not; 0.86 is a new best; 0.83 is not within 0.02
    assert kept == [1, 2, 3, 3, 5, 5]


def test_validation_families_must_differ_from_training_families(tiny_tree: Path, tmp_path: Path) -> None:
    from onenip.synthesis import SynthesisError

    base = tiny_params(tmp_path)
    overlapping = base.model_copy(update={"synthesis": base.synthesis.model_copy(update={"methods": ("perlin", "spots")})})
    with pytest.raises(SynthesisError, match="spots"):
        train_onenip(make_manifest(tiny_tree, progress=False), overlapping, tmp_path / "run", progress=False)


def test_prompt_bank_covers_the_variety_and_each_query_uses_its_nearest_prompt(tmp_path: Path) -> None:
    from onenip.models.detector import nearest_prompt
    from onenip.training import select_prompts

    # four typical images near (1, 1, 1) and two rare looks, (1, 0, 0)-ish and (0, 0, 1)-ish
    looks = [(1.0, 1.0, 1.0), (1.1, 1.0, 0.9), (0.9, 1.0, 1.1), (1.0, 0.1, 0.1), (0.1, 0.1, 1.0), (1.0, 0.95, 1.0)]
    features = torch.tensor(looks)[:, :, None, None].expand(6, 3, 2, 2).contiguous()
    chosen = select_prompts(features, 3)
    assert chosen[0] in (0, 1, 2, 5) and set(chosen[1:]) == {3, 4}
    assert select_prompts(features, 1) == [select_prompt(features)]
    assert len(select_prompts(features[:2], 4)) == 4  # fewer images than prompts: padded, never fails
    bank = torch.stack([torch.full((3, 2, 2), 1.0), torch.tensor([1.0, -1.0, 0.0])[:, None, None].expand(3, 2, 2)])
    queries = torch.stack([torch.full((3, 2, 2), 2.0), torch.tensor([3.0, -3.0, 0.1])[:, None, None].expand(3, 2, 2)])
    assert nearest_prompt(queries, bank).tolist() == [0, 1]

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=8, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=1)
    params = base.model_copy(update={"model": base.model.model_copy(update={"prompts": 3})})
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert result.detector.prompt(0).coarse.shape[0] == 3
    assert len(result.prompt_paths["plate"]) == 3
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    cache = FeatureCache(params.train.cache_dir, loaded.feature_extractor, params.model.backbone)
    plate = manifest[manifest["split"] == "test"]
    features = cache.get(plate["image_path"].tolist(), plate["sha256"].tolist(), loaded.geometry("plate"), progress=False)
    with torch.no_grad():
        scored = loaded.forward_features(features, 0).pred_score
        # the same as scoring each query with its nearest prompt alone
        index = nearest_prompt(features.coarse, loaded.prompt(0).coarse)
        for i in range(len(features)):
            one = loaded.components(features.select([i]), 0, loaded.prompt(0).select([int(index[i])]))
            from onenip.models.scoring import score_maps

            assert score_maps(one, loaded.scoring["plate"])[1].item() == pytest.approx(scored[i].item(), rel=1e-4, abs=1e-5)


def test_the_spread_floor_bounds_the_z_score_of_a_channel_that_never_varied() -> None:
    from onenip.training import error_statistics

    generator = torch.Generator().manual_seed(1)
    varying = torch.randn(200, 1, 2, 2, generator=generator)
    residuals = torch.cat([varying, torch.zeros(200, 1, 2, 2)], dim=1)  # channel 1 is constant on the normals
    change = torch.tensor([0.0, 0.1])[None, :, None, None].expand(1, 2, 2, 2)  # a slight change of it at test time
    z = {}
    for floor in (1e-3, 0.5):
        for whiten in (False, True):
            mean, whitening, std = error_statistics(residuals, torch.ones(200, 1, 2, 2), prior=1.0, whiten=whiten, std_floor=floor)
            z[floor, whiten] = float((torch.einsum("ij,njhw->nihw", whitening, change - mean) / std).norm(dim=1).max())
    for whiten in (False, True):
        assert z[1e-3, whiten] > 100  # the default floor: a 0.1 change of a constant channel looks like a 100-sigma defect
        assert z[0.5, whiten] < z[1e-3, whiten] / 100  # at half the channels' root mean square, a hundredth of that
    assert z[0.5, False] < 1.0  # without whitening, below one sigma (whitening's ridge still scales the channel up)


def test_error_normalisation_is_a_per_position_z_score() -> None:
    from onenip.config import ModelParams
    from onenip.models.scoring import ScoringRule
    from onenip.training import error_statistics

    # statistics: a position no image covers falls back to the channel's statistics
    values = torch.tensor([1.0, 3.0])[:, None, None, None].expand(2, 1, 1, 2).clone()
    weight = torch.zeros(2, 1, 1, 2)
    weight[:, :, :, 0] = 1
    mean, whitening, std = error_statistics(values, weight, prior=1.0, whiten=False)
    assert mean[0, 0, 0].item() == pytest.approx(2.0) and std[0, 0, 0].item() == pytest.approx(1.0)
    assert mean[0, 0, 1].item() == pytest.approx(2.0) and std[0, 0, 1].item() == pytest.approx(1.0)
    assert torch.equal(whitening, torch.eye(1))
    # whitening: two perfectly correlated channels become one direction of unit variance
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(400, 1, 3, 3, generator=generator)
    pair = torch.cat([base, 2 * base + 0.01 * torch.randn(400, 1, 3, 3, generator=generator)], dim=1)
    mean, whitening, std = error_statistics(pair, torch.ones(400, 1, 3, 3), prior=1.0, whiten=True, ridge=1e-4)
    z = torch.einsum("ij,njhw->nihw", whitening, pair - mean) / std
    covariance = torch.cov(z.permute(1, 0, 2, 3).reshape(2, -1))
    assert torch.allclose(covariance, torch.eye(2), atol=0.05)  # decorrelated, unit variance

    cfg = ModelParams.model_validate(TINY_MODEL | {"backbone": {"input_size": 64, "fine_indices": []}})
    detector = OneNIPDetector(cfg, ["plate"], pretrained=False).eval()
    channels = detector.feature_extractor.num_features
    features = Features(torch.randn(2, channels, 4, 4), None)
    detector.scoring["plate"] = ScoringRule((1.0, 0.0, 0.0), 0.0, 1)
    with torch.no_grad():
        raw = detector.components(features, 0)[0]  # mean 0, identity, std 1: the raw L2 error
        out = detector.model(features.coarse, detector.prompt(0).coarse)
        assert torch.allclose(raw, out.recon_map, atol=1e-5)
        zeros, eye = torch.zeros(channels, 4, 4), torch.eye(channels)
        detector.set_error_statistics(0, "recon", zeros, eye, torch.full((channels, 4, 4), 2.0))
        assert torch.allclose(detector.components(features, 0)[0], raw / 2, atol=1e-5)
        detector.set_error_statistics(0, "recon", zeros, 3 * eye, torch.ones(channels, 4, 4))
        assert torch.allclose(detector.components(features, 0)[0], raw * 3, atol=1e-4)
        shifted_mean = (out.recon_features - features.coarse)[0]  # residual of query 0 as the mean: its map is 0
        detector.set_error_statistics(0, "recon", shifted_mean, eye, torch.ones_like(shifted_mean))
        assert detector.components(features, 0)[0][0].abs().max() < 1e-4


@pytest.mark.parametrize("whiten", [True, False])
def test_error_statistics_in_chunks_equal_the_whole_batch_formula(whiten: bool) -> None:
    """The chunked float64 sums give the statistics of the one-shot formula (half-precision input too)."""
    from onenip.training import STATISTICS_CHUNK, error_statistics

    generator = torch.Generator().manual_seed(1)
    n, channels, prior, ridge = 2 * STATISTICS_CHUNK + 5, 6, 10.0, 0.01
    residuals = (torch.randn(n, channels, 5, 4, generator=generator) * torch.linspace(0.5, 2, channels)[:, None, None]).half()
    weights = (torch.rand(n, 1, 5, 4, generator=generator) > 0.2).float()
    r, w = residuals.double(), weights.double()
    weight = w.sum(0)
    channel_mean = (r * w).sum(dim=(0, 2, 3)) / w.sum()
    mean = ((r * w).sum(0) + prior * channel_mean[:, None, None]) / (weight + prior)
    centred = r - mean
    whitening = torch.eye(channels, dtype=torch.float64)
    if whiten:
        flat = (centred * w.sqrt()).permute(0, 2, 3, 1).reshape(-1, channels)
        covariance = flat.t() @ flat / w.sum()
        covariance += ridge * covariance.diagonal().mean() * torch.eye(channels, dtype=torch.float64)
        whitening = torch.linalg.inv(torch.linalg.cholesky(covariance))
        centred = torch.einsum("ij,njhw->nihw", whitening, centred)
    channel_sq = (centred.pow(2) * w).sum(dim=(0, 2, 3)) / w.sum()
    std = (((centred.pow(2) * w).sum(0) + prior * channel_sq[:, None, None]) / (weight + prior)).sqrt()
    got = error_statistics(residuals, weights, prior, whiten, ridge)
    for value, expected in zip(got, (mean, whitening, std), strict=True):
        torch.testing.assert_close(value, expected.float(), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_keeps_the_amp_loss_scale(tmp_path: Path) -> None:
    """CUDA training scales its loss (GradScaler); a resumed run must go on with the same scale and
    growth tracker, or it skips and scales steps differently from the uninterrupted run."""
    detector = OneNIPDetector(Params.model_validate(TINY).model, ["plate"], pretrained=False)
    optimizer = torch.optim.AdamW(detector.model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # the CUDA scaler's state, testable on a CPU
    state = scaler.state_dict() | {"scale": 256.0, "_growth_tracker": 37}
    scaler.load_state_dict(state)
    training.save_checkpoint(tmp_path, detector, optimizer, 1, [{"epoch": 1.0}], "fp", None, scaler)
    restored = torch.amp.GradScaler("cpu")
    assert training.load_checkpoint(tmp_path, detector, optimizer, "fp", restored) is not None
    assert restored.state_dict()["scale"] == 256.0 and restored.state_dict()["_growth_tracker"] == 37
    # a CPU run has no scaler: its checkpoints load as before
    training.save_checkpoint(tmp_path / "cpu", detector, optimizer, 1, [{"epoch": 1.0}], "fp")
    assert training.load_checkpoint(tmp_path / "cpu", detector, optimizer, "fp", torch.amp.GradScaler("cpu")) is not None


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_epoch_resumable(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM can land between writing an epoch's weights and renaming the state file that names
    them (it did in CI); the run must resume from the previous epoch with that epoch's weights, not
    start over and not mix two epochs."""
    detector = OneNIPDetector(Params.model_validate(TINY).model, ["plate"], pretrained=False)
    optimizer = torch.optim.AdamW(detector.model.parameters(), lr=1e-3)
    training.save_checkpoint(tmp_path, detector, optimizer, 1, [{"epoch": 1.0}], "fp")
    saved = {k: v.clone() for k, v in detector.model.state_dict().items()}
    with torch.no_grad():
        for value in detector.model.parameters():
            value.add_(1.0)
    real_replace = Path.replace

    def killed_before_the_state_lands(self: Path, target):  # noqa: ANN001
        if Path(target).name == "last.json":
            raise KeyboardInterrupt  # the signal, at the worst moment
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", killed_before_the_state_lands)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(tmp_path, detector, optimizer, 2, [{"epoch": 1.0}, {"epoch": 2.0}], "fp")
    monkeypatch.undo()
    restored = training.load_checkpoint(tmp_path, detector, optimizer, "fp")
    assert restored is not None and restored[0] == 1
    assert all(torch.equal(detector.model.state_dict()[k], v) for k, v in saved.items())
    training.save_checkpoint(tmp_path, detector, optimizer, 2, [{"epoch": 1.0}, {"epoch": 2.0}], "fp")
    assert sorted(f.name for f in tmp_path.glob("*.safetensors")) == ["epoch-0002.safetensors"]  # older weights removed


def test_an_anomalous_test_image_without_a_mask_beside_masked_ones_is_refused_by_name(tmp_path: Path) -> None:
    """An all-zero stand-in mask would count that defect as normal pixels and lower every pixel metric."""
    root = make_mvtec_tree(tmp_path / "data", categories=("plate",), n_train=4, n_test_good=2, n_test_bad=2, size=64)
    masks = sorted((root / "plate" / "ground_truth").rglob("*.png"))
    assert len(masks) == 2
    masks[0].unlink()
    manifest = make_manifest(root, progress=False)
    detector = OneNIPDetector(Params.model_validate(TINY).model, ["plate"], pretrained=False)
    cache = FeatureCache(tmp_path / "cache", detector.feature_extractor, detector.cfg.backbone)
    image = masks[0].name.removesuffix("_mask.png")
    with pytest.raises(DatasetError, match=rf"1 anomalous test images have no mask while others do \(.*{image}"):
        evaluate(detector, manifest, cache, tmp_path / "eval", ["plate"], progress=False)


def test_min_over_prompts_is_each_network_maps_per_pixel_minimum(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=8, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=1)
    params = base.model_copy(update={"model": base.model.model_copy(update={"prompts": 3, "prompt_reduction": "min"})})
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    test = manifest[manifest["split"] == "test"]
    features = cache.get(test["image_path"].tolist(), test["sha256"].tolist(), detector.geometry("plate"), progress=False).float()
    with torch.no_grad():
        reduced = detector.components(features, 0)
        single = [detector.components(features, 0, detector.prompt(0).select([p])) for p in range(3)]
    for index in range(3):  # recon, refiner, residual: the minimum over the three prompts
        expected = torch.stack([maps[index] for maps in single]).amin(dim=0)
        torch.testing.assert_close(reduced[index], expected)
        assert not all(torch.equal(expected, maps[index]) for maps in single)  # the prompts do differ
    for index in (3, 4):  # the Gaussian and the memory bank do not depend on the prompt
        torch.testing.assert_close(reduced[index], single[0][index])


def test_a_statistics_only_model_fits_in_no_epoch_and_never_runs_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onenip.models.onenip import OneNIP

    root = make_mvtec_tree(tmp_path / "tree", ("plate", "widget"), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    params = tiny_params(tmp_path, holdout_fraction=0.3, network="none")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network ran")

    monkeypatch.setattr(OneNIP, "forward", no_network)
    monkeypatch.setattr(OneNIP, "reconstruct", no_network)
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert result.history == [] and result.selection is not None
    for category in ("plate", "widget"):
        rule = result.detector.scoring[category]
        assert rule.weights[:3] == (0.0, 0.0, 0.0) and sum(rule.weights[3:]) == pytest.approx(1.0)
        assert all(row["weights"][:3] == [0.0, 0.0, 0.0] for row in result.selection.table[category])
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    assert loaded.metadata["network"] == "none" and loaded.metadata["kept_epoch"] == 0
    cache = FeatureCache(params.train.cache_dir, loaded.feature_extractor, params.model.backbone)
    evaluation = evaluate(loaded, manifest, cache, None, num_heatmaps=0, progress=False)  # scoring skips the network too
    assert set(evaluation) == {"plate", "widget"} and all(float(loaded.score_threshold[k]) < float("inf") for k in range(2))
    # a category too small to validate gets validation.small_category_weights (Gaussian + memory), never the
    # (untrained) paper blend; with network maps asked for there, the memory bank alone
    small = tiny_params(tmp_path, holdout_fraction=0.1, network="none")
    assert train_onenip(manifest, small, tmp_path / "small", progress=False).detector.scoring["plate"].weights == (0.0, 0.0, 0.0, 0.5, 0.5)
    small = small.model_copy(update={"validation": small.validation.model_copy(update={"small_category_weights": (1.0, 0.0, 0.0, 0.0, 0.0)})})
    assert train_onenip(manifest, small, tmp_path / "small2", progress=False).detector.scoring["plate"].weights == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_a_category_too_small_to_validate_gets_the_small_category_rule_over_the_maps_the_model_has(tmp_path: Path) -> None:
    """2 held-out normals < min_normals: Gaussian + memory (validation.small_category_weights, chosen LOCO on
    18-image cuts of the five categories); the recorded network-only rule is the paper blend. A model
    without a memory bank renormalises to the Gaussian alone; with no listed map at all, ``model.scoring``."""
    from onenip.models.scoring import ScoringRule
    from onenip.training import fallback_rule

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    params = tiny_params(tmp_path, epochs=1, holdout_fraction=0.1)
    result = train_onenip(make_manifest(root, progress=False), params, tmp_path / "run", progress=False)
    scoring = params.model.scoring
    assert result.detector.scoring["plate"] == ScoringRule((0.0, 0.0, 0.0, 0.5, 0.5), scoring.smoothing_sigma, scoring.score_pool_size)
    assert result.selection.restricted["network"]["plate"]["rule"]["weights"] == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert result.selection.restricted["statistics"]["plate"]["rule"]["weights"] == [0.0, 0.0, 0.0, 0.5, 0.5]
    from onenip.model_card import model_card

    card = model_card(tmp_path / "run" / "model", "plate")
    assert "| fallback: too few held-out normals to validate | 0.5 x " in card and "| chosen |" not in card
    no_bank = params.model_copy(update={"model": params.model.model_copy(update={"memory_patches": 0})})
    detector = OneNIPDetector(no_bank.model, ["plate"], pretrained=False)
    assert fallback_rule(detector, no_bank).weights == (0.0, 0.0, 0.0, 1.0, 0.0)
    neither = no_bank.model_copy(update={"model": no_bank.model.model_copy(update={"gaussian_channels": 0})})
    assert fallback_rule(OneNIPDetector(neither.model, ["plate"], pretrained=False), neither).weights == (0.5, 0.5, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("mode", ["category", "position"])
def test_standardised_features_are_what_the_network_reads_and_reconstructs(tmp_path: Path, mode: str) -> None:
    from onenip.models.onenip import OneNIP

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=8, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=1)
    params = base.model_copy(update={"model": base.model.model_copy(update={"feature_standardization": mode})})
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    item = training.prepare_category_data(manifest, params, FeatureCache(params.train.cache_dir, detector.feature_extractor,
                                          params.model.backbone), "plate", 0, detector.geometry("plate"), False)  # fmt: skip
    coarse = item.fit_features.coarse.float()
    standardised = detector.network_input(0, coarse)
    # per channel over the fit images: mean 0 and standard deviation 1 (float16 cache, float64 sums);
    # centred per position, every position's mean is 0 too (an output of 0 is the per-position mean)
    mean_dims = (0,) if mode == "position" else (0, 2, 3)
    torch.testing.assert_close(standardised.mean(dim=mean_dims), torch.zeros_like(coarse.mean(dim=mean_dims)), atol=2e-3, rtol=0)
    if mode == "category":  # a position's own mean is not zero: what ``position`` removes
        assert standardised.mean(dim=0).abs().amax() > 0.1
    torch.testing.assert_close(standardised.std(dim=(0, 2, 3), correction=0), torch.ones(coarse.shape[1]), atol=2e-3, rtol=0)
    # the map is the reconstruction error of the standardised features
    features = item.holdout_features.float()
    with torch.no_grad():
        out = OneNIP.forward(detector.model, detector.network_input(0, features.coarse),
                             detector.network_input(0, detector.prompt(0).coarse), features.fine, detector.prompt(0).fine,
                             image_size=detector.geometry("plate").size)  # fmt: skip
        raw = OneNIP.forward(detector.model, features.coarse, detector.prompt(0).coarse, features.fine, detector.prompt(0).fine,
                             image_size=detector.geometry("plate").size)  # fmt: skip
        cfg_none = detector.cfg.model_copy(update={"error_normalization": "none"})
        detector.cfg = cfg_none
        detector.recon_scale[0] = 1.0
        recon_map = detector.components(features, 0)[0]
    torch.testing.assert_close(recon_map, out.recon_map)
    assert not torch.allclose(out.recon_map, raw.recon_map)
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    torch.testing.assert_close(loaded.network_input(0, coarse), detector.network_input(0, coarse))


def test_the_refiner_is_scaled_to_the_reconstruction_errors_range_on_validation(tmp_path: Path) -> None:
    """model.refiner_scale: recon_range blends the refiner as the reference does, its probability times the
    midpoint of the reconstruction error's range (the reference's test set; here the validation set)."""
    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=1, holdout_fraction=0.3)
    params = base.model_copy(update={"model": base.model.model_copy(update={"refiner_scale": "recon_range"})})
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    scale = float(detector.refiner_scale[0])
    item = training.prepare_category_data(manifest, params, FeatureCache(params.train.cache_dir, detector.feature_extractor,
                                          params.model.backbone), "plate", 0, detector.geometry("plate"), False)  # fmt: skip
    from onenip.scoring_selection import build_category_validation, validation_components

    validation = build_category_validation("plate", item.holdout_images, item.holdout_valid, detector.feature_extractor, params, seed=params.train.seed)
    recon, refiner = validation_components(detector, validation)[:2]
    assert scale == pytest.approx(float((recon.amax() + recon.amin()) / 2), rel=1e-4) and scale != 1.0
    features = item.holdout_features.float()
    with torch.no_grad():
        scaled = detector.components(features, 0)[1]
        detector.refiner_scale[0] = 1.0
        probability = detector.components(features, 0)[1]
    torch.testing.assert_close(scaled, probability * scale)
    assert float(probability.max()) <= 1.0
    plain = train_onenip(manifest, base, tmp_path / "plain", progress=False).detector
    assert float(plain.refiner_scale[0]) == 1.0  # the default: the bare probability


def test_auto_keeps_the_network_only_where_it_adds_beyond_the_margin() -> None:
    from onenip.models.scoring import ScoringRule
    from onenip.scoring_selection import Selection
    from onenip.training.loop import network_probe

    def selection(**adds: tuple[float, float, tuple[float, ...]]) -> Selection:
        rules = {c: ScoringRule(w, 4.0, 16) for c, (_, _, w) in adds.items()}
        found = {c: {"difference": d, "standard_error": se, "network_weight": sum(w[:3])} for c, (d, se, w) in adds.items()}
        return Selection(rules, 0.0, {}, {}, network_adds=found)

    statistics, refiner, residual = (0.0, 0.0, 0.0, 0.5, 0.5), (0.0, 0.5, 0.0, 0.0, 0.5), (0.0, 0.0, 0.5, 0.0, 0.5)
    # one category where the refiner wins by 3 standard errors keeps the network for the whole (unified) group
    kept = network_probe(selection(a=(0.0, 0.0, statistics), b=(0.006, 0.002, refiner)), 4, 1.0)
    assert kept["left_out"] is False and kept["epoch"] == 4 and kept["network_adds"]["b"]["trained_weight"] == 0.5
    assert network_probe(selection(a=(0.0, 0.0, statistics), b=(0.006, 0.002, refiner)), 4, 3.0)["left_out"] is True  # inside 3 SE
    assert network_probe(selection(a=(0.001, 0.002, refiner)), 4, 1.0)["left_out"] is True  # a win inside the noise
    assert network_probe(selection(a=(0.006, 0.002, residual)), 4, 1.0)["left_out"] is True  # the untrained residual's win
    assert network_probe(selection(), 4, 1.0)["left_out"] is True  # no category could show a gain


def test_auto_that_leaves_the_network_out_stops_training_and_ships_statistics_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from onenip.model_card import model_card, network_summary
    from onenip.models.onenip import OneNIP

    root = make_mvtec_tree(tmp_path / "tree", ("plate",), n_train=16, n_test_good=2, n_test_bad=2, size=64)
    manifest = make_manifest(root, progress=False)
    base = tiny_params(tmp_path, epochs=4, holdout_fraction=0.3, network="auto")
    # no tiny network can win by a million standard errors: the probe at epoch 2 leaves it out
    params = base.model_copy(update={"validation": base.validation.model_copy(update={"every_epochs": 2, "refiner_margin_se": 1e6})})
    result = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]  # epochs 3 and 4 never ran
    probe = result.history[-1]["network_probe"]
    assert probe["left_out"] is True and probe["epoch"] == 2 and set(probe["network_adds"]) == {"plate"}
    assert result.detector.scoring["plate"].weights[:3] == (0.0, 0.0, 0.0)
    assert all(row["weights"][:3] == [0.0, 0.0, 0.0] for row in result.selection.table["plate"])
    loaded = OneNIPDetector.load(tmp_path / "run" / "model")
    assert loaded.metadata["network"] == "auto" and loaded.metadata["kept_epoch"] == 0 and loaded.metadata["epochs"] == 2
    assert loaded.metadata["network_probe"] == probe
    assert "left out by `train.network: auto`" in model_card(tmp_path / "run" / "model", "plate")
    tags = network_summary(json.loads((tmp_path / "run" / "model" / "onenip.json").read_text()), "plate")
    assert tags["onenip.network_weight"] == "0" and tags["onenip.network_adds"].endswith("at epoch 2, left out")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network ran")

    monkeypatch.setattr(OneNIP, "forward", no_network)
    monkeypatch.setattr(OneNIP, "reconstruct", no_network)
    # resumed from the checkpoint of epoch 2, the verdict stands: no further step, the same statistics-only model
    again = train_onenip(manifest, params, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2] and again.detector.scoring == result.detector.scoring
    cache = FeatureCache(params.train.cache_dir, loaded.feature_extractor, params.model.backbone)
    assert set(evaluate(loaded, manifest, cache, None, num_heatmaps=0, progress=False)) == {"plate"}  # scored without it


def test_auto_that_keeps_the_network_trains_the_same_model_as_always(tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onenip.training import loop

    manifest = make_manifest(tiny_tree, progress=False)
    base = tiny_params(tmp_path, epochs=2)
    params = {n: base.model_copy(update={"train": base.train.model_copy(update={"network": n}),
                                         "validation": base.validation.model_copy(update={"every_epochs": 1})})
              for n in ("onenip", "auto")}  # fmt: skip
    probe = loop.network_probe
    monkeypatch.setattr(loop, "network_probe", lambda *a: {**probe(*a), "left_out": False})
    always = train_onenip(manifest, params["onenip"], tmp_path / "always", progress=False)
    auto = train_onenip(manifest, params["auto"], tmp_path / "auto", progress=False)
    assert [h["epoch"] for h in auto.history] == [1, 2] and auto.history[0]["network_probe"]["epoch"] == 1
    assert "network_probe" not in auto.history[1]  # one probe only
    for (name, a), b in zip(always.detector.model.state_dict().items(), auto.detector.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert auto.detector.scoring == always.detector.scoring


def test_jittered_fraction_draws_the_same_anomalies_on_relit_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """synthesis.jittered_fraction: that share of the synthetic copies is made on the image under the statistics'
    lighting jitter (one gain and gamma per copy); the anomalies and their masks are those drawn without it."""
    import onenip.training.pool as pool_module
    from onenip.data.geometry import InputGeometry
    from onenip.training.data import CategoryData

    seen: list[torch.Tensor] = []

    def fake_features(extractor, batch, backbone, batch_size):  # noqa: ANN001, ANN202
        seen.append(batch.clone())
        return Features(torch.zeros(len(batch), 1, 2, 2), None)

    monkeypatch.setattr(pool_module, "extract_features", fake_features)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    images = ((ys + xs) / 2 * 180 + 30).to(torch.uint8).expand(6, 3, 64, 64).contiguous()
    data = CategoryData("c", 0, InputGeometry(64, 64), pd.DataFrame(), pd.DataFrame(), Features(torch.zeros(6, 1, 2, 2), None),
                        Features(torch.zeros(0, 1, 2, 2), None), images, None, images[:0], None)  # fmt: skip
    base = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    pools = {}
    for fraction in (0.0, 1.0):
        params = base.model_copy(update={"synthesis": base.synthesis.model_copy(update={"jittered_fraction": fraction, "methods": ("perlin",)})})
        synthesizer = training.build_synthesizer(params.synthesis)
        pools[fraction] = training.SyntheticPool.build(data, synthesizer, None, params, seed=4, progress=False)  # type: ignore[arg-type]
    assert torch.equal(pools[0.0].masks, pools[1.0].masks)  # the same anomalies where they are
    plain, relit = torch.cat(seen[: len(seen) // 2]), torch.cat(seen[len(seen) // 2 :])
    outside = pools[0.0].masks.float().sum((1, 2, 3)) == 0
    clean = images.float() / 255
    strength = base.model.statistics_jitter
    for i in range(6):  # away from the anomaly each relit copy is gain * image ** gamma, its own draw within the strength
        keep = (relit[i] < 0.999) & (plain[i] - clean[i]).abs().lt(1e-6) if not bool(outside[i]) else relit[i] < 0.999
        x, y = clean[i][keep].log(), relit[i][keep].clamp_min(1e-6).log()
        gamma, log_gain = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution.flatten()
        assert torch.allclose(y, log_gain + gamma * x, atol=1e-3)
        assert abs(float(gamma.log())) <= strength + 1e-3 and abs(float(log_gain)) <= strength + 1e-3
        assert abs(float(gamma) - 1) + abs(float(log_gain)) > 1e-3  # drifted
