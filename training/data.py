"""Datasets as in-memory pixel arrays in [0, 255], and a stratified seeded split."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from adapters.images import SUFFIXES, read_image
from models.card import ModelCard
from models.config import PreprocessingConfig
from models.preprocessing import rgb_at_size
from training.config import DataConfig, TrainConfig

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
# Debian's `dataset-fashion-mnist` package: the same four IDX files Keras downloads.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIR_ENV = "UQSERVE_FASHION_MNIST_DIR"
FASHION_MNIST_FILES = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)  # (images, labels) of train, then test
IDX_UNSIGNED_BYTE = 0x08


class DatasetError(RuntimeError):
    """A dataset could not be found or downloaded."""


@dataclass(frozen=True)
class Dataset:
    """Images (N, H, W[, C]) with pixels in [0, 255], integer labels (N,), class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def subset(self, index: np.ndarray) -> Dataset:
        """The images at `index`, same class names."""
        return Dataset(self.images[index], self.labels[index], self.class_names)


@dataclass(frozen=True)
class Splits:
    """Stratified parts of one dataset, each with one job: train fits, validation stops
    early and picks the OOD threshold, calibration calibrates the guarantees
    (conformal sets, risk control) and nothing else, test measures."""

    train: Dataset
    validation: Dataset
    calibration: Dataset
    test: Dataset


def _digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (values 0..16), scaled to 0..255: works offline."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)
    return Dataset(images, digits.target.astype(np.int64), tuple(str(i) for i in range(10)))


def _train_then_test(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], name: str
) -> Dataset:
    """Train then test as one dataset (float32 pixels, int64 labels): the split is ours."""
    names = {"mnist": tuple(str(i) for i in range(10)), "fashion_mnist": FASHION_MNIST_CLASSES}
    images = np.concatenate([train[0], test[0]]).astype(np.float32)
    labels = np.concatenate([train[1], test[1]]).reshape(-1).astype(np.int64)
    return Dataset(images, labels, names.get(name, CIFAR10_CLASSES))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzipped IDX array of unsigned bytes with `ndim` dimensions (the MNIST format).

    The header is big-endian: a magic number (two zero bytes, the data type
    code 0x08, the number of dimensions), then each dimension as uint32.
    Checked against the file's length so a truncated or foreign file is named,
    not reshaped into garbage.
    """
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"Could not read IDX file {path}: {error}") from error
    expected = bytes((0, 0, IDX_UNSIGNED_BYTE, ndim))
    if data[:4] != expected:
        raise DatasetError(
            f"Invalid IDX file {path}: expected magic number 0x{expected.hex()} (unsigned "
            f"bytes, {ndim} dimensions), received 0x{data[:4].hex()}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"Invalid IDX file {path}: expected a {header}-byte header ({ndim} dimensions), "
            f"received {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise DatasetError(
            f"Invalid IDX file {path}: expected {header + int(np.prod(shape))} bytes for "
            f"shape {shape}, received {len(data)} bytes"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _idx_part(folder: Path, images_file: str, labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    """One part (train or test): N 28x28 images and N labels 0..9, checked against each other."""
    images, labels = read_idx(folder / images_file, 3), read_idx(folder / labels_file, 1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(
            f"Invalid IDX file {folder / images_file}: expected images of 28x28 pixels, "
            f"received shape {images.shape}"
        )
    if len(labels) != len(images):
        raise DatasetError(
            f"Invalid IDX file {folder / labels_file}: expected {len(images)} labels (one per "
            f"image in {images_file}), received {len(labels)}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(
            f"Invalid IDX file {folder / labels_file}: expected labels 0..9, "
            f"received {int(labels.max())}"
        )
    return images, labels


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST's IDX files are looked for: `UQSERVE_FASHION_MNIST_DIR` if set,
    else Debian's package folder."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR).expanduser()


def has_idx_files(folder: Path) -> bool:
    """Whether `folder` holds all four Fashion-MNIST IDX files."""
    return all((folder / name).is_file() for pair in FASHION_MNIST_FILES for name in pair)


def load_fashion_mnist_idx(folder: Path) -> Dataset:
    """Fashion-MNIST from its four IDX files in `folder`: offline, and the same dataset
    (train then test, same order) as `keras.datasets.fashion_mnist`."""
    train, test = (_idx_part(folder, *names) for names in FASHION_MNIST_FILES)
    return _train_then_test(train, test, "fashion_mnist")


def _keras_dataset(name: str) -> Dataset:
    """mnist, fashion_mnist or cifar10 through `keras.datasets` (downloaded once, cached).

    Fashion-MNIST is read from local IDX files instead when `fashion_mnist_dir()`
    holds them (Debian's `dataset-fashion-mnist`), so it works offline.
    """
    if name == "fashion_mnist" and has_idx_files(fashion_mnist_dir()):
        return load_fashion_mnist_idx(fashion_mnist_dir())
    module = getattr(keras.datasets, name)
    try:
        train, test = module.load_data()
    except Exception as error:
        local = (
            f"Or put its four IDX files in {fashion_mnist_dir()} (Debian: apt install "
            f"dataset-fashion-mnist; elsewhere set {FASHION_MNIST_DIR_ENV}). "
            if name == "fashion_mnist"
            else ""
        )
        raise DatasetError(
            f"Could not load {name!r} through keras.datasets (no network and no cached copy?). "
            "Use --dataset digits (bundled) or --dataset PATH to a folder of class sub-folders. "
            f"{local}Cause: {error}"
        ) from error
    return _train_then_test(train, test, name)


def _folder(path: Path, preprocessing: PreprocessingConfig) -> Dataset:
    """One sub-folder per class (`image_dataset_from_directory` layout, class names sorted).

    Each file is decoded by the service's own decoder (`adapters.images`: EXIF
    orientation, 16-bit, CMYK, palette, first frame) and brought to the
    model's size by the first half of the shared preprocessing, so a model is
    trained on exactly what serving makes of the same file.
    """
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, label) for label, name in enumerate(classes)
             for f in sorted((path / name).rglob("*")) if f.suffix.lower() in SUFFIXES]  # fmt: skip
    if not files:
        raise DatasetError(f"No images ({', '.join(SUFFIXES)}) in class sub-folders of {path}")
    images = [
        keras.ops.convert_to_numpy(rgb_at_size(read_image(f)[None], preprocessing))[0]
        for f, _ in files
    ]
    labels = np.array([label for _, label in files], np.int64)
    return Dataset(np.stack(images).astype(np.float32), labels, tuple(classes))


def load_dataset(name: str, preprocessing: PreprocessingConfig) -> Dataset:
    """A dataset by name (digits, mnist, fashion_mnist, cifar10) or folder path."""
    if name == "digits":
        return _digits()
    if name in KERAS_DATASETS:
        return _keras_dataset(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder(path, preprocessing)
    raise DatasetError(
        f"Invalid value for `dataset`: expected digits, {', '.join(KERAS_DATASETS)} or a folder "
        f"of class sub-folders, received dataset={name!r}"
    )


def _stratified(labels: np.ndarray, size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(labels))
    first, second = train_test_split(index, test_size=size, stratify=labels, random_state=seed)
    return np.sort(first), np.sort(second)


def split_dataset(dataset: Dataset, config: DataConfig, seed: int) -> Splits:
    """Optional stratified subsample (`limit`), then train / validation / calibration / test.

    Test is carved first, then calibration, then validation, each stratified
    and seeded, so the same config and seed always give the same parts.
    """
    if config.limit is not None and config.limit < len(dataset.labels):
        _, keep = _stratified(dataset.labels, config.limit, seed)
        dataset = dataset.subset(keep)
    rest, test = _stratified(dataset.labels, config.test_fraction, seed)
    remaining, left = dataset.subset(rest), 1.0 - config.test_fraction
    calibration = remaining.subset(np.array([], dtype=np.int64))
    if config.calibration_fraction > 0.0:
        rest, held = _stratified(remaining.labels, config.calibration_fraction / left, seed)
        remaining, calibration = remaining.subset(rest), remaining.subset(held)
        left -= config.calibration_fraction
    train, validation = _stratified(remaining.labels, config.validation_fraction / left, seed)
    return Splits(
        remaining.subset(train), remaining.subset(validation), calibration, dataset.subset(test)
    )


def training_config(card: ModelCard) -> TrainConfig:
    """The training config saved with a model. A model trained before calibration
    splits existed had none: its config reads as `calibration_fraction` 0, so its
    splits rebuild exactly as they were."""
    values = dict(card.training)
    data = dict(values.get("data") or {})
    data.setdefault("calibration_fraction", 0.0)
    return TrainConfig.model_validate({**values, "data": data})


def held_out_split(card: ModelCard) -> Dataset:
    """An exported model's own test split, rebuilt from the training config saved with it.

    The split is seeded and stratified, so it is exactly the one training
    held out: `uqserve evaluate` and the precision check measure on it.
    """
    config = training_config(card)
    data = load_dataset(config.data.dataset, config.preprocessing)
    return split_dataset(data, config.data, config.seed).test
