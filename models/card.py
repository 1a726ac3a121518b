"""What is saved with a model: classes, input, preprocessing, config, metrics.

Training writes it into the model store's metadata; serving and `predict`
read it back, so preprocessing and defaults derive from the model itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from models.config import Frozen, ModelConfig
from models.guarantees import Guarantees

MODEL_FILE = "model.keras"  # the network, inside the exported model's folder
CARD_KEY = "card"  # the metadata entry holding the whole card as JSON
DENSITY_FILE = "density.npz"  # the feature-density parameters, next to the network


class ModelCard(Frozen):
    """Metadata of an exported model."""

    class_names: tuple[str, ...]
    model: ModelConfig
    mc_samples: int = Field(30, ge=1, description="Default number of MC dropout samples.")
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="Each MC dropout sample is tempered by this before averaging (1: not "
        "tempered). Fitted by NLL on the validation split; see `temperature_scaling`.",
    )
    uncertain_threshold: float | None = Field(
        None,
        ge=0.0,
        description="Only for a model without `guarantees`: mutual information above which a "
        "prediction is uncertain (a validation percentile; no guarantee).",
    )
    guarantees: Guarantees | None = Field(
        None, description="Calibrated prediction sets and risk-controlled acceptance."
    )
    splits: dict[str, str] = Field(
        default_factory=dict, description="Which split did what, with its size."
    )
    ood_threshold: float | None = Field(
        None, description="OOD score (negative log feature density) above which an image is OOD."
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _classes_match(self) -> ModelCard:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for "
                f"num_classes={self.model.num_classes}"
            )
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (H, W, 3) shape the network takes."""
        return self.model.input_shape
