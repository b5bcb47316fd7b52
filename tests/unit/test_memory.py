"""The memory-bank map (PatchCore's statistic): coreset, nearest-patch distance, the detector's fifth map."""

from __future__ import annotations

import pytest
import torch

from onenip.config import ModelParams
from onenip.models.detector import OneNIPDetector
from onenip.models.memory import kcenter_greedy, locally_aware_embedding, nearest_bank_distance
from onenip.models.scoring import ScoringRule
from tests.helpers.tiny import TINY_MODEL


def _kcenter_reference(points: torch.Tensor, count: int, start: int) -> list[int]:
    """k-center greedy written out with plain distances: the next point maximises its distance to the chosen set."""
    chosen = [start]
    while len(chosen) < count:
        distance = torch.cdist(points, points[chosen]).amin(dim=1)
        chosen.append(int(distance.argmax()))
    return chosen


def test_kcenter_greedy_is_the_farthest_point_rule_and_covers_every_cluster() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in centres])
    chosen = kcenter_greedy(points, 4, torch.Generator().manual_seed(1))
    start = int(torch.randint(len(points), (1,), generator=torch.Generator().manual_seed(1)))
    assert chosen.tolist() == _kcenter_reference(points, 4, start)
    assert sorted(int(i) // 50 for i in chosen) == [0, 1, 2, 3]  # one patch from each cluster first
    wide = torch.randn(300, 16, generator=generator)
    picked = kcenter_greedy(wide, 20, torch.Generator().manual_seed(2))
    first = int(torch.randint(300, (1,), generator=torch.Generator().manual_seed(2)))
    assert picked.tolist() == _kcenter_reference(wide, 20, first)
    # wider than PROJECTION_DIM: distances in a random projection still cover well-separated clusters
    far = torch.cat([10 * torch.eye(200)[i] + 0.1 * torch.randn(30, 200, generator=generator) for i in range(6)])
    assert sorted(int(i) // 30 for i in kcenter_greedy(far, 6, torch.Generator().manual_seed(3))) == list(range(6))
    # more asked than there are: every row once
    assert sorted(kcenter_greedy(wide[:7], 50).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="positive count"):
        kcenter_greedy(wide, 0)


def test_nearest_bank_distance_is_the_brute_force_minimum_in_blocks_and_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    import onenip.models.memory as memory

    generator = torch.Generator().manual_seed(3)
    embedding = torch.randn(3, 6, 5, 4, generator=generator) * 3 + 5  # uncentred, as backbone features are
    bank = torch.randn(40, 6, generator=generator) * 3 + 5
    bank[7] = embedding[1, :, 2, 3]  # a query patch that is in the bank
    expected = torch.cdist(embedding.flatten(2).transpose(1, 2), bank[None].expand(3, -1, -1)).amin(-1).view(3, 1, 5, 4)
    torch.testing.assert_close(nearest_bank_distance(embedding, bank), expected, atol=1e-3, rtol=1e-4)
    assert float(nearest_bank_distance(embedding, bank)[1, 0, 2, 3]) < 1e-2
    monkeypatch.setattr(memory, "PAIRS_PER_BLOCK", 40 * 7)  # 7 query patches a block: blocks that do not divide 60
    torch.testing.assert_close(nearest_bank_distance(embedding, bank), expected, atol=1e-3, rtol=1e-4)
    traced = torch.jit.trace(lambda e: nearest_bank_distance(e, bank), embedding[:1])
    torch.testing.assert_close(traced(embedding), expected, atol=1e-3, rtol=1e-4)  # one product, any batch


def test_locally_aware_embedding_pools_each_layer_on_its_own_grid_then_upsamples() -> None:
    fine, coarse = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 4, 4)
    out = locally_aware_embedding([fine, coarse], (8, 8))
    assert out.shape == (1, 5, 8, 8)
    torch.testing.assert_close(out[:, :2], torch.nn.functional.avg_pool2d(fine, 3, 1, 1))
    pooled = torch.nn.functional.avg_pool2d(coarse, 3, 1, 1)
    torch.testing.assert_close(out[:, 2:], torch.nn.functional.interpolate(pooled, size=(8, 8), mode="bilinear", align_corners=False))


def test_detector_memory_map_where_fitted_and_old_models_load_without_it(tmp_path) -> None:
    torch.manual_seed(0)
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["plate"], pretrained=False).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert detector(images, 0).components[4] is None  # not fitted: no fifth map
        features = detector.extract(images)
        embedding = detector.memory_embedding(features)
        assert embedding.shape == (3, detector.feature_extractor.num_fine_features, 8, 8)
        # the bank holds the first image's patches: that image scores zero, the others do not
        bank = embedding[0].flatten(1).t()[: TINY_MODEL["memory_patches"]]  # its first 32 of 64 patches
        detector.set_memory(0, bank)
        detector.memory_scale[0] = 2.0
        detector.scoring["plate"] = ScoringRule((0.0, 0.0, 0.0, 0.0, 1.0), 0.0, 1)
        out = detector(images, 0)
    raw = nearest_bank_distance(embedding, bank)
    expected = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False) / 2.0
    # Where a patch is in the bank its squared distance is a difference of near-equal terms: rounding
    # leaves up to ~1e-4 of it, whose square root (~1e-2) depends on the CPU's summation order. The
    # first image is therefore checked loosely, the others (far from every bank patch) tightly.
    for got in (out.components[4], out.anomaly_map):
        torch.testing.assert_close(got[1:], expected[1:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[:1], expected[:1], atol=2e-2, rtol=1e-4)
    assert float(raw[0].flatten()[:32].max()) < 0.05 and float(out.components[4][0, :, :24].max()) < 0.05 and float(raw[1:].mean()) > 1.0
    loaded = OneNIPDetector.load(detector.save(tmp_path / "model"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, 0).anomaly_map, out.anomaly_map)
    # a model saved before the memory map: no memory_* tensors, four weights per rule
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("memory_")}
    save_file(state, str(folder / "model.safetensors"))
    config = json.loads((folder / "onenip.json").read_text())
    config["scoring"]["plate"]["weights"] = [1.0, 0.0, 0.0, 0.0]
    del config["model"]["memory_patches"]
    (folder / "onenip.json").write_text(json.dumps(config))
    old = OneNIPDetector.load(folder)
    assert old.scoring["plate"].weights == (1.0, 0.0, 0.0, 0.0, 0.0) and not bool(old.memory_fitted[0])
    with torch.no_grad():
        assert old(images, 0).components[4] is None


def test_fit_memory_banks_samples_content_patches_only_and_is_seeded() -> None:
    from onenip.data.geometry import InputGeometry
    from onenip.models.features import Features
    from onenip.training import fit_memory_banks

    torch.manual_seed(0)
    geometry = InputGeometry(64, 48, letterbox=True)
    detector = OneNIPDetector(ModelParams.model_validate(TINY_MODEL), ["tile"], {"tile": geometry}, pretrained=False).eval()
    images = torch.rand(12, 3, 64, 48)
    valid = torch.zeros(12, 1, 64, 48, dtype=torch.bool)
    valid[:, :, :, 8:40] = True  # the outer 8 px each side are padding: one stride-8 column each side
    with torch.no_grad():
        features = detector.extract(images)
    channels = detector.feature_extractor.num_fine_features

    class Item:  # the two fields fit_memory_banks reads of CategoryData, and its index
        index, fit_features, fit_valid = 0, Features(features.coarse.half(), features.fine.half()), valid  # type: ignore[union-attr]

    fit_memory_banks(detector, [Item()], seed=0)  # type: ignore[list-item]
    bank = detector.memory_bank_0.clone()
    assert bool(detector.memory_fitted[0]) and bank.shape == (32, channels)
    # 12 images x 8 x 4 content patches = 384 < 32 x 16 candidates: every content patch is a candidate
    half = Item.fit_features
    rounded = detector.memory_embedding(Features(half.coarse.float(), half.fine.float()))  # type: ignore[union-attr]
    content = rounded[:, :, :, 1:-1].permute(0, 2, 3, 1).reshape(-1, channels)
    padding = torch.cat([rounded[:, :, :, :1], rounded[:, :, :, -1:]], dim=-1).permute(0, 2, 3, 1).reshape(-1, channels)
    def exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # distances without the expansion's rounding
        return (a[:, None] - b[None]).norm(dim=-1)

    assert exact(bank, content).amin(dim=1).max() < 1e-5  # every bank patch is a content patch
    assert exact(bank, padding).amin(dim=1).min() > 1e-3  # none is a padding patch
    assert len({tuple(row.tolist()) for row in bank}) == 32  # k-center greedy never picks a patch twice
    fit_memory_banks(detector, [Item()], seed=0)  # type: ignore[list-item]
    assert torch.equal(detector.memory_bank_0, bank)
    fit_memory_banks(detector, [Item()], seed=1)  # type: ignore[list-item]
    assert not torch.equal(detector.memory_bank_0, bank)


def test_more_memory_candidates_cover_the_normal_patches_more_tightly() -> None:
    from onenip.models.features import Features
    from onenip.training import fit_memory_banks

    torch.manual_seed(0)
    radii = {}
    for candidates in (1, 12):  # 32 x 1 sampled patches are the bank itself; 32 x 12 = all 384 patches
        params = ModelParams.model_validate(TINY_MODEL | {"memory_candidates": candidates})
        detector = OneNIPDetector(params, ["tile"], pretrained=False).eval()
        torch.manual_seed(0)
        with torch.no_grad():
            features = detector.extract(torch.rand(6, 3, 64, 64))

        class Item:
            index, fit_features, fit_valid = 0, Features(features.coarse, features.fine), None

        fit_memory_banks(detector, [Item()], seed=0)  # type: ignore[list-item]
        patches = detector.memory_embedding(features).permute(0, 2, 3, 1).reshape(-1, detector.memory_bank_0.shape[1])
        assert len(patches) == 384
        # the coverage radius: the farthest any normal patch lies from its nearest bank patch
        radii[candidates] = float((patches[:, None] - detector.memory_bank_0[None]).norm(dim=-1).amin(dim=1).max())
    assert radii[12] < 0.9 * radii[1], radii


def test_memory_jitter_lets_the_bank_match_normals_under_another_lighting() -> None:
    from onenip.models.features import Features
    from onenip.training import fit_memory_banks

    torch.manual_seed(0)
    images = torch.rand(8, 3, 64, 64) * 0.5 + 0.25
    far = {}
    for jitter in (False, True):
        params = ModelParams.model_validate(TINY_MODEL | {"memory_jitter": jitter})
        detector = OneNIPDetector(params, ["tile"], pretrained=False).eval()
        with torch.no_grad():
            normal, dark = detector.extract(images), detector.extract(images[:4] * 0.4)  # the same normals, darker

        class Item:
            index, fit_features, fit_valid = 0, Features(normal.coarse, normal.fine), None
            jittered, jittered_valid = Features(dark.coarse, dark.fine), None  # what add_jittered_normals keeps

        fit_memory_banks(detector, [Item()], seed=0)  # type: ignore[list-item]
        queries = detector.extract(images[4:] * 0.4)  # other normals under the darker lighting
        with torch.no_grad():
            far[jitter] = float(nearest_bank_distance(detector.memory_embedding(queries), detector.memory_bank_0).mean())
    assert far[True] < 0.8 * far[False], far
