"""The BentoML service: `bentoml serve service.service:ApiService`.

BentoML imports `service.service` in every worker, and this package first, so
the Keras backend is chosen here (`adapters.backend`: UQSERVE_KERAS_BACKEND,
tensorflow or jax) and TensorFlow's start-up noise is kept out of the service
logs, before anything imports Keras (see `adapters.quiet` for TF_CPP_MIN_LOG_LEVEL).
"""

from __future__ import annotations

from adapters.backend import select_backend
from adapters.quiet import quiet_tensorflow

select_backend()
quiet_tensorflow()
