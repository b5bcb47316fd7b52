"""The few-shot generalist end to end on a tiny tree: train on auxiliary categories, onboard an unseen one
from k normal images, predict through the same TorchPredictor; clear errors for impossible onboarding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onenip.config import Params
from onenip.data.manifest import DatasetError
from onenip.fewshot import onboard_category, train_generalist
from onenip.serving.torch_predictor import TorchPredictor
from tests.helpers.trees import make_mvtec_tree

pytestmark = pytest.mark.slow


def tiny_params(tmp_path: Path) -> Params:
    return Params.model_validate({
        "model": {"backbone": {"input_size": 64}},
        "synthesis": {"pool_size": 1},
        "train": {"cache_dir": str(tmp_path / "cache"), "holdout_fraction": 0.3, "min_holdout": 2},
        "generalist": {"epochs": 2, "batch_size": 8, "train_shots": [1, 2], "shots": 2},
        "eval": {"num_heatmaps": 1},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Params]:
    tmp = tmp_path_factory.mktemp("generalist")
    root = make_mvtec_tree(tmp / "data", categories=("plate", "widget", "gear"), n_train=10, n_test_good=3, n_test_bad=3, size=64)
    params = tiny_params(tmp)
    result = train_generalist(root, ["plate", "widget"], params, tmp / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1.0, 2.0]
    assert set(result.validation) >= {"val_image_AUROC_plate", "val_image_AUROC_widget", "val_image_AUROC"}
    return root, result.model_dir, params


def test_onboard_unseen_category_and_predict(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    root, generalist, params = trained
    result = onboard_category(generalist, root, "gear", 2, params, tmp_path / "gear", progress=False)
    assert result.shots == 2 and len(result.prompt_paths) == 2 and all("/gear/train/good/" in p for p in result.prompt_paths)
    assert set(result.metrics) >= {"image_AUROC", "pixel_AUROC"} and result.has_masks
    # deterministic prompts: onboarding again picks the same images
    again = onboard_category(generalist, root, "gear", 2, params, tmp_path / "again", progress=False)
    assert again.prompt_paths == result.prompt_paths and again.threshold == pytest.approx(result.threshold)
    predictor = TorchPredictor.load(result.model_dir, runtime="torch")
    assert predictor.default_category == "gear"
    from PIL import Image

    image = Image.open(sorted((root / "gear" / "test").rglob("*.png"))[0]).convert("RGB")
    [prediction] = predictor.predict([image], return_maps=True)
    assert prediction.category == "gear" and prediction.threshold == pytest.approx(result.threshold)
    assert prediction.anomaly_map is not None and prediction.anomaly_map.shape == (64, 64)


def test_onboarding_errors_are_clear(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    root, generalist, params = trained
    with pytest.raises(DatasetError, match=r"30 shots asked for 'gear', but it has only 10"):
        onboard_category(generalist, root, "gear", 30, params, tmp_path / "x", progress=False)
    empty = make_mvtec_tree(tmp_path / "empty", categories=("bare",), n_train=0, n_test_good=2, n_test_bad=2, size=64)
    with pytest.raises(DatasetError, match="no normal training images"):
        onboard_category(generalist, empty, "bare", 2, params, tmp_path / "y", progress=False)
    single = make_mvtec_tree(tmp_path / "single", categories=("lone",), n_train=1, n_test_good=2, n_test_bad=2, size=64)
    with pytest.raises(DatasetError, match="'lone': no normal image besides the single prompt to calibrate a threshold"):
        onboard_category(generalist, single, "lone", 1, params, tmp_path / "z", progress=False)
    assert not (tmp_path / "z" / "model").exists()  # nothing saved that could be registered


def test_a_generalist_trained_on_real_anomalies_refuses_their_category(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    from onenip.models.generalist import GeneralistDetector

    root, generalist, params = trained
    detector = GeneralistDetector.load(generalist)
    assert detector.metadata["real_anomalies"] is False and detector.metadata["auxiliary_categories"] == ["plate", "widget"]
    assert detector.head.holistic_input == params.generalist.holistic_input == "map"
    onboard_category(generalist, root, "plate", 2, params, tmp_path / "synthetic-only", progress=False)  # saw no test image of plate
    with_real = detector.save(tmp_path / "with-real", metadata=detector.metadata | {"real_anomalies": True})
    with pytest.raises(DatasetError, match=r"real test anomalies of 'plate'"):
        onboard_category(with_real, root, "plate", 2, params, tmp_path / "x", progress=False)
    assert onboard_category(with_real, root, "gear", 2, params, tmp_path / "gear", progress=False).shots == 2  # unseen: fine


def test_training_on_the_auxiliary_categories_real_anomalies_when_allowed(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    """``generalist.real_anomalies``: the auxiliary categories' labelled test anomalies join the synthetic
    ones; the model says so, and then refuses to onboard those categories (their test metrics would be
    inflated) while an unseen one onboards."""
    root, _, params = trained
    cfg = params.generalist.model_copy(update={"real_anomalies": True, "epochs": 1})
    result = train_generalist(root, ["plate", "widget"], params.model_copy(update={"generalist": cfg}), tmp_path / "run", progress=False)
    assert result.detector.metadata["real_anomalies"] is True and len(result.history) == 1
    with pytest.raises(DatasetError, match=r"real test anomalies of 'widget'"):
        onboard_category(result.model_dir, root, "widget", 2, params, tmp_path / "widget", progress=False)
    assert onboard_category(result.model_dir, root, "gear", 2, params, tmp_path / "gear", progress=False).shots == 2


def test_the_trained_residual_needs_a_lead_beyond_the_noise() -> None:
    """pick_scoring: the highest validation AUROC, but inctrl only with a lead over the best untrained
    residual of more than ``margin_se`` paired standard errors; margin 0 is the plain maximum."""
    import numpy as np

    from onenip.fewshot import pick_scoring
    from onenip.metrics import paired_auroc_difference

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(256), np.ones(32)]
    base = rng.normal(size=288) + 1.5 * labels
    untrained = base + rng.normal(0, 0.5, 288)
    slightly = base + rng.normal(0, 0.5, 288) + 0.05 * labels  # AUROC +0.02, within the noise of 32 anomalies (SE 0.028)
    clearly = base + 2.0 * labels  # separates far better
    for inctrl, expected in ((slightly, "neighbourhood"), (clearly, "inctrl")):
        scores = {("inctrl", 0.0): inctrl, ("inctrl", 0.5): inctrl - 0.1 * labels, ("neighbourhood", 0.0): untrained}
        difference, error = paired_auroc_difference(inctrl, untrained, labels)
        assert difference > 0  # inctrl has the highest AUROC in both cases
        chosen, aurocs, lead = pick_scoring(scores, labels, 1.0)
        assert chosen[0] == expected and aurocs[("inctrl", 0.0)] > aurocs[("neighbourhood", 0.0)]
        assert (expected == "inctrl") == (difference > error)
        assert lead == {"over": "neighbourhood", "difference": difference, "standard_error": error, "margin_se": 1.0}
        assert pick_scoring(scores, labels, 0.0)[0] == ("inctrl", 0.0)  # no margin: the plain maximum
    # ties go to the untrained map, also at margin 0 (onenip.rules, the rule model selection uses);
    # no lead recorded when an untrained map wins
    tied = {("inctrl", 0.0): untrained, ("inctrl", 0.5): untrained, ("neighbourhood", 0.0): untrained}
    assert pick_scoring(tied, labels, 0.0)[0] == ("neighbourhood", 0.0)
    assert pick_scoring(tied, labels, 1.0)[0] == ("neighbourhood", 0.0)
    assert pick_scoring({("inctrl", 0.5): slightly - labels, ("neighbourhood", 0.0): untrained}, labels, 1.0)[2] is None
    assert pick_scoring({("inctrl", 0.5): slightly}, labels, 1.0)[0] == ("inctrl", 0.5)  # nothing untrained offered


def test_the_trained_residual_can_be_asked_to_win_on_every_family() -> None:
    """generalist.trained_every_family: a pooled lead beyond the margin that one family carries while
    inctrl loses on another goes to the untrained residual; the lead per family is recorded either way."""
    import numpy as np

    from onenip.fewshot import family_aurocs, pick_scoring
    from onenip.metrics import image_auroc

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(256), np.ones(32)]
    families = np.array([""] * 256 + ["warp"] * 16 + ["spots"] * 16, dtype=object)
    untrained = rng.normal(size=288) + 1.0 * labels
    lopsided = untrained + 3.0 * (families == "warp") - 0.3 * (families == "spots")  # far better on warp, worse on spots
    both = untrained + 3.0 * labels
    for inctrl, every_family, expected in ((lopsided, False, "inctrl"), (lopsided, True, "neighbourhood"), (both, True, "inctrl")):
        scores = {("inctrl", 0.5): inctrl, ("neighbourhood", 0.0): untrained}
        chosen, _, lead = pick_scoring(scores, labels, 1.0, families, every_family=every_family)
        assert chosen[0] == expected
        assert lead["difference"] > lead["standard_error"]  # the pooled margin alone would take inctrl every time
        trained, other = family_aurocs(inctrl, labels, families), family_aurocs(untrained, labels, families)
        assert lead["by_family"] == {f: trained[f] - other[f] for f in ("spots", "warp")}
    assert pick_scoring({("inctrl", 0.5): lopsided, ("neighbourhood", 0.0): untrained}, labels, 1.0, families)[0][0] == "inctrl"  # off by default
    warp = (families == "") | (families == "warp")  # each family's AUROC: its anomalies against all the normals
    assert family_aurocs(lopsided, labels, families)["warp"] == pytest.approx(float(image_auroc(lopsided[warp], labels[warp])))


def test_validation_scores_name_each_anomaly_family(trained: tuple[Path, Path, Params]) -> None:
    """The scores onboarding chooses on: every candidate on the same normals and anomalies, each anomaly
    named by the validation family that made it."""
    from onenip.fewshot import prepare_onboarding, scoring_candidates, validation_scores

    root, generalist, params = trained
    state = prepare_onboarding(generalist, root, "gear", 2, params, progress=False)
    normal_features = state.features.select(state.calibration)
    paths = state.validation_paths()
    validation = validation_scores(state.detector, state.index, normal_features, paths, state.params, state.device)
    scores, labels, families = validation.flat()
    assert sorted(scores) == sorted(scoring_candidates(params, 2)) and len(validation.families) == len(paths)
    assert set(validation.families) <= set(params.validation.methods) | {"fallback"}
    assert all(len(v) == len(labels) == len(normal_features) + len(paths) for v in scores.values())
    assert list(families[labels == 0]) == [""] * len(normal_features) and list(families[labels == 1]) == validation.families


def test_onboarding_chooses_the_residual_and_head_weight_on_training_data(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    import torch

    from onenip.models.features import Features
    from onenip.models.generalist import GeneralistDetector

    root, generalist, params = trained

    def generalist_params(**update: object) -> Params:
        return params.model_copy(update={"generalist": params.generalist.model_copy(update=update)})

    assert "neighbourhood_rotated" not in params.generalist.residuals  # opt-in: the default offers two
    assert onboard_category(generalist, root, "gear", 2, params, tmp_path / "default", progress=False).selection[
        "val_image_AUROC_neighbourhood_rotated"] is None  # fmt: skip
    every = generalist_params(residuals=("inctrl", "neighbourhood", "neighbourhood_rotated"))
    result = onboard_category(generalist, root, "gear", 2, every, tmp_path / "gear", progress=False)
    table = {float(w): v for w, v in result.selection["val_image_AUROC"].items()}
    assert sorted(table) == sorted(params.generalist.head_weights)
    neighbourhood = result.selection["val_image_AUROC_neighbourhood"]
    rotated = result.selection["val_image_AUROC_neighbourhood_rotated"]  # k = 2: a bank of 4 fits the budget
    best = max(*table.values(), neighbourhood, rotated)
    lead = result.selection["val_inctrl_lead"]
    # the best validation AUROC; among equals InCTRL's residual, then the weight nearest InCTRL's mean,
    # then the bank without half turns; inctrl only with a lead of more than one paired standard error
    if result.residual == "inctrl":
        assert table[result.head_weight] == best
        assert abs(result.head_weight - 0.5) == min(abs(w - 0.5) for w, v in table.items() if v == best)
        assert lead["difference"] > params.generalist.trained_margin_se * lead["standard_error"]
    elif max(table.values()) == best:  # inctrl had the best AUROC, but within the noise of the untrained one
        assert lead["difference"] <= params.generalist.trained_margin_se * lead["standard_error"]
        assert result.residual == lead["over"] and result.head_weight == 0.0
        assert lead["difference"] == pytest.approx(best - result.selection[f"val_image_AUROC_{result.residual}"])
    elif result.residual == "neighbourhood":
        assert neighbourhood == best > max(table.values()) and result.head_weight == 0.0 and lead is None
    else:
        assert rotated == best > max(*table.values(), neighbourhood) and result.head_weight == 0.0 and lead is None
    # 8 normals are not prompts: all calibrate, each also gets one synthetic anomaly of the validation families
    assert result.selection["normal_images"] == 8 and result.selection["anomalous_images"] == 8
    assert result.selection["methods"] == list(params.validation.methods)
    saved = GeneralistDetector.load(result.model_dir)
    assert float(saved.head_weight[0]) == result.head_weight and saved.residual(0) == result.residual
    assert saved.metadata["head_weight_selection"]["head_weight"] == result.head_weight
    # only the chosen residual's bank is kept
    assert saved.rotated_prompts(0).coarse.shape[0] == (2 if result.residual == "neighbourhood_rotated" else 0)

    # the stored choice is what predictions use
    features = saved.extract(torch.rand(3, 3, 64, 64))
    inctrl = onboard_category(generalist, root, "gear", 2, generalist_params(residuals=("inctrl",)), tmp_path / "inctrl", progress=False)
    assert inctrl.residual == "inctrl" and inctrl.selection["val_image_AUROC_neighbourhood"] is None
    model = GeneralistDetector.load(inctrl.model_dir)
    with torch.no_grad():
        out = model.score_features(features, model.prompt(0))
        expected = inctrl.head_weight * out.holistic_score + (1 - inctrl.head_weight) * out.residual_map.flatten(1).amax(1)
        assert torch.allclose(model.forward_features(features, 0).pred_score, expected)
    only = onboard_category(generalist, root, "gear", 2, generalist_params(residuals=("neighbourhood",)), tmp_path / "nb", progress=False)
    assert only.residual == "neighbourhood" and "one value" in only.selection["reason"]
    model = GeneralistDetector.load(only.model_dir)
    with torch.no_grad():
        expected = model.neighbourhood_residual(features, model.prompt(0))[1]
        assert torch.allclose(model.forward_features(features, 0).pred_score, expected)
    turned = onboard_category(generalist, root, "gear", 2, generalist_params(residuals=("neighbourhood_rotated",)), tmp_path / "rot",
                              progress=False)  # fmt: skip
    assert turned.residual == "neighbourhood_rotated" and turned.prompt_paths == only.prompt_paths
    model = GeneralistDetector.load(turned.model_dir)
    from onenip.fewshot import rotated_prompt_features

    stored = model.rotated_prompts(0)
    expected_bank = rotated_prompt_features(model, 0, turned.prompt_paths, params, torch.device("cpu"))
    assert torch.equal(stored.coarse, expected_bank.coarse) and torch.equal(stored.fine, expected_bank.fine)  # type: ignore[arg-type]
    assert not torch.equal(stored.fine, model.prompt(0).fine)  # type: ignore[arg-type]
    with torch.no_grad():
        expected = model.neighbourhood_residual(features, Features.cat([model.prompt(0), stored]))[1]
        assert torch.allclose(model.forward_features(features, 0).pred_score, expected)
    fixed = generalist_params(head_weights=(0.0,), residuals=("inctrl",))
    residual_only = onboard_category(generalist, root, "gear", 2, fixed, tmp_path / "fixed", progress=False)
    assert residual_only.head_weight == 0.0 and "one value" in residual_only.selection["reason"]
    # every normal image a prompt: nothing to choose on; a fixed value still holds, else InCTRL's mean
    all_prompts = onboard_category(generalist, root, "gear", 10, fixed, tmp_path / "all-fixed", progress=False)
    assert all_prompts.head_weight == 0.0 and GeneralistDetector.load(all_prompts.model_dir).head_weight.tolist() == [0.0]
    default = onboard_category(generalist, root, "gear", 10, params, tmp_path / "all", progress=False)
    assert default.head_weight == 0.5 and default.residual == "inctrl" and "too few" in default.selection["reason"]


def test_onboarding_refuses_bad_prompt_lists_and_seen_validation_families(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    from onenip.synthesis import SynthesisError

    root, generalist, params = trained
    normals = sorted(str(p) for p in (root / "gear" / "train" / "good").glob("*.png"))
    with pytest.raises(DatasetError, match=r"must be distinct and at least one.*repeated"):
        onboard_category(generalist, root, "gear", 2, params, tmp_path / "x", progress=False, prompt_paths=[normals[0], normals[0]])
    with pytest.raises(DatasetError, match=r"must be distinct and at least one"):
        onboard_category(generalist, root, "gear", 2, params, tmp_path / "x", progress=False, prompt_paths=[])
    overlapping = params.model_copy(update={"validation": params.validation.model_copy(update={"methods": ["warp", "perlin"]})})
    with pytest.raises(SynthesisError, match=r"validation.methods must be entries of .*got \['warp', 'perlin'\]"):
        onboard_category(generalist, root, "gear", 2, overlapping, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_onboarding_scores_with_the_generalists_own_input_and_leaves_no_stale_evaluation(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    from onenip.models.generalist import GeneralistDetector

    root, generalist, params = trained
    # params.yaml changed since the generalist was trained: onboarding still uses the generalist's 64 px input
    wider = params.model_copy(update={"model": params.model.model_copy(update={"backbone": params.model.backbone.model_copy(update={"input_size": 96})})})
    result = onboard_category(generalist, root, "gear", 2, wider, tmp_path / "gear", progress=False)
    detector = GeneralistDetector.load(result.model_dir)
    assert detector.geometry_.size == (64, 64) and tuple(detector.prompt(0).coarse.shape[-2:]) == (4, 4)
    assert (tmp_path / "gear" / "eval").is_dir()
    # onboarded again from a copy of the category without anomalous test images: no evaluation this time,
    # and the first run's is not left behind to be logged as this one's
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root / "gear", copy / "gear")
    shutil.rmtree(copy / "gear" / "test" / "blob")
    shutil.rmtree(copy / "gear" / "ground_truth")
    again = onboard_category(generalist, copy, "gear", 2, params, tmp_path / "gear", progress=False)
    assert again.metrics == {} and not (tmp_path / "gear" / "eval").exists()


def test_onboarding_keeps_a_categorys_own_aspect_when_asked(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    """generalist.keep_aspect (the default): an elongated category is onboarded, saved, evaluated and
    predicted at the input a trained model of it gets (40 x 100 images at 64 px: 48 x 96), not squashed
    to 64 x 64."""
    import numpy as np
    from PIL import Image

    from onenip.models.generalist import GeneralistDetector

    _, generalist, params = trained
    root = make_mvtec_tree(tmp_path / "data", categories=("strip",), n_train=10, n_test_good=3, n_test_bad=3, shapes={"strip": (40, 100)})
    result = onboard_category(generalist, root, "strip", 2, params, tmp_path / "strip", progress=False)
    detector = GeneralistDetector.load(result.model_dir)
    assert detector.geometry("strip").size == (48, 96) and not detector.geometry("strip").letterbox
    assert tuple(detector.prompt(0).coarse.shape[-2:]) == (3, 6) and tuple(detector.prompt(0).fine.shape[-2:]) == (6, 12)  # type: ignore[union-attr]
    assert detector.geometry_.size == (64, 64) and detector.head.grid == (8, 8)  # the head keeps its square grid
    # both residuals score on the category's own fine grid (6 x 12), not the head's 8 x 8
    import torch

    queries = detector.extract(torch.rand(2, 3, 48, 96))
    for residual in ("inctrl", "neighbourhood"):
        detector.set_residual(0, residual)
        with torch.no_grad():
            assert tuple(detector.category_scores(queries, 0)[0].shape) == (2, 6, 12), residual
    assert json.loads((result.model_dir / "onenip.json").read_text())["format_version"] == 2
    assert set(result.metrics) >= {"image_AUROC", "pixel_AUROC"} and result.has_masks
    [prediction] = TorchPredictor.load(result.model_dir, runtime="torch").predict(
        [Image.open(sorted((root / "strip" / "test").rglob("*.png"))[0]).convert("RGB")], return_maps=True)  # fmt: skip
    assert prediction.anomaly_map is not None and prediction.anomaly_map.shape == (48, 96)  # the input grid, as a trained model's
    assert np.isfinite(prediction.score)
    # with the option off the same category is squashed to the generalist's square, as before
    square_params = params.model_copy(update={"generalist": params.generalist.model_copy(update={"keep_aspect": False})})
    square = onboard_category(generalist, root, "strip", 2, square_params, tmp_path / "square", progress=False)
    assert GeneralistDetector.load(square.model_dir).geometry("strip").size == (64, 64)
    assert json.loads((square.model_dir / "onenip.json").read_text())["format_version"] == 1  # readable by earlier versions
    # the user's model.input_sizes entry for the category is honoured, as training honours it
    sized = params.model_copy(update={"model": params.model.model_copy(update={"input_sizes": {"strip": (32, 128)}})})
    fixed = onboard_category(generalist, root, "strip", 2, sized, tmp_path / "sized", progress=False)
    assert fixed.input_size == (32, 128)
    # a model onboarded before per-category inputs (no "geometries" in its config) loads as the square
    config_path = square.model_dir / "onenip.json"
    config = json.loads(config_path.read_text())
    del config["geometries"]
    config_path.write_text(json.dumps(config))
    assert GeneralistDetector.load(square.model_dir).geometry("strip").size == (64, 64)


def test_a_category_whose_aspects_vary_is_onboarded_square() -> None:
    import pandas as pd
    import torch

    from onenip.config import BackboneParams
    from onenip.data.geometry import InputGeometry
    from onenip.fewshot import onboarding_geometry
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), pretrained=False)
    params = Params()
    def rows(heights: list[int], widths: list[int]) -> pd.DataFrame:  # manifest rows of normal training images
        return pd.DataFrame({"category": "x", "split": "train", "height": heights, "width": widths})

    one_aspect = rows([40, 80, 40], [100, 200, 100])
    varied = rows([40, 100, 64, 50], [100, 40, 64, 120])
    assert onboarding_geometry(detector, one_aspect, params).size == (48, 96)
    assert onboarding_geometry(detector, varied, params) == detector.geometry_  # letterboxing would pad: square
    off = Params.model_validate({"generalist": {"keep_aspect": False}})
    assert onboarding_geometry(detector, one_aspect, off) == detector.geometry_
    assert onboarding_geometry(detector, one_aspect, params, (32, 128)).size == (32, 128)  # the user's model.input_sizes entry
    with pytest.raises(DatasetError, match="multiples of the feature stride 16"):
        onboarding_geometry(detector, one_aspect, params, (30, 128))
    coarse = torch.zeros(1, detector.feature_extractor.num_features, 3, 6)
    fine = torch.zeros(1, detector.feature_extractor.num_fine_features, 6, 12)
    with pytest.raises(ValueError, match="no letterboxed input"):
        detector.add_category("x", coarse, fine, geometry=InputGeometry(48, 96, True))
    with pytest.raises(ValueError, match="are not of its input 64x64"):
        detector.add_category("x", coarse, fine)
    with pytest.raises(ValueError, match="are not of its input 48x96"):  # fine stages of another grid
        detector.add_category("x", coarse, fine[..., :6], geometry=InputGeometry(48, 96))
    with pytest.raises(ValueError, match="out of range"):
        detector.geometry(0)
