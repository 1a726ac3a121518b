"""`uqserve predict`: the service's answer for image files, computed locally, no server.

Decoding (`adapters.images`), compiled preprocessing, sampling with the
streams (seed, index), the OOD score and the answer itself
(`models.answer`) are the very functions the service runs, so an image gets
the same figures from `uqserve predict --seed S` as from `POST /predict` with
`seed=S`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adapters.images import read_image
from adapters.model_store import StoredModel
from models.answer import (
    Options,
    PredictionResponse,
    build_answers,
    resolve_options,
    sample_and_score,
)
from models.card import ModelCard
from models.config import BaseDtype
from models.preprocessing import Preprocessor


def predict_files(
    paths: list[Path],
    tag: str,
    samples: int | None = None,
    seed: int | None = None,
    base_dtype: BaseDtype = "float32",
    alpha: float | None = None,
) -> tuple[PredictionResponse, ModelCard]:
    """The answer to these files, as `POST /predict` gives it (the model card's defaults,
    the service's field rules for `samples` and `seed`), and the model's card."""
    options = Options(samples=samples, seed=seed, alpha=alpha)  # exits 2 naming a bad flag
    stored = StoredModel.open(tag)
    samples, seed, alpha = resolve_options(stored.card, options)
    images = Preprocessor(stored.card.model.preprocessing)([read_image(p) for p in paths])
    streams = [(seed, index) for index in range(len(paths))]
    draws, scores = sample_and_score(
        stored.predictor(base_dtype), stored.density(), images, [samples] * len(paths), streams
    )
    predictions = build_answers(np.stack(draws), scores, stored.card, alpha)  # (n, T, C)
    response = PredictionResponse(
        model=stored.tag, samples=samples, seed=seed, alpha=alpha, predictions=predictions
    )
    return response, stored.card


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of text as left-aligned columns."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def format_table(response: PredictionResponse, paths: list[Path], card: ModelCard) -> str:
    """One row per image with its headline figures, then each image's per-class figures."""
    header = ("image", "class", "confidence", "entropy", "aleatoric", "epistemic",
              "uncertain", "ood_score", "ood", "set")  # fmt: skip
    rows = [header]
    for path, p in zip(paths, response.predictions, strict=True):
        score = "-" if p.ood_score is None else f"{p.ood_score:.2f}"
        rows.append((str(path), p.label, f"{p.confidence:.4f}", f"{p.predictive_entropy:.4f}",
                     f"{p.aleatoric:.4f}", f"{p.epistemic:.4f}", _flag(p.uncertain), score,
                     _flag(p.out_of_distribution),
                     "-" if p.prediction_set is None else ",".join(p.prediction_set)))  # fmt: skip
    blocks = [_columns(rows)]
    for path, p in zip(paths, response.predictions, strict=True):
        per_class = [("  class", "probability", "variance")]
        figures = zip(card.class_names, p.probabilities, p.variance, strict=True)
        per_class += [(f"  {name}", f"{prob:.4f}", f"{var:.2e}") for name, prob, var in figures]
        blocks.append(f"{path}:\n{_columns(per_class)}")
    return "\n\n".join(blocks)
