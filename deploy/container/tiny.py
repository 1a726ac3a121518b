"""A tiny digit model for the container test: `python -m deploy.container.tiny` prints its tag.

The real model needs ImageNet weights and minutes of training; the container
test checks the image (packages, start-up, the HTTP contract), not accuracy.
This is the project's own architecture at 32x32 with random base weights
(`base_weights="none"`: nothing downloaded), a small MC-dropout head and a
feature density, exported with the project's exporter into the model store
that `BENTOML_HOME` names (set it first: the caller uses a temporary one).
Its answers are meaningless; their shape and invariants are what is checked.
"""

from __future__ import annotations

import numpy as np

from adapters.model_store import export_model
from models.architecture import build_model
from models.card import ModelCard
from models.config import HeadConfig, ModelConfig, PreprocessingConfig
from models.density import OODScore
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import preprocess_images

NAME = "uqserve_tiny"
CLASSES = tuple(str(digit) for digit in range(10))
HEAD = HeadConfig(hidden_units=(16,), dropout_rates=(0.5,), input_dropout=0.3)
PREPROCESSING = PreprocessingConfig(image_size=(32, 32))


def export_tiny(name: str = NAME, seed: int = 0) -> str:
    """Build, fit a density for, and export the tiny model; returns its tag."""
    import keras

    keras.utils.set_random_seed(seed)
    config = ModelConfig(num_classes=len(CLASSES), preprocessing=PREPROCESSING, head=HEAD)
    model = build_model(config, base_weights="none")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (60, 32, 32, 3)).astype(np.float32)  # 6 per class
    embeddings, hidden = MCDropoutPredictor(model).forward(preprocess_images(images, PREPROCESSING))
    features = {"base": embeddings, "hidden": hidden}
    density = OODScore.fit(features, np.arange(len(images)) % len(CLASSES), features)
    scores = density.score(features)
    card = ModelCard(
        class_names=CLASSES,
        model=config,
        mc_samples=8,
        uncertain_threshold=0.05,
        ood_threshold=float(np.quantile(scores, 0.95)),
        metrics={},
    )
    return export_model(model, card, name, density)


if __name__ == "__main__":
    print(export_tiny())
