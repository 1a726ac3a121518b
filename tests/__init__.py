"""The test suite. It runs on the Keras backend UQSERVE_KERAS_BACKEND or KERAS_BACKEND names
(TensorFlow by default); TensorFlow's CPU-only start-up noise stays out of its output."""

from adapters.backend import select_backend
from adapters.quiet import quiet_tensorflow

select_backend()
quiet_tensorflow()
