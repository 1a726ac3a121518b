"""Quiet by default: no TensorFlow start-up noise, progress bars only on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from adapters.quiet import NOISE
from models.config import PreprocessingConfig
from training.base_maps import base_maps
from training.cli import build_parser
from training.data import Dataset
from training.progress import progress_bar

ROOT = Path(__file__).resolve().parents[1]
# What a machine without a GPU shows besides NOISE when it is not filtered.
ALARMING = ("absl", "cuinit", "cuda", "onednn", "cpu_feature_guard")

# Stands in for Keras (on another backend) loading TensorFlow: one noise line, one of ours.
FAKE_KERAS = """
import os, types
os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
os.write(2, b"a line of ours\\n")
if os.environ.get("FAKE_KERAS_BROKEN"):
    raise ImportError("broken Keras install")
backend = types.SimpleNamespace(backend=lambda: "fake")
"""


def fake_keras(tmp_path: Path) -> str:
    """A folder for PYTHONPATH with FAKE_KERAS as `keras`."""
    package = tmp_path / "fake" / "keras"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_KERAS)
    return str(package.parent)


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`args` in a fresh interpreter at the repo root, TF_CPP_MIN_LOG_LEVEL unset."""
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    clean |= {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true", **env}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300
    )


def test_a_real_command_prints_only_our_message_not_tensorflow_noise(tmp_path):
    result = run(["-m", "training.cli", "evaluate", "--model", "nothere:latest"], tmp_path)
    assert result.returncode == 1
    assert "uqserve evaluate:" in result.stderr and "nothere:latest" in result.stderr
    for line in result.stderr.splitlines():
        assert not any(word in line.lower() for word in ALARMING), line


def test_verbose_brings_tensorflow_logs_back(tmp_path):
    args = ["-m", "training.cli", "--verbose", "evaluate", "--model", "nothere:latest"]
    result = run(args, tmp_path)
    assert result.returncode == 1
    assert "uqserve evaluate:" in result.stderr
    assert any(marker in result.stderr for marker in NOISE)  # absl, oneDNN, cudart_stub here


@pytest.mark.parametrize(
    "code",
    ["from adapters.quiet import quiet_tensorflow; quiet_tensorflow()", "import service"],
    ids=["the command line's call", "a service worker's import"],
)
def test_noise_is_dropped_and_other_lines_kept(tmp_path, code):
    result = run(["-c", code], tmp_path, PYTHONPATH=fake_keras(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "a line of ours\n"


def test_a_failing_import_shows_everything(tmp_path):
    code = "from adapters.quiet import quiet_tensorflow; quiet_tensorflow()"
    result = run(["-c", code], tmp_path, PYTHONPATH=fake_keras(tmp_path), FAKE_KERAS_BROKEN="1")
    assert result.returncode == 1
    assert "Could not find cuda drivers" in result.stderr
    assert "a line of ours" in result.stderr
    assert "ImportError: broken Keras install" in result.stderr


def test_progress_shows_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    assert not progress_bar().disable
    assert progress_bar(quiet=True).disable
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert progress_bar().disable


def test_base_maps_counts_every_image_on_the_bar():
    images = np.random.default_rng(0).uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    data = Dataset(images, np.zeros(10, dtype=int), ("a",))
    base = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    bar = progress_bar(quiet=True)
    maps = base_maps(base, data, PreprocessingConfig(image_size=(32, 32)), 4, progress=bar)
    assert maps.shape == (10, 3)
    (task,) = bar.tasks
    assert task.completed == task.total == 10


def test_global_verbose_and_quiet_flags_parse():
    parser = build_parser()
    args = parser.parse_args(["--verbose", "compare", "--quiet"])
    assert args.verbose and args.quiet
    assert parser.parse_args(["evaluate", "--quiet"]).quiet
    assert not parser.parse_args(["evaluate"]).verbose
