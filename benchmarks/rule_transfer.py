"""Do the validation families rank scoring rules the way real defects do? A record per saved model.

For each category of a saved OneNIP model this rebuilds the validation set exactly as training built
it (held-out training normals + seeded anomalies of the validation families; no test image), computes
the five component maps on it and on the test split, and scores every candidate rule (the selection's
weight simplex x smoothing sigmas x pooling windows) on both with the selection's metrics (image
AUROC, pixel AUROC, pixel AP, AUPRO at a quarter of the input size, as ``onenip.scoring_selection`` scores
them). Per category it reports Kendall's tau between the rules' validation and test scores (overall,
image AUROC alone, localisation alone), and saves the quarter-size maps so that selection procedures
can be compared leave-one-category-out without recomputing them (``benchmarks/selection_loco.py``).
Test columns are a record: nothing here chooses anything.

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python benchmarks/rule_transfer.py R/.../model \\
        --root ../shared/datasets/industrial --cache-dir C --out R/rule-transfer
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "industrial"
STATISTICS_OPTIONS = ("statistics_prior", "statistics_jitter", "statistics_colour_jitter")
"""Model options whose change refits the Gaussians as well as the error statistics and scales."""

from onenip.config import Params, ValidationParams  # noqa: E402
from onenip.data.geometry import InputGeometry  # noqa: E402
from onenip.features import FeatureCache  # noqa: E402
from onenip.models.detector import OneNIPDetector  # noqa: E402
from onenip.models.blur import masked_gaussian_smooth  # noqa: E402
from onenip.models.scoring import COMPONENTS, pooled_map  # noqa: E402
from onenip.scoring_selection import rank_auroc  # noqa: E402
from onenip.training.data import CategoryData  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder (onenip.json + model.safetensors)")
    parser.add_argument("--root", type=Path, nargs="+", default=[DEFAULT_ROOT], help="dataset roots in MVTec layout")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cache-dir", default=None, help="override train.cache_dir")
    parser.add_argument("--seed", type=int, default=None, help="train.seed the model was trained with (default: params.yaml's)")
    parser.add_argument("--normalization", default=None, choices=("none", "position", "whitened"),
                        help="score the model with this model.error_normalization instead of its own (statistics and scales recomputed)")
    parser.add_argument("--statistics-prior", type=float, default=None,
                        help="score with this model.statistics_prior instead of the model's own (Gaussians, error statistics and scales refitted)")
    parser.add_argument("--statistics-jitter", type=float, default=None,
                        help="score with this model.statistics_jitter (Gaussians, error statistics and scales refitted)")
    parser.add_argument("--statistics-colour-jitter", type=float, default=None,
                        help="score with this model.statistics_colour_jitter (Gaussians, error statistics and scales refitted)")
    parser.add_argument("--whitening-ridge", type=float, default=None, help="score with this model.whitening_ridge (error statistics and scales recomputed)")
    parser.add_argument("--error-std-floor", type=float, default=None, help="score with this model.error_std_floor (error statistics and scales recomputed)")
    parser.add_argument("--prompts", type=int, default=None, help="score with this many stored prompts per category (chosen anew from the fit images)")
    parser.add_argument("--prompt-reduction", default="min", choices=("nearest", "min"), help="with --prompts: model.prompt_reduction")
    parser.add_argument("--categories", nargs="+", default=None, help="only these of the model's categories (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for rules.json and the maps (maps-<category>.npz)")
    args = parser.parse_args()

    from benchmarks.peers import drop_leaked_test_images
    from onenip.config import load_params
    from onenip.data.manifest import make_manifest
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector

    detector = OneNIPDetector.load(args.model).eval()
    overrides = {"train": {"cache_dir": args.cache_dir}} if args.cache_dir else None
    params = load_params(args.params, overrides=overrides)
    if args.seed is not None:
        params = params.model_copy(update={"train": params.train.model_copy(update={"seed": args.seed})})
    changes = {}
    if args.normalization and args.normalization != detector.cfg.error_normalization:
        changes["error_normalization"] = args.normalization
    for name in (*STATISTICS_OPTIONS, "whitening_ridge", "error_std_floor"):
        value = getattr(args, name)
        if value is not None and value != getattr(detector.cfg, name):
            changes[name] = value
    if args.prompts:
        changes |= {"prompts": args.prompts, "prompt_reduction": args.prompt_reduction}
    if changes:
        detector = variant(detector, changes)
    import pandas as pd

    manifest = pd.concat([make_manifest(root, [c for c in detector.categories if (root / c).is_dir()], progress=False)
                          for root in args.root], ignore_index=True)  # fmt: skip
    manifest, dropped = drop_leaked_test_images(manifest)
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, params.model.backbone)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"model": str(args.model), "dropped_test_images": dropped, "categories": {}}
    for category in args.categories or detector.categories:
        started = time.perf_counter()
        maps = collect_category_maps(detector, manifest, params, cache, category)
        maps.save(args.out / f"maps-{category}.npz")
        table = score_rule_table(maps, params.validation)
        summary = kendall_summary(table, has_masks=maps.test_masks is not None)
        report["categories"][category] = {"summary": summary, "rules": table, "seconds": time.perf_counter() - started}  # type: ignore[index]
        print(f"{category}: {json.dumps(summary)} ({time.perf_counter() - started:.0f} s)", flush=True)
    (args.out / "rules.json").write_text(json.dumps(report, indent=1))
    return 0



TEST_DOWNSCALE = 2
"""Test maps are scored at half the input size (validation at a quarter, as the selection scores it):
thin real defects (kolektor's cracks) would vanish from a quarter-size mask."""
HISTOGRAM_BINS = 2048


@dataclass
class RuleMaps:
    """One category's component maps (downscaled) on its validation set and its test split."""

    category: str
    val_components: list[np.ndarray | None]
    val_labels: np.ndarray
    val_masks: np.ndarray
    val_valid: np.ndarray | None
    val_methods: np.ndarray
    test_components: list[np.ndarray | None]
    test_labels: np.ndarray
    test_masks: np.ndarray | None
    test_boxes: np.ndarray
    """(N, 4) content box (top, left, height, width) of each test image at the test maps' scale."""
    differences: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """Paired bootstrap differences between rules on this validation set (``selection_loco``), cached
    with the maps: a subset of them (``dataclasses.replace``) starts with an empty cache."""

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"category": np.array(self.category), "val_labels": self.val_labels, "val_masks": self.val_masks,
                                         "val_methods": self.val_methods, "test_labels": self.test_labels, "test_boxes": self.test_boxes}  # fmt: skip
        for name, value in (("val_valid", self.val_valid), ("test_masks", self.test_masks)):
            if value is not None:
                arrays[name] = value
        for prefix, components in (("val", self.val_components), ("test", self.test_components)):
            for name, maps in zip(COMPONENTS, components, strict=True):
                if maps is not None:
                    arrays[f"{prefix}_{name}"] = maps.astype(np.float32)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> RuleMaps:
        data = np.load(path)

        def get(name: str) -> np.ndarray | None:
            return data[name] if name in data.files else None

        def components(prefix: str) -> list[np.ndarray | None]:
            return [None if (m := get(f"{prefix}_{n}")) is None else m.astype(np.float32) for n in COMPONENTS]

        return cls(str(data["category"]), components("val"), data["val_labels"], data["val_masks"], get("val_valid"), data["val_methods"],
                   components("test"), data["test_labels"], get("test_masks"), data["test_boxes"])  # fmt: skip


def _pool(maps: torch.Tensor, factor: int) -> torch.Tensor:
    return F.avg_pool2d(maps, factor) if factor > 1 else maps


def _mask_at_input(path: str | float, geometry: InputGeometry, height: int, width: int) -> torch.Tensor:
    """A test image's mask (zeros for a normal image) placed as its image is in the model input: (H, W) float."""
    from onenip.data.transforms import load_mask

    out = torch.zeros(geometry.size)
    if not isinstance(path, str):
        return out
    mask = load_mask(path)[None]
    top, left, h, w = geometry.content_box(height, width)
    out[top : top + h, left : left + w] = F.interpolate(mask, size=(h, w), mode="area")[0, 0]
    return out


@torch.no_grad()
def test_maps(detector: OneNIPDetector, manifest: pd.DataFrame, cache: FeatureCache, category: str) -> tuple:
    """(components, labels, masks or None, content boxes) of a category's test split at ``TEST_DOWNSCALE``."""
    from onenip.evaluation import content_masks

    test = manifest[(manifest["category"] == category) & (manifest["split"] == "test")].reset_index(drop=True)
    geometry = detector.geometry(category)
    k = detector.category_index(category)
    features = cache.get(test["image_path"].tolist(), test["sha256"].tolist(), geometry, progress=False)
    parts: list[list[torch.Tensor]] = [[] for _ in COMPONENTS]
    for start in range(0, len(features), 16):
        chunk = features.select(slice(start, start + 16)).float().to(detector.device)
        for index, maps in enumerate(detector.components(chunk, k)):
            if maps is not None:
                parts[index].append(_pool(maps.float(), TEST_DOWNSCALE).cpu())
    components = [torch.cat(p)[:, 0].numpy() if p else None for p in parts]
    has_masks = bool(test.loc[test["label_index"] == 1, "mask_path"].notna().any())
    masks = None
    if has_masks:
        full = torch.stack([_mask_at_input(p, geometry, int(h), int(w)) for p, h, w in zip(test["mask_path"], test["height"], test["width"], strict=True)])
        masks = (_pool(full[:, None], TEST_DOWNSCALE)[:, 0] >= 0.5).numpy()
    del content_masks
    boxes = np.array([[v // TEST_DOWNSCALE for v in geometry.content_box(int(h), int(w))] for h, w in zip(test["height"], test["width"], strict=True)])
    return components, test["label_index"].to_numpy().astype(int), masks, boxes


def variant(detector: OneNIPDetector, changes: dict[str, object]) -> OneNIPDetector:
    """The same trained network with other ``model`` settings (error normalisation, statistics prior, prompts): a new
    detector with the saved weights, its statistics, scales and prompts recomputed per category by
    ``collect_category_maps``."""
    cfg = detector.cfg.model_copy(update=changes)
    other = OneNIPDetector(cfg, detector.categories, detector.geometries, pretrained=False)
    new_prompts = "prompts" in changes
    state = {k: v for k, v in detector.state_dict().items() if not (new_prompts and k.startswith("prompt"))}
    other.load_state_dict(state, strict=not new_prompts)
    other.scoring, other.metadata = dict(detector.scoring), {**detector.metadata, "_variant": changes}
    return other.eval()


@torch.no_grad()
def refit_variant(detector: OneNIPDetector, manifest: pd.DataFrame, params: Params, cache: FeatureCache, category: str) -> CategoryData:
    """The category's training data as training prepared it; for a ``variant`` detector, its prompts, statistics and
    scales first recomputed from that data (a saved model's own are the kept epoch's, left as they are)."""
    from onenip.training import (add_jittered_normals, calibrate_error_statistics, calibrate_scales, fit_gaussians, prepare_category_data,
                                  select_prompts)

    k = detector.category_index(category)
    train_manifest = manifest[manifest["category"].isin(detector.categories)]
    item = prepare_category_data(train_manifest, params, cache, category, k, detector.geometry(category), False)
    if detector.metadata.get("_variant"):
        if "prompts" in detector.metadata["_variant"]:
            chosen = select_prompts(item.fit_features.coarse.float(), detector.cfg.prompts)
            detector.set_prompt(k, item.fit_features.select(chosen).float())
        # the error statistics count the jittered copies as training does, whatever the variant changes
        add_jittered_normals(detector, [item], detector.cfg.statistics_jitter, params.train.seed, detector.cfg.statistics_colour_jitter)
        if set(STATISTICS_OPTIONS) & set(detector.metadata["_variant"]):
            fit_gaussians(detector, [item])
        calibrate_error_statistics(detector, [item], detector.device)
        calibrate_scales(detector, [item], detector.device)
    return item


@torch.no_grad()
def collect_category_maps(
    detector: OneNIPDetector, manifest: pd.DataFrame, params: Params, cache: FeatureCache, category: str,
) -> RuleMaps:
    """The category's validation set rebuilt as training built it, and its test split, as component maps."""
    from onenip.scoring_selection import SELECTION_DOWNSCALE, build_category_validation, validation_components

    k = detector.category_index(category)
    item = refit_variant(detector, manifest, params, cache, category)
    validation = build_category_validation(category, item.holdout_images, item.holdout_valid, detector.feature_extractor, params,
                                           seed=params.train.seed + k)  # fmt: skip
    val = [None if c is None else c[:, 0].numpy() for c in validation_components(detector, validation)]
    factor = SELECTION_DOWNSCALE
    val_masks = (_pool(validation.masks.float(), factor) >= 0.5)[:, 0].numpy()
    val_valid = None if validation.valid is None else (_pool(validation.valid.float(), factor) >= 0.5)[:, 0].numpy()
    test = test_maps(detector, manifest, cache, category)
    return RuleMaps(category, val, validation.labels.numpy(), val_masks, val_valid, np.array(validation.methods), *test)


def rule_maps(components: list[np.ndarray | None], weights: tuple[float, ...], sigma: float, valid: np.ndarray | None) -> np.ndarray:
    """The blend of ``components`` under ``weights``, smoothed as ``score_maps`` smooths (``sigma`` in these maps' pixels)."""
    total = None
    for maps, weight in zip(components, weights, strict=True):
        if weight:
            total = maps * weight if total is None else total + maps * weight
    tensor = torch.from_numpy(np.ascontiguousarray(total))[:, None]
    mask = None if valid is None else torch.from_numpy(valid)[:, None]
    return masked_gaussian_smooth(tensor, sigma, mask)[:, 0].numpy()


def image_scores(maps: np.ndarray, pool: int) -> np.ndarray:
    return pooled_map(torch.from_numpy(maps)[:, None], max(1, pool)).flatten(1).amax(dim=1).numpy()


def pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC, AP and AUPRO from one shared score histogram (``HISTOGRAM_BINS`` adaptive bins)."""
    from onenip.metrics.histogram import histogram_counts

    histogram = histogram_counts(maps, masks, HISTOGRAM_BINS, "quantile")
    return {"pixel_AUROC": histogram.auroc().value, "pixel_AP": histogram.average_precision().value, "pixel_AUPRO": histogram.aupro().value}


def _crop(maps: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    return [m[t : t + h, left : left + w] for m, (t, left, h, w) in zip(maps, boxes, strict=True)]


def score_rules(maps: RuleMaps, rules: list[tuple[tuple[float, ...], float]], pools: list[int], split: str) -> list[dict[str, object]]:
    """Every (weights, sigma) x pool on ``split`` ("val" or "test"): the selection's metrics."""
    from onenip.scoring_selection import SELECTION_DOWNSCALE

    factor = SELECTION_DOWNSCALE if split == "val" else TEST_DOWNSCALE
    components = maps.val_components if split == "val" else maps.test_components
    labels = maps.val_labels if split == "val" else maps.test_labels
    masks = maps.val_masks if split == "val" else maps.test_masks
    valid = maps.val_valid if split == "val" else _box_valid(maps)
    rows = []
    for weights, sigma in rules:
        if any(w and c is None for w, c in zip(weights, components, strict=True)):
            continue
        blended = rule_maps(components, weights, sigma / factor, valid)
        pixel = {}
        if masks is not None and masks.any():
            if split == "val":
                pixel = pixel_metrics(list(blended), list(masks))
            else:
                pixel = pixel_metrics(_crop(blended, maps.test_boxes), _crop(masks, maps.test_boxes))
        for pool in pools:
            found = {"image_AUROC": rank_auroc(image_scores(blended, round(pool / factor)), labels), **pixel}
            rows.append({"weights": list(weights), "smoothing_sigma": sigma, "score_pool_size": pool, **found})
    return rows


def _box_valid(maps: RuleMaps) -> np.ndarray | None:
    """Content of each test image at the test maps' scale (None when no image is letterboxed)."""
    shape = maps.test_labels.shape[0], *next(c for c in maps.test_components if c is not None).shape[1:]
    if all(t == 0 and left == 0 and h == shape[1] and w == shape[2] for t, left, h, w in maps.test_boxes):
        return None
    valid = np.zeros(shape, dtype=bool)
    for v, (t, left, h, w) in zip(valid, maps.test_boxes, strict=True):
        v[t : t + h, left : left + w] = True
    return valid


def score_rule_table(maps: RuleMaps, cfg: ValidationParams) -> list[dict[str, object]]:
    """The selection's candidates scored on validation and on test, one row per (weights, sigma, pool)."""
    from onenip.scoring_selection import candidate_rules

    available = [c is not None for c in maps.val_components]
    rules = candidate_rules(cfg, *available[2:])
    pools = [int(p) for p in cfg.score_pool_sizes]
    val, test = score_rules(maps, rules, pools, "val"), score_rules(maps, rules, pools, "test")
    table = []
    for v, t in zip(val, test, strict=True):
        rule = {key: v[key] for key in ("weights", "smoothing_sigma", "score_pool_size")}
        table.append({**rule, "val": {m: v[m] for m in SCORED if m in v}, "test": {m: t[m] for m in SCORED if m in t}})
    return table


SCORED = ("image_AUROC", "pixel_AUROC", "pixel_AP", "pixel_AUPRO")
LOCALISATION = ("pixel_AUROC", "pixel_AUPRO")


def rule_score(metrics: dict[str, float], names: tuple[str, ...] = SCORED) -> float:
    present = [metrics[n] for n in names if n in metrics]
    return float(np.mean(present)) if present else float("nan")


def kendall_summary(table: list[dict[str, object]], has_masks: bool) -> dict[str, float]:
    """Kendall's tau (b) between the rules' validation and test values: the selection score (test: image
    AUROC alone without masks), image AUROC alone, localisation (mean of pixel AUROC and AUPRO) alone."""
    from scipy.stats import kendalltau

    def tau(val_names: tuple[str, ...], test_names: tuple[str, ...]) -> float:
        x = [rule_score(row["val"], val_names) for row in table]  # type: ignore[arg-type]
        y = [rule_score(row["test"], test_names) for row in table]  # type: ignore[arg-type]
        return float(kendalltau(x, y).statistic)

    summary = {"rules": len(table), "tau_score": tau(SCORED, SCORED if has_masks else ("image_AUROC",)),
               "tau_image": tau(("image_AUROC",), ("image_AUROC",))}  # fmt: skip
    if has_masks:
        summary["tau_localisation"] = tau(LOCALISATION, LOCALISATION)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
