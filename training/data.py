"""Datasets as in-memory pixel arrays in [0, 255], and a stratified seeded split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from training.config import DataConfig

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")


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
    """Stratified train / validation / test parts of one dataset."""

    train: Dataset
    validation: Dataset
    test: Dataset


def _digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (values 0..16), scaled to 0..255: works offline."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)
    return Dataset(images, digits.target.astype(np.int64), tuple(str(i) for i in range(10)))


def _keras_dataset(name: str) -> Dataset:
    """mnist, fashion_mnist or cifar10 through `keras.datasets` (downloaded once, cached)."""
    module = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:
        raise DatasetError(
            f"Could not load {name!r} through keras.datasets (no network and no cached copy?). "
            "Use --dataset digits (bundled) or --dataset PATH to a folder of class sub-folders. "
            f"Cause: {error}"
        ) from error
    names = {"mnist": tuple(str(i) for i in range(10)), "fashion_mnist": FASHION_MNIST_CLASSES}
    images = np.concatenate([x_train, x_test]).astype(np.float32)
    labels = np.concatenate([y_train, y_test]).reshape(-1).astype(np.int64)
    return Dataset(images, labels, names.get(name, CIFAR10_CLASSES))


def _folder(path: Path, image_size: tuple[int, int]) -> Dataset:
    """One sub-folder per class (`image_dataset_from_directory`), resized at load."""
    dataset = keras.utils.image_dataset_from_directory(
        path, labels="inferred", batch_size=None, image_size=image_size, shuffle=False
    )
    images, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise DatasetError(f"No images found under {path}")
    return Dataset(np.stack(images), np.asarray(labels, np.int64), tuple(dataset.class_names))


def load_dataset(name: str, image_size: tuple[int, int]) -> Dataset:
    """A dataset by name (digits, mnist, fashion_mnist, cifar10) or folder path."""
    if name == "digits":
        return _digits()
    if name in KERAS_DATASETS:
        return _keras_dataset(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder(path, image_size)
    raise DatasetError(
        f"Invalid value for `dataset`: expected digits, {', '.join(KERAS_DATASETS)} or a folder "
        f"of class sub-folders, received dataset={name!r}"
    )


def _stratified(labels: np.ndarray, size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(labels))
    first, second = train_test_split(index, test_size=size, stratify=labels, random_state=seed)
    return np.sort(first), np.sort(second)


def split_dataset(dataset: Dataset, config: DataConfig, seed: int) -> Splits:
    """Optional stratified subsample (`limit`), then train / validation / test."""
    if config.limit is not None and config.limit < len(dataset.labels):
        _, keep = _stratified(dataset.labels, config.limit, seed)
        dataset = dataset.subset(keep)
    rest, test = _stratified(dataset.labels, config.test_fraction, seed)
    remaining = dataset.subset(rest)
    val_share = config.validation_fraction / (1.0 - config.test_fraction)
    train, validation = _stratified(remaining.labels, val_share, seed)
    return Splits(remaining.subset(train), remaining.subset(validation), dataset.subset(test))
