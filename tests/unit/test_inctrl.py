"""InCTRL head maths against brute-force references on small random tensors (issue "Few-shot generalist")."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from onenip.models.inctrl import (
    InCTRLHead, focal_loss, inctrl_loss, multi_layer_residual, nearest_distance, neighbourhood_embedding, patch_residual,
)


def brute_force_residual(query: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = query.shape
    out = torch.empty(batch, height, width)
    for b in range(batch):
        bank = prompts if prompts.dim() == 4 else prompts[b]
        patches = [bank[k, :, i, j] for k in range(bank.shape[0]) for i in range(bank.shape[2]) for j in range(bank.shape[3])]
        for i in range(height):
            for j in range(width):
                out[b, i, j] = min(0.5 * (1 - F.cosine_similarity(query[b, :, i, j], p, dim=0)) for p in patches)
    return out


def test_nearest_prompt_residual_equals_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 5, 4, 3, generator=generator)
    shared = torch.randn(2, 5, 3, 4, generator=generator)  # k = 2 prompts, another grid size
    per_query = torch.randn(3, 2, 5, 2, 2, generator=generator)
    torch.testing.assert_close(patch_residual(query, shared, chunk=2), brute_force_residual(query, shared), atol=1e-6, rtol=0)
    torch.testing.assert_close(patch_residual(query, per_query), brute_force_residual(query, per_query), atol=1e-6, rtol=0)


def test_shared_prompt_search_in_tiles_smaller_than_an_image_equals_brute_force(monkeypatch) -> None:  # noqa: ANN001
    import onenip.models.inctrl as inctrl

    generator = torch.Generator().manual_seed(1)
    query = torch.randn(3, 16, 6, 6, generator=generator)  # 108 query patches
    shared = torch.randn(4, 16, 8, 8, generator=generator)  # 256 prompt patches
    monkeypatch.setattr(inctrl, "TILE_ELEMENTS", 256 * 10)  # 64-row tiles: a tile ends inside the second image
    assert inctrl._tile_rows(256) == 64
    torch.testing.assert_close(patch_residual(query, shared), brute_force_residual(query, shared), atol=1e-6, rtol=0)


def test_identical_query_and_prompt_give_a_zero_map() -> None:
    layers = [torch.randn(2, 6, 4, 4), torch.randn(2, 3, 8, 8)]
    residual = multi_layer_residual(layers, [layer[:, None] for layer in layers], (8, 8))  # each query its own prompt
    assert residual.shape == (2, 8, 8) and residual.abs().max().item() < 1e-6
    ones = torch.ones(1, 4, 2, 2)
    assert torch.allclose(patch_residual(ones, -ones), torch.ones(1, 2, 2))  # opposite directions: 0.5 * (1 - (-1))


def test_head_shapes_and_loss() -> None:
    torch.manual_seed(0)
    head = InCTRLHead((4, 4), token_dim=12)
    query = [torch.randn(6, 8, 4, 4), torch.randn(6, 5, 2, 2)]
    prompts = [torch.randn(3, 8, 4, 4), torch.randn(3, 5, 2, 2)]  # k = 3 shared prompts
    out = head(query, prompts, torch.randn(6, 12), torch.randn(3, 12))
    assert out.score.shape == out.image_score.shape == out.holistic_score.shape == (6,)
    assert out.residual_map.shape == (6, 4, 4)
    assert torch.all((out.score >= 0) & (out.score <= 1))
    # final score = mean of the holistic score and the max patch residual
    torch.testing.assert_close(out.score, (out.holistic_score + out.residual_map.flatten(1).amax(1)) / 2)
    targets = torch.tensor([0, 1, 0, 1, 0, 1])
    loss = inctrl_loss(out, targets)
    loss.backward()
    assert loss.item() > 0 and head.adapter.fc[0].weight.grad is not None
    # the reference's focal loss (alpha 1, gamma 2) on scores taken as logits
    scores = torch.tensor([0.2, 0.9])
    bce = F.binary_cross_entropy_with_logits(scores, torch.tensor([0.0, 1.0]), reduction="none")
    torch.testing.assert_close(focal_loss(scores, torch.tensor([0, 1])), ((1 - torch.exp(-bce)) ** 2 * bce).mean())


def test_sorted_holistic_input_reads_where_residuals_are_not() -> None:
    torch.manual_seed(0)
    head = InCTRLHead((4, 4), token_dim=12, holistic_input="sorted").eval()
    reference = InCTRLHead((4, 4), token_dim=12).eval()
    reference.load_state_dict(head.state_dict())
    query = torch.randn(5, 8, 4, 4)
    moved = query.flip(-1).transpose(-2, -1)  # the same patches at other places
    prompts, token, prompt_tokens = [torch.randn(2, 8, 4, 4)], torch.randn(5, 12), torch.randn(2, 12)
    with torch.no_grad():
        out, out_moved = head([query], prompts, token, prompt_tokens), head([moved], prompts, token, prompt_tokens)
        by_place = reference([query], prompts, token, prompt_tokens), reference([moved], prompts, token, prompt_tokens)
    assert not torch.allclose(out.residual_map, out_moved.residual_map)
    torch.testing.assert_close(out.holistic_score, out_moved.holistic_score)
    assert not torch.allclose(by_place[0].holistic_score, by_place[1].holistic_score)  # the reference's map head is tied to places
    # the sorted head is the map head fed the residuals in descending order
    ordered = out.residual_map.flatten(1).sort(dim=1, descending=True).values
    with torch.no_grad():
        torch.testing.assert_close(out.holistic_score, reference.holistic_head(ordered + out.image_score[:, None]))
    try:
        InCTRLHead((4, 4), token_dim=12, holistic_input="histogram")
    except ValueError as error:
        assert "histogram" in str(error)
    else:
        raise AssertionError("an unknown holistic input was accepted")


def test_generalist_keeps_its_holistic_input_when_saved(tmp_path) -> None:  # noqa: ANN001
    from onenip.config import BackboneParams
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), ["plate"], [2], pretrained=False, holistic_input="sorted")
    loaded = GeneralistDetector.load(detector.save(tmp_path / "model"))
    assert loaded.head.holistic_input == "sorted" and loaded.categories == ["plate"]


def test_head_weight_blends_holistic_and_max_residual_and_old_models_load_with_inctrls_mean(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from onenip.config import BackboneParams
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), pretrained=False).eval()
    features = detector.extract(torch.rand(2, 3, 64, 64))
    detector.add_category("a", features.coarse[:1], features.fine[:1])  # type: ignore[index]
    with torch.no_grad():
        out = detector.score_features(features, detector.prompt(0))
        assert torch.allclose(detector.forward_features(features, 0).pred_score, out.score)  # default: InCTRL's mean
        detector.head_weight[0] = 0.0
        assert torch.allclose(detector.forward_features(features, 0).pred_score, out.residual_map.flatten(1).amax(1))
    folder = detector.save(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    del state["head_weight"], state["residual_kind"]  # a model onboarded before the weight and the residual choice existed
    save_file(state, str(folder / "model.safetensors"))
    assert json.loads((folder / "onenip.json").read_text())["categories"] == ["a"]
    old = GeneralistDetector.load(folder)
    assert old.head_weight.tolist() == [0.5] and old.residual(0) == "inctrl"


def test_nearest_distance_equals_brute_force_and_is_zero_on_the_prompt_itself() -> None:
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(3, 6, 4, 5, generator=generator)
    prompts = torch.randn(2, 6, 3, 3, generator=generator)
    bank = prompts.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.stack([
        torch.tensor([[min(float((query[b, :, i, j] - p).norm()) for p in bank) for j in range(5)] for i in range(4)])
        for b in range(3)
    ])  # fmt: skip
    torch.testing.assert_close(nearest_distance(query, prompts), expected, atol=1e-4, rtol=0)
    assert nearest_distance(query, query[1:2])[1].max() < 1e-6  # a prompt identical to the query: zero


def test_nearest_distance_in_tiles_on_large_uncentred_features(monkeypatch) -> None:  # noqa: ANN001
    import onenip.models.inctrl as inctrl

    # real stride-8 features sit far from the origin; the ranking's expansion must still find the nearest
    generator = torch.Generator().manual_seed(7)
    offset = 20 * torch.rand(1, 152, 1, 1, generator=generator)
    prompts = offset + torch.randn(4, 152, 8, 8, generator=generator)
    query = torch.cat([prompts[:2] + 0.05 * torch.randn(2, 152, 8, 8, generator=generator),
                       offset + torch.randn(2, 152, 8, 8, generator=generator)])  # fmt: skip
    bank = prompts.permute(0, 2, 3, 1).reshape(-1, 152)
    expected = torch.cdist(query.flatten(2).transpose(1, 2), bank[None], compute_mode="donot_use_mm_for_euclid_dist").amin(dim=-1).view(4, 8, 8)
    monkeypatch.setattr(inctrl, "TILE_ELEMENTS", 256 * 100)  # 100-row tiles across images
    torch.testing.assert_close(nearest_distance(query, prompts), expected, atol=1e-5, rtol=1e-5)
    assert nearest_distance(query, prompts)[:2].max() < 1.0  # near copies of prompt patches


def _reweighted_reference(query: torch.Tensor, prompts: torch.Tensor, neighbours: int) -> torch.Tensor:
    """PatchCore paper eq. 7 written out one image at a time, with plain loops and norms."""
    bank = prompts.permute(0, 2, 3, 1).reshape(-1, prompts.shape[1])
    scores = []
    for image in query:
        patches = image.flatten(1).t()
        distances = torch.stack([(bank - p).norm(dim=1) for p in patches])  # (HW, N)
        nearest = distances.min(dim=1)
        worst = int(nearest.values.argmax())
        anchor = bank[int(nearest.indices[worst])]
        support = bank[(bank - anchor).norm(dim=1).argsort()[:neighbours]]
        spread = (support - patches[worst]).norm(dim=1)
        scores.append((1 - torch.softmax(spread, dim=0)[0]) * nearest.values[worst])
    return torch.stack(scores)


def test_reweighted_image_score_is_patchcore_eq_7() -> None:
    from onenip.models.inctrl import nearest_patches, patch_bank, reweighted_image_score

    generator = torch.Generator().manual_seed(11)
    prompts = torch.randn(2, 5, 4, 4, generator=generator)
    query = torch.cat([prompts[:1] + 0.1 * torch.randn(1, 5, 4, 4, generator=generator), torch.randn(2, 5, 4, 4, generator=generator)])
    distances, indices = nearest_patches(query, prompts)
    bank = patch_bank(prompts)
    torch.testing.assert_close(bank[indices.flatten()], bank[(query.flatten(2).transpose(1, 2).reshape(-1, 5)[:, None] - bank).norm(dim=-1).argmin(1)])
    for neighbours in (9, 3):
        score = reweighted_image_score(query, bank, distances, indices, neighbours)
        torch.testing.assert_close(score, _reweighted_reference(query, prompts, neighbours), atol=1e-5, rtol=1e-5)
        assert bool((score < distances.flatten(1).amax(1)).all())  # 1 - softmax < 1
    torch.testing.assert_close(reweighted_image_score(query, bank, distances, indices, 1), distances.flatten(1).amax(1))


def test_reweighted_image_score_equals_anomalib_patchcore() -> None:
    import pytest

    patchcore = pytest.importorskip("anomalib.models.image.patchcore.torch_model", reason="anomalib (bench extra) not installed")
    from onenip.models.inctrl import nearest_patches, patch_bank, reweighted_image_score

    generator = torch.Generator().manual_seed(12)
    prompts, query = torch.randn(3, 6, 4, 4, generator=generator), torch.randn(2, 6, 4, 4, generator=generator)
    model = patchcore.PatchcoreModel.__new__(patchcore.PatchcoreModel)
    torch.nn.Module.__init__(model)
    model.num_neighbors = 9
    model.memory_bank = patch_bank(prompts)
    embedding = query.permute(0, 2, 3, 1).reshape(-1, 6)
    patch_scores, locations = model.nearest_neighbors(embedding, n_neighbors=1)
    expected = model.compute_anomaly_score(patch_scores.view(2, -1), locations.view(2, -1), embedding)
    distances, indices = nearest_patches(query, prompts)
    torch.testing.assert_close(reweighted_image_score(query, model.memory_bank, distances, indices), expected, atol=1e-5, rtol=1e-5)


def test_neighbourhood_embedding_pools_each_layer_on_its_own_grid_then_upsamples() -> None:
    generator = torch.Generator().manual_seed(4)
    fine, coarse = torch.randn(1, 2, 8, 8, generator=generator), torch.randn(1, 3, 4, 4, generator=generator)
    out = neighbourhood_embedding([fine, coarse], (8, 8))
    assert out.shape == (1, 5, 8, 8)
    # an inner cell: the mean of its 3x3 neighbourhood; a corner counts the zero padding (PatchCore's AvgPool2d(3, 1, 1))
    torch.testing.assert_close(out[0, :2, 3, 4], fine[0, :, 2:5, 3:6].mean(dim=(-2, -1)))
    torch.testing.assert_close(out[0, :2, 0, 0], fine[0, :, :2, :2].sum(dim=(-2, -1)) / 9)
    pooled = F.avg_pool2d(coarse, 3, 1, 1)  # pooled at stride 16, THEN brought to the fine grid
    torch.testing.assert_close(out[:, 2:], F.interpolate(pooled, size=(8, 8), mode="bilinear", align_corners=False))


def test_neighbourhood_residual_reads_the_stride_16_stage_natively_and_scores_as_stored(tmp_path) -> None:
    import pytest

    from onenip.config import BackboneParams
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), pretrained=False).eval()
    features = detector.extract(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)))
    fine_layer, coarse_layer = detector.neighbourhood_layers(features)
    assert fine_layer.shape[-2:] == (8, 8) and coarse_layer.shape[-2:] == (4, 4)  # lite0: 40 ch at stride 8, 112 at 16
    assert torch.equal(coarse_layer, features.coarse[:, -112:])
    assert torch.equal(fine_layer, features.fine[:, :40])  # type: ignore[index]
    with pytest.raises(ValueError, match="residual must be one of"):
        detector.add_category("x", features.coarse[:1], features.fine[:1], residual="cosine")  # type: ignore[index]
    detector.add_category("a", features.coarse[:1], features.fine[:1], residual="neighbourhood")  # type: ignore[index]
    with torch.no_grad():
        residual, score = detector.neighbourhood_residual(features, features.select([0]))
        output = detector.forward_features(features, 0)
    assert residual[0].max() < 1e-6 and residual[1:].amax() > 0.1  # the prompt itself scores zero
    torch.testing.assert_close(output.pred_score, score)
    # PatchCore's reweighting only scales the largest distance down
    assert bool((score <= residual.flatten(1).amax(1) + 1e-6).all()) and bool((score[1:] > 0).all())
    loaded = GeneralistDetector.load(detector.save(tmp_path / "m"))
    assert loaded.residual(0) == "neighbourhood" and loaded.neighbourhood_neighbours == 9
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(features, 0).pred_score, output.pred_score)
    # a model saved before the reweighting (no key) keeps the plain maximum its threshold was calibrated on
    config = json.loads((tmp_path / "m" / "onenip.json").read_text())
    del config["neighbourhood_neighbours"]
    (tmp_path / "m" / "onenip.json").write_text(json.dumps(config))
    old = GeneralistDetector.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(old.forward_features(features, 0).pred_score, residual.flatten(1).amax(1))


def test_rotated_bank_holds_each_prompt_turned_half_round_and_survives_save_and_old_models(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from onenip.config import BackboneParams
    from onenip.models.features import Features
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), pretrained=False).eval()
    generator = torch.Generator().manual_seed(7)
    # a lopsided picture: bright top-left corner, so its half turn looks different to the backbone
    prompt = torch.rand(1, 3, 64, 64, generator=generator) * 0.2
    prompt[..., :24, :24] += 0.8
    others = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        plain, turned = detector.extract(prompt), detector.extract(prompt.flip(-2, -1))
        queries = Features.cat([turned, detector.extract(others)])
        detector.add_category("a", plain.coarse, plain.fine, residual="neighbourhood_rotated")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="rotated prompts but has none stored"):
            detector.forward_features(queries, 0)
        detector.set_rotated_prompts(0, turned)
        bank = detector.neighbourhood_bank(0)
        assert torch.equal(bank.coarse, torch.cat([plain.coarse, turned.coarse]))
        rotated = detector.forward_features(queries, 0)
        expected_map, expected_score = detector.neighbourhood_residual(queries, bank)
        torch.testing.assert_close(rotated.pred_score, expected_score)
        without = detector.neighbourhood_residual(queries, plain)[0]
    # the turned prompt is in the bank: it scores zero there, and not against the prompt alone
    assert expected_map[0].max() < 1e-6 and without[0].max() > 0.1
    assert bool((expected_map <= without + 1e-6).all())  # a larger bank never moves a patch further away
    loaded = GeneralistDetector.load(detector.save(tmp_path / "m"))
    assert loaded.residual(0) == "neighbourhood_rotated" and loaded.rotated_prompts(0).coarse.shape[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(queries, 0).pred_score, rotated.pred_score)
    # a model onboarded before rotated prompts (no buffers, no config key) loads with none
    detector.set_residual(0, "neighbourhood")
    folder = detector.save(tmp_path / "old")
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("rotated")}
    save_file(state, str(folder / "model.safetensors"))
    config = json.loads((folder / "onenip.json").read_text())
    del config["rotated_shots"]
    (folder / "onenip.json").write_text(json.dumps(config))
    old = GeneralistDetector.load(folder)
    assert old.rotated_prompts(0).coarse.shape[0] == 0 and old.residual(0) == "neighbourhood"


def test_rotated_bank_is_offered_only_while_it_fits_the_onboarding_budget() -> None:
    from onenip.config import Params
    from onenip.fewshot import scoring_candidates

    defaults = Params()
    assert defaults.generalist.rotated_bank_images == 8
    assert all(residual != "neighbourhood_rotated" for residual, _ in scoring_candidates(defaults, 2))  # opt-in
    every = ("inctrl", "neighbourhood", "neighbourhood_rotated")
    params = defaults.model_copy(update={"generalist": defaults.generalist.model_copy(update={"residuals": every})})
    assert ("neighbourhood_rotated", 0.0) in scoring_candidates(params, 4)
    assert ("neighbourhood_rotated", 0.0) not in scoring_candidates(params, 5)
    assert ("neighbourhood", 0.0) in scoring_candidates(params, 8)
    only = params.model_copy(update={"generalist": params.generalist.model_copy(update={"residuals": ("neighbourhood_rotated",)})})
    assert scoring_candidates(only, 2) == [("neighbourhood_rotated", 0.0)]
    assert scoring_candidates(only, 8) == [("neighbourhood", 0.0)]  # too large a bank: the plain one


def test_a_generalist_saved_before_the_reweighting_onboards_new_categories_with_it(tmp_path) -> None:  # noqa: ANN001
    """The plain-maximum fallback is for categories calibrated on it; a generalist with none yet
    onboards with PatchCore's 9 neighbours."""
    from onenip.config import BackboneParams
    from onenip.models.generalist import GeneralistDetector

    folder = GeneralistDetector(BackboneParams(input_size=64), pretrained=False).save(tmp_path / "g")
    config = json.loads((folder / "onenip.json").read_text())
    del config["neighbourhood_neighbours"]
    (folder / "onenip.json").write_text(json.dumps(config))
    assert GeneralistDetector.load(folder).neighbourhood_neighbours == 9


def test_onboarded_prompts_live_where_the_detector_is() -> None:
    """Cached features come from the CPU; on CUDA the prompts must follow the detector (the meta device
    stands in for a GPU here)."""
    from onenip.config import BackboneParams
    from onenip.models.generalist import GeneralistDetector

    detector = GeneralistDetector(BackboneParams(input_size=64), pretrained=False)
    features = detector.extract(torch.rand(1, 3, 64, 64))
    detector = detector.to("meta")
    k = detector.add_category("a", features.coarse, features.fine)  # type: ignore[arg-type]
    prompt = detector.prompt(k)
    assert prompt.coarse.device.type == prompt.fine.device.type == detector.score_threshold.device.type == "meta"  # type: ignore[union-attr]


def test_head_scores_a_non_square_map_and_reads_it_resampled_to_its_grid() -> None:
    """An onboarded category at its own aspect: the residual map keeps that grid (its max scores the
    image), and the holistic MLP reads the map resampled to the head's own grid."""
    from onenip.models.inctrl import InCTRLHead, multi_layer_residual

    torch.manual_seed(0)
    head = InCTRLHead((4, 4), token_dim=6).eval()
    query = [torch.randn(2, 5, 3, 8), torch.randn(2, 6, 3, 8)]
    prompts = [torch.randn(2, 5, 3, 8), torch.randn(2, 6, 3, 8)]
    query_token, prompt_tokens = torch.randn(2, 6), torch.randn(2, 6)
    with torch.no_grad():
        out = head(query, prompts, query_token, prompt_tokens, grid=(3, 8))
        residual = multi_layer_residual(query, prompts, (3, 8))
        resampled = F.interpolate(residual[:, None], size=(4, 4), mode="bilinear", align_corners=False, antialias=True)[:, 0]
        holistic = head.holistic_head(resampled.flatten(1) + out.image_score[:, None])
    assert out.residual_map.shape == (2, 3, 8)
    torch.testing.assert_close(out.residual_map, residual)
    torch.testing.assert_close(out.holistic_score, holistic)
    torch.testing.assert_close(out.score, (holistic + residual.flatten(1).amax(dim=1)) / 2)
