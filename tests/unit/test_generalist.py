"""The few-shot generalist end to end on a tiny tree: train on auxiliary categories, onboard an unseen one
from k normal images, predict through the same Predictor; clear errors for impossible onboarding."""

from __future__ import annotations

from pathlib import Path

import pytest

from onenip.config import Params
from onenip.data.manifest import DatasetError
from onenip.generalist import onboard_category, train_generalist
from onenip.inference import Predictor
from tests.helpers.trees import make_mvtec_tree

pytestmark = pytest.mark.slow


def tiny_params(tmp_path: Path) -> Params:
    return Params.model_validate({
        "model": {"backbone": {"input_size": 64}},
        "synthesis": {"pool_size": 1},
        "train": {"cache_dir": str(tmp_path / "cache"), "holdout_fraction": 0.3, "min_holdout": 2},
        "generalist": {"epochs": 2, "batch_size": 8, "train_shots": [1, 2], "shots": 2},
        "eval": {"num_heatmaps": 1},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Params]:
    tmp = tmp_path_factory.mktemp("generalist")
    root = make_mvtec_tree(tmp / "data", categories=("plate", "widget", "gear"), n_train=10, n_test_good=3, n_test_bad=3, size=64)
    params = tiny_params(tmp)
    result = train_generalist(root, ["plate", "widget"], params, tmp / "run", progress=False)
    assert [h["epoch"] for h in result.history] == [1.0, 2.0]
    assert set(result.validation) >= {"val_image_AUROC_plate", "val_image_AUROC_widget", "val_image_AUROC"}
    return root, result.model_dir, params


def test_onboard_unseen_category_and_predict(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    root, generalist, params = trained
    result = onboard_category(generalist, root, "gear", 2, params, tmp_path / "gear", progress=False)
    assert result.shots == 2 and len(result.prompt_paths) == 2 and all("/gear/train/good/" in p for p in result.prompt_paths)
    assert set(result.metrics) >= {"image_AUROC", "pixel_AUROC"} and result.has_masks
    # deterministic prompts: onboarding again picks the same images
    again = onboard_category(generalist, root, "gear", 2, params, tmp_path / "again", progress=False)
    assert again.prompt_paths == result.prompt_paths and again.threshold == pytest.approx(result.threshold)
    predictor = Predictor.load(result.model_dir, runtime="torch")
    assert predictor.default_category == "gear"
    from PIL import Image

    image = Image.open(sorted((root / "gear" / "test").rglob("*.png"))[0]).convert("RGB")
    [prediction] = predictor.predict([image], return_maps=True)
    assert prediction.category == "gear" and prediction.threshold == pytest.approx(result.threshold)
    assert prediction.anomaly_map is not None and prediction.anomaly_map.shape == (64, 64)


def test_onboarding_errors_are_clear(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    root, generalist, params = trained
    with pytest.raises(DatasetError, match=r"30 shots asked for 'gear', but it has only 10"):
        onboard_category(generalist, root, "gear", 30, params, tmp_path / "x", progress=False)
    empty = make_mvtec_tree(tmp_path / "empty", categories=("bare",), n_train=0, n_test_good=2, n_test_bad=2, size=64)
    with pytest.raises(DatasetError, match="no normal training images"):
        onboard_category(generalist, empty, "bare", 2, params, tmp_path / "y", progress=False)


def test_a_generalist_trained_on_real_anomalies_refuses_their_category(trained: tuple[Path, Path, Params], tmp_path: Path) -> None:
    from onenip.models.generalist import GeneralistDetector

    root, generalist, params = trained
    detector = GeneralistDetector.load(generalist)
    assert detector.metadata["real_anomalies"] is False and detector.metadata["auxiliary_categories"] == ["plate", "widget"]
    assert detector.head.holistic_input == params.generalist.holistic_input == "map"
    onboard_category(generalist, root, "plate", 2, params, tmp_path / "synthetic-only", progress=False)  # saw no test image of plate
    with_real = detector.save(tmp_path / "with-real", metadata=detector.metadata | {"real_anomalies": True})
    with pytest.raises(DatasetError, match=r"real test anomalies of 'plate'"):
        onboard_category(with_real, root, "plate", 2, params, tmp_path / "x", progress=False)
    assert onboard_category(with_real, root, "gear", 2, params, tmp_path / "gear", progress=False).shots == 2  # unseen: fine
