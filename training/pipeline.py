"""`uqserve train` end to end: data, training, test metrics, threshold, plots, export."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from adapters.model_store import export_model, framework_versions
from models.card import ModelCard
from models.config import ModelConfig
from models.density import OODScore
from models.guarantees import Guarantees, calibrate, measure
from models.mc_dropout import MCDropoutPredictor
from models.temperature import fit_temperature, temper
from models.uncertainty import mutual_information, summarize
from training.config import TrainConfig
from training.data import Splits, load_dataset, split_dataset
from training.distribute import is_chief, make_strategy
from training.outputs import SplitOutputs, predictor_outputs
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


def split_metrics(outputs: SplitOutputs, labels: np.ndarray) -> dict[str, float]:
    """Deterministic and MC-dropout metrics of the test split."""
    metrics = {f"test_{k}": v for k, v in summarize(outputs.deterministic[:, None], labels).items()}
    metrics.pop("test_mean_mutual_information")
    metrics.update({f"test_mc_{k}": v for k, v in summarize(outputs.samples, labels).items()})
    return metrics


def fit_uncertainty(
    model: keras.Model, splits: Splits, config: TrainConfig
) -> tuple[OODScore, dict[str, object], dict[str, float]]:
    """Each split its one job: density on train; its standardisation, the OOD threshold
    and the served temperature on validation; guarantees on calibration (on the
    served, tempered samples); metrics on test.

    Returns the density, the card's uncertainty fields (`ood_threshold`,
    `temperature`, and `guarantees`, or without a calibration split the
    percentile flag `uncertain_threshold`) and the test metrics.
    """
    predictor = MCDropoutPredictor(model)
    prep, seed, samples = config.preprocessing, config.seed, config.mc_samples
    train = predictor_outputs(predictor, splits.train.images, prep, 0, seed)
    validation = predictor_outputs(predictor, splits.validation.images, prep, samples, seed)
    density = OODScore.fit(train.features, splits.train.labels, validation.features)
    ood_scores = density.score(validation.features)
    temperature = served_temperature(validation.samples, splits.validation.labels, config)
    fields: dict[str, object] = {
        "ood_threshold": float(np.quantile(ood_scores, config.ood_quantile)),
        "temperature": temperature,
    }
    if temperature != 1.0:  # the samples the service will give: tempered
        predictor = MCDropoutPredictor(model, temperature=temperature)
        validation = replace(validation, samples=temper(validation.samples, temperature))
    test = predictor_outputs(predictor, splits.test.images, prep, samples, seed)
    if len(splits.calibration.labels) > 0:
        calibration = predictor_outputs(predictor, splits.calibration.images, prep, samples, seed)
        fields["guarantees"] = fit_guarantees(calibration, test, splits, config)
    else:
        uncertain = np.quantile(mutual_information(validation.samples), config.uncertain_quantile)
        fields["uncertain_threshold"] = float(uncertain)
    return density, fields, split_metrics(test, splits.test.labels)


def served_temperature(samples: np.ndarray, labels: np.ndarray, config: TrainConfig) -> float:
    """The temperature the model serves: fitted by NLL on validation samples (N, T, C),
    kept per `config.temperature_scaling` (soften: only above 1; fit: always; off: 1)."""
    if config.temperature_scaling == "off":
        return 1.0
    fitted = fit_temperature(samples, labels)
    return fitted if config.temperature_scaling == "fit" or fitted > 1.0 else 1.0


def fit_guarantees(
    calibration: SplitOutputs, test: SplitOutputs, splits: Splits, config: TrainConfig
) -> Guarantees:
    """Sets and acceptance calibrated on the calibration split, measured on the test split,
    for the MC predictive distribution (T = mc_samples) and for one dropout sample."""
    rng = np.random.default_rng([config.seed, 7])  # APS's u, reproducible
    calibrated = {}
    for name, keep in (("mc", slice(None)), ("single", slice(0, 1))):
        fitted = calibrate(
            calibration.samples[:, keep], splits.calibration.labels, config.conformal_method,
            config.target_risk, config.risk_delta, rng,
        )  # fmt: skip
        calibrated[name] = measure(fitted, test.samples[:, keep], splits.test.labels)
    lowest = calibrated["mc"].sets.alpha_range[0]  # 1/(n+1): a small split cannot go lower
    return Guarantees(default_alpha=max(config.default_alpha, lowest), **calibrated)


def split_roles(splits: Splits) -> dict[str, str]:
    """What each split did, with its size: said in the model card."""
    roles = {
        "train": "fits the head and the feature density",
        "validation": "early stopping, learning-rate schedules, the OOD score's "
        "standardisation and threshold, the served temperature",
        "calibration": "prediction sets and the acceptance threshold, nothing else",
        "test": "the reported metrics and the guarantees' test figures",
    }
    return {name: f"{len(getattr(splits, name).labels)} images: {role}"
            for name, role in roles.items()}  # fmt: skip


def _run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.output_dir) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_training(config: TrainConfig, verbose: int = 1) -> TrainResult:
    """Train, evaluate on the test split, write the run folder, export to the model store.

    The strategy is made first: multi_worker must exist before TensorFlow runs
    anything. On multi_worker only the chief exports (the others return tag None).
    """
    strategy = make_strategy(config.strategy)
    data = load_dataset(config.data.dataset, config.preprocessing)
    splits = split_dataset(data, config.data, config.seed)
    run_dir = _run_dir(config)
    model, history = train_model(config, splits, run_dir / "tensorboard", verbose, strategy)
    model_config = ModelConfig(
        num_classes=len(data.class_names), preprocessing=config.preprocessing, head=config.head
    )
    density, uncertainty_fields, metrics = fit_uncertainty(model, splits, config)
    card = ModelCard(
        class_names=data.class_names,
        model=model_config,
        mc_samples=config.mc_samples,
        **uncertainty_fields,
        splits=split_roles(splits),
        metrics=metrics,
        training=config.model_dump(mode="json"),
        versions=framework_versions(),
    )
    plot_learning_curves(history.logs, history.phases, run_dir / "learning_curve.png")
    (run_dir / "config.json").write_text(json.dumps(card.training, indent=2))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    export = config.export and is_chief(strategy)
    tag = export_model(model, card, config.model_name, density) if export else None
    return TrainResult(model, card, history, run_dir, tag)
