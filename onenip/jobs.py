"""The steps of a retraining job as plain library functions (no Prefect, no MLflow).

``pipelines/flows.py`` wraps each in a Prefect task; ``dvc.yaml`` reaches the same code through the
CLI. Everything a step needs comes in as arguments, everything it produces goes to files under
``out_dir`` and comes back as a small picklable value (paths, dicts), so steps run in threads,
in Dask workers, or from Prefect's result cache alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from onenip.config import Params, result_params_digest
from onenip.data.manifest import make_manifest

PACKAGE_DIR = Path(__file__).resolve().parent


NOT_RESULT_CODE = frozenset(
    {"cli.py", "env.py", "export.py", "gates.py", "jobs.py", "registry.py", "pyfunc.py", "pyfunc_entry.py", "report.py", "runtime.py",
     "data/resample.py", *(f"serving/{name}.py" for name in ("__init__", "base", "exported", "files", "loader", "torch_predictor"))},  # fmt: skip
)
"""Modules that cannot change a trained model or its test metrics (CLI, serving, registry, gates, the report page)."""


def code_version() -> str:
    """Hash of the ``onenip`` sources that shape results (model, training, synthesis, data, metrics):
    changing one invalidates cached results; a CLI or serving change does not retrain anything."""
    digest = hashlib.sha256()
    for path in sorted(p for p in PACKAGE_DIR.rglob("*.py") if str(p.relative_to(PACKAGE_DIR)) not in NOT_RESULT_CODE):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def category_data_versions(manifest: pd.DataFrame) -> dict[str, str]:
    """Content hash per category (relative paths, labels and file sha256s): adding one image changes
    its category's version only."""
    versions = {}
    for category, rows in manifest.groupby("category", sort=True):
        digest = hashlib.sha256()
        for row in rows.sort_values("image_path").itertuples(index=False):
            relative = Path(row.image_path).as_posix().split(f"/{category}/", 1)[-1]
            digest.update(f"{relative}\t{row.label_index}\t{row.sha256}\n".encode())
        versions[str(category)] = digest.hexdigest()[:16]
    return versions


def cache_key(kind: str, data_versions: Sequence[str], params: Params) -> str:
    """(data version, params, code version) -> a key for Prefect's task cache and the registry."""
    payload = [kind, sorted(data_versions), result_params_digest(params), code_version()]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


# -- version ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetVersion:
    name: str
    root: Path
    data_version: str
    """DVC content hash of ``data/<name>``."""
    category_versions: dict[str, str]
    imported: bool
    pushed: bool


def version_dataset(params: Params, project_root: str | Path = ".", *, push: bool = True) -> DatasetVersion:
    """Import ``data.source`` if ``data/<name>`` does not exist yet, else ``dvc add`` what is there
    (new images that landed in the folder), push to the remote, and return the data version."""
    from onenip.data.versioning import dvc_add, dvc_push, find_project_root, import_dataset

    project_root = find_project_root(project_root)
    cfg = params.data
    root = project_root / cfg.root
    imported = False
    if not root.is_dir():
        result = import_dataset(
            cfg.source, cfg.name, cfg.format, project_root,
            min_train_images=cfg.min_train_images, require_masks=cfg.require_masks, test_every=cfg.test_every,
        )  # fmt: skip
        data_version, imported = result.data_version, True
    else:
        data_version = dvc_add(root, project_root)
    pushed = False
    if push and params.pipeline.dvc_remote != "":
        dvc_push([root.with_name(root.name + ".dvc").relative_to(project_root)], project_root, params.pipeline.dvc_remote)
        pushed = True
    manifest = make_manifest(root, list(cfg.categories) or None, progress=False)
    return DatasetVersion(cfg.name, root, data_version, category_data_versions(manifest), imported, pushed)


PROMPTS_DIR = Path("data") / "prompts"
"""Where onboarded categories' prompt images are versioned: ``data/prompts/<dataset>/<category>``."""
PROMPTS_TABLE = "prompts.csv"


@dataclass(frozen=True)
class PromptsVersion:
    folder: Path
    """``<project>/data/prompts/<dataset>/<category>``: copies of the prompt images and ``prompts.csv``."""
    dvc_file: Path
    """Its ``.dvc`` file, relative to the project (commit it with git, as a dataset's)."""
    data_version: str
    """DVC content hash of ``folder``."""
    pushed: bool


def track_prompts(params: Params, dataset: str, category: str, prompt_paths: Sequence[str | Path], project_root: str | Path = ".",
                  *, push: bool = True) -> PromptsVersion:  # fmt: skip
    """Version an onboarded category's prompts with DVC: the k images are copied (in prompt order, as
    ``<i>_<name>``) into ``data/prompts/<dataset>/<category>`` with ``prompts.csv`` (each copy's source
    path and sha256), that folder is ``dvc add``-ed and pushed like a dataset. The model holds only the
    prompts' features; this keeps the images it was onboarded from when the source folder changes.
    Onboarding again with other prompts replaces the folder (the old one stays in DVC's cache under
    its hash, which the earlier model version records)."""
    import csv
    import shutil

    from onenip.data.manifest import DatasetError, file_sha256
    from onenip.data.versioning import STAGING_DIR, dvc_add, dvc_push, find_project_root, replace_dir

    project_root = find_project_root(project_root)
    for name, value in (("dataset", dataset), ("category", category)):
        if not value or Path(value).name != value or value.startswith("."):
            msg = f"{name} name {value!r} cannot name a folder under {PROMPTS_DIR}"
            raise DatasetError(msg)
    if (project_root / PROMPTS_DIR.with_suffix(".dvc")).is_file():
        msg = f"{PROMPTS_DIR} is a dataset of its own ({PROMPTS_DIR}.dvc); onboarded prompts are versioned there, rename that dataset"
        raise DatasetError(msg)
    missing = [str(p) for p in prompt_paths if not Path(p).is_file()]
    if missing or not prompt_paths:
        msg = f"Prompt images of {category!r} not found: {missing or 'none given'}"
        raise DatasetError(msg)
    target = project_root / PROMPTS_DIR / dataset / category
    staging = project_root / STAGING_DIR / f"prompts-{dataset}-{category}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    with (staging / PROMPTS_TABLE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "file", "source", "sha256"])
        for index, path in enumerate(prompt_paths):
            copy = f"{index}_{Path(path).name}"
            shutil.copy2(path, staging / copy)
            writer.writerow([index, copy, str(Path(path).resolve()), file_sha256(path)])
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, target)
    data_version = dvc_add(target, project_root)
    dvc_file = target.with_name(target.name + ".dvc").relative_to(project_root)
    pushed = False
    if push and params.pipeline.dvc_remote != "":
        dvc_push([dvc_file], project_root, params.pipeline.dvc_remote)
        pushed = True
    return PromptsVersion(target, dvc_file, data_version, pushed)


# -- validate ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationOutcome:
    category: str
    success: bool
    report_json: Path
    report_markdown: Path
    summary: str


def validate_category(root: str | Path, category: str, params: Params, out_dir: str | Path) -> ValidationOutcome:
    """Great Expectations checks for one category; the report is written whether it passes or not."""
    from onenip.data.validate.dataset import validate_dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = validate_dataset(
        root, categories=[category], min_train_images=params.data.min_train_images, require_masks=params.data.require_masks,
    )
    report_json, report_md = out_dir / "validation.json", out_dir / "validation.md"
    report_json.write_text(json.dumps(result.to_dict(), indent=2))
    markdown = result.to_markdown()
    report_md.write_text(markdown + "\n")
    first = "passed" if result.success else "FAILED: " + ", ".join(result.failed_expectations)
    return ValidationOutcome(category, result.success, report_json, report_md, first)


# -- synthesize, cache ------------------------------------------------------------------------------
def synthesis_preview(
    root: str | Path,
    category: str,
    params: Params,
    out_path: str | Path,
    count: int = 8,
    *,
    seed: int | None = None,
    validation: bool = False,
) -> Path:
    """A preview grid of the anomalies training will synthesise for this category (the training seed
    unless ``seed`` is given), at the category's input geometry; ``validation`` shows the families the
    validation set uses instead."""
    from onenip.synthesis.preview import make_preview_grid
    from onenip.training import build_synthesizer, choose_geometries, load_images
    from onenip.scoring_selection import validation_synthesizer

    manifest = make_manifest(root, [category], progress=False)
    geometry = choose_geometries(manifest, params, [category])[category]
    train = manifest[(manifest["split"] == "train") & (manifest["label_index"] == 0)]
    paths = train["image_path"].iloc[:: max(1, len(train) // count)].iloc[:count].tolist()
    images, valid = load_images(paths, geometry)
    synthesizer = validation_synthesizer(params.validation) if validation else build_synthesizer(params.synthesis)
    return make_preview_grid(
        [image.float() / 255 for image in images],
        synthesizer,
        params.train.seed if seed is None else seed,
        out_path,
        foreground_masks=None if valid is None else [v[0] for v in valid],
    )


def cache_features(root: str | Path, categories: Sequence[str], params: Params, *, progress: bool = False) -> int:
    """Backbone features of every image of the categories into the on-disk cache; returns the count."""
    from onenip.device import resolve_device
    from onenip.features import FeatureCache
    from onenip.models.backbone import build_feature_extractor
    from onenip.training import choose_geometries

    manifest = make_manifest(root, list(categories), progress=False)
    extractor = build_feature_extractor(params.model.backbone).to(resolve_device(params.train.device)).eval()
    cache = FeatureCache(params.train.cache_dir, extractor, params.model.backbone)
    geometries = choose_geometries(manifest, params, list(categories))
    for category, rows in manifest.groupby("category"):
        cache.get(
            rows["image_path"].tolist(), rows["sha256"].tolist(), geometries[str(category)],
            batch_size=params.train.feature_batch_size, progress=progress,
        )
    return len(manifest)


# -- train, evaluate --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedModel:
    model_dir: Path
    categories: list[str]
    history: list[dict[str, float]]
    train_seconds: float


def train_model(
    root: str | Path, categories: Sequence[str], params: Params, out_dir: str | Path, *, progress: bool = False,
) -> TrainedModel:
    """One OneNIP network (reconstructor and refiner trained jointly, as in the paper) for the
    categories; resumes from ``out_dir/checkpoint`` after an interruption."""
    from onenip.training import train_onenip

    manifest = make_manifest(root, list(categories), progress=False)
    result = train_onenip(manifest, params, out_dir, list(categories), resume=True, progress=progress)
    return TrainedModel(Path(out_dir) / "model", list(categories), result.history, result.train_seconds)


def train_models(
    root: str | Path,
    categories: Sequence[str] | None,
    params: Params,
    out_dir: str | Path,
    *,
    mode: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, TrainedModel]:
    """``onenip train``: one network (``unified``) or one per category, each in ``out_dir/<name>``."""
    from onenip.training import train_networks

    manifest = make_manifest(root, list(categories) if categories else None, progress=False)
    results = train_networks(manifest, params, out_dir, mode=mode, resume=resume, progress=progress)
    return {
        name: TrainedModel(Path(out_dir) / name / "model", list(r.detector.categories), r.history, r.train_seconds)
        for name, r in results.items()
    }


@dataclass(frozen=True)
class CategoryReport:
    category: str
    metrics: dict[str, float]
    has_masks: bool
    eval_dir: Path
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate_model(
    model_dir: str | Path,
    root: str | Path,
    categories: Sequence[str] | None,
    params: Params,
    out_dir: str | Path,
    *,
    progress: bool = False,
    model: str = "",
) -> dict[str, CategoryReport]:
    """Test-split metrics, ROC/PR PNGs, heatmaps and the ``index.html`` reports per category (all the
    model's categories when ``categories`` is None); writes ``metrics.json`` and per-category
    ``metrics.md`` tables. ``model`` names the model on the reports (default: the folder)."""
    from onenip.data.manifest import DatasetError
    from onenip.device import resolve_device
    from onenip.evaluation import evaluate
    from onenip.features import FeatureCache
    from onenip.models.detector import OneNIPDetector

    detector = OneNIPDetector.load(model_dir, map_location=resolve_device(params.train.device))
    unknown = sorted(set(categories or []) - set(detector.categories))
    if unknown:
        msg = f"Model {model_dir} was not trained on categories {unknown}; it knows {detector.categories}"
        raise DatasetError(msg)
    categories = list(categories or detector.categories)
    manifest = make_manifest(root, categories, progress=False)
    cache = FeatureCache(params.train.cache_dir, detector.feature_extractor, detector.cfg.backbone)
    results = evaluate(detector, manifest, cache, out_dir, categories, num_heatmaps=params.eval.num_heatmaps, progress=progress,
                       model=model or str(model_dir))  # fmt: skip
    reports = {}
    for category, result in results.items():
        folder = Path(out_dir) / category
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in result.metrics.items() if isinstance(v, float))]
        (folder / "metrics.md").write_text("\n".join(lines) + "\n")
        (folder / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
        threshold = float(detector.score_threshold[detector.category_index(category)])
        reports[category] = CategoryReport(category, dict(result.metrics), result.has_masks, folder, threshold)
    return reports


def outputs_present(step: str, out_dir: str | Path) -> bool:
    """Are the files of a finished ``train`` (the model) or ``evaluate`` (metrics) step still in
    ``out_dir``? A cached step result is only reused when they are."""
    out_dir = Path(out_dir)
    if step == "train":
        return (out_dir / "model" / "onenip.json").is_file()
    if step == "evaluate":
        return (out_dir / "metrics.json").is_file()
    return True


def write_params(params: Params, path: str | Path) -> Path:
    """The exact effective configuration (after profile and overrides) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


def category_test_images(root: str | Path, category: str) -> list[Path]:
    """The category's test images, in the manifest's order (normals and defects)."""
    manifest = make_manifest(root, [category], progress=False)
    return [Path(p) for p in manifest[manifest["split"] == "test"]["image_path"]]


# -- monitor -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    checks: list[dict[str, Any]]
    markdown: str

    @property
    def fired(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["fired"]]


def monitor_traffic(params: Params, project_root: str | Path = ".") -> DriftReport:
    """Drift checks of the logged traffic (``onenip.monitoring.drift``), recorded in the log's
    ``drift_checks`` table (the review page shows them)."""
    from onenip import registry
    from onenip.data.manifest import is_image_file
    from onenip.monitoring.drift import check_drift, drift_markdown
    from onenip.monitoring.log import open_log
    from onenip.operating_points import calibration_scores

    project_root = Path(project_root)
    log = open_log(params, project_root)
    folders: dict[str, Path | None] = {}

    def reference_scores(version: str, category: str) -> Any:
        if version not in folders:
            try:
                folders[version] = registry.resolve_model(version, params, project_root).folder if version else None
            except (registry.RegistryError, OSError):
                folders[version] = None
        folder = folders[version]
        return None if folder is None else calibration_scores(folder, category)

    def train_images(category: str) -> list[Path]:
        folder = project_root / params.data.root / category / "train" / "good"
        return sorted(p for p in folder.rglob("*") if is_image_file(p)) if folder.is_dir() else []

    checks = check_drift(log, params.monitoring, reference_scores, train_images)
    log.record_drift(checks)
    return DriftReport(checks, drift_markdown(checks, params.monitoring.drift_window_hours))
