"""A tiny exported model for the service tests, and image bytes to send it."""

from __future__ import annotations

import io
import struct
import zlib

import keras
import numpy as np
from PIL import Image

from adapters.model_store import export_model
from models.card import ModelCard
from models.config import HeadConfig, ModelConfig
from models.density import OODScore
from models.guarantees import Guarantees, calibrate
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import preprocess_images
from models.uncertainty import mutual_information
from tests.conftest import TINY, randomize_bn_statistics, tiny_model

CLASSES = ("ant", "bee", "cat", "dog")
HEAD = HeadConfig(hidden_units=(16,), dropout_rates=(0.5,), input_dropout=0.3)


def tiny_guarantees(model: keras.Model) -> Guarantees:
    """Guarantees calibrated on 60 random images labelled with the model's own answers,
    the six with the highest mutual information changed (10 % wrong), at T=6 and T=1."""
    rng = np.random.default_rng(1)
    images = preprocess_images(rng.integers(0, 256, (60, 32, 32, 3)).astype(np.float32), TINY)
    draws = MCDropoutPredictor(model).sample(images, 6, seed=1)  # (60, 6, C)
    labels = draws.mean(axis=1).argmax(axis=1)
    unsure = np.argsort(-mutual_information(draws))[:6]  # the errors sit where MI is high
    labels[unsure] = (labels[unsure] + 1) % len(CLASSES)
    return Guarantees(
        default_alpha=0.2,
        mc=calibrate(draws, labels, "lac", 0.3, 0.05, rng),
        single=calibrate(draws[:, :1], labels, "lac", 0.3, 0.05, rng),
    )


def export_tiny(name: str = "uqserve_test") -> str:
    """Export a tiny 32x32 model with non-trivial BN statistics, a feature density and
    calibrated guarantees."""
    model = tiny_model(HEAD, num_classes=len(CLASSES))
    randomize_bn_statistics(model)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (40, 32, 32, 3)).astype(np.float32)
    embeddings, hidden = MCDropoutPredictor(model).forward(preprocess_images(train, TINY))
    features = {"base": embeddings, "hidden": hidden}
    density = OODScore.fit(features, np.arange(40) % len(CLASSES), features)
    ood_scores = density.score(features)
    card = ModelCard(
        class_names=CLASSES,
        model=ModelConfig(num_classes=len(CLASSES), preprocessing=TINY, head=HEAD),
        mc_samples=6,
        guarantees=tiny_guarantees(model),
        ood_threshold=float(np.quantile(ood_scores, 0.95)),
        metrics={"test_accuracy": 0.5},
    )
    return export_model(model, card, name, density)


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


def zero_width_png() -> bytes:
    """A well-formed PNG whose header declares 0 x 10 pixels (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
