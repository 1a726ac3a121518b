"""The served model: presence check, card and Keras model from the model store."""

from __future__ import annotations

from pathlib import Path

import bentoml
import keras
import numpy as np
import tensorflow as tf

from models.card import ModelCard
from models.density import FeatureDensity
from models.mc_dropout import MCDropoutPredictor


def require_model(tag: str) -> None:
    """Stop start-up with a message naming the tag and how to train it, if it is missing."""
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise SystemExit(
            f"uqserve: model {tag!r} is not in the BentoML model store. Train it with "
            "`make train` (or `uqserve train`), or set UQSERVE_MODEL to a tag that "
            "`bentoml models list` shows."
        ) from None


def load_card(card_json: str) -> ModelCard:
    """The model card saved as JSON in the model's metadata."""
    return ModelCard.model_validate_json(card_json)


def load_density(path: str) -> FeatureDensity | None:
    """The feature-density OOD model saved with the network, if the model has one."""
    if not Path(path).is_file():
        return None
    with np.load(path) as arrays:
        return FeatureDensity.from_arrays(dict(arrays))


def enable_memory_growth() -> list[str]:
    """On a GPU, allocate memory as needed instead of all of it; returns the GPUs seen."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]


def load_predictor(path: str) -> MCDropoutPredictor:
    """The Keras model in safe mode (no code runs from the file), wrapped for MC dropout.

    TensorFlow places the model on the GPU when there is one, else on the CPU.
    """
    enable_memory_growth()
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return MCDropoutPredictor(model)
