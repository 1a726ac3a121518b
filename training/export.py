"""Export to, and load from, the BentoML model store (a `.keras` file plus metadata)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import bentoml
import keras
import numpy as np
import tensorflow as tf

from models.card import CARD_KEY, DENSITY_FILE, MODEL_FILE, ModelCard
from models.density import FeatureDensity

CONFIG_FILE = "model_card.json"


class ModelNotFoundError(RuntimeError):
    """The requested tag is not in the model store."""


def framework_versions() -> dict[str, str]:
    """Versions recorded with a model, to tell what it was trained with."""
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "bentoml": bentoml.__version__,
    }


def export_model(
    model: keras.Model, card: ModelCard, name: str, density: FeatureDensity | None = None
) -> str:
    """Save the model, its card and its feature density into the model store; returns the tag."""
    metadata = {
        CARD_KEY: card.model_dump_json(),  # whole card; metadata values may not be None
        "class_names": list(card.class_names),
        "input_shape": list(card.input_shape),
        "mc_samples": card.mc_samples,
        "metrics": dict(card.metrics),
    }
    labels = {"framework": "keras", "task": "image-classification", "uncertainty": "mc-dropout"}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as bento_model:
        model.save(bento_model.path_of(MODEL_FILE))
        if density is not None:
            np.savez(bento_model.path_of(DENSITY_FILE), **density.to_arrays())
        with open(bento_model.path_of(CONFIG_FILE), "w") as handle:
            json.dump(card.model_dump(mode="json"), handle, indent=2)
    return str(bento_model.tag)


def _get(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as error:
        raise ModelNotFoundError(
            f"Model {tag!r} is not in the model store ({error}). Train one with `uqserve train` "
            "(or `make train`), or name another with --model."
        ) from error


def load_exported(tag: str) -> tuple[keras.Model, ModelCard]:
    """The model and its card; the model is loaded in Keras safe mode (no code runs)."""
    bento_model = _get(tag)
    card = ModelCard.model_validate_json(bento_model.info.metadata[CARD_KEY])
    model = keras.saving.load_model(bento_model.path_of(MODEL_FILE), safe_mode=True, compile=False)
    return model, card


def load_density(tag: str) -> FeatureDensity | None:
    """The feature density saved with the model, or None for a model exported without one."""
    path = Path(_get(tag).path_of(DENSITY_FILE))
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return FeatureDensity.from_arrays(dict(arrays))


def resolve_tag(tag: str) -> str:
    """The full tag ('name:version') that `tag` (perhaps 'name:latest') names."""
    return str(_get(tag).tag)


def update_metadata(tag: str, key: str, values: dict[str, float]) -> None:
    """Add or replace one metadata entry of a stored model (e.g. evaluation figures)."""
    bento_model = _get(tag)
    bento_model.info.metadata[key] = values
    bento_model.flush()
