"""A tiny exported model for the service tests, and image bytes to send it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.card import ModelCard
from models.config import HeadConfig, ModelConfig
from tests.conftest import TINY, randomize_bn_statistics, tiny_model
from training.export import export_model

CLASSES = ("ant", "bee", "cat", "dog")
HEAD = HeadConfig(hidden_units=(16,), dropout_rates=(0.5,), input_dropout=0.3)


def export_tiny(name: str = "uqserve_test") -> str:
    """Export a tiny 32x32 model with non-trivial BN statistics; returns its tag."""
    model = tiny_model(HEAD, num_classes=len(CLASSES))
    randomize_bn_statistics(model)
    card = ModelCard(
        class_names=CLASSES,
        model=ModelConfig(num_classes=len(CLASSES), preprocessing=TINY, head=HEAD),
        mc_samples=6,
        uncertain_threshold=0.05,
        metrics={"test_accuracy": 0.5},
    )
    return export_model(model, card, name)


def png(seed: int, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> bytes:
    """A random image of `size` (width, height) in `mode`, as PNG bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """An image encoded in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
