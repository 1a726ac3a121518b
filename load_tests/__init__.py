"""Load tests and benchmarks. Each runs on the Keras backend UQSERVE_KERAS_BACKEND or
KERAS_BACKEND names (TensorFlow by default), chosen here before anything imports Keras."""

from adapters.backend import select_backend

select_backend()
