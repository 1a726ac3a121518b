"""A digest of a model's weights, to show serving never changes them.

Covers every variable, trainable or not: kernels, biases and BatchNormalization
moving statistics (which running the model in training mode would overwrite). Two models
with the same digest hold bit-identical weights under the same names.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over every variable's path, dtype, shape and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for variable in sorted(model.weights, key=lambda v: v.path):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}|{value.dtype}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
