"""One model, two Keras backends: choosing the backend, agreement across backends, and the
bento served on JAX.

The cross-backend checks run the other backend in a subprocess (Keras picks its
backend once per process): a model saved here is loaded there. Deterministic
probabilities agree within float32 rounding; the random draws differ (NumPy masks on
TensorFlow, device keys on JAX), so MC means and variances agree within sampling error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest

from adapters.backend import requested_backend, select_backend, set_backend
from models.mc_dropout import MCDropoutPredictor
from tests.backends import BACKEND
from tests.conftest import randomize_bn_statistics, tiny_model
from tests.service_helpers import png
from tests.serving import ROOT, batch_counts, predict_file, served

OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"
SAMPLES = 2000

# Run in the other backend: load the saved model, answer the saved images.
OTHER_SIDE = """
import sys
import numpy as np
from adapters.backend import select_backend
backend = select_backend()
import keras
import models.architecture  # registers the head's custom objects
from models.mc_dropout import MCDropoutPredictor
model = keras.saving.load_model(sys.argv[1], compile=False, safe_mode=True)
predictor = MCDropoutPredictor(model)
images = np.load(sys.argv[2])
np.savez(sys.argv[3], predict=predictor.predict(images),
         samples=predictor.sample(images, int(sys.argv[4]), seed=0), backend=backend)
"""


def test_the_backend_comes_from_uqserve_keras_backend_then_keras_backend():
    assert requested_backend({}) == "tensorflow"
    assert requested_backend({"KERAS_BACKEND": "jax"}) == "jax"
    both = {"KERAS_BACKEND": "tensorflow", "UQSERVE_KERAS_BACKEND": "JAX"}
    assert requested_backend(both) == "jax"
    environ = {"UQSERVE_KERAS_BACKEND": BACKEND}
    assert select_backend(environ) == BACKEND and environ["KERAS_BACKEND"] == BACKEND


def test_an_unknown_backend_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match=r"`UQSERVE_KERAS_BACKEND`.*received.*'torch'"):
        requested_backend({"UQSERVE_KERAS_BACKEND": "torch"})


def test_a_loaded_keras_cannot_switch_backend():
    with pytest.raises(RuntimeError, match=f"already loaded on '{BACKEND}'"):
        select_backend({"UQSERVE_KERAS_BACKEND": OTHER})


def test_jax_allocates_gpu_memory_as_needed_unless_the_operator_chose():
    environ = {"KERAS_BACKEND": "jax"}
    set_backend(environ, "jax")
    assert environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    chosen = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    set_backend(chosen, "jax")
    assert chosen == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "KERAS_BACKEND": "jax"}
    on_tensorflow: dict[str, str] = {}
    set_backend(on_tensorflow, "tensorflow")
    assert on_tensorflow == {"KERAS_BACKEND": "tensorflow"}


def _other_backend(tmp_path: Path, model: keras.Model, images: np.ndarray) -> dict:
    """The other backend's deterministic answer and SAMPLES draws of the same saved model."""
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "UQSERVE_KERAS_BACKEND": OTHER, "PYTHONPATH": str(ROOT)}
    args = [str(tmp_path / name) for name in ("model.keras", "images.npy", "other.npz")]
    done = subprocess.run(
        [sys.executable, "-c", OTHER_SIDE, *args, str(SAMPLES)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp_path / "other.npz"))


def test_a_saved_model_answers_alike_on_both_backends(tmp_path, images):
    model = tiny_model(seed=3)
    randomize_bn_statistics(model, seed=3)
    other = _other_backend(tmp_path, model, images)
    assert str(other["backend"]) == OTHER
    predictor = MCDropoutPredictor(model)
    np.testing.assert_allclose(other["predict"], predictor.predict(images), atol=1e-5)
    here, there = predictor.sample(images, SAMPLES, seed=0), other["samples"]  # (B, T, C)
    assert not np.allclose(here, there)  # other draws, same distribution:
    for statistic in (_mean, _variance):
        value_here, error_here = statistic(here)
        value_there, error_there = statistic(there)
        bound = 5.0 * np.hypot(error_here, error_there) + 1e-4
        assert np.all(np.abs(value_here - value_there) <= bound), statistic.__name__


def _mean(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and class: the MC mean (B, C) and its standard error."""
    return samples.mean(axis=1), samples.std(axis=1) / np.sqrt(samples.shape[1])


def _variance(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and class: the predictive variance (B, C) and its standard error,
    sqrt((m4 - var^2) / T) from the fourth central moment."""
    centred = samples - samples.mean(axis=1, keepdims=True)  # (B, T, C)
    variance = (centred**2).mean(axis=1)
    fourth = (centred**4).mean(axis=1)
    return variance, np.sqrt(np.maximum(fourth - variance**2, 0.0) / samples.shape[1])


@pytest.mark.e2e
def test_the_bento_serves_on_jax_batched_and_unmixed(bento, tag, tmp_path):
    """The CPU bento with UQSERVE_KERAS_BACKEND=jax: /metadata names the backend, and
    concurrent requests, batched together, get the answers they get alone (within
    float32 rounding: each padded batch size is its own compiled program)."""
    with served(bento, tag, tmp_path, UQSERVE_KERAS_BACKEND="jax") as (base, _):
        assert httpx.get(f"{base}/metadata").json()["keras_backend"] == "jax"
        blobs = [png(300 + i) for i in range(8)]
        alone = [predict_file(base, blob, i)["predictions"][0] for i, blob in enumerate(blobs)]
        images_before, batches_before = batch_counts(base)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = pool.map(lambda i: predict_file(base, blobs[i % 8], i % 8), range(24))
            together = [answer["predictions"][0] for answer in answers]
        images_after, batches_after = batch_counts(base)
        log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert images_after - images_before == 24  # every image ran exactly once
    assert batches_after - batches_before < 24  # some batches held several requests
    for index, answer in enumerate(together):
        expected = alone[index % 8]
        assert abs(sum(answer["probabilities"]) - 1.0) < 1e-5
        np.testing.assert_allclose(answer["probabilities"], expected["probabilities"], atol=1e-5)
        np.testing.assert_allclose(answer["variance"], expected["variance"], atol=1e-5)


def _uqserve(*args: str, **env: str) -> subprocess.CompletedProcess:
    uqserve = Path(sys.executable).parent / "uqserve"
    return subprocess.run(
        [str(uqserve), *args], env={**os.environ, **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_training_refuses_the_jax_backend_and_says_the_fix():
    done = _uqserve("train", "--epochs", "1", UQSERVE_KERAS_BACKEND="jax")
    assert done.returncode == 1
    assert "trains on TensorFlow" in done.stderr and "unset UQSERVE_KERAS_BACKEND" in done.stderr
    refused = _uqserve("predict", "--help", UQSERVE_KERAS_BACKEND="torch")
    assert refused.returncode == 2
    assert "Invalid value for `UQSERVE_KERAS_BACKEND`" in refused.stderr


def test_the_jax_path_never_imports_tensorflow():
    """Everything the JAX bento runs, in a process on JAX: the JAX GPU image has no
    TensorFlow. (Not `tiny_model`: Keras' seed helper seeds TensorFlow when it can.)"""
    script = """
import sys
import numpy as np
from adapters.backend import select_backend
select_backend()
import keras
from adapters import model_store
from models.answer import sample_and_score
from models.architecture import build_model
from models.config import HeadConfig, ModelConfig, PreprocessingConfig
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import Preprocessor
from service import batching, jobs, metadata, schemas
config = ModelConfig(num_classes=3, preprocessing=PreprocessingConfig(image_size=(32, 32)),
                     head=HeadConfig(hidden_units=(8,), dropout_rates=(0.5,)))
predictor = MCDropoutPredictor(build_model(config, base_weights="none"))
images = Preprocessor(config.preprocessing)([np.zeros((9, 9, 3), np.uint8)])
draws, scores = sample_and_score(predictor, None, images, [3], [(0, 0)])
model_store.enable_memory_growth()
print(keras.backend.backend(), draws[0].shape, "tensorflow" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "UQSERVE_KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["jax", "(3,", "3)", "False"]
