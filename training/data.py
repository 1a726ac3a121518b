"""Datasets as in-memory pixel arrays in [0, 255], and a stratified seeded split."""

from __future__ import annotations

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
