"""The yardstick: the plain BentoML service a user would write for the same `.keras` file.

Kept as BentoML's docs teach it and nothing more: one batchable API taking a
list of images; resize, VGG16's `preprocess_input`, `predict_on_batch`,
probabilities back. Deterministic, no uncertainty, no limits. `make bench`
serves it next to uqserve under the same load (`load_tests/peer_bench.py`).

    UQSERVE_MODEL=uqserve_vgg16:latest bentoml serve load_tests.peer_service:PeerService
"""

from __future__ import annotations

import os

import bentoml
import keras
import numpy as np
from PIL.Image import Image

MODEL = os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest")


@bentoml.service(name="peer")
class PeerService:
    """The model behind one adaptive batch."""

    bento_model = bentoml.models.BentoModel(MODEL)

    def __init__(self) -> None:
        self.model = keras.saving.load_model(self.bento_model.path_of("model.keras"))
        height, width = self.model.input_shape[1:3]
        self.size = (width, height)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, images: list[Image]) -> list[list[float]]:
        """Class probabilities, one row per image."""
        return classify(self.model, self.size, images)


def classify(model: keras.Model, size: tuple[int, int], images: list[Image]) -> list[list[float]]:
    """Resize, VGG16's `preprocess_input`, `predict_on_batch`: one row per image."""
    pixels = np.stack([np.asarray(im.convert("RGB").resize(size)) for im in images])
    x = keras.applications.vgg16.preprocess_input(pixels.astype("float32"))
    return np.asarray(model.predict_on_batch(x)).tolist()
