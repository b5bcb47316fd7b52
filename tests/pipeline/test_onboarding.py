"""Few-shot onboarding through the flows: train the generalist on the project's categories, onboard an
unseen category from k normal images, find it registered as champion with its prompts, and predict
with it through the registry exactly like a trained model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from onenip import registry
from onenip.config import load_params
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
    listing = CliRunner().invoke(app, ["registry"])
    assert listing.exit_code == 0 and "onenip-widgets-gear" in listing.output

    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(new / "gear" / "test"), "--model", "models:/onenip-widgets-gear@champion",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == 6 and frame["category"].eq("gear").all()
    # k larger than the normal images available: one clear error, nothing registered
    failed = CliRunner().invoke(app, ["onboard", "--data", str(new), "--category", "gear", "--generalist", trained["model_dir"],
                                      "--shots", "50"])  # fmt: skip
    assert failed.exit_code == 1 and "50 shots asked for 'gear', but it has only 8" in failed.output
    assert len(client.search_model_versions("name = 'onenip-widgets-gear'")) == 1
    # a generalist alias that does not exist: one clear error naming it
    missing = CliRunner().invoke(app, ["onboard", "--data", str(new), "--category", "gear", "--generalist", "models:/onenip-generalist@nope"])
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit) and "'nope'" in missing.output
