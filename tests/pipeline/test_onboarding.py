"""Few-shot onboarding through the flows: train the generalist on the project's categories, onboard an
unseen category from k normal images, find it registered as champion with its prompts (versioned with
DVC), predict with it through the registry exactly like a trained model, and upgrade it to a trained
OneNIP model through the normal gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from onenip import jobs, registry
from onenip.config import load_params
from onenip.data.manifest import file_sha256, make_manifest
from onenip.data.versioning import read_data_version, run_dvc
from tests.helpers.project import write_params
from tests.helpers.trees import make_mvtec_tree

pytestmark = pytest.mark.slow


def test_generalist_then_onboard_then_predict(project: Path, prefect_harness: None, tmp_path: Path) -> None:
    from pipelines.cli import app
    from pipelines.flows import generalist, onboard_category

    write_params(project, generalist={"epochs": 1, "batch_size": 8, "train_shots": [1, 2], "shots": 2})
    source = Path(load_params(project / "params.yaml").data.source)
    trained = generalist(str(source), ["plate", "widget"], "params.yaml", None, str(project))
    assert set(trained["validation"]) >= {"val_image_AUROC"} and Path(trained["model_dir"], "onenip.json").is_file()
    client = registry.connect(load_params(project / "params.yaml"), project)
    # the generalist is its own registered model; passing its gate made it champion
    generalist_version = client.get_model_version_by_alias("onenip-generalist", "champion")
    assert trained["alias"] == "champion" and str(generalist_version.version) == trained["version"]
    assert generalist_version.tags["onenip.kind"] == "inctrl-generalist" and generalist_version.tags["onenip.gate"] == "passed"
    assert generalist_version.tags["onenip.auxiliary_categories"] == "plate,widget"
    # a second generalist that fails its gate becomes challenger; the champion stays
    floor = load_params(project / "params.yaml").gates.minimum["image_AUROC"]
    write_params(project, gates={"minimum": {"image_AUROC": 1.01}})
    failed_generalist = generalist(str(source), ["plate", "widget"], "params.yaml", None, str(project))
    assert failed_generalist["alias"] == "challenger" and not failed_generalist["passed"]
    assert str(client.get_model_version_by_alias("onenip-generalist", "champion").version) == trained["version"]
    assert str(client.get_model_version_by_alias("onenip-generalist", "challenger").version) == failed_generalist["version"]
    write_params(project, gates={"minimum": {"image_AUROC": floor}})

    new = make_mvtec_tree(tmp_path / "new", categories=("gear",), n_train=8, n_test_good=3, n_test_bad=3, size=64, seed=3)
    # no generalist given: the registered champion is downloaded and used
    outcome = onboard_category(str(new), "gear", None, 2, None, "params.yaml", None, str(project))
    assert outcome["status"] == "promoted", outcome  # the tiny gates are 0: it passes
    version = client.get_model_version_by_alias("onenip-widgets-gear", "champion")
    assert version.tags["onenip.generalist"] == f"models:/onenip-generalist/{trained['version']}"  # the version, not the alias
    assert version.tags["onenip.kind"] == "onboarded-inctrl" and version.tags["onenip.shots"] == "2"
    assert version.tags["onenip.input_size"] == "64x64"  # the input it was onboarded at (square images: the generalist's)
    assert version.tags["onenip.runtime"] == "torch" and len(version.tags["onenip.prompts"].split(";")) == 2
    run_metrics = client.get_run(version.run_id).data.metrics  # the head weight onboarding chose is on the run
    assert run_metrics["head_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0) and "threshold" in run_metrics
    assert version.tags["onenip.category_data_version"] == jobs.category_data_versions(make_manifest(new, ["gear"], progress=False))["gear"]
    # the prompt images are versioned with DVC: copies in prompt order, a table naming their sources, pushed
    folder, dvc_file = project / "data/prompts/widgets/gear", "data/prompts/widgets/gear.dvc"
    assert version.tags["onenip.prompts_dvc"] == dvc_file
    assert version.tags["onenip.prompts_data_version"] == read_data_version(project / dvc_file)
    table = pd.read_csv(folder / "prompts.csv")
    assert list(table["prompt"]) == [0, 1] and [Path(s).name for s in table["source"]] == version.tags["onenip.prompts"].split(";")
    for row in table.itertuples():
        assert file_sha256(folder / row.file) == file_sha256(row.source) == row.sha256
    assert "in sync" in run_dvc(["status", "--cloud", dvc_file], project)
    listing = CliRunner().invoke(app, ["registry"])
    assert listing.exit_code == 0 and "onenip-widgets-gear" in listing.output
    assert "onboarded-inctrl" in listing.output and "inctrl-generalist" in listing.output

    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(new / "gear" / "test"), "--model", "models:/onenip-widgets-gear@champion",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == 6 and frame["category"].eq("gear").all()
    # what `mlflow models serve` loads: the registered pyfunc scores like the library (torch: no graph export)
    import mlflow.pyfunc

    from onenip.serving.torch_predictor import TorchPredictor
    from onenip.pyfunc import encode_image

    image_path = sorted((new / "gear" / "test").rglob("*.png"))[0]
    served = mlflow.pyfunc.load_model("models:/onenip-widgets-gear@champion").predict(
        pd.DataFrame({"image": [encode_image(image_path)]}), params={"return_map": True})  # fmt: skip
    local = TorchPredictor.load(project / "runs" / "pipeline" / "widgets" / "onboard" / "gear" / "model")
    expected = local.predict([np.asarray(Image.open(image_path).convert("RGB"))], "gear")[0]
    assert served["category"][0] == "gear" and served["score"][0] == pytest.approx(expected.score, rel=1e-5, abs=1e-6)
    assert np.asarray(served["anomaly_map"][0]).shape == (64, 64)
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "prompts")}
    assert artifacts == {"prompts/prompts.csv"}

    # a new product with normal images only: the CLI onboards it, gated on its own validation (training
    # normals against synthetic anomalies), recorded apart from test metrics
    bare = make_mvtec_tree(tmp_path / "bare", categories=("bolt",), n_train=10, n_test_good=0, n_test_bad=0, size=64, seed=4)
    shutil.rmtree(bare / "bolt" / "test", ignore_errors=True)
    shutil.rmtree(bare / "bolt" / "ground_truth", ignore_errors=True)
    cli = CliRunner().invoke(app, ["onboard", "--data", str(bare), "--category", "bolt", "--generalist", trained["model_dir"], "--shots", "2"])
    assert cli.exit_code == 0, cli.output
    bolt = client.get_model_version_by_alias("onenip-widgets-bolt", "champion")
    assert bolt.tags["onenip.gate_basis"] == "validation" and "onenip.metric.image_AUROC" not in bolt.tags
    validation = float(bolt.tags["onenip.metric.val_image_AUROC"])
    # the gate read exactly the validation AUROC the version records (the tiny project's minimum is 0)
    assert json.loads(bolt.tags["onenip.gate_reasons"])[0].startswith(f"image_AUROC {validation:.4f} >= minimum")
    logged = {a.path for a in client.list_artifacts(bolt.run_id)}
    assert "prompts" in logged and "evaluation" not in logged  # nothing evaluated, nothing else uploaded in its place
    # k larger than the normal images available: one clear error, nothing registered
    failed = CliRunner().invoke(app, ["onboard", "--data", str(new), "--category", "gear", "--generalist", trained["model_dir"],
                                      "--shots", "50"])  # fmt: skip
    assert failed.exit_code == 1 and "50 shots asked for 'gear', but it has only 8" in failed.output
    assert len(client.search_model_versions("name = 'onenip-widgets-gear'")) == 1
    # a generalist alias that does not exist: one clear error naming it
    missing = CliRunner().invoke(app, ["onboard", "--data", str(new), "--category", "gear", "--generalist", "models:/onenip-generalist@nope"])
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit) and "'nope'" in missing.output


def test_onboarded_category_upgrades_to_trained_through_the_gates(project: Path, prefect_harness: None, tmp_path: Path) -> None:
    """The same registered model holds the onboarded version and, later, a trained one: the trained
    version is gated against the onboarded champion, and the registry names each version's kind."""
    from pipelines.cli import app
    from pipelines.flows import generalist, onboard_category, train_category

    write_params(project, generalist={"epochs": 1, "batch_size": 8, "train_shots": [1, 2], "shots": 2})
    source = Path(load_params(project / "params.yaml").data.source)
    trained = generalist(str(source), ["plate", "widget"], "params.yaml", None, str(project))
    new = make_mvtec_tree(tmp_path / "new", categories=("gear",), n_train=8, n_test_good=3, n_test_bad=3, size=64, seed=3)
    onboarded = onboard_category(str(new), "gear", trained["model_dir"], 2, None, "params.yaml", None, str(project))
    assert onboarded["status"] == "promoted" and onboarded["version"] == "1"
    onboarded_version = registry.connect(load_params(project / "params.yaml"), project).get_model_version("onenip-widgets-gear", "1")

    # the category's images become the project's dataset; the retrain flow trains and gates it as usual
    write_params(project, data={"source": str(new)})
    outcome = train_category("gear", "params.yaml", None, False, str(project))
    assert outcome["status"] in ("promoted", "challenger") and outcome["version"] == "2", outcome
    client = registry.connect(load_params(project / "params.yaml"), project)
    upgrade = client.get_model_version("onenip-widgets-gear", "2")
    assert upgrade.tags["onenip.kind"] == "trained-onenip" and upgrade.tags["onenip.compared_to"] == "1"
    champion = client.get_model_version_by_alias("onenip-widgets-gear", "champion")
    assert str(champion.version) == ("2" if outcome["status"] == "promoted" else "1")
    rows = {row.version: row for row in registry.describe(client) if row.name == "onenip-widgets-gear"}
    assert (rows["1"].kind, rows["2"].kind) == ("onboarded-inctrl", "trained-onenip")
    assert rows["1"].residual == onboarded_version.tags["onenip.residual"] and rows["2"].residual == ""
    listing = CliRunner().invoke(app, ["registry"])
    assert listing.exit_code == 0 and "trained-onenip" in listing.output and "onboarded-inctrl" in listing.output


def test_prompts_are_replaced_on_a_new_onboarding_and_bad_input_is_refused(project: Path, tmp_path: Path) -> None:
    from onenip.data.manifest import DatasetError

    params = load_params(project / "params.yaml")
    images = sorted((Path(params.data.source) / "plate" / "train" / "good").iterdir())
    first = jobs.track_prompts(params, "widgets", "plate", images[:2], project)
    assert first.pushed and sorted(p.name for p in first.folder.iterdir()) == ["0_" + images[0].name, "1_" + images[1].name, "prompts.csv"]
    again = jobs.track_prompts(params, "widgets", "plate", images[:2], project)
    assert again.data_version == first.data_version  # same prompts, same version
    other = jobs.track_prompts(params, "widgets", "plate", images[2:5], project)
    assert other.data_version != first.data_version and len(list(other.folder.glob("*_*"))) == 3  # replaced, not added to
    assert read_data_version(project / other.dvc_file) == other.data_version
    with pytest.raises(DatasetError, match="not found"):
        jobs.track_prompts(params, "widgets", "plate", [tmp_path / "gone.png"], project)
    with pytest.raises(DatasetError, match="cannot name a folder"):
        jobs.track_prompts(params, "widgets", "../plate", images[:1], project)
    assert read_data_version(project / other.dvc_file) == other.data_version  # a refused call changed nothing
    (project / "data" / "prompts.dvc").write_text("outs:\n- md5: x.dir\n  path: prompts\n")
    with pytest.raises(DatasetError, match="dataset of its own"):
        jobs.track_prompts(params, "widgets", "plate", images[:1], project)


def _tiny_real_category(source: Path, category: str, out: Path, n_train: int, n_test: int) -> Path:
    """A few of a real category's images (links, nothing copied): ``n_train`` normals, ``n_test`` normal
    and ``n_test`` anomalous test images of its first defect type with their masks."""
    defect = sorted(p.name for p in (source / category / "test").iterdir() if p.name != "good")[0]
    picks = {"train/good": sorted((source / category / "train" / "good").glob("*.png"))[:n_train],
             "test/good": sorted((source / category / "test" / "good").glob("*.png"))[:n_test],
             f"test/{defect}": sorted((source / category / "test" / defect).glob("*.png"))[:n_test]}  # fmt: skip
    for folder, images in picks.items():
        (out / category / folder).mkdir(parents=True)
        for image in images:
            (out / category / folder / image.name).symlink_to(image)
    (out / category / "ground_truth" / defect).mkdir(parents=True)
    for image in picks[f"test/{defect}"]:
        mask = source / category / "ground_truth" / defect / f"{image.stem}_mask.png"
        (out / category / "ground_truth" / defect / mask.name).symlink_to(mask)
    return out


def test_onboarding_a_tiny_real_category(project: Path, prefect_harness: None, tmp_path: Path, industrial_root: Path) -> None:
    """The flow end to end on real images (KolektorSDD, an elongated surface): registered as champion with
    its prompts under DVC, at its own aspect, evaluated on its masks, and predicted through the registry."""
    from pipelines.cli import app
    from pipelines.flows import generalist, onboard_category

    write_params(project, generalist={"epochs": 1, "batch_size": 8, "train_shots": [1, 2], "shots": 2})
    source = Path(load_params(project / "params.yaml").data.source)
    trained = generalist(str(source), ["plate", "widget"], "params.yaml", None, str(project))
    real = _tiny_real_category(industrial_root, "kolektor", tmp_path / "real", n_train=10, n_test=3)
    outcome = onboard_category(str(real), "kolektor", trained["model_dir"], 2, None, "params.yaml", None, str(project))
    assert outcome["status"] == "promoted", outcome
    client = registry.connect(load_params(project / "params.yaml"), project)
    version = client.get_model_version_by_alias("onenip-widgets-kolektor", "champion")
    height, width = (int(v) for v in version.tags["onenip.input_size"].split("x"))
    image = Image.open(next((real / "kolektor" / "train" / "good").iterdir()))
    assert (height > width) == (image.height > image.width) and height != width  # its own aspect, not the square
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):  # measured on the real masks
        assert f"onenip.metric.{name}" in version.tags
    folder = project / "data" / "prompts" / "widgets" / "kolektor"
    assert len(pd.read_csv(folder / "prompts.csv")) == 2 and read_data_version(project / version.tags["onenip.prompts_dvc"])
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(real / "kolektor" / "test"), "--model", "models:/onenip-widgets-kolektor@champion",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == 6 and frame["score"].notna().all()
    # the version's image AUROC is the one its predictions give (recomputed here with scikit-learn)
    from sklearn.metrics import roc_auc_score

    labels = [0 if Path(path).parent.name == "good" else 1 for path in frame["image_path"]]
    assert float(version.tags["onenip.metric.image_AUROC"]) == pytest.approx(roc_auc_score(labels, frame["score"]), abs=1e-5)
