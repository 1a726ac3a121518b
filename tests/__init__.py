"""The test suite. TensorFlow's CPU-only start-up noise stays out of its output."""

from adapters.quiet import quiet_tensorflow

quiet_tensorflow()
