"""Typed, frozen configuration of the network: backbone, head and preprocessing.

The resolved config is saved with every exported model, so a model can always
be rebuilt, and served with the exact preprocessing it was trained with.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Activation = Literal["relu", "leaky_relu", "elu", "selu", "gelu"]
Initializer = Literal["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
Regularizer = Literal["none", "l1", "l2", "l1_l2"]
Pooling = Literal["avg", "max", "flatten"]
BaseDtype = Literal["float32", "bfloat16", "float16"]  # what the frozen base may compute in
BASE_DTYPES: tuple[str, ...] = get_args(BaseDtype)


class Frozen(BaseModel):
    """Base for every config: immutable, and unknown keys are an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class HeadConfig(Frozen):
    """The trainable classifier on top of the frozen base (Géron ch. 11 techniques).

    Each hidden block is Dense -> [BatchNormalization] -> activation -> Dropout.
    `dropout_rates[i]` belongs to hidden block i; `input_dropout` (if set) sits
    on the pooled base features. A rate of 0 keeps the layer (a no-op), so the
    Monte Carlo predictor can be checked against the deterministic model.
    """

    pooling: Pooling = "flatten"
    hidden_units: tuple[int, ...] = (256, 256)
    dropout_rates: tuple[float, ...] = (0.5, 0.5)
    input_dropout: float | None = None
    activation: Activation = "relu"
    leaky_relu_slope: float = Field(0.2, gt=0.0, lt=1.0)
    initializer: Initializer = "he_normal"
    batch_norm: bool = True
    max_norm: float | None = Field(3.0, gt=0.0)
    regularizer: Regularizer = "none"
    l1: float = Field(0.0, ge=0.0)
    l2: float = Field(0.0, ge=0.0)

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, units: tuple[int, ...]) -> tuple[int, ...]:
        if any(u < 1 for u in units):
            raise ValueError(f"expected positive widths, received hidden_units={units}")
        return units

    @field_validator("dropout_rates")
    @classmethod
    def _rates_in_range(cls, rates: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"expected rates in [0, 1), received dropout_rates={rates}")
        return rates

    @field_validator("input_dropout")
    @classmethod
    def _input_rate_in_range(cls, rate: float | None) -> float | None:
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ValueError(f"expected a rate in [0, 1), received input_dropout={rate}")
        return rate

    @model_validator(mode="after")
    def _rates_match_layers(self) -> HeadConfig:
        if len(self.dropout_rates) != len(self.hidden_units):
            raise ValueError(
                "dropout_rates needs one rate per hidden layer: expected "
                f"{len(self.hidden_units)}, received dropout_rates={self.dropout_rates}"
            )
        if self.regularizer != "none" and self.l1 == 0.0 and self.l2 == 0.0:
            raise ValueError(f"regularizer={self.regularizer!r} needs l1 or l2 above 0")
        return self

    @property
    def has_dropout(self) -> bool:
        """Whether Monte Carlo dropout has any layer to sample."""
        return self.input_dropout is not None or len(self.dropout_rates) > 0


class PreprocessingConfig(Frozen):
    """How raw pixels become network input; stored in the model's metadata."""

    image_size: tuple[int, int] = (64, 64)
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"
    mode: Literal["caffe"] = "caffe"
    alpha_background: float = Field(0.0, ge=0.0, le=255.0)

    @field_validator("image_size")
    @classmethod
    def _vgg_minimum(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 32:
            raise ValueError(f"VGG16 needs at least 32x32 pixels, received image_size={size}")
        return size


class ModelConfig(Frozen):
    """Everything needed to rebuild the network (weights aside)."""

    num_classes: int = Field(ge=2)
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    head: HeadConfig = HeadConfig()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (H, W, 3) shape the network takes."""
        height, width = self.preprocessing.image_size
        return (height, width, 3)
