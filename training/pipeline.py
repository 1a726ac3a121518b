"""`uqserve train` end to end: data, training, test metrics, threshold, plots, export."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from models.card import ModelCard
from models.config import ModelConfig
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import preprocess_images
from models.uncertainty import mutual_information, summarize
from training.config import TrainConfig
from training.data import Dataset, load_dataset, split_dataset
from training.export import export_model, framework_versions
from training.plots import plot_learning_curves
from training.train import History, train_model


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    model: keras.Model
    card: ModelCard
    history: History
    run_dir: Path
    tag: str | None


def _samples(
    predictor: MCDropoutPredictor,
    dataset: Dataset,
    card_config: ModelConfig,
    samples: int,
    seed: int,
) -> np.ndarray:
    images = preprocess_images(dataset.images, card_config.preprocessing)
    return predictor.sample(images, samples, seed=seed)  # (B, T, C)


def evaluate_run(
    model: keras.Model, model_config: ModelConfig, splits_test: Dataset, config: TrainConfig
) -> dict[str, float]:
    """Test metrics of the deterministic prediction and of MC dropout at `mc_samples`."""
    predictor = MCDropoutPredictor(model)
    images = preprocess_images(splits_test.images, model_config.preprocessing)
    deterministic = predictor.predict(images)[:, None, :]  # (B, 1, C)
    sampled = predictor.sample(images, config.mc_samples, seed=config.seed)  # (B, T, C)
    metrics = {f"test_{k}": v for k, v in summarize(deterministic, splits_test.labels).items()}
    metrics.pop("test_mean_mutual_information")
    metrics.update({f"test_mc_{k}": v for k, v in summarize(sampled, splits_test.labels).items()})
    return metrics


def uncertain_threshold(
    model: keras.Model, model_config: ModelConfig, validation: Dataset, config: TrainConfig
) -> float:
    """The `uncertain_quantile` of mutual information on validation images."""
    predictor = MCDropoutPredictor(model)
    samples = _samples(predictor, validation, model_config, config.mc_samples, config.seed)
    return float(np.quantile(mutual_information(samples), config.uncertain_quantile))


def _run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.output_dir) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_training(config: TrainConfig, verbose: int = 1) -> TrainResult:
    """Train, evaluate on the test split, write the run folder, export to the model store."""
    data = load_dataset(config.data.dataset, config.preprocessing.image_size)
    splits = split_dataset(data, config.data, config.seed)
    run_dir = _run_dir(config)
    model, history = train_model(config, splits, run_dir / "tensorboard", verbose)
    model_config = ModelConfig(
        num_classes=len(data.class_names), preprocessing=config.preprocessing, head=config.head
    )
    metrics = evaluate_run(model, model_config, splits.test, config)
    card = ModelCard(
        class_names=data.class_names,
        model=model_config,
        mc_samples=config.mc_samples,
        uncertain_threshold=uncertain_threshold(model, model_config, splits.validation, config),
        metrics=metrics,
        training=config.model_dump(mode="json"),
        versions=framework_versions(),
    )
    plot_learning_curves(history.logs, history.phases, run_dir / "learning_curve.png")
    (run_dir / "config.json").write_text(json.dumps(card.training, indent=2))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tag = export_model(model, card, config.model_name) if config.export else None
    return TrainResult(model, card, history, run_dir, tag)
