"""The typed training config: from a YAML/JSON file plus CLI flags (flags win).

Every choice of Géron ch. 11 is a field here or in `models.config.HeadConfig`.
The resolved config is saved with the exported model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from models.config import Frozen, HeadConfig, PreprocessingConfig

BASE_WEIGHTS_ENV = "UQSERVE_BASE_WEIGHTS"

Optimizer = Literal["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam"]
Schedule = Literal["constant", "exponential", "piecewise", "cosine", "onecycle", "plateau"]
StrategyName = Literal["default", "mirrored", "multi_worker"]


def default_base_weights() -> str:
    """`UQSERVE_BASE_WEIGHTS` when set (offline use), else Keras' ImageNet download."""
    return os.environ.get(BASE_WEIGHTS_ENV) or "imagenet"


class DataConfig(Frozen):
    """Which images, and how they are split (stratified, seeded)."""

    dataset: str = Field(
        "digits",
        description="digits | mnist | fashion_mnist | cifar10 | a folder of class sub-folders",
    )
    validation_fraction: float = Field(
        0.10, gt=0.0, lt=0.5, description="Early stopping, learning-rate schedules, OOD threshold."
    )
    calibration_fraction: float = Field(
        0.15,
        ge=0.0,
        lt=0.5,
        description="Conformal prediction sets and the risk-controlled acceptance threshold; "
        "used for nothing else (0: no calibrated guarantees).",
    )
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="The reported metrics.")
    limit: int | None = Field(None, ge=10, description="Use at most this many images (stratified).")

    @model_validator(mode="after")
    def _training_keeps_a_share(self) -> DataConfig:
        held_out = self.validation_fraction + self.calibration_fraction + self.test_fraction
        if held_out > 0.8:
            raise ValueError(
                "validation, calibration and test fractions leave too little to train on: "
                f"expected a sum <= 0.8, received {held_out:.2f}"
            )
        return self


class OptimizerConfig(Frozen):
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: Optimizer = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="For momentum and nesterov.")
    weight_decay: float = Field(1e-4, ge=0.0, description="For adamw.")
    clipnorm: float | None = Field(None, gt=0.0)
    clipvalue: float | None = Field(None, gt=0.0)
    schedule: Schedule = "constant"
    decay_rate: float = Field(0.1, gt=0.0, le=1.0, description="exponential: factor per run.")
    boundaries: tuple[float, ...] = Field(
        (0.5, 0.75), description="piecewise: fractions of the run where the rate drops."
    )
    piecewise_factor: float = Field(0.1, gt=0.0, le=1.0)
    warmup_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="onecycle: rise.")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _valid_combination(self) -> OptimizerConfig:
        if self.clipnorm is not None and self.clipvalue is not None:
            raise ValueError("set clipnorm or clipvalue, not both")
        if any(not 0.0 < b < 1.0 for b in self.boundaries) or list(self.boundaries) != sorted(
            self.boundaries
        ):
            raise ValueError(
                f"boundaries must be increasing fractions in (0, 1), received {self.boundaries}"
            )
        return self


class TrainConfig(Frozen):
    """A whole training run."""

    data: DataConfig = DataConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    head: HeadConfig = HeadConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    base_weights: str = Field(default_factory=default_base_weights)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(
        32, ge=1, description="Per replica: the global batch is batch_size x replicas."
    )
    strategy: StrategyName = Field(
        "default",
        description="default (one device) | mirrored (all local GPUs) | "
        "multi_worker (cluster from TF_CONFIG); see training/distribute.py",
    )
    scale_learning_rate: bool = Field(
        True, description="Multiply the learning rates by the replicas (linear scaling rule)."
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Early stopping on `early_stopping_monitor`, best weights restored; None: "
        "train all `epochs` (the default: with early stopping on the validation NLL, MC dropout "
        "measured worse than the deterministic answer in distribution; see `uqserve compare "
        "--experiments mc_dropout`).",
    )
    early_stopping_monitor: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss",
        description="What early stopping watches (and whose best epoch it restores): "
        "val_loss, the validation NLL, or val_accuracy.",
    )
    cache_features: bool = True
    fine_tune_blocks: int = Field(0, ge=0, le=5)
    fine_tune_epochs: int = Field(3, ge=1)
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0)
    mc_samples: int = Field(30, ge=1, description="Default MC samples saved with the model.")
    temperature_scaling: Literal["soften", "fit", "off"] = Field(
        "soften",
        description="One temperature for the MC samples, fitted by NLL on the validation "
        "split: soften serves it only when it is above 1 (it softens; a sharpening one "
        "raised the NLL under shift in every measured run), fit serves it always, off never.",
    )
    conformal_method: Literal["lac", "aps"] = Field(
        "lac", description="Prediction-set score: lac (1 - p_y, smallest sets) or aps (adaptive)."
    )
    default_alpha: float = Field(
        0.02,
        gt=0.0,
        lt=1.0,
        description="Prediction sets miss the true class at most this often. Keep it below the "
        "model's error rate: above it, LAC meets its coverage by giving hard images empty sets. "
        "Raised to 1/(n+1) when the calibration split has too few (n) images for it.",
    )
    target_risk: float = Field(
        0.03, gt=0.0, lt=1.0, description="Most errors allowed among accepted answers."
    )
    risk_delta: float = Field(
        0.05, gt=0.0, lt=1.0, description="Allowed probability that the risk guarantee fails."
    )
    uncertain_quantile: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="Only without a calibration split: `uncertain` marks validation MI above "
        "this quantile (no guarantee).",
    )
    ood_quantile: float = Field(
        0.95, gt=0.0, lt=1.0, description="Quantile of validation OOD scores used as the threshold."
    )
    seed: int = 42
    model_name: str = Field("uqserve_vgg16", pattern=r"^[a-zA-Z0-9_][a-zA-Z0-9_.\-]*$")
    output_dir: Path = Path("runs")
    export: bool = True


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON config file as a dict."""
    text = Path(path).read_text()
    data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, received {type(data).__name__}")
    return data


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """File values, then overrides (nested dicts, e.g. from CLI flags), validated."""
    values = read_config_file(path) if path is not None else {}
    return TrainConfig.model_validate(deep_merge(values, overrides or {}))
