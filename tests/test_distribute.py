"""`--strategy`: the strategies, the scaling rule, and a mirrored run on two logical CPUs.

The mirrored check runs in a subprocess (`python -m tests.test_distribute`):
logical devices must be configured before TensorFlow initializes its devices,
and in the pytest process other tests have done that already.

What it compares: the same run (same seed, data, GLOBAL batch and learning
rate) on the default strategy (one device) and on a MirroredStrategy over two
logical CPUs (half the batch per replica, learning-rate scaling off so that
only the distribution differs): per-epoch training losses, the final head
weights and the test predictions, each within TOLERANCE (max abs difference).

- Dropout rates are 0 and BatchNormalization is off: dropout masks are drawn
  per replica, and BN normalizes each replica's half batch with its own
  statistics (not synchronized), so with either the runs would be different
  computations, not the same one on different devices.
- Cached-feature path: global batch 16, four steps an epoch, shuffled.
- Image path: global batch 64 = the whole training set, one step an epoch.
  Keras draws one extra iterator of a `tf.data` input under a strategy (to
  build the model), which advances the pipeline's reshuffle, so the mirrored
  run sees the epochs' orders shifted by one; with one full batch the order
  cannot matter.

Measured on a 2-core CPU: differences below 3e-7 (float summation order).

The same subprocess checks `MCDropoutPredictor` on a model built under the
strategy: built afterwards it predicts like the model; built inside the scope
it refuses (Keras would run each replica on the whole batch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.cli import _config_values, build_parser
from training.config import TrainConfig
from training.distribute import make_strategy, read_tf_config, scale_for_replicas

ROOT = Path(__file__).resolve().parents[1]
# Max absolute differences allowed between the mirrored and the one-device run.
TOLERANCE = {"loss": 1e-5, "predictions": 1e-5, "weights": 1e-5}
# path -> (cache_features, global batch)
PATHS = {"cached_features": (True, 16), "images": (False, 64)}
TINY: dict[str, Any] = {
    "preprocessing": {"image_size": (32, 32)},
    "base_weights": "none",
    "head": {"hidden_units": (16,), "dropout_rates": (0.0,), "batch_norm": False},
    "epochs": 3,
    "early_stopping_patience": None,
    "optimizer": {"name": "adam", "learning_rate": 1e-3},
    "export": False,
}


def test_scaling_rule_multiplies_batch_and_learning_rates():
    config = TrainConfig.model_validate({**TINY, "batch_size": 8, "fine_tune_learning_rate": 1e-5})
    scaled = scale_for_replicas(config, 4)
    assert scaled.batch_size == 32  # global batch = per-replica batch x replicas
    assert scaled.optimizer.learning_rate == pytest.approx(4e-3)
    assert scaled.fine_tune_learning_rate == pytest.approx(4e-5)
    assert scale_for_replicas(config, 1) == config


def test_scaling_rule_can_keep_the_learning_rate():
    config = TrainConfig.model_validate({**TINY, "batch_size": 8, "scale_learning_rate": False})
    scaled = scale_for_replicas(config, 2)
    assert scaled.batch_size == 16
    assert scaled.optimizer.learning_rate == config.optimizer.learning_rate
    assert scaled.fine_tune_learning_rate == config.fine_tune_learning_rate


def test_default_strategy_is_one_replica():
    assert make_strategy("default").num_replicas_in_sync == 1


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"Invalid value for `strategy`: expected one of"):
        make_strategy("horovod")


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="multi_worker needs TF_CONFIG") as caught:
        make_strategy("multi_worker")
    assert '"cluster"' in str(caught.value)  # the example to copy


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        '{"task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
    ],
)
def test_invalid_tf_config_is_named(value):
    with pytest.raises(ValueError, match="multi_worker needs TF_CONFIG") as caught:
        read_tf_config({"TF_CONFIG": value})
    assert "received" in str(caught.value)


def test_valid_tf_config_is_read():
    value = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'
    assert read_tf_config({"TF_CONFIG": value})["task"]["index"] == 1


def test_strategy_flag_overrides_the_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("strategy: multi_worker\nbatch_size: 8\n")
    argv = ["train", "--config", str(config), "--strategy", "mirrored", "--no-scale-learning-rate"]
    values = _config_values(build_parser().parse_args(argv))
    parsed = TrainConfig.model_validate(values)
    assert (parsed.strategy, parsed.scale_learning_rate, parsed.batch_size) == (
        "mirrored",
        False,
        8,
    )
    assert TrainConfig().strategy == "default"
    assert TrainConfig().scale_learning_rate


def test_bad_strategy_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["train", "--strategy", "tpu"])
    assert caught.value.code == 2
    assert "--strategy" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mirrored_report() -> dict[str, Any]:
    """The subprocess's JSON report (it runs once for the tests below)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_distribute"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_on_two_logical_cpus_matches_one_device(mirrored_report):
    for path in PATHS:
        result = mirrored_report[path]
        assert result["replicas"] == 2, path
        assert result["mirrored_loss"][-1] < result["mirrored_loss"][0], path  # it trains
        for figure, limit in TOLERANCE.items():
            assert result[f"max_diff_{figure}"] <= limit, (path, figure, result)


def test_predictor_of_a_mirrored_model(mirrored_report):
    """Built after the scope it predicts like the model; built inside it, it refuses."""
    result = mirrored_report["predictor"]
    assert result["outside_max_diff"] <= 1e-5, result
    assert "expected no tf.distribute scope" in result["inside_error"], result


# ---- run in the subprocess -------------------------------------------------


def _two_logical_cpus() -> list[str]:
    """Split the CPU into two logical devices; must run before TF initializes devices."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    logical = tf.config.LogicalDeviceConfiguration
    tf.config.set_logical_device_configuration(cpu, [logical(), logical()])
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _digit_splits() -> Any:
    """64 training digits (whole global batches), 32 each for validation, calibration and
    test, at 32x32."""
    import numpy as np

    from models.config import PreprocessingConfig
    from training.data import Splits, load_dataset

    data = load_dataset("digits", PreprocessingConfig(image_size=(32, 32)))
    parts = (slice(0, 64), slice(64, 96), slice(96, 128), slice(128, 160))
    index = np.arange(len(data.labels))
    return Splits(*(data.subset(index[part]) for part in parts))


def _run(config: TrainConfig, splits: Any, strategy: Any) -> dict[str, Any]:
    import numpy as np

    from models.architecture import get_head
    from models.preprocessing import preprocess_batch
    from training.train import train_model

    model, history = train_model(config, splits, verbose=0, strategy=strategy)
    x = preprocess_batch(splits.test.images, config.preprocessing)
    return {
        "loss": np.array(history.logs["loss"]),
        "predictions": np.array(model(x, training=False)),
        "weights": np.concatenate([np.ravel(w) for w in get_head(model).get_weights()]),
    }


def _compare(path: str, splits: Any, devices: list[str]) -> dict[str, Any]:
    """One device at the global batch against two replicas at half of it (same rate)."""
    import numpy as np

    cache_features, batch = PATHS[path]
    values = {**TINY, "cache_features": cache_features, "scale_learning_rate": False}
    one = TrainConfig.model_validate({**values, "batch_size": batch})
    two = TrainConfig.model_validate({**values, "batch_size": batch // 2})
    mirrored = make_strategy("mirrored", devices)
    single, multi = _run(one, splits, make_strategy("default")), _run(two, splits, mirrored)
    diffs = {f"max_diff_{k}": float(np.abs(single[k] - multi[k]).max()) for k in TOLERANCE}
    return {
        **diffs,
        "replicas": mirrored.num_replicas_in_sync,
        "mirrored_loss": multi["loss"].tolist(),
    }


def _predictor_check(devices: list[str]) -> dict[str, Any]:
    """MCDropoutPredictor on a model built under MirroredStrategy, outside and inside it."""
    import numpy as np

    from models.mc_dropout import MCDropoutPredictor
    from tests.conftest import tiny_model

    strategy = make_strategy("mirrored", devices)
    with strategy.scope():
        model = tiny_model()
    x = np.random.default_rng(0).normal(0.0, 50.0, (5, 32, 32, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    outside = float(np.abs(MCDropoutPredictor(model).predict(x) - expected).max())
    try:
        with strategy.scope():
            MCDropoutPredictor(model)
        error = ""
    except ValueError as refused:
        error = str(refused)
    return {"outside_max_diff": outside, "inside_error": error}


def main() -> None:
    """Print one JSON line: the differences on the cached-feature and the image path,
    and the predictor check."""
    devices = _two_logical_cpus()
    splits = _digit_splits()
    report = {path: _compare(path, splits, devices) for path in PATHS}
    report["predictor"] = _predictor_check(devices)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
