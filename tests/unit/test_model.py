"""OneNIP torch model: shapes, attention mask, losses, restoration path, state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from onenip.models.loss import dice_loss, onenip_loss
from onenip.models.onenip import OneNIP, gaussian_smooth, neighbor_mask


def tiny_model(**overrides: object) -> OneNIP:
    kwargs = dict(
        in_features=12,
        feature_size=(4, 4),
        image_size=(32, 32),
        embed_dim=16,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        neighbor_size=(3, 3),
        refiner_dim=8,
        smoothing_sigma=1.0,
        score_pool_size=4,
    )
    kwargs.update(overrides)
    return OneNIP(**kwargs)  # type: ignore[arg-type]


def test_output_fields_and_shapes() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    query, prompt = torch.randn(3, 12, 4, 4), torch.randn(1, 12, 4, 4)
    out = model(query, prompt)
    assert out.anomaly_map.shape == (3, 1, 32, 32)
    assert out.recon_map.shape == (3, 1, 32, 32)
    assert out.refined_map.shape == (3, 1, 32, 32)
    assert out.refiner_logits.shape == (3, 1, 32, 32)
    assert out.recon_features.shape == (3, 12, 4, 4)
    assert out.pred_score.shape == (3,)
    assert torch.all((out.refined_map >= 0) & (out.refined_map <= 1))
    assert torch.allclose(out.pred_score, torch.nn.functional.avg_pool2d(out.anomaly_map, 4, 1).flatten(1).amax(1))


def test_neighbor_mask_window() -> None:
    mask = neighbor_mask((4, 5), (3, 3))
    assert mask.shape == (20, 20) and mask.dtype == torch.bool
    # token (1, 1) = index 6 may see (0..2, 0..2) and nothing else
    allowed = {r * 5 + c for r in range(3) for c in range(3)}
    assert {i for i in range(20) if not mask[6, i]} == allowed
    assert not mask.diagonal().any()  # every token sees itself


def test_attention_mask_is_a_buffer_built_once() -> None:
    model = tiny_model()
    assert "attn_mask" in dict(model.named_buffers())
    assert "attn_mask" not in model.state_dict()  # rebuilt from config, not saved
    before = model.attn_mask.data_ptr()
    model(torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4))
    assert model.attn_mask.data_ptr() == before


def test_neighbourhood_restricts_information_flow() -> None:
    # With a 1x1 window and no decoder mixing beyond it, changing a far token cannot change token 0.
    torch.manual_seed(0)
    model = tiny_model(neighbor_size=(1, 1)).eval()
    query, prompt = torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4)
    changed = query.clone()
    changed[..., 3, 3] += 5.0
    a = model.reconstruct(query, prompt)
    b = model.reconstruct(changed, prompt)
    assert torch.allclose(a[..., 0, 0], b[..., 0, 0], atol=1e-5)
    assert not torch.allclose(a[..., 3, 3], b[..., 3, 3], atol=1e-3)


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


def test_wrong_grid_is_reported() -> None:
    with pytest.raises(ValueError, match="grid"):
        tiny_model()(torch.randn(1, 12, 5, 5), torch.randn(1, 12, 5, 5))


def test_recon_scale_normalises_reconstruction_term() -> None:
    torch.manual_seed(0)
    model = tiny_model(recon_weight=1.0, smoothing_sigma=0.0).eval()
    query, prompt = torch.randn(2, 12, 4, 4), torch.randn(1, 12, 4, 4)
    base = model(query, prompt, 1.0)
    scaled = model(query, prompt, torch.tensor([2.0, 4.0]))
    assert torch.allclose(scaled.anomaly_map[0], base.anomaly_map[0] / 2, atol=1e-6)
    assert torch.allclose(scaled.anomaly_map[1], base.anomaly_map[1] / 4, atol=1e-6)


def test_dice_loss_values() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    assert dice_loss(mask, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.zeros_like(mask), mask).item() == pytest.approx(1 - 1 / 17)
    # empty mask: 1 - 1 / (sum p^2 + 1); zero prediction is perfect
    assert dice_loss(torch.zeros_like(mask), torch.zeros_like(mask)).item() == pytest.approx(0.0)
    assert dice_loss(torch.full_like(mask, 0.5), torch.zeros_like(mask)).item() == pytest.approx(1 - 1 / 17)


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
        out = model(torch.cat([clean, corrupted]), prompt)
        loss = onenip_loss(out.recon_features, torch.cat([clean, clean]), out.refiner_logits, masks)
        first = first if first is not None else loss.total.item()
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert loss.total.item() < 0.5 * first
    model.eval()
    out = model(corrupted[:1], prompt)
    restored_error = (out.recon_features - clean[:1]).pow(2).mean()
    input_error = (corrupted[:1] - clean[:1]).pow(2).mean()
    assert restored_error < 0.25 * input_error
    # the refiner learned where the synthetic anomaly is
    inside = out.refined_map[..., 8:24, 8:24].mean()
    outside = out.refined_map[..., :4, :].mean()
    assert inside > outside + 0.3


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    other = tiny_model().eval()
    other.load_state_dict(model.state_dict())
    query, prompt = torch.randn(2, 12, 4, 4), torch.randn(1, 12, 4, 4)
    assert torch.equal(model(query, prompt).anomaly_map, other(query, prompt).anomaly_map)


def test_gaussian_smooth_preserves_constant_and_mass() -> None:
    maps = torch.ones(1, 1, 20, 20)
    assert torch.allclose(gaussian_smooth(maps, 2.0), maps, atol=1e-6)
    spike = torch.zeros(1, 1, 21, 21)
    spike[..., 10, 10] = 1
    assert gaussian_smooth(spike, 1.5).sum().item() == pytest.approx(1.0, abs=1e-4)


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(embed_dim=15, num_heads=2)
    with pytest.raises(ValueError, match="recon_weight"):
        tiny_model(recon_weight=1.5)
