"""OneNIP torch model: the reference's neighbour mask, shapes on square and non-square grids, the fine
path, losses, restoration, state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from onenip.models.loss import area_pool_masks, dice_loss, onenip_loss
from onenip.models.onenip import OneNIP, neighbor_mask, prompt_residual
from onenip.models.blur import gaussian_smooth, masked_gaussian_smooth


def tiny_model(**overrides: object) -> OneNIP:
    kwargs = dict(
        in_features=12,
        max_grid=(4, 4),
        embed_dim=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        neighbor_size=(3, 3),
        refiner_dim=8,
    )
    kwargs.update(overrides)
    return OneNIP(**kwargs)  # type: ignore[arg-type]


# -- the neighbour mask (reference: models/reconstructions/onenip.py generate_mask) ----------------
def test_window_around_each_token_is_blocked_itself_included() -> None:
    blocked = neighbor_mask((16, 16), (9, 9))
    centre = 8 * 16 + 8
    # the centre token sees 256 - 81 = 175 tokens and not itself
    assert int((~blocked[centre]).sum()) == 256 - 81
    assert blocked[centre, centre]
    assert blocked.diagonal().all()  # no token sees itself
    # a 9x9 window blocks 4 cells each side: (8+4, 8+4) blocked, (8+5, 8) visible
    assert blocked[centre, 12 * 16 + 12] and not blocked[centre, 13 * 16 + 8]
    # a corner token's window is clipped by the border: 5 x 5 = 25 blocked
    assert int(blocked[0].sum()) == 25


def test_non_square_grid_and_window_per_axis() -> None:
    blocked = neighbor_mask((4, 5), (1, 3))
    # token (1, 1) = index 6: blocked are (1, 0..2) only
    assert {i for i in range(20) if blocked[6, i]} == {5, 6, 7}


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (10, 25), (16, 16), (17, 15)])
@pytest.mark.parametrize("window", [(1, 1), (3, 3), (7, 7), (9, 9), (5, 31)])
def test_no_attention_row_is_fully_blocked_on_any_accepted_grid(grid: tuple[int, int], window: tuple[int, int]) -> None:
    try:
        blocked = neighbor_mask(grid, window)
    except ValueError as error:
        # refused exactly when the window covers the whole grid in both directions
        assert 2 * (window[0] // 2) + 1 >= grid[0] and 2 * (window[1] // 2) + 1 >= grid[1]
        assert "blocks the whole" in str(error)
        return
    assert (~blocked).any(dim=1).all()


def test_model_refuses_a_window_that_blocks_its_grid() -> None:
    with pytest.raises(ValueError, match="blocks the whole 4x4"):
        tiny_model(neighbor_size=(5, 5))


def test_masked_attention_gives_finite_outputs_on_small_grids() -> None:
    torch.manual_seed(0)
    model = tiny_model(max_grid=(2, 6), neighbor_size=(3, 3)).eval()
    query, prompt = torch.randn(2, 12, 2, 6), torch.randn(1, 12, 2, 6)
    out = model(query, prompt)
    assert torch.isfinite(out.recon_features).all()
    # on a grid where most of each row is masked, the output still follows its inputs: a different prompt
    # or a different query gives a different reconstruction (a fully masked softmax would give NaN or a constant)
    assert not torch.allclose(out.recon_features[0], out.recon_features[1])
    assert not torch.allclose(model(query, torch.randn(1, 12, 2, 6)).recon_features, out.recon_features)


def test_a_query_token_cannot_reach_its_own_reconstruction() -> None:
    """The identical shortcut is closed: with no encoder layer and the final (unmasked, as in the
    reference) attention's value path zeroed, the reconstruction at a position depends on the query
    only through tokens OUTSIDE the blocked window around it. Changing query token (1, 1) leaves the
    reconstruction unchanged wherever (1, 1) lies in the window, and changes it elsewhere."""
    torch.manual_seed(0)
    model = tiny_model(num_encoder_layers=0, neighbor_size=(3, 3)).eval()
    with torch.no_grad():
        model.final_prompt_to_image.v_proj.weight.zero_()
        model.final_prompt_to_image.v_proj.bias.zero_()
    query, prompt = torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4)
    changed = query.clone()
    changed[..., 1, 1] += 10.0
    before, after = model.reconstruct(query, prompt), model.reconstruct(changed, prompt)
    same = (before - after).abs().amax(dim=1)[0] < 1e-5  # (4, 4)
    window = torch.zeros(4, 4, dtype=torch.bool)
    window[0:3, 0:3] = True  # positions whose 3x3 window contains (1, 1)
    assert torch.equal(same, window)


def test_final_attention_mask_closes_the_direct_copy_of_the_query() -> None:
    """The reference's final prompt -> image attention is unmasked: prompt token i reads query token i
    and can copy it. With ``final_attention_mask`` it cannot: with no encoder layer and the image
    stream kept query-only (its update from the prompt zeroed), changing query token (1, 1) leaves the
    reconstruction unchanged wherever (1, 1) lies in the window; unmasked, it changes it there."""
    query, prompt = torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4)
    changed = query.clone()
    changed[..., 1, 1] += 10.0
    window = torch.zeros(4, 4, dtype=torch.bool)
    window[0:3, 0:3] = True
    for masked in (False, True):
        torch.manual_seed(0)
        model = tiny_model(num_encoder_layers=0, neighbor_size=(3, 3), final_attention_mask=masked).eval()
        with torch.no_grad():
            model.decoder[0].image_to_prompt.v_proj.weight.zero_()
            model.decoder[0].image_to_prompt.v_proj.bias.zero_()
        before, after = model.reconstruct(query, prompt), model.reconstruct(changed, prompt)
        same = (before - after).abs().amax(dim=1)[0] < 1e-5
        assert torch.equal(same, window) if masked else not same.any()


def test_prompt_changes_reconstruction_and_prompts_are_shared() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    query = torch.randn(4, 12, 4, 4)
    p1, p2 = torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4)
    assert not torch.allclose(model.reconstruct(query, p1), model.reconstruct(query, p2))
    # Two prompts for four queries: query i uses prompt i % 2.
    both = model.reconstruct(query, torch.cat([p1, p2]))
    assert torch.allclose(both[0::2], model.reconstruct(query[0::2], p1), atol=1e-5)
    assert torch.allclose(both[1::2], model.reconstruct(query[1::2], p2), atol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        model.reconstruct(query, torch.randn(3, 12, 4, 4))


# -- shapes -------------------------------------------------------------------------------------------
def test_output_shapes_on_a_non_square_grid() -> None:
    torch.manual_seed(0)
    model = tiny_model(max_grid=(3, 6)).eval()
    query, prompt = torch.randn(2, 12, 3, 6), torch.randn(1, 12, 3, 6)
    out = model(query, prompt, image_size=(48, 96))
    assert out.recon_map.shape == (2, 1, 48, 96)
    assert out.refined_map.shape == (2, 1, 48, 96)
    assert out.refiner_logits.shape == (2, 1, 12, 24)  # the refiner's own resolution: 4x the grid
    assert out.recon_features.shape == (2, 12, 3, 6)
    assert out.residual_map is None
    # the maps are what they claim to be, computed independently here
    up = torch.nn.functional.interpolate(out.refiner_logits, size=(48, 96), mode="bilinear", align_corners=False)
    assert torch.allclose(out.refined_map, up.sigmoid(), atol=1e-6)
    error = (out.recon_features - query).pow(2).sum(dim=1, keepdim=True).sqrt()
    assert torch.allclose(out.recon_map, torch.nn.functional.interpolate(error, size=(48, 96), mode="bilinear", align_corners=False), atol=1e-5)


def test_one_network_serves_grids_of_different_aspects() -> None:
    torch.manual_seed(0)
    model = tiny_model(max_grid=(4, 6)).eval()
    for grid in [(4, 4), (2, 6), (4, 6)]:
        out = model(torch.randn(1, 12, *grid), torch.randn(1, 12, *grid))
        assert out.recon_features.shape[-2:] == grid


def test_fine_path_shapes_and_requirements() -> None:
    torch.manual_seed(0)
    model = tiny_model(fine_features=5, max_grid=(3, 4)).eval()
    query, prompt = torch.randn(2, 12, 3, 4), torch.randn(1, 12, 3, 4)
    fine_q, fine_p = torch.randn(2, 5, 6, 8), torch.randn(1, 5, 6, 8)
    out = model(query, prompt, fine_q, fine_p, image_size=(24, 32))
    assert out.residual_map.shape == (2, 1, 24, 32)
    with pytest.raises(ValueError, match="fine path"):
        model(query, prompt)
    with pytest.raises(ValueError, match="twice the coarse grid"):
        model(query, prompt, torch.randn(2, 5, 3, 4), torch.randn(1, 5, 3, 4))


def test_wrong_channels_are_reported() -> None:
    with pytest.raises(ValueError, match="features must be"):
        tiny_model()(torch.randn(1, 11, 4, 4), torch.randn(1, 11, 4, 4))


# -- the prompt residual (PatchCore's nearest neighbour, one prompt as memory bank) -------------------
def test_prompt_residual_equals_brute_force_nearest_patch() -> None:
    torch.manual_seed(0)
    query, prompt = torch.randn(3, 4, 5, 6), torch.randn(1, 4, 5, 6)
    distance, residual = prompt_residual(query, prompt, aggregate=1)
    q = query.flatten(2).transpose(1, 2)  # (3, 30, 4)
    p = prompt.flatten(2).transpose(1, 2)[0]  # (30, 4)
    for b in range(3):
        for n in range(30):
            d = (p - q[b, n]).norm(dim=1)
            j = int(d.argmin())
            assert distance[b, 0].flatten()[n].item() == pytest.approx(d[j].item(), rel=1e-4, abs=1e-4)
            assert torch.allclose(residual[b].flatten(1)[:, n], (q[b, n] - p[j]).abs(), atol=1e-4)


@pytest.mark.parametrize("window", [None, 3])
def test_prompt_residual_pairs_query_i_with_prompt_i_mod_p(window: int | None) -> None:
    """Several prompts (a training batch: queries, then their synthetic copies, prompt i % P), with and
    without a window: each query's nearest patch among ITS prompt's patches, by brute force."""
    torch.manual_seed(1)
    query, prompt = torch.randn(6, 5, 4, 5), torch.randn(2, 5, 4, 5)
    distance, residual = prompt_residual(query, prompt, aggregate=1, window=window)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    for b in range(6):
        q, p = query[b].flatten(1).t(), prompt[b % 2].flatten(1).t()  # (20, 5)
        for n in range(20):
            d = (p - q[n]).norm(dim=1)
            if window is not None:
                far = ((rows - rows[n]).abs() > window // 2) | ((cols - cols[n]).abs() > window // 2)
                d = d.masked_fill(far, float("inf"))
            j = int(d.argmin())
            assert distance[b, 0].flatten()[n].item() == pytest.approx(d[j].item(), rel=1e-5, abs=1e-5)
            assert torch.allclose(residual[b].flatten(1)[:, n], (q[n] - p[j]).abs(), atol=1e-5)


def test_prompt_residual_is_zero_for_the_prompt_itself_and_window_restricts() -> None:
    torch.manual_seed(0)
    prompt = torch.randn(1, 4, 6, 6)
    distance, residual = prompt_residual(prompt, prompt)
    assert distance.abs().max() < 1e-3 and residual.abs().max() < 1e-5
    shifted = torch.roll(prompt, shifts=3, dims=-1)
    far, _ = prompt_residual(shifted, prompt, aggregate=1)
    near, _ = prompt_residual(shifted, prompt, aggregate=1, window=3)
    assert far.abs().max() < 1e-3  # every shifted patch exists somewhere in the prompt
    assert near.mean() > 0.5  # but not within one cell of where it is


# -- losses -------------------------------------------------------------------------------------------
def test_dice_loss_values() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    assert dice_loss(mask, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.zeros_like(mask), mask).item() == pytest.approx(1 - 1 / 17)
    # empty mask: 1 - 1 / (sum p^2 + 1); zero prediction is perfect
    assert dice_loss(torch.zeros_like(mask), torch.zeros_like(mask)).item() == pytest.approx(0.0)
    assert dice_loss(torch.full_like(mask, 0.5), torch.zeros_like(mask)).item() == pytest.approx(1 - 1 / 17)


def test_dice_at_native_resolution_matches_full_resolution_dice() -> None:
    """Area-pooled masks against low-resolution probabilities, with the smoothing term scaled, give the
    loss of the reference's full-resolution Dice on the nearest-upsampled probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 4, 4)
    masks = torch.zeros(3, 1, 16, 16)
    masks[1, :, 4:8, 4:12] = 1
    masks[2, :, 0:4, 0:4] = 1
    pooled = area_pool_masks(masks, (4, 4))
    assert pooled[1, 0, 1, 1] == 1 and pooled.max() <= 1
    native = onenip_loss(torch.zeros(3, 2, 1, 1), torch.zeros(3, 2, 1, 1), logits, masks).dice
    full = dice_loss(torch.nn.functional.interpolate(logits, scale_factor=4, mode="nearest").sigmoid(), masks)
    assert native.item() == pytest.approx(full.item(), rel=1e-5)


def test_restoration_target_is_clean_query_and_training_reduces_loss() -> None:
    """Synthetic copies are trained towards the clean features: after a few steps the
    reconstruction of a corrupted query is closer to the clean query than the corrupted input is."""
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0, feature_jitter_scale=0.0)
    clean = torch.randn(1, 12, 4, 4).repeat(4, 1, 1, 1)
    corrupted = clean.clone()
    corrupted[..., 1:3, 1:3] += 3.0
    masks = torch.zeros(8, 1, 32, 32)
    masks[4:, :, 8:24, 8:24] = 1
    prompt = clean[:1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(60):
        recon, logits, _ = model.reconstruct_and_refine(torch.cat([clean, corrupted]), prompt)
        loss = onenip_loss(recon, torch.cat([clean, clean]), logits, masks)
        first = first if first is not None else loss.total.item()
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert loss.total.item() < 0.5 * first
    model.eval()
    out = model(corrupted[:1], prompt, image_size=(32, 32))
    restored_error = (out.recon_features - clean[:1]).pow(2).mean()
    input_error = (corrupted[:1] - clean[:1]).pow(2).mean()
    assert restored_error < 0.25 * input_error
    # the refiner learned where the synthetic anomaly is
    inside = out.refined_map[..., 8:24, 8:24].mean()
    outside = out.refined_map[..., :4, :].mean()
    assert inside > outside + 0.3


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    model = tiny_model(fine_features=3).eval()
    other = tiny_model(fine_features=3).eval()
    other.load_state_dict(model.state_dict())
    assert not any("mask" in key for key in model.state_dict())  # masks are rebuilt per grid, not saved
    query, prompt = torch.randn(2, 12, 4, 4), torch.randn(1, 12, 4, 4)
    fq, fp = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8)
    assert torch.equal(model(query, prompt, fq, fp).refined_map, other(query, prompt, fq, fp).refined_map)


def test_gaussian_smooth_preserves_constant_and_mass() -> None:
    maps = torch.ones(1, 1, 20, 20)
    assert torch.allclose(gaussian_smooth(maps, 2.0), maps, atol=1e-6)
    spike = torch.zeros(1, 1, 21, 21)
    spike[..., 10, 10] = 1
    assert gaussian_smooth(spike, 1.5).sum().item() == pytest.approx(1.0, abs=1e-4)


def _letterbox(height: int = 20, width: int = 30) -> torch.Tensor:
    valid = torch.zeros(1, 1, height, width)
    valid[..., :, 6:24] = 1  # content in the middle, padding left and right
    return valid


def test_masked_smoothing_keeps_letterbox_padding_out_of_the_content() -> None:
    valid = _letterbox()
    maps = torch.rand(2, 1, 20, 30, generator=torch.Generator().manual_seed(0))
    hot = maps.clone()
    hot[valid.expand_as(hot) == 0] = 100.0  # padding is far from every normal patch: high in every map
    smoothed = masked_gaussian_smooth(maps, 3.0, valid)
    torch.testing.assert_close(masked_gaussian_smooth(hot, 3.0, valid), smoothed)  # the padding's values never count
    assert (smoothed[valid.expand_as(smoothed) == 0] == 0).all()
    constant = torch.full((1, 1, 20, 30), 2.0).masked_fill(valid == 0, 50.0)
    content = masked_gaussian_smooth(constant, 3.0, valid)[valid == 1]
    torch.testing.assert_close(content, torch.full_like(content, 2.0))  # a map constant on the content stays so
    assert torch.equal(masked_gaussian_smooth(maps, 0.0, valid), maps * valid)
    assert torch.equal(masked_gaussian_smooth(maps, 3.0, None), gaussian_smooth(maps, 3.0))
    # the plain blur, masked afterwards, carries the padding into the content's border
    leaked = (gaussian_smooth(hot, 3.0) * valid - smoothed).abs().amax()
    assert leaked > 1.0


def test_scores_of_letterboxed_maps_ignore_the_padding() -> None:
    from onenip.models.scoring import ScoringRule, score_maps

    valid = _letterbox()
    generator = torch.Generator().manual_seed(1)
    components = [torch.rand(3, 1, 20, 30, generator=generator) for _ in range(2)] + [None, None, None]
    hot = [None if c is None else c.masked_fill(valid.expand_as(c) == 0, 100.0) for c in components]
    rule = ScoringRule((0.5, 0.5, 0.0, 0.0, 0.0), 4.0, 4)
    (map_a, score_a), (map_b, score_b) = score_maps(components, rule, valid), score_maps(hot, rule, valid)
    torch.testing.assert_close(map_a, map_b)
    torch.testing.assert_close(score_a, score_b)


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(embed_dim=15, num_heads=2)


def test_refiner_in_channels_last_gives_the_plain_layouts_logits_and_gradients() -> None:
    """The refiner converts its inputs to channels-last for speed; the maths must not change."""
    from onenip.models.refiner import Refiner

    torch.manual_seed(0)
    refiner = Refiner(12, hidden_dim=8, fine_features=5).train()
    residual = torch.rand(3, 12, 4, 6, requires_grad=True)
    fine = torch.rand(3, 6, 8, 12)
    logits = refiner(residual, fine)
    assert logits.shape == (3, 1, 16, 24) and logits.is_contiguous()
    (logits**2).sum().backward()
    fast_grad, fast_weight_grad = residual.grad.clone(), refiner.first[0].weight.grad.clone()
    residual.grad, refiner.first[0].weight.grad = None, None
    plain = refiner.head(refiner.second(torch.cat([refiner.first(residual), refiner.skip(fine)], dim=1)))  # default layout
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    (plain**2).sum().backward()
    torch.testing.assert_close(fast_grad, residual.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_weight_grad, refiner.first[0].weight.grad, rtol=1e-4, atol=1e-5)
