"""The BentoML service: `bentoml serve service.service:ApiService`.

BentoML imports `service.service` in every worker, and this package first, so
TensorFlow's start-up noise is kept out of the service logs here, before
anything imports TensorFlow (see `adapters.quiet` for TF_CPP_MIN_LOG_LEVEL).
"""

from __future__ import annotations

from adapters.quiet import quiet_tensorflow

quiet_tensorflow()
