"""Which Keras backend serves the model, chosen before Keras is imported.

The same `.keras` file serves on TensorFlow (the default) or JAX. Keras reads
its backend once, when it is first imported, so every entry point (the
service package, the `uqserve` command, the test suite) calls
`select_backend` first:

    UQSERVE_KERAS_BACKEND   tensorflow | jax; wins over KERAS_BACKEND
    KERAS_BACKEND           Keras' own variable, used when the first is unset

Training runs on TensorFlow only (`tf.data`, `tf.distribute`); `require_tensorflow`
says so when a training command starts on another backend.

GPU memory: TensorFlow is told to grow its allocation as needed
(`adapters.model_store.enable_memory_growth`); JAX would take 75 % of the GPU
at start, so unless XLA_PYTHON_CLIENT_PREALLOCATE (or _MEM_FRACTION) is set,
it too allocates as needed, and another process can share the GPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"
JAX_MEMORY_VARIABLES = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")


def requested_backend(environ: MutableMapping[str, str] | None = None) -> str:
    """UQSERVE_KERAS_BACKEND, else KERAS_BACKEND, else tensorflow; refuses other names."""
    environ = os.environ if environ is None else environ
    for variable in ("UQSERVE_KERAS_BACKEND", "KERAS_BACKEND"):
        value = environ.get(variable, "").strip().lower()
        if value:
            if value not in BACKENDS:
                raise ValueError(
                    f"Invalid value for `{variable}`: expected one of {BACKENDS}, "
                    f"received {variable}={environ[variable]!r}"
                )
            return value
    return DEFAULT_BACKEND


def select_backend(environ: MutableMapping[str, str] | None = None) -> str:
    """Set KERAS_BACKEND (and JAX's GPU memory default) from the environment; returns it.

    Raises when Keras is already loaded on another backend: it cannot switch.
    """
    environ = os.environ if environ is None else environ
    backend = requested_backend(environ)
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != backend:
        raise RuntimeError(
            f"Keras is already loaded on {loaded.backend.backend()!r}, not the requested "
            f"{backend!r}: set UQSERVE_KERAS_BACKEND before the process imports Keras"
        )
    set_backend(environ, backend)
    return backend


def set_backend(environ: MutableMapping[str, str], backend: str) -> None:
    """KERAS_BACKEND, and on JAX allocation as needed unless a JAX memory variable is set."""
    environ["KERAS_BACKEND"] = backend
    if backend == "jax" and not any(name in environ for name in JAX_MEMORY_VARIABLES):
        environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def require_tensorflow(command: str) -> None:
    """Refuse a training command on another backend, with the fix."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"`uqserve {command}` trains on TensorFlow (tf.data, tf.distribute), but Keras "
            f"runs on {keras.backend.backend()!r}: unset UQSERVE_KERAS_BACKEND and "
            "KERAS_BACKEND (or set them to tensorflow); the model it saves serves on either"
        )
