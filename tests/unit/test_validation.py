"""Choices on validation data: per-category rule selection, rank AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from onenip.config import ValidationParams
from onenip.models.features import Features
from onenip.models.scoring import ScoringRule
import onenip.scoring_selection
from onenip.scoring_selection import CategoryValidation, candidate_rules, rank_auroc, sampled_auroc_and_ap, select_scoring


def _validation(name: str, normals: int = 6, anomalies: int = 6) -> CategoryValidation:
    n = normals + anomalies
    masks = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
    masks[normals:, :, 8:16, 8:16] = True
    labels = torch.tensor([0] * normals + [1] * anomalies)
    return CategoryValidation(name, Features(torch.zeros(n, 1, 2, 2), None), labels, masks, None, ["normal"] * n)


def _maps(validation: CategoryValidation, informative: bool, seed: int) -> torch.Tensor:
    noise = torch.rand(len(validation.labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    if informative:  # the anomaly region (quarter-size grid) lights up
        noise[validation.labels == 1, :, 2:4, 2:4] += 5.0
    return noise


def test_each_category_gets_the_rule_its_validation_data_favours() -> None:
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0)
    a, b, tiny = _validation("a"), _validation("b"), _validation("tiny", normals=2)
    per_category = [
        (a, [_maps(a, True, 0), _maps(a, False, 1), None]),  # reconstruction error finds a's defects
        (b, [_maps(b, False, 2), _maps(b, True, 3), None]),  # the refiner finds b's
        (tiny, [_maps(tiny, True, 4), _maps(tiny, False, 5), None]),
    ]
    default = ScoringRule()
    selection = select_scoring(per_category, cfg, default)
    assert selection.rules["a"].weights == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert selection.rules["b"].weights == (0.0, 1.0, 0.0, 0.0, 0.0)
    assert selection.rules["tiny"] == default  # too few held-out normals: the default, and no vote
    assert set(selection.metrics) == {"a", "b"}
    assert selection.score == pytest.approx(1.0)


def test_candidates_cover_the_weight_simplex_and_skip_a_missing_residual() -> None:
    cfg = ValidationParams(weight_step=0.5, smoothing_sigmas=(0.0, 4.0), max_refiner_weight=1.0)
    with_residual = candidate_rules(cfg, True)
    assert len(with_residual) == 6 * 2 and all(abs(sum(w) - 1) < 1e-9 for w, _ in with_residual)
    assert {w for w, _ in candidate_rules(cfg, False)} == {(1.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0)}
    # with the Gaussian map: the 4-simplex (10 points at step 0.5)
    both = {w for w, _ in candidate_rules(cfg, True, True)}
    assert len(both) == 10 and (0.5, 0.0, 0.0, 0.5, 0.0) in both and (0.0, 0.0, 0.0, 1.0, 0.0) in both
    # and the memory map: the 5-simplex (15 points); the memory map alone without the Gaussian too
    every = {w for w, _ in candidate_rules(cfg, True, True, True)}
    assert len(every) == 15 and (0.0, 0.0, 0.0, 0.5, 0.5) in every and (0.0, 0.0, 0.0, 0.0, 1.0) in every
    assert (0.0, 0.0, 0.0, 0.0, 1.0) in {w for w, _ in candidate_rules(cfg, False, False, True)}
    assert all(w[3] == 0 for w, _ in candidate_rules(cfg, True, False, True))
    # by default the refiner gets at most the paper's half of the map
    capped = candidate_rules(ValidationParams(weight_step=0.25), True)
    assert max(w[1] for w, _ in capped) == 0.5 and (0.5, 0.5, 0.0, 0.0, 0.0) in {w for w, _ in capped}


def test_rank_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.integers(0, 2, size=200)
    assert rank_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="both"):
        rank_auroc(scores, np.zeros(200))


def test_sampled_auroc_and_ap_equal_sklearn_with_ties_and_weighted_negatives() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 7, size=500).astype(float)  # many ties
    labels = rng.random(500) < 0.15
    auroc, ap = sampled_auroc_and_ap(scores, labels)
    assert auroc == pytest.approx(roc_auc_score(labels, scores)) and ap == pytest.approx(average_precision_score(labels, scores))
    # each negative standing for 4: sklearn's AP with sample weight 4 on the negatives; the AUROC is unchanged
    weighted_auroc, weighted_ap = sampled_auroc_and_ap(scores, labels, 4.0)
    assert weighted_auroc == pytest.approx(auroc)
    assert weighted_ap == pytest.approx(average_precision_score(labels, scores, sample_weight=np.where(labels, 1.0, 4.0)))
    assert weighted_ap < ap
    with pytest.raises(ValueError, match="both"):
        sampled_auroc_and_ap(scores, np.zeros(500, dtype=bool))


def test_finalists_are_ranked_with_pixel_ap_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map with a few hot normal pixels keeps a near-perfect pixel AUROC but a poor AP; one that misses
    a few defect pixels loses AUROC but keeps its AP. The mean of the four metrics favours the second:
    it must reach the finalists even when only one candidate gets its AUPRO computed."""
    monkeypatch.setattr(onenip.scoring_selection, "AUPRO_FINALISTS", 1)
    monkeypatch.setattr(onenip.scoring_selection, "LEVEL_FINALISTS", 0)  # no finalist for the refiner's margin either
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0,
                           refiner_margin_se=0.0)  # fmt: skip
    data = _validation("v")
    anomalous = torch.nonzero(data.labels == 1).ravel()
    hot_normal_pixels = _maps(data, True, 0)
    hot_normal_pixels[anomalous, :, 6, 6] = 10.0  # one normal pixel per anomaly image above every defect pixel
    missed_defect_pixels = _maps(data, True, 1)
    missed_defect_pixels[anomalous[:2], :, 2, 2] = -1.0  # two defect pixels below every normal one
    selection = select_scoring([(data, [hot_normal_pixels, missed_defect_pixels, None])], cfg, ScoringRule())
    assert selection.rules["v"].weights == (0.0, 1.0, 0.0, 0.0, 0.0)
    rows = {tuple(row["weights"]): row for row in selection.table["v"]}
    assert rows[(1.0, 0.0, 0.0, 0.0, 0.0)]["pixel_AUROC"] > rows[(0.0, 1.0, 0.0, 0.0, 0.0)]["pixel_AUROC"]
    assert rows[(1.0, 0.0, 0.0, 0.0, 0.0)]["score"] is None  # not a finalist


def test_the_choice_ignores_letterbox_padding() -> None:
    """Validation smooths as ``score_maps`` scores: the padding of letterboxed images (high in the
    memory and Gaussian maps, which exclude it) takes no part in any candidate's metrics."""
    base = _validation("boxed")
    valid = torch.zeros(len(base.labels), 1, 32, 32, dtype=torch.bool)
    valid[..., :, 4:28] = True
    boxed = CategoryValidation(base.category, base.features, base.labels, base.masks, valid, base.methods)
    cfg = ValidationParams(smoothing_sigmas=[0, 8], score_pool_sizes=[1, 4], weight_step=0.5, max_refiner_weight=1.0)
    informative, noise = _maps(boxed, True, 0), _maps(boxed, False, 1)
    padding = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    padding[..., :, :1] = padding[..., :, 7:] = True  # the quarter-size grid's padding columns
    hot = [m.masked_fill(padding.expand_as(m), 50.0 * float(i + 1)) for i, m in enumerate((informative, noise))]
    default = ScoringRule((0.5, 0.5, 0.0, 0.0, 0.0), 4.0, 16)
    clean = select_scoring([(boxed, [informative, noise])], cfg, default)
    dirty = select_scoring([(boxed, [hot[0], hot[1]])], cfg, default)
    assert dirty.rules == clean.rules and dirty.score == pytest.approx(clean.score)
    smoothed = [row for row in clean.table["boxed"] if row["smoothing_sigma"] == 8]
    assert smoothed  # the smoothed candidates are scored too, each exactly as without the padding's values
    for got, expected in zip(dirty.table["boxed"], clean.table["boxed"], strict=True):
        assert got["weights"] == expected["weights"] and got["smoothing_sigma"] == expected["smoothing_sigma"]
        for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AP", "score"):
            assert got.get(metric) == pytest.approx(expected.get(metric)), (metric, expected)


def _nearly_equal_maps(data: CategoryValidation) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's map finds every defect pixel; the reconstruction error's misses one: the refiner
    scores a little higher."""
    refiner = _maps(data, True, 0)
    recon = refiner.clone()
    recon[torch.nonzero(data.labels == 1).ravel()[0], :, 2, 2] = 0.0
    return recon, refiner


def test_the_refiner_must_win_beyond_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _validation("v")
    recon, refiner = _nearly_equal_maps(data)
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0,
                           refiner_margin_se=0.0)  # fmt: skip
    plain = select_scoring([(data, [recon, refiner, None])], cfg, ScoringRule())
    assert plain.rules["v"].weights == (0.0, 1.0, 0.0, 0.0, 0.0)  # the highest score
    with_margin = cfg.model_copy(update={"refiner_margin_se": 1.0})
    monkeypatch.setattr(onenip.scoring_selection, "paired_score_difference_se", lambda *args, **kwargs: 1.0)  # a lead well inside the noise
    inside = select_scoring([(data, [recon, refiner, None])], with_margin, ScoringRule())
    assert inside.rules["v"].weights == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert inside.metrics["v"]["pixel_AUROC"] < plain.metrics["v"]["pixel_AUROC"]  # the metrics are the chosen rule's
    monkeypatch.setattr(onenip.scoring_selection, "paired_score_difference_se", lambda *args, **kwargs: 0.0)  # a lead beyond any noise
    assert select_scoring([(data, [recon, refiner, None])], with_margin, ScoringRule()).rules["v"].weights == (0.0, 1.0, 0.0, 0.0, 0.0)


def test_the_refiner_can_be_asked_to_win_on_every_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """validation.refiner_every_family: a refiner lead beyond the noise that one family carries, while the
    rule with less refiner scores higher on another family alone, goes to the rule with less refiner."""
    from onenip.scoring_selection import rule_maps, family_score_differences

    data = _validation("v")
    data.methods[6:] = ["warp"] * 4 + ["spots"] * 2
    refiner = _maps(data, True, 0)
    recon = refiner.clone()
    recon[6:10, :, 2:4, 2:4] = 0.0  # the reconstruction error misses every warp
    refiner[10, :, 2, 2] = 0.0  # the refiner misses one spot pixel
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0,
                           refiner_margin_se=1.0)  # fmt: skip
    monkeypatch.setattr(onenip.scoring_selection, "paired_score_difference_se", lambda *args, **kwargs: 0.0)  # a lead beyond any noise
    pooled = select_scoring([(data, [recon, refiner, None])], cfg, ScoringRule())
    assert pooled.rules["v"].weights == (0.0, 1.0, 0.0, 0.0, 0.0)
    every = select_scoring([(data, [recon, refiner, None])], cfg.model_copy(update={"refiner_every_family": True}), ScoringRule())
    assert every.rules["v"].weights == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert ValidationParams().refiner_every_family is False  # off unless asked for
    masks = (torch.nn.functional.avg_pool2d(data.masks.float(), 4) >= 0.5)[:, 0].numpy()
    rules = [ScoringRule(w, 0.0, 1) for w in ((0.0, 1.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 0.0))]
    first, second = (rule_maps(rule, [recon, refiner, None, None, None], None) for rule in rules)
    by_family = family_score_differences(first, second, masks, data.labels.numpy(), np.array(data.methods))
    assert sorted(by_family) == ["spots", "warp"] and by_family["warp"] > 0 > by_family["spots"]
    assert family_score_differences(first, first, masks, data.labels.numpy(), np.array(data.methods)) == {"spots": 0.0, "warp": 0.0}


def test_paired_bootstrap_of_the_score_difference() -> None:
    from onenip.metrics.bootstrap import PerImage
    from onenip.metrics.pixel import pixel_aupro
    from onenip.scoring_selection import paired_score_difference_se

    data = _validation("v")
    labels = data.labels.numpy()
    masks = (torch.nn.functional.avg_pool2d(data.masks.float(), 4) >= 0.5)[:, 0].numpy()
    recon, refiner = (m[:, 0].numpy() for m in _nearly_equal_maps(data))
    noise = _maps(data, False, 3)[:, 0].numpy()
    scores = {name: maps.reshape(len(maps), -1).max(axis=1) for name, maps in (("recon", recon), ("refiner", refiner), ("noise", noise))}
    # the same rule twice: no difference in any resample
    assert paired_score_difference_se((refiner, scores["refiner"]), (refiner, scores["refiner"]), masks, labels, 20) == 0.0
    near = paired_score_difference_se((refiner, scores["refiner"]), (recon, scores["recon"]), masks, labels, 50)
    far = paired_score_difference_se((refiner, scores["refiner"]), (noise, scores["noise"]), masks, labels, 50)
    assert 0.0 < near < far  # one pixel apart vary together; an informative and an uninformative map do not
    # the per-image histograms add up to the whole set's metrics
    whole = PerImage.from_maps(scores["noise"], labels, list(noise), list(masks)).metrics()
    assert whole["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores["noise"]))
    assert whole["pixel_AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), noise.ravel()), abs=0.01)
    assert whole["pixel_AP"] == pytest.approx(average_precision_score(masks.ravel(), noise.ravel()), abs=0.01)
    assert whole["pixel_AUPRO"] == pytest.approx(pixel_aupro(noise, masks), abs=0.01)


def _record_feature_batches(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The images validation sends to the backbone, recorded (the features are zeros)."""
    seen: list[torch.Tensor] = []

    def fake_features(extractor, batch, backbone, batch_size):  # noqa: ANN001, ANN202
        seen.append(batch.clone())
        return Features(torch.zeros(len(batch), 1, 2, 2), None)

    monkeypatch.setattr(onenip.scoring_selection, "extract_features", fake_features)
    return seen


def test_validation_anomalies_are_faded_by_the_configured_strength(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from onenip.config import load_params

    seen = _record_feature_batches(monkeypatch)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    images = (torch.stack([ys, xs, (ys + xs) / 2]) * 200 + 20).to(torch.uint8).expand(4, 3, 96, 96).contiguous()
    repo = Path(__file__).resolve().parents[2] / "params.yaml"
    change = {}
    for strength in ((1.0, 1.0), (0.4, 0.4)):
        params = load_params(repo, overrides={"validation": {"anomaly_strength": list(strength), "anomalies_per_image": 6}})
        built = onenip.scoring_selection.build_category_validation("c", images, None, None, params, seed=1)  # type: ignore[arg-type]
        batch, masks = seen[-1], built.masks[4:, 0]
        assert int(built.labels.sum()) == 24 and masks.flatten(1).any(1).all()
        moved = (batch[4:] - batch[:4].repeat_interleave(6, 0)).abs().mean(1)
        change[strength] = float((moved * masks).sum() / masks.sum())
    # the same families at 0.4 of their strength: the image moves about 0.4 as far inside the masks
    assert 0.25 < change[(0.4, 0.4)] / change[(1.0, 1.0)] < 0.6
    assert load_params(repo).validation.anomaly_strength[0] < 1  # the default fades: full strength saturated the choice


@pytest.mark.parametrize(("rule", "margin"), [("both", 1.0), ("score", 2.0)])
def test_the_memory_bank_alone_wins_ties_and_loses_only_beyond_the_noise(rule: str, margin: float) -> None:
    """validation.anchor: memory: a blend that is better only within the noise keeps the memory bank alone;
    one that wins clearly on localisation and on the image score replaces it."""
    data = _validation("v", normals=12, anomalies=12)
    memory = _maps(data, True, 0)
    memory[12:15, :, 2:4, 2:4] = 0.0  # the memory bank misses three defects entirely
    recon = _maps(data, True, 1)  # the reconstruction error finds every defect
    nearly = memory.clone()
    nearly[12, :, 2, 2] = 0.9  # one missed defect pixel rises to the noise level: a lead inside the noise
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0,
                           refiner_margin_se=0.0, anchor="memory", anchor_margin_se=margin, anchor_rule=rule, refiner_bootstrap=200)  # fmt: skip
    clear = select_scoring([(data, [recon, _maps(data, False, 2), None, None, memory])], cfg, ScoringRule())
    assert clear.rules["v"].weights == (1.0, 0.0, 0.0, 0.0, 0.0)
    tie = select_scoring([(data, [nearly, _maps(data, False, 2), None, None, memory])], cfg, ScoringRule())
    assert tie.rules["v"].weights == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert tie.metrics["v"]["pixel_AUROC"] == pytest.approx(
        next(r["pixel_AUROC"] for r in tie.table["v"] if tuple(r["weights"]) == (0.0, 0.0, 0.0, 0.0, 1.0)))
    plain = select_scoring([(data, [nearly, _maps(data, False, 2), None, None, memory])], cfg.model_copy(update={"anchor": "none"}), ScoringRule())
    assert plain.rules["v"].weights == (1.0, 0.0, 0.0, 0.0, 0.0)  # without the anchor, the tiny lead wins
    assert (ValidationParams().anchor, ValidationParams().anchor_rule) == ("memory", "score")  # the default, chosen LOCO


def test_restricted_selections_and_what_the_network_adds() -> None:
    from onenip.scoring_selection import restricted_selections

    data = _validation("v", normals=8, anomalies=8)
    recon, noise, memory = _maps(data, True, 0), _maps(data, False, 1), _maps(data, False, 2)
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4, max_refiner_weight=1.0,
                           refiner_margin_se=0.0)  # fmt: skip
    per_category = [(data, [recon, noise, None, None, memory])]
    selection = select_scoring(per_category, cfg, ScoringRule())
    restricted_selections(per_category, cfg, {"network": ScoringRule(), "statistics": ScoringRule((0.0, 0.0, 0.0, 0.0, 1.0))}, selection)
    assert selection.restricted["network"]["v"]["rule"]["weights"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert selection.restricted["statistics"]["v"]["rule"]["weights"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    adds = selection.network_adds["v"]
    assert adds["network_weight"] == 1.0 and adds["difference"] > 0.3 and 0 < adds["standard_error"] < adds["difference"]


def test_a_category_too_small_to_validate_keeps_the_given_rules_and_records_restricted_ones_that_read_their_maps_only() -> None:
    """Too few held-out normals: the chosen rule is the fallback passed in, and the rules recorded among the
    network's maps and among the statistics' are the defaults given for each, never one reading the other's maps."""
    from onenip.scoring_selection import restricted_selections

    tiny = _validation("tiny", normals=2, anomalies=8)
    maps = [_maps(tiny, True, 0), _maps(tiny, False, 1), None, _maps(tiny, False, 3), _maps(tiny, False, 2)]
    cfg = ValidationParams(smoothing_sigmas=(0.0,), score_pool_sizes=(1,), weight_step=1.0, min_normals=4)
    fallback, paper = ScoringRule((0.0, 0.0, 0.0, 0.5, 0.5), 4.0, 16), ScoringRule((0.5, 0.5, 0.0, 0.0, 0.0), 4.0, 16)
    selection = select_scoring([(tiny, maps)], cfg, fallback)
    restricted_selections([(tiny, maps)], cfg, {"network": paper, "statistics": fallback}, selection)
    assert selection.rules["tiny"] == fallback and "tiny" not in selection.network_adds
    assert selection.restricted["network"]["tiny"]["rule"] == paper.to_dict()
    assert selection.restricted["statistics"]["tiny"]["rule"] == fallback.to_dict()


def test_jittered_normals_add_drifted_copies_as_normals_and_leave_the_rest_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """validation.jittered_normals: each held-out normal again under the statistics' lighting jitter, labelled
    normal with an empty mask; the clean normals and the synthetic anomalies are those drawn without it."""
    from pathlib import Path

    from onenip.config import load_params

    seen = _record_feature_batches(monkeypatch)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    grey = ((ys + xs) / 2 * 200 + 20).to(torch.uint8).expand(5, 3, 64, 64).contiguous()
    repo = Path(__file__).resolve().parents[2] / "params.yaml"
    built = {}
    for on in (False, True):
        params = load_params(repo, overrides={"validation": {"jittered_normals": on, "anomalies_per_image": 2}})
        built[on] = onenip.scoring_selection.build_category_validation("c", grey, None, None, params, seed=3)  # type: ignore[arg-type]
    plain, drifted = built[False], built[True]
    assert (plain.num_normals, drifted.num_normals) == (5, 10) and int(drifted.labels.sum()) == int(plain.labels.sum()) == 10
    assert torch.equal(seen[1][: len(seen[0])], seen[0])  # the same clean normals and anomalies
    copies = seen[1][len(seen[0]) :]
    assert drifted.methods[-5:] == ["jittered normal"] * 5 and not drifted.masks[-5:].any()
    normals = grey.float() / 255
    assert all(not torch.allclose(c, n, atol=1e-3) for c, n in zip(copies, normals, strict=True))  # each copy drifted
    assert torch.allclose(copies[:, 0], copies[:, 1]) and torch.allclose(copies[:, 1], copies[:, 2])  # a grey image stays grey
    strength = params.model.statistics_jitter  # gain and gamma within exp(+-strength): the mean moves at most that far
    ratio = copies.mean((1, 2, 3)) / normals.mean((1, 2, 3))
    assert ((ratio > 0.5 * float(np.exp(-strength))) & (ratio < 1.5 * float(np.exp(strength)))).all()
