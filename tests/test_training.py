"""Training on a few digits with the tiny 32x32 VGG16 (random base weights)."""

from __future__ import annotations

import typing

import keras
import numpy as np
import pytest

from adapters.model_store import ModelNotFoundError, StoredModel, export_model
from models.architecture import get_base, get_head
from models.backbone import BaseWeightsError, build_base
from models.conformal import ConformalCalibration
from models.mc_dropout import MCDropoutPredictor
from models.temperature import fit_temperature, temper
from models.uncertainty import mean_probabilities
from tests.conftest import TINY as PREP  # 32x32 preprocessing
from tests.conftest import bn_statistics
from training.config import Optimizer, Schedule, TrainConfig
from training.data import DatasetError, load_dataset, split_dataset
from training.outputs import predictor_outputs
from training.pipeline import run_training, served_temperature
from training.pretrain import PretrainConfig, pretrain
from training.train import build_for, fine_tune, fit_head, train_model

TINY = {"image_size": (32, 32)}


def tiny_config(**values: typing.Any) -> TrainConfig:
    """A fast run: 100 digits, 32x32, random base, small head."""
    defaults: dict[str, typing.Any] = {
        "data": {"limit": 100},
        "preprocessing": TINY,
        "base_weights": "none",
        "head": {"hidden_units": (16,), "dropout_rates": (0.3,)},
        "epochs": 1,
        "batch_size": 16,
        "export": False,
        "mc_samples": 5,
    }
    defaults.update(values)
    return TrainConfig.model_validate(defaults)


@pytest.fixture(scope="module")
def splits():
    config = tiny_config()
    return split_dataset(load_dataset("digits", PREP), config.data, config.seed)


def test_split_is_stratified_and_disjoint(splits):
    parts = (splits.train, splits.validation, splits.calibration, splits.test)
    sizes = [len(part.labels) for part in parts]
    assert sum(sizes) == 100
    assert np.abs(np.array(sizes) - [60, 10, 15, 15]).max() <= 1  # the default fractions
    for part in parts:
        assert set(np.unique(part.labels)) == set(range(10))
    rows = np.concatenate([part.images.reshape(len(part.labels), -1) for part in parts])
    assert len(np.unique(rows, axis=0)) == len(rows)  # no image in two parts
    assert splits.train.images.max() <= 255.0


def test_no_calibration_split_when_its_fraction_is_zero():
    config = tiny_config(data={"limit": 100, "calibration_fraction": 0.0})
    splits = split_dataset(load_dataset("digits", PREP), config.data, config.seed)
    assert len(splits.calibration.labels) == 0
    assert len(splits.train.labels) + len(splits.validation.labels) == 85


@pytest.mark.parametrize("optimizer", typing.get_args(Optimizer))
def test_one_epoch_with_every_optimizer(splits, optimizer):
    config = tiny_config(optimizer={"name": optimizer, "clipnorm": 1.0})
    _model, history = train_model(config, splits, verbose=0)
    assert np.isfinite(history.logs["loss"]).all()
    assert len(history.logs["loss"]) == 1


@pytest.mark.parametrize("schedule", typing.get_args(Schedule))
def test_one_epoch_with_every_schedule(splits, schedule):
    config = tiny_config(epochs=2, optimizer={"schedule": schedule, "clipvalue": 0.5})
    model, history = train_model(config, splits, verbose=0)
    assert np.isfinite(history.logs["val_loss"]).all()
    rate = model.get_layer("head").optimizer.learning_rate
    if schedule == "constant":
        assert float(rate) == pytest.approx(config.optimizer.learning_rate)
    elif schedule != "plateau":
        assert float(rate) < config.optimizer.learning_rate  # the schedule moved the rate


class WeightRecorder(keras.callbacks.Callback):
    """Keeps a copy of the weights at the end of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def test_early_stopping_restores_the_best_weights(splits, monkeypatch):
    config = tiny_config(
        epochs=12, early_stopping_patience=2, optimizer={"name": "sgd", "learning_rate": 0.5}
    )
    recorder = WeightRecorder()
    import training.train as train_module

    original = train_module._callbacks
    monkeypatch.setattr(train_module, "_callbacks", lambda c, d: [*original(c, d), recorder])
    model = build_for(config, 10)
    history = fit_head(model, splits, config, None, verbose=0)
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert best < len(val_loss) - 1, "the run must get worse after its best epoch"
    for restored, kept in zip(get_head(model).get_weights(), recorder.weights[best], strict=True):
        np.testing.assert_array_equal(restored, kept)


@pytest.mark.parametrize("cache_features", [True, False])
def test_base_weights_unchanged_by_phase_one(splits, cache_features):
    config = tiny_config(cache_features=cache_features)
    keras.utils.set_random_seed(config.seed)
    model = build_for(config, 10)
    before = [np.array(w) for w in get_base(model).weights]
    head_before = [np.array(w) for w in get_head(model).trainable_weights]
    fit_head(model, splits, config, None, verbose=0)
    for old, new in zip(before, get_base(model).weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    assert any(
        not np.array_equal(a, np.array(b))
        for a, b in zip(head_before, get_head(model).trainable_weights, strict=True)
    )


def test_max_norm_holds_after_training(splits):
    config = tiny_config(
        epochs=3,
        head={"hidden_units": (16,), "dropout_rates": (0.3,), "max_norm": 0.5},
        optimizer={"learning_rate": 0.05},
    )
    model, _ = train_model(config, splits, verbose=0)
    kernel = np.array(get_head(model).get_layer("dense_0").kernel)
    norms = np.linalg.norm(kernel, axis=0)  # one norm per unit (column)
    assert np.all(norms <= 0.5 + 1e-5)
    assert norms.max() > 0.45  # the constraint was binding, so the check means something


def test_fine_tuning_trains_only_the_top_blocks_and_keeps_bn_in_inference(splits):
    config = tiny_config(fine_tune_blocks=1, fine_tune_epochs=1, fine_tune_learning_rate=1e-3)
    keras.utils.set_random_seed(config.seed)
    model = build_for(config, 10)
    fit_head(model, splits, config, None, verbose=0)
    base = get_base(model)
    before = {layer.name: [np.array(w) for w in layer.weights] for layer in base.layers}
    statistics = bn_statistics(model)
    fine_tune(model, splits, config, None, verbose=0)
    for layer in base.layers:
        if layer.weights:
            changed = not np.array_equal(before[layer.name][0], np.array(layer.weights[0]))
            assert changed == layer.name.startswith("block5"), layer.name
    for old, new in zip(statistics, bn_statistics(model), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not base.trainable  # frozen again for export and serving


def test_both_phases_are_recorded(splits):
    _, history = train_model(tiny_config(fine_tune_blocks=2, fine_tune_epochs=1), splits, verbose=0)
    assert history.phases == {"head": 0, "fine_tune": 1}
    assert len(history.logs["loss"]) == 2


def test_export_then_load_gives_the_same_output(tmp_path):
    result = run_training(tiny_config(export=True, output_dir=tmp_path), verbose=0)
    stored = StoredModel.open(result.tag)
    loaded, card = stored.network(), stored.card
    assert card == result.card
    x = np.random.default_rng(0).normal(0, 50, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        MCDropoutPredictor(loaded).predict(x),
        MCDropoutPredictor(result.model).predict(x),
        atol=1e-6,
    )
    assert (result.run_dir / "learning_curve.png").stat().st_size > 1000
    assert {"test_accuracy", "test_nll", "test_mc_nll", "test_ece"} <= set(card.metrics)
    assert card.uncertain_threshold is None  # the calibration split replaces the percentile rule
    guarantees = card.guarantees
    assert guarantees is not None and guarantees.default_alpha == 1 / (guarantees.mc.sets.n + 1)
    assert guarantees.mc.samples == 5 and guarantees.single.samples == 1
    assert guarantees.mc.sets.n == len(split_dataset(
        load_dataset("digits", PREP), tiny_config().data, 42).calibration.labels)  # fmt: skip
    assert {"coverage@0.1", "set_size@0.1", "accepted_fraction"} <= set(guarantees.mc.test)
    assert set(card.splits) == {"train", "validation", "calibration", "test"}


def test_missing_model_names_the_tag():
    with pytest.raises(ModelNotFoundError, match=r"'no_such_model:latest'.*uqserve train"):
        StoredModel.open("no_such_model:latest")


def test_export_tags_are_versioned(tmp_path):
    model = build_for(tiny_config(), 10)
    card = run_training(tiny_config(output_dir=tmp_path), verbose=0).card
    first, second = export_model(model, card, "twice"), export_model(model, card, "twice")
    assert first != second
    assert StoredModel.open("twice:latest").card == card


def test_pretrain_writes_weights_that_base_weights_accepts(tmp_path):
    start = build_base((32, 32, 3), "none")
    start.save_weights(tmp_path / "start.weights.h5")
    config = PretrainConfig(
        limit=16,
        preprocessing=TINY,
        base_weights=str(tmp_path / "start.weights.h5"),
        epochs=1,
        batch_size=8,
        output=tmp_path / "pre.weights.h5",
    )
    path = pretrain(config, verbose=0)
    reloaded = build_base((32, 32, 3), str(path))  # what --base-weights PATH does
    before = np.array(start.get_layer("block1_conv1").kernel)
    after = np.array(reloaded.get_layer("block1_conv1").kernel)
    assert not np.array_equal(before, after)  # pretraining moved the weights...
    assert np.abs(after - before).max() < 0.01  # ...starting from the given ones


def test_imagenet_offline_fails_with_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # refused: offline everywhere
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(BaseWeightsError, match="UQSERVE_BASE_WEIGHTS") as caught:
        build_base((32, 32, 3), "imagenet")
    assert "--base-weights" in str(caught.value)


def test_missing_weights_file_is_named():
    with pytest.raises(BaseWeightsError, match="no such file"):
        build_base((32, 32, 3), "/nowhere/base.weights.h5")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match="digits"):
        load_dataset("imagenet-21k", PREP)


def test_folder_of_class_subfolders_is_a_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    dataset = load_dataset(str(tmp_path), PREP)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.images.shape == (6, 32, 32, 3)
    assert sorted(dataset.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_a_folder_is_decoded_and_sized_as_serving_does(tmp_path):
    """16-bit, palette with transparency, RGBA, CMYK: training sees what serving makes of each."""
    from PIL import Image

    from adapters.images import read_image
    from models.preprocessing import preprocess_batch, preprocess_images

    rng = np.random.default_rng(1)
    images = {
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (20, 30)).astype(np.uint16)),
        "palette.png": Image.fromarray(rng.integers(0, 256, (25, 20, 3), np.uint8)).convert("P"),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (40, 40, 4), np.uint8)),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 256, (30, 30, 4), np.uint8), mode="CMYK"),
    }
    (tmp_path / "only").mkdir()
    for name, image in images.items():
        options = {"transparency": 0} if name == "palette.png" else {}
        image.save(tmp_path / "only" / name, **options)
    dataset = load_dataset(str(tmp_path), PREP)
    files = sorted((tmp_path / "only").iterdir())
    served = preprocess_images([read_image(f) for f in files], PREP)  # what the service feeds
    trained = np.asarray(preprocess_batch(dataset.images, PREP))  # what training feeds
    np.testing.assert_allclose(trained, served, atol=1e-3)
    assert dataset.images[[f.name for f in files].index("gray16.png")].max() > 200  # not clipped


def test_keras_dataset_offline_fails_with_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="digits"):
        load_dataset("mnist", PREP)


def test_without_a_calibration_split_the_old_flag_stays_and_no_sets_are_promised(tmp_path):
    config = tiny_config(output_dir=tmp_path, data={"limit": 100, "calibration_fraction": 0.0})
    card = run_training(config, verbose=0).card
    assert card.guarantees is None
    assert card.uncertain_threshold is not None
    assert card.splits["calibration"].startswith("0 images")


def test_an_older_model_without_a_calibration_split_rebuilds_its_own_splits():
    from models.card import ModelCard
    from models.config import ModelConfig
    from training.data import training_config

    saved = tiny_config().model_dump(mode="json")
    del saved["data"]["calibration_fraction"]  # as cards written before the split existed
    card = ModelCard(class_names=tuple("0123456789"), model=ModelConfig(num_classes=10),
                     training=saved)  # fmt: skip
    config = training_config(card)
    assert config.data.calibration_fraction == 0.0
    splits = split_dataset(load_dataset("digits", PREP), config.data, config.seed)
    assert len(splits.calibration.labels) == 0 and len(splits.test.labels) == 15
    assert len(splits.train.labels) + len(splits.validation.labels) == 85


def test_served_temperature_softens_only_unless_asked():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (3000, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def draw(true_temperature: float) -> np.ndarray:
        truth = np.exp(logits / true_temperature)
        truth /= truth.sum(axis=1, keepdims=True)
        return np.array([rng.choice(4, p=row) for row in truth])

    over, under = draw(2.0), draw(0.5)  # the model over- and underconfident
    samples = probs[:, None]  # (N, 1, C)
    soften, fit, off = (tiny_config(temperature_scaling=m) for m in ("soften", "fit", "off"))
    assert served_temperature(samples, over, soften) == pytest.approx(2.0, rel=0.1)
    assert served_temperature(samples, under, soften) == 1.0  # sharpening: not served
    assert served_temperature(samples, under, fit) == pytest.approx(0.5, rel=0.1)
    assert served_temperature(samples, over, off) == 1.0


def test_a_served_temperature_is_in_the_card_the_predictor_and_the_guarantees(tmp_path):
    config = tiny_config(export=True, output_dir=tmp_path, model_name="tempered",
                         temperature_scaling="fit")  # fmt: skip
    result = run_training(config, verbose=0)
    card, stored = result.card, StoredModel.open(result.tag)
    splits = split_dataset(load_dataset("digits", PREP), config.data, config.seed)
    raw = MCDropoutPredictor(stored.network())
    validation = predictor_outputs(raw, splits.validation.images, PREP, 5, config.seed)
    assert card.temperature == fit_temperature(validation.samples, splits.validation.labels)
    assert card.temperature != 1.0 and stored.predictor().temperature == card.temperature
    held = predictor_outputs(raw, splits.calibration.images, PREP, 5, config.seed)
    served = predictor_outputs(stored.predictor(), splits.calibration.images, PREP, 5, config.seed)
    np.testing.assert_allclose(served.samples, temper(held.samples, card.temperature), atol=1e-6)
    np.testing.assert_array_equal(served.deterministic, held.deterministic)  # never tempered
    refit = ConformalCalibration.fit(
        mean_probabilities(served.samples), splits.calibration.labels, "lac"
    )
    np.testing.assert_allclose(refit.scores, card.guarantees.mc.sets.scores, atol=1e-6)
