"""The few-shot generalist (InCTRL): trained once on auxiliary categories with balanced batches of
normal queries and synthetic (and, when allowed, real) anomalies, each with k prompts of its own category."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from onenip.config import Params
from onenip.data.geometry import square_geometry
from onenip.data.manifest import make_manifest
from onenip.device import resolve_device
from onenip.features import FeatureCache
from onenip.models.features import Features
from onenip.models.generalist import GeneralistDetector
from onenip.models.inctrl import inctrl_loss


@dataclass
class GeneralistResult:
    detector: GeneralistDetector
    model_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)


def generalist_params(params: Params) -> Params:
    # one fixed square input for every category: the holistic head reads a fixed-size residual map
    model = params.model.model_copy(update={"keep_aspect": False, "input_sizes": {}})
    return params.model_copy(update={"model": model})


def draw_prompts(count: int, k: int, exclude: Sequence[int], generator: torch.Generator) -> list[list[int]]:
    """k prompt indices per query from ``count`` fit images, never the query's own/source image."""
    rows = []
    for skip in exclude:
        pool = torch.randperm(count, generator=generator).tolist()
        rows.append([i for i in pool if i != skip][:k])
    return rows


def stack_prompts(fit: Features, rows: list[list[int]]) -> Features:
    coarse = torch.stack([fit.coarse[r] for r in rows]).float()
    fine = torch.stack([fit.fine[r] for r in rows]).float()  # type: ignore[index]
    return Features(coarse, fine)


def train_generalist(
    root: str | Path, categories: Sequence[str], params: Params, out_dir: str | Path, *, progress: bool = True,
) -> GeneralistResult:
    """The InCTRL head on the auxiliary ``categories`` of ``root``; saved to ``out_dir/model``."""
    from onenip.synthesis import AnomalySynthesizer
    from onenip.training.data import prepare_category_data
    from onenip.training.pool import SyntheticPool, build_synthesizer
    from onenip.scoring_selection import check_validation_methods

    check_validation_methods(params)  # the gate and onboarding's choice are scored on families training never saw
    started = time.perf_counter()
    params = generalist_params(params)
    cfg = params.generalist
    device = resolve_device(params.train.device)
    torch.manual_seed(params.train.seed)
    generator = torch.Generator().manual_seed(params.train.seed)
    manifest = make_manifest(root, list(categories), progress=False)
    detector = GeneralistDetector(params.model.backbone, smoothing_sigma=cfg.smoothing_sigma, holistic_input=cfg.holistic_input).to(device)
    extractor = detector.feature_extractor.eval()
    geometry = square_geometry(params.model.backbone.input_size)
    cache = FeatureCache(params.train.cache_dir, extractor, params.model.backbone)
    data = [prepare_category_data(manifest, params, cache, c, i, geometry, progress) for i, c in enumerate(categories)]
    real: dict[str, Features] = {}
    if cfg.real_anomalies:
        for c in categories:
            rows = manifest[(manifest["category"] == c) & (manifest["split"] == "test") & (manifest["label_index"] == 1)]
            if len(rows):
                real[c] = cache.get(rows["image_path"].tolist(), rows["sha256"].tolist(), geometry, progress=False, dtype=torch.float16)
    synthesizer = build_synthesizer(params.synthesis)
    optimizer = torch.optim.AdamW(detector.head.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    half = cfg.batch_size // 2
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        pools = {}
        for item in data:
            pool = SyntheticPool.build(item, synthesizer, extractor, params, seed=params.train.seed, generation=epoch, progress=progress)
            anomalies, sources = pool.features, [i // pool.pool_size for i in range(len(pool.features))]
            if item.name in real:
                anomalies = Features.cat([anomalies, real[item.name]])
                sources += [-1] * len(real[item.name])
            pools[item.name] = (anomalies, sources)
        steps = max(1, sum(len(item.fit_features) for item in data) // half)
        detector.head.train()
        losses = []
        bar = tqdm(range(steps), desc=f"Generalist epoch {epoch}/{cfg.epochs}", disable=not progress)
        for _ in bar:
            item = data[int(torch.randint(len(data), (1,), generator=generator))]
            fit, (anomalies, sources) = item.fit_features, pools[item.name]
            k = int(cfg.train_shots[int(torch.randint(len(cfg.train_shots), (1,), generator=generator))])
            k = max(1, min(k, len(fit) - 1))
            normal_idx = torch.randint(len(fit), (half,), generator=generator).tolist()
            anomaly_idx = torch.randint(len(anomalies), (half,), generator=generator).tolist()
            queries = Features(
                torch.cat([fit.coarse[normal_idx], anomalies.coarse[anomaly_idx]]).float(),
                torch.cat([fit.fine[normal_idx], anomalies.fine[anomaly_idx]]).float(),  # type: ignore[index]
            )
            prompts = stack_prompts(fit, draw_prompts(len(fit), k, normal_idx + [sources[i] for i in anomaly_idx], generator))
            targets = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
            out = detector.score_features(queries.to(device), prompts.to(device))
            loss = inctrl_loss(out, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record = {"epoch": float(epoch), "loss": float(np.mean(losses))}
        history.append(record)
    detector.head.eval()
    validation = validate_generalist(detector, data, params, AnomalySynthesizer(methods=params.validation.methods), device)
    out = Path(out_dir) / "model"
    detector.save(out, metadata={"auxiliary_categories": list(categories), "real_anomalies": bool(real), "history": history,
                                 "validation": validation,
                                 "train_seconds": time.perf_counter() - started})  # fmt: skip
    return GeneralistResult(detector, out, history, time.perf_counter() - started, validation)


@torch.no_grad()
def validate_generalist(detector: GeneralistDetector, data: Sequence[Any], params: Params, synthesizer: Any, device: torch.device) -> dict[str, float]:
    """Image AUROC per auxiliary category on training data only: its held-out normals against anomalies
    of the validation families (never used in training) made on them, k = ``generalist.shots`` prompts."""
    from onenip.metrics import image_auroc
    from onenip.features import extract_features
    from onenip.training.data import select_prompts

    detector.eval()
    result: dict[str, float] = {}
    for item in data:
        if len(item.holdout_features) < 2:
            continue
        prompts = item.fit_features.select(select_prompts(item.fit_features.coarse.float(), params.generalist.shots)).float().to(device)
        generator = torch.Generator().manual_seed(params.train.seed + item.index)
        bad = torch.stack([synthesizer(img.float() / 255, generator=generator).image for img in item.holdout_images])
        anomalies = extract_features(detector.feature_extractor, bad.to(device), params.model.backbone, params.train.feature_batch_size)
        normal = detector.score_features(item.holdout_features.float().to(device), prompts).score
        anomalous = detector.score_features(anomalies.to(device), prompts).score
        scores = torch.cat([normal, anomalous]).cpu().numpy()
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        result[f"val_image_AUROC_{item.name}"] = float(image_auroc(scores, labels))
    if result:
        result["val_image_AUROC"] = float(np.mean(list(result.values())))
    return result


# -- onboarding ---------------------------------------------------------------------------------------
