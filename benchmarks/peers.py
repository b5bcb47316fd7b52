"""anomalib's PatchCore and PaDiM as peers of OneNIP, on OneNIP's backbone, images and metrics.

A peer comparison is only fair when everything but the method is shared, so both peers here use

* the same ImageNet weights as ``onenip``: ``onenip.models.backbone.load_pretrained_state_dict`` loaded
  into anomalib's ``TimmFeatureExtractor`` (built with ``pre_trained=False``, so nothing is downloaded);
* the stride-8 and stride-16 stages of ``tf_efficientnet_lite0`` (timm modules ``blocks.2`` and ``blocks.4``,
  40 + 112 channels), as the PatchCore/PaDiM papers take two mid-level stages of their backbones;
* the same input: ``onenip.data.transforms.load_image`` (squash to 256x256, bilinear, antialiased) and
  mean = std = 0.5, the normalisation these TF weights were trained with (``onenip.config.BackboneParams``),
  not the ImageNet mean/std of anomalib's default pre-processor;
* the same scoring: maps resized with ``onenip.metrics.resize_maps_to_masks`` to each ground-truth mask's
  resolution, then ``onenip.metrics.compute_metrics``.

anomalib's torch-level models (``PatchcoreModel``, ``PadimModel``) are driven directly, without Lightning:
a pass over the training images in train mode fills the memory bank, then ``subsample_embedding``
(PatchCore's k-center-greedy coreset) or ``fit`` (PaDiM's per-location Gaussians); eval mode returns
anomalib's ``InferenceBatch`` (``pred_score``, ``anomaly_map`` at the input size, Gaussian-blurred with
sigma 4 as anomalib does).

Test images that are byte-identical to a training image of the same category (kolektor has three) are
dropped before evaluation by ``drop_leaked_test_images``; the rows say which.

Threads: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` default to 2 and ``OMP_WAIT_POLICY`` to ``PASSIVE``, set
before torch is imported (only effective if this module is imported before torch, as the CLI does). Time
OneNIP under the same three settings, or the comparison is off. ``torch.set_num_threads`` is never
called: with this torch build it breaks PaDiM's batched ``torch.linalg.inv``.

Peak memory is ``ru_maxrss`` of the whole process, so run each (method, category) in a fresh process,
the CLI or ``run_peer_subprocess``, to get one number per fit::

    python benchmarks/peers.py --method patchcore --category bottle --json out.json

See Also:
    ``onenip.models.backbone`` (weights, normalisation), ``onenip.metrics``.
"""

from __future__ import annotations

import os

# Before torch is imported, or the setting is ignored; never torch.set_num_threads (see module docs).
DEFAULT_NUM_THREADS = 2
THREAD_ENV_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, str(DEFAULT_NUM_THREADS))
# With OpenMP's default spin-waiting, a 2-thread forward on 2 cores shared with another busy process
# slows down 20-50x (PatchCore, batch 1: 0.05 s -> 2.3 s per image), because each waiting thread spins
# on the core its partner needs; PASSIVE yields instead and stays near 0.06 s under the same load. On an
# idle machine PASSIVE costs about 2x at batch 1 (PatchCore 20 -> 10 img/s); export OMP_WAIT_POLICY=ACTIVE
# to time an idle machine. Either way, time OneNIP under the same policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import onenip  # noqa: E402  (sets the offline environment before anomalib/timm are imported)
from onenip.config import BackboneParams  # noqa: E402
from onenip.data.geometry import InputGeometry  # noqa: E402
from onenip.data.manifest import LabelName, Split, make_manifest, read_mask  # noqa: E402
from onenip.data.transforms import load_image, normalize  # noqa: E402
from onenip.metrics import compute_metrics, resize_maps_to_masks  # noqa: E402
from onenip.models.backbone import load_pretrained_state_dict  # noqa: E402

PEER_METHODS: tuple[str, ...] = ("patchcore", "padim")
PEER_BACKBONE = "tf_efficientnet_lite0"
# timm feature modules of tf_efficientnet_lite0 at strides 8 and 16 (feature_info: blocks.2 -> 40 channels,
# blocks.4 -> 112 channels); anomalib's TimmFeatureExtractor maps these names to out_indices 2 and 3.
PEER_LAYERS: tuple[str, ...] = ("blocks.2", "blocks.4")
PEER_INPUT_SIZE = 256
DEFAULT_CORESET_RATIO = 0.1  # anomalib's PatchCore default
"""anomalib's default is 0.1, but its k-center-greedy takes about an hour for bottle at 0.1 on 2 CPU cores."""
DEFAULT_NUM_NEIGHBORS = 9  # PatchcoreModel's default (re-weighting of the image score, PatchCore paper eq. 7)
DEFAULT_BATCH_SIZE = 16
DEFAULT_NUM_TIMED_SINGLE = 32
DEFAULT_SEED = 0
ANOMALY_MAP_SIGMA = 4  # anomalib's AnomalyMapGenerator default for both models
# Keys of the full classifier that a features_only EfficientNet does not have.
_HEAD_KEY_PREFIXES = ("conv_head.", "bn2.", "classifier.")
TIMED_REGION = (
    "model(images) in eval mode under torch.no_grad on already decoded, resized and normalised tensors: "
    "backbone, embedding, nearest-neighbour search / Mahalanobis distance, anomaly-map upsampling to "
    "256x256 and Gaussian blur; excludes image decoding and resizing maps to the mask resolution"
)
DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "industrial"


class PeerError(ValueError):
    """A peer run that cannot go ahead as asked (unknown method, weights that do not fit, empty split)."""


def drop_leaked_test_images(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop test rows whose file is byte-identical (sha256) to a training image of the same category.

    A test image that is also a training image is scored against itself (a perfect nearest neighbour),
    which flatters every memory-based method. Returns the manifest without those rows (index reset,
    ``attrs`` kept) and the dropped ``image_path`` values, sorted.
    """
    is_train = manifest["split"] == Split.TRAIN.value
    train_keys = set(zip(manifest.loc[is_train, "category"], manifest.loc[is_train, "sha256"], strict=True))
    is_leaked = (manifest["split"] == Split.TEST.value) & pd.Series(
        [key in train_keys for key in zip(manifest["category"], manifest["sha256"], strict=True)],
        index=manifest.index,
    )
    dropped = sorted(manifest.loc[is_leaked, "image_path"].astype(str))
    kept = manifest.loc[~is_leaked].reset_index(drop=True)
    kept.attrs = dict(manifest.attrs)
    return kept, dropped


def _check_method(method: str) -> None:
    if method not in PEER_METHODS:
        msg = f"Unknown peer method {method!r}; valid options: {list(PEER_METHODS)}"
        raise PeerError(msg)


def load_backbone_weights(feature_extractor: nn.Module, backbone: str = PEER_BACKBONE) -> list[str]:
    """Load onenip's packaged ImageNet weights into an anomalib ``TimmFeatureExtractor``'s timm model.

    Every tensor of the features-only model must come from the file (no missing keys); the only keys left
    over may be the classifier head's. Returns those left-over keys.
    """
    timm_model = feature_extractor.feature_extractor
    state = load_pretrained_state_dict(backbone)
    result = timm_model.load_state_dict(state, strict=False)
    unexpected_non_head = [key for key in result.unexpected_keys if not key.startswith(_HEAD_KEY_PREFIXES)]
    if result.missing_keys or unexpected_non_head:
        msg = (
            f"onenip's {backbone} weights do not fit anomalib's feature extractor: missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)}), unexpected outside the head {unexpected_non_head[:5]} "
            f"({len(unexpected_non_head)})"
        )
        raise PeerError(msg)
    return sorted(result.unexpected_keys)


def build_peer_model(method: str, *, n_features: int | None = None, num_neighbors: int = DEFAULT_NUM_NEIGHBORS) -> nn.Module:
    """anomalib's ``PatchcoreModel`` or ``PadimModel`` on ``PEER_LAYERS`` of lite0 with onenip's weights.

    ``n_features`` (PaDiM): channels kept by its random channel selection; ``None`` keeps all 152, so no
    channel is dropped at random (anomalib only has defaults for resnet18 / wide_resnet50_2).
    Seed torch before calling for a reproducible PaDiM channel selection.
    """
    _check_method(method)
    # Imported here so that onenip's offline environment is set first and importing this module stays cheap.
    if method == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model: nn.Module = PatchcoreModel(
            layers=list(PEER_LAYERS), backbone=PEER_BACKBONE, pre_trained=False, num_neighbors=num_neighbors
        )
    else:
        from anomalib.models.components import TimmFeatureExtractor
        from anomalib.models.image.padim.torch_model import PadimModel

        if n_features is None:
            probe = TimmFeatureExtractor(backbone=PEER_BACKBONE, layers=list(PEER_LAYERS), pre_trained=False)
            n_features = int(sum(probe.out_dims))
        model = PadimModel(backbone=PEER_BACKBONE, layers=list(PEER_LAYERS), pre_trained=False, n_features=n_features)
    load_backbone_weights(model.feature_extractor)
    return model


def kcenter_greedy_projected(embedding: Tensor, projection: Tensor, size: int, start: int, block: int = 1 << 16) -> Tensor:
    """Exact greedy k-center (farthest point first from ``start``) in the metric of ``projection`` (P, D),
    as anomalib's ``KCenterGreedy`` runs it on ``embedding @ projection.T``, without forming the projected
    points: with ``P^T P = L L^T`` the points ``embedding @ L`` have the same pairwise distances in D
    dimensions instead of P (anomalib's sparse projection at eps 0.9 WIDENS lite0's 152 channels to
    about 335). One matrix-vector product per pick; anomalib's loop also forms ``features - center``.
    Returns the picked row indices in order (``size`` of them, ``start`` first)."""
    metric = (projection.double().t() @ projection.double())
    factor = torch.linalg.cholesky(metric + 1e-10 * metric.diagonal().mean() * torch.eye(len(metric), dtype=metric.dtype))
    points = (embedding.double() @ factor).float().contiguous()
    norms = (points * points).sum(dim=1)
    nearest = torch.full((len(points),), float("inf"))
    chosen = torch.empty(size, dtype=torch.long)
    index = int(start)
    for step in range(size):
        chosen[step] = index
        centre = points[index]
        # squared distances to the new centre, in blocks (no N x D temporary)
        for lo in range(0, len(points), block):
            part = slice(lo, lo + block)
            distance = torch.addmv(norms[part] + float(centre @ centre), points[part], centre, alpha=-2.0)
            torch.minimum(nearest[part], distance, out=nearest[part])
        nearest[index] = 0.0
        index = int(nearest.argmax())
    return chosen


def coreset_subsample(model: nn.Module, ratio: float) -> None:
    """anomalib's ``PatchcoreModel.subsample_embedding(ratio)`` with the same semantics: its sparse random
    projection (eps 0.9, drawn from torch's and numpy's global generators as anomalib draws it) and its
    random start (``torch.randint``), then ``kcenter_greedy_projected`` (exact greedy k-center in that
    projection's metric), which makes anomalib's default 10 % coreset affordable on two CPU cores."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    size = int(len(bank) * ratio)
    projector = SparseRandomProjection(eps=0.9).fit(bank)
    start = int(torch.randint(high=len(bank), size=(1,)).squeeze())
    model.memory_bank = bank[kcenter_greedy_projected(bank, projector.sparse_random_matrix, size, start)]


def _load_batch(paths: Sequence[str], input_size: int | InputGeometry, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return normalize(torch.stack([load_image(path, input_size) for path in paths]), mean, std)


def _batches(items: Sequence[Any], batch_size: int) -> list[Sequence[Any]]:
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]


def _gt_masks(test: pd.DataFrame) -> list[np.ndarray] | None:
    """One ``(H, W)`` uint8 0/1 mask per test row at its own resolution; ``None`` when a defect lacks a mask."""
    masks = []
    for row in test.itertuples(index=False):
        if row.label_index == LabelName.ABNORMAL:
            if row.mask_path is None or (isinstance(row.mask_path, float) and np.isnan(row.mask_path)):
                return None
            masks.append((read_mask(row.mask_path) > 0).astype(np.uint8))
        else:
            masks.append(np.zeros((int(row.height), int(row.width)), dtype=np.uint8))
    return masks


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict[str, str]:
    import anomalib
    import timm

    return {
        "onenip": onenip.__version__,
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def run_peer(
    method: str,
    category: str,
    root: str | Path = DEFAULT_ROOT,
    *,
    coreset_ratio: float = DEFAULT_CORESET_RATIO,
    n_features: int | None = None,
    num_neighbors: int = DEFAULT_NUM_NEIGHBORS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_timed_single: int = DEFAULT_NUM_TIMED_SINGLE,
    seed: int = DEFAULT_SEED,
    manifest: pd.DataFrame | None = None,
    progress: bool = False,
    input_size: tuple[int, int] | None = None,
    per_image: str | Path | None = None,
) -> dict[str, Any]:
    """Fit one peer on one category's train/good images, evaluate it on the test split, time it.

    Args:
        method: one of ``PEER_METHODS``.
        category: a category folder under ``root`` (MVTec AD layout).
        root: dataset root; ignored when ``manifest`` is given.
        coreset_ratio: PatchCore's coreset sampling ratio (fraction of training patches kept).
        n_features: PaDiM's kept channels; ``None`` keeps all.
        num_neighbors: PatchCore's neighbours for the image-score re-weighting.
        batch_size: batch size of the fit and evaluation passes; the evaluation pass is timed as the
            batch-``batch_size`` throughput (full batches only, after one warm-up batch).
        num_timed_single: test images timed one at a time (after 3 warm-up calls).
        seed: seeds torch before building (PaDiM's channel selection) and before the coreset (its start point).
        manifest: an already scanned manifest (rows of other categories are ignored).
        input_size: (height, width) to squash every image to instead of ``PEER_INPUT_SIZE`` squared (to
            compare at onenip's own input of the category).
        per_image: write the per-image summary (``onenip.metrics.bootstrap.PerImage``: scores and pixel
            histograms at mask resolution, image paths as ids) there, for paired bootstrap intervals.

    Returns:
        A JSON-serialisable row: ``method``, ``category``, ``config``, ``metrics`` (``compute_metrics`` names),
        ``train_minutes``, ``inference`` (images/s at batch 1 and ``batch_size``, latencies, what is timed),
        ``peak_rss_mb`` (whole process so far), data counts, ``dropped_test_images``, versions.
    """
    _check_method(method)
    if not 0.0 < coreset_ratio <= 1.0:
        msg = f"coreset_ratio must be in (0, 1], got {coreset_ratio}"
        raise PeerError(msg)
    if batch_size < 1 or num_timed_single < 1:
        msg = f"batch_size and num_timed_single must be >= 1, got {batch_size} and {num_timed_single}"
        raise PeerError(msg)
    backbone_params = BackboneParams()
    mean, std = backbone_params.mean, backbone_params.std
    input_size: int | InputGeometry = PEER_INPUT_SIZE if input_size is None else InputGeometry(int(input_size[0]), int(input_size[1]))

    if manifest is None:
        manifest = make_manifest(root, [category], progress=progress)
    manifest = manifest[manifest["category"] == category].reset_index(drop=True)
    manifest, dropped = drop_leaked_test_images(manifest)
    train = manifest[manifest["split"] == Split.TRAIN.value]
    train = train[train["label_index"] == LabelName.NORMAL].reset_index(drop=True)
    test = manifest[manifest["split"] == Split.TEST.value].reset_index(drop=True)
    if train.empty or test.empty:
        msg = f"Category {category!r} needs train/good and test images, got {len(train)} train and {len(test)} test"
        raise PeerError(msg)

    load_average_start = os.getloadavg()
    torch.manual_seed(seed)
    model = build_peer_model(method, n_features=n_features, num_neighbors=num_neighbors)

    # ---- fit: decode + features for every training image, then coreset / Gaussians
    fit_start = time.perf_counter()
    model.train()
    with torch.no_grad():
        for paths in _batches(list(train["image_path"]), batch_size):
            model(_load_batch(paths, input_size, mean, std))
    features_done = time.perf_counter()
    if method == "patchcore":
        # The coreset's start point comes from torch, its random projection from numpy's global RNG.
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        coreset_subsample(model, coreset_ratio)
        memory_bank_size = int(model.memory_bank.shape[0])
    else:
        model.fit()
        memory_bank_size = None
    fit_end = time.perf_counter()
    model.eval()

    # ---- evaluation pass at batch_size, timing only the forward
    test_paths = list(test["image_path"])
    masks = _gt_masks(test)
    map_shapes = (
        [mask.shape for mask in masks]
        if masks is not None
        else [(int(h), int(w)) for h, w in zip(test["height"], test["width"], strict=True)]
    )
    pred_scores: list[np.ndarray] = []
    anomaly_maps: list[np.ndarray] = []
    batch_seconds: list[float] = []
    timed_batch_images = 0
    eval_start = time.perf_counter()
    with torch.no_grad():
        warmup = _load_batch(test_paths[:batch_size], input_size, mean, std)
        model(warmup)
        del warmup
        for start in range(0, len(test_paths), batch_size):
            images = _load_batch(test_paths[start : start + batch_size], input_size, mean, std)
            tic = time.perf_counter()
            output = model(images)
            toc = time.perf_counter()
            if len(images) == batch_size:
                batch_seconds.append(toc - tic)
                timed_batch_images += len(images)
            pred_scores.append(output.pred_score.detach().cpu().numpy().reshape(-1))
            anomaly_maps.extend(
                resize_maps_to_masks(list(output.anomaly_map[:, 0].cpu().numpy()), map_shapes[start : start + len(images)])
            )
    eval_seconds = time.perf_counter() - eval_start

    # ---- batch 1 latency on the first test images
    single = [_load_batch([path], input_size, mean, std) for path in test_paths[:num_timed_single]]
    single_seconds: list[float] = []
    with torch.no_grad():
        for images in single[:3]:
            model(images)
        for images in single:
            tic = time.perf_counter()
            model(images)
            single_seconds.append(time.perf_counter() - tic)

    labels = test["label_index"].to_numpy(dtype=np.int64)
    scores = np.concatenate(pred_scores)
    metrics = compute_metrics(scores, labels, anomaly_maps if masks is not None else None, masks)
    if per_image is not None:
        from onenip.metrics.bootstrap import PerImage

        summary = PerImage.from_maps(scores, labels, anomaly_maps if masks is not None else None, masks)
        summary.ids = np.array([str(p) for p in test_paths])
        summary.save(per_image)

    config: dict[str, Any] = {
        "backbone": PEER_BACKBONE,
        "weights": "onenip.models.backbone.load_pretrained_state_dict (packaged ImageNet weights, no download)",
        "layers": list(PEER_LAYERS),
        "layer_strides": [int(r) for r in model.feature_extractor.reductions],
        "layer_channels": [int(c) for c in model.feature_extractor.out_dims],
        "input_size": input_size if isinstance(input_size, int) else list(input_size.size),
        "resize": "squash to input_size, bilinear, antialias (onenip.data.transforms.load_image)",
        "mean": list(mean),
        "std": list(std),
        "anomaly_map_sigma": ANOMALY_MAP_SIGMA,
        "batch_size": batch_size,
        "seed": seed,
    }
    if method == "patchcore":
        config |= {"coreset_ratio": coreset_ratio, "num_neighbors": num_neighbors, "memory_bank_size": memory_bank_size,
                   "coreset": "anomalib's projection and start, exact greedy k-center (benchmarks.peers.kcenter_greedy_projected)"}
    else:
        config |= {"n_features": int(model.n_features), "n_features_original": int(model.n_features_original)}

    single_ms = np.array(single_seconds) * 1000.0
    batch_ms = np.array(batch_seconds) * 1000.0
    num_threads = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    return {
        "method": method,
        "category": category,
        "config": config,
        "metrics": metrics,
        "pixel_metrics": masks is not None,
        "train_minutes": (fit_end - fit_start) / 60.0,
        "fit_seconds": {
            "decode_and_features": features_done - fit_start,
            "coreset" if method == "patchcore" else "gaussian": fit_end - features_done,
            "total": fit_end - fit_start,
        },
        # images/s from the median call: other processes on a shared machine slow some calls down a lot
        # (OpenMP threads waiting for a core), and the median ignores those; *_mean is count / total time.
        "inference": {
            "images_per_s_batch1": 1000.0 / float(np.median(single_ms)),
            "images_per_s_batch1_mean": len(single_seconds) / float(np.sum(single_seconds)),
            "latency_ms_batch1_p50": float(np.percentile(single_ms, 50)),
            "latency_ms_batch1_p95": float(np.percentile(single_ms, 95)),
            "num_timed_batch1": len(single_seconds),
            f"images_per_s_batch{batch_size}": (
                batch_size * 1000.0 / float(np.median(batch_ms)) if batch_seconds else None
            ),
            f"images_per_s_batch{batch_size}_mean": (
                timed_batch_images / float(np.sum(batch_seconds)) if batch_seconds else None
            ),
            f"latency_ms_batch{batch_size}_p50": float(np.percentile(batch_ms, 50)) if batch_seconds else None,
            f"num_timed_batch{batch_size}": timed_batch_images,
            "timed": TIMED_REGION,
        },
        "eval_seconds": eval_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_scope": "ru_maxrss of the whole process up to the end of this run (fresh process per run via the CLI)",
        "num_train": len(train),
        "num_test": len(test),
        "num_test_anomalous": int(labels.sum()),
        "dropped_test_images": dropped,
        "dropped_reason": "test image byte-identical (sha256) to a train image of the same category",
        "threads": num_threads,
        "cpu_count": os.cpu_count(),
        # Timings on a shared machine are only as good as its idleness; 1-minute load at start and end.
        "load_average_1min": {"start": load_average_start[0], "end": os.getloadavg()[0]},
        "versions": _versions(),
        "git_sha": _git_sha(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_peer_subprocess(
    method: str,
    category: str,
    root: str | Path,
    json_path: str | Path,
    *,
    coreset_ratio: float = DEFAULT_CORESET_RATIO,
    n_features: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    num_threads: int = DEFAULT_NUM_THREADS,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """``run_peer`` in a fresh Python process (so ``peak_rss_mb`` is this fit's own), via the CLI below.

    Raises ``subprocess.CalledProcessError`` (with the child's stderr) when the run fails.
    """
    _check_method(method)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--method", method,
        "--category", category,
        "--root", str(root),
        "--json", str(json_path),
        "--coreset-ratio", str(coreset_ratio),
        "--batch-size", str(batch_size),
        "--seed", str(seed),
    ]  # fmt: skip
    if n_features is not None:
        command += ["--n-features", str(n_features)]
    env = os.environ | {"OMP_NUM_THREADS": str(num_threads), "MKL_NUM_THREADS": str(num_threads)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    subprocess.run(command, env=env, check=True, timeout=timeout_s, capture_output=True, text=True)
    return json.loads(Path(json_path).read_text())


def format_row(row: dict[str, Any]) -> str:
    """One line of the main numbers of a ``run_peer`` row."""
    metrics = row["metrics"]
    inference = row["inference"]
    batch = row["config"]["batch_size"]
    parts = [f"{name}={value:.3f}" for name, value in metrics.items()]
    return (
        f"{row['method']:<9} {row['category']:<14} " + " ".join(parts)
        + f" train={row['train_minutes']:.2f}min b1={inference['images_per_s_batch1']:.1f}img/s"
        + f" b{batch}={inference[f'images_per_s_batch{batch}'] or float('nan'):.1f}img/s rss={row['peak_rss_mb']:.0f}MB"
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=PEER_METHODS)
    parser.add_argument("--category", required=True)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"MVTec-layout root (default {DEFAULT_ROOT})")
    parser.add_argument("--json", type=Path, required=True, help="where to write the result row")
    parser.add_argument("--coreset-ratio", type=float, default=DEFAULT_CORESET_RATIO)
    parser.add_argument("--n-features", type=int, default=None, help="PaDiM channels kept (default: all)")
    parser.add_argument("--num-neighbors", type=int, default=DEFAULT_NUM_NEIGHBORS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-timed-single", type=int, default=DEFAULT_NUM_TIMED_SINGLE)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                        help=f"squash every image to this size (default {PEER_INPUT_SIZE} x {PEER_INPUT_SIZE})")
    parser.add_argument("--per-image", type=Path, default=None, help="write the per-image summary (.npz) for paired bootstrap intervals")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    row = run_peer(
        args.method,
        args.category,
        args.root,
        coreset_ratio=args.coreset_ratio,
        n_features=args.n_features,
        num_neighbors=args.num_neighbors,
        batch_size=args.batch_size,
        num_timed_single=args.num_timed_single,
        seed=args.seed,
        input_size=None if args.input_size is None else tuple(args.input_size),
        per_image=args.per_image,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=2) + "\n")
    if row["dropped_test_images"]:
        print(f"Dropped {len(row['dropped_test_images'])} test images identical to train images: {row['dropped_test_images']}")
    print(format_row(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
