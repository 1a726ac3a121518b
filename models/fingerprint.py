"""A digest of a model's weights, to show serving never changes them.

Covers every variable, trainable or not: kernels, biases and BatchNormalization
moving statistics (which running the model in training mode would overwrite). Two models
with the same digest hold bit-identical weights under the same names.

Several models (what a predictor serves: the model and the mixed-precision copy
of its base that computes) get one digest of their digests, in order.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np


def weights_digest(*models: keras.Model) -> str:
    """SHA-256 over every variable's path, dtype, shape and bytes, in a fixed order.

    One model: exactly its own digest. Several: SHA-256 over their count and
    their digests in order, so each model's variables stay separate and two
    ways of splitting the same variables between models cannot collide.
    """
    if not models:
        raise ValueError("Invalid value for `models`: expected at least one model, received none")
    if len(models) == 1:
        return _model_digest(models[0])
    combined = hashlib.sha256(f"weights of {len(models)} models\n".encode())
    for model in models:
        combined.update(f"{_model_digest(model)}\n".encode())
    return combined.hexdigest()


def _model_digest(model: keras.Model) -> str:
    """One model's SHA-256 over its variables, sorted by path."""
    digest = hashlib.sha256()
    for variable in sorted(model.weights, key=lambda v: v.path):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}|{value.dtype}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
