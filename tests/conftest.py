"""Shared fixtures: a private model store, and a tiny VGG16 (random weights, 32x32)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before BentoML is imported anywhere: tests never touch the user's model store.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="uqserve-bentoml-")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Before prometheus_client is imported: lets /metrics work in-process.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="uqserve-prom-"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

import keras
import numpy as np
import pytest

from models.architecture import build_model
from models.config import HeadConfig, ModelConfig, PreprocessingConfig

atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)
TINY = PreprocessingConfig(image_size=(32, 32))
_GIT_BEFORE = pytest.StashKey[set[str] | None]()


def tiny_model(head: HeadConfig | None = None, num_classes: int = 4, seed: int = 0) -> keras.Model:
    """A 32x32 VGG16 with random weights (`weights=None`) and a small head."""
    keras.utils.set_random_seed(seed)
    head = head or HeadConfig(hidden_units=(16,), dropout_rates=(0.5,), input_dropout=0.3)
    config = ModelConfig(num_classes=num_classes, preprocessing=TINY, head=head)
    return build_model(config, base_weights="none")


def randomize_bn_statistics(model: keras.Model, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.get_layer("head").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 1.0, size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))


def bn_statistics(model: keras.Model) -> list[np.ndarray]:
    """Copies of every head BatchNormalization's moving mean and variance."""
    return [
        np.array(weight)
        for layer in model.get_layer("head").layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for weight in (layer.moving_mean, layer.moving_variance)
    ]


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Six preprocessed-looking 32x32 RGB inputs."""
    rng = np.random.default_rng(1)
    return rng.normal(0.0, 60.0, (6, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="session")
def model() -> keras.Model:
    """A tiny model with BN and two dropout layers, with non-trivial BN statistics."""
    built = tiny_model()
    randomize_bn_statistics(built)
    return built


SERVICE_LIMITS = {
    "UQSERVE_MAX_IMAGES": "4",
    "UQSERVE_MAX_SAMPLES": "50",
    "UQSERVE_MAX_PIXELS": "100000",
    "UQSERVE_MAX_FILE_BYTES": "300000",
    "UQSERVE_MAX_BATCH_SIZE": "8",
    "UQSERVE_MAX_REQUEST_BYTES": "1000000",
    "UQSERVE_DIGEST_INTERVAL_S": "0",  # every /weights_digest a fresh hash: the tests compare
}


@pytest.fixture(scope="session")
def tag() -> str:
    """A tiny model exported to the test model store, served by `client`."""
    from tests.service_helpers import export_tiny

    return export_tiny()


@pytest.fixture(scope="session")
def client(tag):
    """BentoML's ASGI app of the service, in-process (one per test session)."""
    from starlette.testclient import TestClient

    saved = dict(os.environ)
    os.environ.update({"UQSERVE_MODEL": tag, **SERVICE_LIMITS})
    try:  # the settings are read once, at import; later subprocesses must not inherit them
        from service.service import ApiService
    finally:
        os.environ.clear()
        os.environ.update(saved)

    with TestClient(ApiService.to_asgi(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def bento(tag) -> str:
    """The CPU bento serving the tiny model, built once per test session."""
    from deploy.container.bento import ROOT, build_bento

    return build_bento(tag, ROOT / "bentofile.yaml")


@pytest.fixture(scope="session")
def served_bento(bento, tag, tmp_path_factory):
    """The built bento served by `bentoml serve` in a subprocess; yields (base URL, its log)."""
    from tests.serving import served

    workdir = tmp_path_factory.mktemp("serve")
    with served(bento, tag, workdir, UQSERVE_MAX_LATENCY_MS="60000") as (base, _):
        yield base, workdir / "serve.log"


API_KEY, ADMIN_KEY = "test-api-key-" + "k" * 16, "test-admin-key-" + "a" * 16


@pytest.fixture(scope="session")
def keyed_server(bento, tag, tmp_path_factory):
    """The built bento served with API keys (`API_KEY`, admin `ADMIN_KEY`) and the test limits;
    yields (base URL, its log)."""
    from tests.serving import served

    workdir = tmp_path_factory.mktemp("serve-keys")
    env = {**SERVICE_LIMITS, "UQSERVE_API_KEYS": API_KEY, "UQSERVE_ADMIN_KEYS": ADMIN_KEY}
    with served(bento, tag, workdir, **env) as (base, _):
        yield base, workdir / "serve.log"


@pytest.fixture(scope="session")
def server(served_bento) -> str:
    """The base URL of `served_bento`."""
    return served_bento[0]


def _untracked_or_changed() -> set[str] | None:
    """`git status --porcelain` lines of the checkout (ignored files left out), or None
    outside a git checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_GIT_BEFORE] = _untracked_or_changed()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test wrote anything git would pick up: outputs go to tmp or ignored
    folders, never into the tree."""
    before = session.config.stash.get(_GIT_BEFORE, None)
    after = _untracked_or_changed()
    if before is None or after is None or not (new := sorted(after - before)):
        return
    print("\ntests wrote files that git would pick up:\n  " + "\n  ".join(new))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
