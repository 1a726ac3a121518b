"""The served model: presence check, card and Keras model from the model store.

Every failure to find or read the model stops start-up with a message that
names the tag, the file and the problem (`ModelLoadError`), never a bare
traceback from deep inside Keras or h5py.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import bentoml
import keras
import numpy as np
import tensorflow as tf

from models.card import CARD_KEY, MODEL_FILE, ModelCard
from models.density import FeatureDensity
from models.mc_dropout import MCDropoutPredictor

RETRAIN = "re-export it with `uqserve train`, or set UQSERVE_MODEL to another tag"


class ModelLoadError(RuntimeError):
    """The served model is missing, incomplete or corrupt; the message says which and where."""


def require_model(tag: str) -> None:
    """Stop start-up (SystemExit) if the model is missing, or its card or file is unreadable.

    Cheap checks only (the Keras archive's table of contents, not its weights),
    so `bentoml serve` and `bentoml build` fail at once with a clear message.
    """
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise SystemExit(
            f"uqserve: model {tag!r} is not in the BentoML model store. Train it with "
            "`make train` (or `uqserve train`), or set UQSERVE_MODEL to a tag that "
            "`bentoml models list` shows."
        ) from None
    try:
        load_card(model.info.metadata.get(CARD_KEY), tag)
        check_archive(model.path_of(MODEL_FILE), tag)
    except ModelLoadError as error:
        raise SystemExit(f"uqserve: {error}") from None


def check_archive(path: str, tag: str) -> None:
    """The file is a Keras archive (a zip holding config.json and the weights)."""
    if not Path(path).is_file():
        raise ModelLoadError(f"model {tag!r}: model file {path} is missing; {RETRAIN}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(
            f"model {tag!r}: model file {path} is not a Keras archive ({error}); {RETRAIN}"
        ) from None
    if not {"config.json", "model.weights.h5"} <= names:
        raise ModelLoadError(
            f"model {tag!r}: model file {path} lacks config.json or model.weights.h5; {RETRAIN}"
        )


def load_card(card_json: str | None, tag: str) -> ModelCard:
    """The model card saved as JSON in the model's metadata."""
    if card_json is None:
        raise ModelLoadError(f"model {tag!r} has no model card in its metadata; {RETRAIN}")
    try:
        return ModelCard.model_validate_json(card_json)
    except ValueError as error:
        raise ModelLoadError(
            f"model {tag!r}: its model card is invalid ({error}); {RETRAIN}"
        ) from None


def load_density(path: str, tag: str) -> FeatureDensity | None:
    """The feature-density OOD model saved with the network, if the model has one."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as arrays:
            return FeatureDensity.from_arrays(dict(arrays))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"model {tag!r}: density file {path} is corrupt ({error}); {RETRAIN}"
        ) from None


def enable_memory_growth() -> list[str]:
    """On a GPU, allocate memory as needed instead of all of it; returns the GPUs seen."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]


def load_predictor(path: str, tag: str, base_dtype: str = "float32") -> MCDropoutPredictor:
    """The Keras model in safe mode (no code runs from the file), wrapped for MC dropout.

    Safe mode refuses a file that would run code on load (a Lambda layer's
    pickled bytecode, say). TensorFlow places the model on the GPU when there
    is one, else on the CPU.
    """
    check_archive(path, tag)
    enable_memory_growth()
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras, h5py and zipfile raise many types
        raise ModelLoadError(f"model {tag!r}: cannot load {path} ({error}); {RETRAIN}") from None
    return MCDropoutPredictor(model, base_dtype=base_dtype)
