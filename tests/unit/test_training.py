"""Training glue on a tiny tree: holdout split, prompt choice, resume == uninterrupted, save/load."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from onenip.config import Params, load_params
from onenip.data.manifest import make_manifest
from onenip.data.transforms import load_image
from onenip.evaluation import evaluate
from onenip.features import FeatureCache
from onenip.models.detector import ModelLoadError, OneNIPDetector
from onenip.training import select_prompt, split_holdout, train_onenip
from tests.helpers.tiny import TINY_MODEL
from tests.helpers.trees import make_mvtec_tree

TINY = {
    "model": TINY_MODEL,
    "synthesis": {"pool_size": 2},
    "train": {"epochs": 3, "batch_size": 4, "warmup_epochs": 1},
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
    features = torch.zeros(5, 2, 2, 2)
    features[0] += 10  # outlier
    features[3] += 0.1  # closest to the mean (mean is 2.02)
    features[1] -= 1
    features[2] += 5
    features[4] -= 3
    mean = features.mean(0)
    expected = int((features - mean).flatten(1).norm(dim=1).argmin())
    assert select_prompt(features) == expected


def test_resume_matches_uninterrupted_run(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path)
    full = train_onenip(manifest, params, tmp_path / "full", progress=False)

    interrupted = train_onenip(manifest, params, tmp_path / "resumed", progress=False, stop_after_epoch=1)
    assert len(interrupted.history) == 1
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = train_onenip(manifest, params, tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for (name, a), (_, b) in zip(full.detector.state_dict().items(), resumed.detector.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_changed_params_do_not_resume_from_foreign_checkpoint(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    train_onenip(manifest, tiny_params(tmp_path), tmp_path / "run", progress=False, stop_after_epoch=1)
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
    images = torch.stack([load_image(p, 64) for p in manifest["image_path"][:4]])
    direct = loaded(images, torch.zeros(4, dtype=torch.long)).pred_score
    cached = loaded.forward_features(cache.get(manifest["image_path"][:4].tolist(), manifest["sha256"][:4].tolist(), progress=False), torch.zeros(4, dtype=torch.long)).pred_score
    assert torch.allclose(direct, cached, rtol=2e-2, atol=1e-3)


def test_loading_a_folder_that_is_not_a_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model.safetensors|onenip.json"):
        OneNIPDetector.load(tmp_path)


def test_per_category_mode_and_prompt_sensitivity(tiny_tree: Path, tmp_path: Path) -> None:
    from onenip.evaluation import prompt_sensitivity
    from onenip.training import train_models

    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path, epochs=1)
    results = train_models(manifest, params, tmp_path / "run", mode="per-category", progress=False)
    assert set(results) == {"plate", "widget"}
    assert results["plate"].detector.categories == ["plate"]
    assert (tmp_path / "run" / "widget" / "model" / "onenip.json").is_file()

    detector = results["plate"].detector
    stored = detector.prompt_features.clone()
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    report = prompt_sensitivity(detector, manifest, "plate", cache, trials=3)
    assert report["prompt_trials"] == 3
    assert 0.0 <= report["prompt_image_AUROC_mean"] <= 1.0 and report["prompt_image_AUROC_std"] >= 0.0
    assert torch.equal(detector.prompt_features, stored)  # the stored prompt is restored
    with pytest.raises(ValueError, match="mode"):
        train_models(manifest, params, tmp_path / "other", mode="sideways", progress=False)


def test_cached_prompt_encoding_matches_and_follows_changes(tiny_tree: Path, tmp_path: Path) -> None:
    manifest = make_manifest(tiny_tree, progress=False)
    params = tiny_params(tmp_path, epochs=1)
    detector = train_onenip(manifest, params, tmp_path / "run", progress=False).detector.eval()
    features = torch.randn(3, detector.feature_extractor.num_features, 4, 4)
    k = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        cached = detector.forward_features(features, k).anomaly_map
        again = detector.forward_features(features, k).anomaly_map
    uncached = detector.forward_features(features, k).anomaly_map.detach()  # grad enabled: no cache
    assert torch.equal(cached, again)
    assert torch.allclose(cached, uncached, atol=1e-5)
    with torch.no_grad():
        detector.prompt_features[0] += 1.0
        changed = detector.forward_features(features, k).anomaly_map
        for param in detector.model.parameters():
            param.mul_(1.01)
        reweighted = detector.forward_features(features, k).anomaly_map
    assert not torch.allclose(changed, cached)
    assert torch.allclose(reweighted, detector.forward_features(features, k).anomaly_map.detach(), atol=1e-5)
