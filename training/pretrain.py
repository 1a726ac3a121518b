"""Unsupervised pretraining of the conv base (Géron ch. 11, "pretraining on an auxiliary task").

A denoising autoencoder: the VGG16 base encodes a noisy image, a small
transposed-convolution decoder reconstructs the clean (preprocessed) image.
Labels are never used. The encoder's weights are written as a `.weights.h5`
file that `--base-weights` accepts.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from pydantic import Field, field_validator

from models.backbone import build_base
from models.config import Frozen, PreprocessingConfig
from models.preprocessing import preprocess_batch
from training.config import default_base_weights
from training.data import load_dataset

SCALE = 128.0  # caffe-mode pixels lie within about ±150; this brings targets near [-1, 1]


class PretrainConfig(Frozen):
    """A pretraining run."""

    dataset: str = "digits"
    limit: int | None = Field(None, ge=1)
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    base_weights: str = Field(default_factory=default_base_weights)
    noise_stddev: float = Field(0.1, ge=0.0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    seed: int = 42
    output: Path = Path("runs/pretrained_vgg16.weights.h5")

    @field_validator("output")
    @classmethod
    def _weights_suffix(cls, output: Path) -> Path:
        if not str(output).endswith(".weights.h5"):
            raise ValueError(f"expected a name ending in .weights.h5, received output={output}")
        return output


def build_autoencoder(encoder: keras.Model, noise_stddev: float) -> keras.Model:
    """Noise -> encoder -> five stride-2 transposed convs back to (H, W, 3)."""
    height, width, _ = encoder.input.shape[1:]
    inputs = keras.Input(shape=(height, width, 3))
    x = keras.layers.GaussianNoise(noise_stddev)(inputs)
    x = encoder(x)
    for filters in (256, 128, 64, 32, 16):
        x = keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(
            x
        )
    x = keras.layers.Resizing(height, width)(x)
    outputs = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(inputs, outputs, name="denoising_autoencoder")


def _inputs(config: PretrainConfig) -> np.ndarray:
    """Preprocessed images scaled by 1/SCALE; labels are discarded."""
    images = load_dataset(config.dataset, config.preprocessing).images
    if config.limit is not None:
        images = np.random.default_rng(config.seed).permutation(images)[: config.limit]
    chunks = [
        keras.ops.convert_to_numpy(preprocess_batch(images[i : i + 256], config.preprocessing))
        for i in range(0, len(images), 256)
    ]
    return np.concatenate(chunks) / SCALE


def pretrain(config: PretrainConfig, verbose: int = 1) -> Path:
    """Train the autoencoder; write the encoder (the VGG16 base) weights."""
    keras.utils.set_random_seed(config.seed)
    encoder = build_base((*config.preprocessing.image_size, 3), config.base_weights)
    encoder.trainable = True
    autoencoder = build_autoencoder(encoder, config.noise_stddev)
    autoencoder.compile(keras.optimizers.Adam(config.learning_rate), loss="mse")
    x = _inputs(config)
    autoencoder.fit(x, x, batch_size=config.batch_size, epochs=config.epochs, verbose=verbose)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    encoder.save_weights(config.output)
    return config.output
