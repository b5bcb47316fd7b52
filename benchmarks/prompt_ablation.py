"""Does the trained network use its prompt? One category of a saved model re-scored with the stored prompt
replaced, a record (nothing is chosen from it).

Prompts: ``stored`` (the model's own), ``other fit image`` (the fit image least like the stored prompt),
``shuffled positions`` (the stored prompt's grid cells permuted, seeded; the fine grid's 2 x 2 blocks with
them) and ``constant`` (every cell the stored prompt's mean: no spatial information at all). For each,
the error statistics and scales are refitted as training fits them (``rule_transfer.refit_variant``), and
the test split is scored by the reconstruction error alone and by the paper blend (the chosen sigma and
pooling). ``--controls`` adds what the reconstruction error owes to the network at all: the network's
reconstruction replaced by the fit images' per-position mean feature map (no network), under the model's
error normalisation and under the plain error (``none``). Prints one line per row and writes JSON:

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/prompt_ablation.py R/.../model --seed S \\
        --category magnetic_tile --cache-dir C --out prompt-ablation-magnetic_tile.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onenip.models.features import Features  # noqa: E402

RULES = (("recon error", (1.0, 0.0, 0.0, 0.0, 0.0)), ("paper blend", (0.5, 0.5, 0.0, 0.0, 0.0)))
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def _shuffled(prompt: Features, generator: torch.Generator) -> Features:
    """The prompt's coarse cells permuted; the fine grid (twice as fine) moves in 2 x 2 blocks with them."""
    n, channels, h, w = prompt.coarse.shape
    order = torch.randperm(h * w, generator=generator)
    coarse = prompt.coarse.flatten(2)[:, :, order].view(n, channels, h, w)
    fine = prompt.fine
    if fine is not None:
        c = fine.shape[1]
        blocks = fine.view(n, c, h, 2, w, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c, 4, h * w)[..., order]
        fine = blocks.view(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(fine.shape)
    return Features(coarse, fine)


def _constant(prompt: Features) -> Features:
    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=(-2, -1), keepdim=True).expand_as(t).contiguous()

    return Features(mean(prompt.coarse), None if prompt.fine is None else mean(prompt.fine))


def prompt_variants(stored: Features, fit: Features) -> dict[str, Features]:
    stored = stored.float()
    far = int((fit.coarse.float() - stored.coarse).flatten(1).pow(2).sum(1).argmax())
    return {
        "stored": stored,
        "other fit image": fit.select([far]).float(),
        "shuffled positions": _shuffled(stored, torch.Generator().manual_seed(0)),
        "constant": _constant(stored),
    }


@contextmanager
def _reconstruction(model: torch.nn.Module, mean: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``model.reconstruct`` returns ``mean`` (1, C, h, w) for every query (None: the network)."""
    if mean is not None:
        model.reconstruct = lambda query, prompt, encoded=None: mean.to(query.device, query.dtype).expand(query.shape[0], -1, -1, -1)
    try:
        yield
    finally:
        model.__dict__.pop("reconstruct", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder (onenip.json + model.safetensors)")
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, required=True, help="train.seed the model was trained with (its held-out split)")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "industrial")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--controls", action="store_true", help="also the per-position mean reconstruction and the plain error")
    args = parser.parse_args()

    from benchmarks.peers import drop_leaked_test_images
    from benchmarks.rule_transfer import refit_variant
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector
    from onenip.models.scoring import ScoringRule
    from onenip.training import calibrate_error_statistics, calibrate_scales

    detector = OneNIPDetector.load(args.model)
    if args.category not in detector.categories:
        parser.error(f"--category: {args.category!r} not in the model ({detector.categories})")
    train = {"seed": args.seed} | ({"cache_dir": args.cache_dir} if args.cache_dir else {})
    params = load_params(args.params, overrides={"train": train})
    manifest, _ = drop_leaked_test_images(make_manifest(args.root, [args.category], progress=False))
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    k, chosen = detector.category_index(args.category), detector.scoring[args.category]
    detector.metadata["_variant"] = {"prompt": "replaced"}  # refit the statistics, keep the stored prompt
    item = refit_variant(detector, manifest, params, cache, args.category)
    stored, own = detector.prompt(k).float(), detector.cfg.error_normalization
    # (name, printed label, prompt, reconstruction replaced by this mean map or None, error normalisation, rules)
    rows = [(name, f"{name} prompt", prompt, None, own, RULES) for name, prompt in prompt_variants(stored, item.fit_features).items()]
    if args.controls:
        # in the space the network reconstructs (``model.feature_standardization``; raw features by default)
        mean = detector.network_input(k, item.fit_features.coarse.float().mean(dim=0, keepdim=True))
        rows += [(name, name, stored, mean_map, normalisation, RULES[:1]) for name, mean_map, normalisation in (
            (f"per-position mean ({own})", mean, own), ("network (plain error)", None, "none"), ("per-position mean (plain error)", mean, "none"))]
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, label, prompt, mean_map, normalisation, rules in rows:
        detector.cfg = detector.cfg.model_copy(update={"error_normalization": normalisation})
        detector.set_prompt(k, prompt)
        with _reconstruction(detector.model, mean_map), torch.no_grad():
            calibrate_error_statistics(detector, [item], detector.device)
            calibrate_scales(detector, [item], detector.device)
            results[name] = {}
            for rule, weights in rules:
                detector.scoring[args.category] = ScoringRule(weights, chosen.smoothing_sigma, chosen.score_pool_size)
                metrics = evaluate(detector, manifest, cache, None, [args.category], num_heatmaps=0, progress=False)[args.category].metrics
                results[name][rule] = {m: metrics.get(m) for m in METRICS}
        cells = "; ".join(f"{rule} " + " / ".join(f"{v:.3f}" for v in row.values() if v is not None) for rule, row in results[name].items())
        print(f"{args.category}, {label}: {cells}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "category": args.category, "seed": args.seed, "metrics": METRICS,
                                    "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
