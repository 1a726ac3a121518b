"""The one model-store reader and writer: a `.keras` network, its card and its density.

`uqserve train` writes a model here (`export_model`); `uqserve predict`,
`evaluate`, the benchmarks and the service read it back (`StoredModel`). Every
failure to find or read a model names the tag, the file and the fix
(`ModelLoadError`), never a bare traceback from deep inside Keras or h5py.
The network is loaded in Keras safe mode: no code runs from the file.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import bentoml
import keras
import numpy as np

from adapters.backend import set_backend
from models.card import CARD_KEY, DENSITY_FILE, MODEL_FILE, ModelCard
from models.config import BaseDtype
from models.density import OODScore
from models.mc_dropout import MCDropoutPredictor

CARD_FILE = "model_card.json"  # the card again, readable next to the network
RETRAIN = "re-export it with `uqserve train`, or set UQSERVE_MODEL (--model) to another tag"
LABELS = {"framework": "keras", "task": "image-classification", "uncertainty": "mc-dropout"}


class ModelLoadError(RuntimeError):
    """A model is missing, incomplete or corrupt; the message says which, where, and the fix."""


class ModelNotFoundError(ModelLoadError):
    """The tag is not in the model store."""


class _Stored(Protocol):
    """What both `bentoml.Model` and a service's `bentoml.models.BentoModel` offer."""

    tag: Any
    info: Any

    def path_of(self, item: str) -> str: ...


def get_model(tag: str) -> bentoml.Model:
    """The model store entry of `tag` ('name:version' or 'name:latest')."""
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise ModelNotFoundError(
            f"model {tag!r} is not in the BentoML model store. Train it with `make train` "
            "(or `uqserve train`), or name a tag that `bentoml models list` shows "
            "(--model, or UQSERVE_MODEL for the service)."
        ) from None


@dataclass(frozen=True)
class StoredModel:
    """A model in the store, its card read and its archive checked; the network loads lazily."""

    tag: str  # always 'name:version'
    card: ModelCard
    model_file: Path
    density_file: Path

    @classmethod
    def open(cls, tag: str) -> StoredModel:
        """Find `tag` in the model store and check it (cheap: no weights are read)."""
        return cls.of(get_model(tag))

    @classmethod
    def of(cls, stored: _Stored) -> StoredModel:
        """Check an entry already found (the service's `BentoModel`, say)."""
        tag = str(stored.tag)
        card = load_card(stored.info.metadata.get(CARD_KEY), tag)
        model_file = Path(stored.path_of(MODEL_FILE))
        check_archive(model_file, tag)
        return cls(tag, card, model_file, Path(stored.path_of(DENSITY_FILE)))

    def network(self) -> keras.Model:
        """The Keras model, loaded in safe mode."""
        return load_network(self.model_file, self.tag)

    def predictor(
        self, base_dtype: BaseDtype = "float32", batch_size: int = 32
    ) -> MCDropoutPredictor:
        """The network wrapped for Monte Carlo dropout, with the card's temperature: its
        samples are the ones served. `batch_size`: most images in one compiled call."""
        return load_predictor(
            self.model_file, self.tag, base_dtype, self.card.temperature, batch_size
        )

    def density(self) -> OODScore | None:
        """The OOD score saved with the network, or None for a model without one."""
        return load_density(self.density_file, self.tag)


def require_model(tag: str) -> None:
    """Stop start-up (SystemExit) if the model is missing, or its card or file is unreadable.

    Cheap checks only (the Keras archive's table of contents, not its weights),
    so `bentoml serve` and `bentoml build` fail at once with a clear message.
    """
    try:
        StoredModel.open(tag)
    except ModelLoadError as error:
        raise SystemExit(f"uqserve: {error}") from None


def check_archive(path: str | Path, tag: str) -> None:
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


def load_density(path: str | Path, tag: str) -> OODScore | None:
    """The feature-density OOD score saved with the network, if the model has one."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as arrays:
            return OODScore.from_arrays(dict(arrays))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"model {tag!r}: density file {path} is corrupt ({error}); {RETRAIN}"
        ) from None


def load_network(path: str | Path, tag: str) -> keras.Model:
    """The Keras model in safe mode: a file that would run code on load (a Lambda layer's
    pickled bytecode, say) is refused. The backend places it on a GPU when there is one."""
    check_archive(path, tag)
    enable_memory_growth()
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras, h5py and zipfile raise many types
        raise ModelLoadError(f"model {tag!r}: cannot load {path} ({error}); {RETRAIN}") from None


def load_predictor(
    path: str | Path,
    tag: str,
    base_dtype: BaseDtype = "float32",
    temperature: float = 1.0,
    batch_size: int = 32,
) -> MCDropoutPredictor:
    """The Keras model in safe mode, wrapped for Monte Carlo dropout."""
    network = load_network(path, tag)
    try:
        return MCDropoutPredictor(
            network, batch_size=batch_size, base_dtype=base_dtype, temperature=temperature
        )
    except ValueError as error:  # a head the predictor cannot sample, say
        raise ModelLoadError(f"model {tag!r}: {error}") from None


def enable_memory_growth() -> list[str]:
    """Let the backend allocate GPU memory as needed, not all of it at start; returns the GPUs.

    TensorFlow is told per GPU, before first use. JAX reads
    XLA_PYTHON_CLIENT_PREALLOCATE when it first starts a device: it is set to
    false here (as `adapters.backend.select_backend` does) unless the operator
    set it or XLA_PYTHON_CLIENT_MEM_FRACTION.
    """
    backend = keras.backend.backend()
    if backend == "jax":  # read when JAX first starts a device, so not too late here
        set_backend(os.environ, "jax")
        jax = importlib.import_module("jax")
        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    if backend != "tensorflow":
        return []
    tf = importlib.import_module("tensorflow")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]


def framework_versions() -> dict[str, str]:
    """Versions recorded with a model, to tell what it was trained with."""
    backend = keras.backend.backend()
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        backend: importlib.import_module(backend).__version__,
        "bentoml": bentoml.__version__,
    }


def export_model(
    model: keras.Model, card: ModelCard, name: str, density: OODScore | None = None
) -> str:
    """Save the network, its card and its feature density into the model store; returns the tag.

    The card is written here only: whole, as JSON, in the metadata (what every
    reader reads), as `model_card.json` next to the network, and a few of its
    fields as plain metadata for `bentoml models get`.
    """
    metadata = {
        CARD_KEY: card.model_dump_json(),  # whole card; metadata values may not be None
        "class_names": list(card.class_names),
        "input_shape": list(card.input_shape),
        "mc_samples": card.mc_samples,
        "metrics": dict(card.metrics),
    }
    with bentoml.models.create(name, labels=LABELS, metadata=metadata) as stored:
        model.save(stored.path_of(MODEL_FILE))
        if density is not None:
            np.savez(stored.path_of(DENSITY_FILE), **density.to_arrays())
        Path(stored.path_of(CARD_FILE)).write_text(
            json.dumps(card.model_dump(mode="json"), indent=2)
        )
    return str(stored.tag)


def update_metadata(tag: str, key: str, values: dict[str, float]) -> None:
    """Add or replace one metadata entry of a stored model (e.g. evaluation figures)."""
    stored = get_model(tag)
    stored.info.metadata[key] = values
    stored.flush()
