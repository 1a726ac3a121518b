"""`uqserve predict`: local prediction with uncertainty from the model store, no server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.card import ModelCard
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import preprocess_images
from models.uncertainty import (
    expected_entropy,
    mean_probabilities,
    mutual_information,
    predictive_entropy,
    variance,
)
from training.export import load_exported


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA pixels."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("L", "RGB", "RGBA"):
            return np.asarray(image)
        if image.mode in ("1", "I", "I;16", "F"):
            return np.asarray(image.convert("L"))
        has_alpha = "A" in image.mode or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


@dataclass(frozen=True)
class Prediction:
    """One image's answer."""

    path: str
    label: str
    probability: float
    variance: float
    predictive_entropy: float
    aleatoric: float
    mutual_information: float
    uncertain: bool


def predict_files(
    paths: list[Path], tag: str, samples: int | None = None, seed: int | None = None
) -> tuple[list[Prediction], ModelCard]:
    """MC-dropout predictions for image files, with the model card's defaults."""
    model, card = load_exported(tag)
    images = preprocess_images([read_image(p) for p in paths], card.model.preprocessing)
    draws = MCDropoutPredictor(model).sample(images, samples or card.mc_samples, seed=seed)
    mean, var = mean_probabilities(draws), variance(draws)  # (B, C) each
    entropy, aleatoric = predictive_entropy(draws), expected_entropy(draws)
    mi = mutual_information(draws)
    threshold = card.uncertain_threshold
    predictions = []
    for i, path in enumerate(paths):
        best = int(mean[i].argmax())
        predictions.append(
            Prediction(
                path=str(path),
                label=card.class_names[best],
                probability=float(mean[i, best]),
                variance=float(var[i, best]),
                predictive_entropy=float(entropy[i]),
                aleatoric=float(aleatoric[i]),
                mutual_information=float(mi[i]),
                uncertain=threshold is not None and bool(mi[i] > threshold),
            )
        )
    return predictions, card


def format_table(predictions: list[Prediction]) -> str:
    """A plain-text table, one row per image."""
    header = (
        "image",
        "class",
        "probability",
        "variance",
        "entropy",
        "aleatoric",
        "MI",
        "uncertain",
    )
    rows = [
        (
            p.path, p.label, f"{p.probability:.4f}", f"{p.variance:.2e}",
            f"{p.predictive_entropy:.4f}", f"{p.aleatoric:.4f}",
            f"{p.mutual_information:.4f}", "yes" if p.uncertain else "no",
        )
        for p in predictions
    ]  # fmt: skip
    widths = [max(len(str(r[c])) for r in (header, *rows)) for c in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines)
