"""Configs reject bad values with a message naming the field; files and flags merge."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from models.config import HeadConfig, ModelConfig, PreprocessingConfig
from training.config import BASE_WEIGHTS_ENV, TrainConfig, load_config

BAD_VALUES = [
    ({"head": {"dropout_rates": (1.5,)}}, "dropout_rates"),
    ({"head": {"dropout_rates": (0.5,)}}, "dropout_rates"),  # two hidden layers by default
    ({"head": {"input_dropout": -0.1}}, "input_dropout"),
    ({"head": {"hidden_units": (0,), "dropout_rates": (0.5,)}}, "hidden_units"),
    ({"head": {"activation": "tanhh"}}, "activation"),
    ({"head": {"initializer": "zeros"}}, "initializer"),
    ({"head": {"max_norm": 0.0}}, "max_norm"),
    ({"head": {"regularizer": "l2"}}, "l1 or l2"),
    ({"head": {"l2": -1.0}}, "l2"),
    ({"head": {"leaky_relu_slope": 2.0}}, "leaky_relu_slope"),
    ({"preprocessing": {"image_size": (16, 16)}}, "image_size"),
    ({"optimizer": {"name": "adagrad"}}, "name"),
    ({"optimizer": {"learning_rate": 0.0}}, "learning_rate"),
    ({"optimizer": {"clipnorm": 1.0, "clipvalue": 1.0}}, "clipnorm or clipvalue"),
    ({"optimizer": {"schedule": "linear"}}, "schedule"),
    ({"optimizer": {"boundaries": (0.8, 0.2)}}, "boundaries"),
    ({"optimizer": {"momentum": 1.0}}, "momentum"),
    ({"data": {"validation_fraction": 0.9}}, "validation_fraction"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": -4}, "batch_size"),
    ({"fine_tune_blocks": 6}, "fine_tune_blocks"),
    ({"mc_samples": 0}, "mc_samples"),
    ({"model_name": "bad name!"}, "model_name"),
    ({"unknown_field": 1}, "unknown_field"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES)
def test_bad_value_is_rejected_naming_the_field(values, named):
    with pytest.raises(ValidationError, match=named):
        TrainConfig.model_validate(values)


def test_configs_are_frozen():
    config = TrainConfig()
    with pytest.raises(ValidationError):
        config.epochs = 3


def test_model_config_needs_two_classes():
    with pytest.raises(ValidationError, match="num_classes"):
        ModelConfig(num_classes=1)
    assert ModelConfig(
        num_classes=2, preprocessing=PreprocessingConfig(image_size=(40, 48))
    ).input_shape == (40, 48, 3)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 7, "head": {"activation": "elu", "batch_norm": False}}))
    config = load_config(path, {"head": {"activation": "selu"}})
    assert config.epochs == 7
    assert config.head.activation == "selu"
    assert config.head.batch_norm is False


def test_yaml_file_is_read(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optimizer:\n  name: nesterov\n  schedule: onecycle\nhead:\n  max_norm: null\n")
    config = load_config(path)
    assert config.optimizer.name == "nesterov"
    assert config.head.max_norm is None


def test_base_weights_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(BASE_WEIGHTS_ENV, "/some/weights.h5")
    assert TrainConfig().base_weights == "/some/weights.h5"
    monkeypatch.delenv(BASE_WEIGHTS_ENV)
    assert TrainConfig().base_weights == "imagenet"


def test_resolved_config_round_trips_through_json():
    config = TrainConfig(head=HeadConfig(hidden_units=(32, 16), dropout_rates=(0.2, 0.3)))
    assert TrainConfig.model_validate_json(config.model_dump_json()) == config
