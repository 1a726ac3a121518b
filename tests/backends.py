"""What the tests may ask of the Keras backend they run on (`make test` runs both).

TensorFlow runs the served model with one traced graph for every batch size,
so a batched answer equals the lone answer bit for bit. JAX compiles one
program per padded batch size (`models.jax_sampling`), and XLA may then sum
in another order: equal within float32 rounding, not bit for bit.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
ON_JAX = BACKEND == "jax"


def tensorflow_only(why: str) -> pytest.MarkDecorator:
    """Skip on JAX, saying why the check does not apply there."""
    return pytest.mark.skipif(ON_JAX, reason=f"TensorFlow only: {why}")


jax_only = pytest.mark.skipif(not ON_JAX, reason="checks the JAX backend's compiled programs")


def assert_same_numbers(actual: np.ndarray, desired: np.ndarray) -> None:
    """Bit for bit on TensorFlow; within float32 rounding (a few ulps) on JAX."""
    if ON_JAX:
        np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(actual, desired)
