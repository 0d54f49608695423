"""Parameters of the retrain_models flow, in a module light enough for the command line.

`RetrainParameters` is the flow's single parameter. Prefect turns its JSON schema into the
form of the Prefect UI and validates every run's values against it before the flow starts,
and `mammo retrain` builds its options from the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mammo.settings import MODEL_NAMES

#: The architectures in `models.architectures.BUILDERS`; the UI shows them as choices.
ModelName = Literal["cnn", "efficientnetb7", "resnet50", "vgg19"]


class RetrainParameters(BaseModel):
    """Parameters of one retraining run, shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid", title="Retraining parameters")

    models: list[ModelName] = Field(
        default_factory=lambda: list(MODEL_NAMES), min_length=1,
        description="Models to fine-tune. The others keep their served version but are "
        "still scored for the ensemble.")
    epochs: int = Field(10, ge=1, le=200, description="Most training epochs per model; "
                        "EarlyStopping on the validation loss may stop sooner.")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Initial Adam learning "
                                 "rate; ReduceLROnPlateau halves it when validation stalls.")
    unfreeze_fraction: float = Field(
        0.0, ge=0, le=1, description="Fraction of each pretrained backbone's layers, from "
        "the top, that are trained. 0 trains the head only; BatchNormalization layers stay "
        "frozen.")
    min_new_labels: int = Field(
        20, ge=0, description="Labels imported since the last completed run needed to "
        "start training; with fewer, the run is recorded as skipped.")
    promotion_margin: float = Field(
        0.0, ge=0, le=0.5, description="Largest drop of validation AUC below the served "
        "version that still promotes a candidate.")
    validation_fraction: float = Field(
        0.25, ge=0.05, le=0.5, description="Expected fraction of patients held out for "
        "validation. Keep it and the seed fixed between runs, so a patient never moves "
        "from training to validation.")
    batch_size: int = Field(8, ge=1, le=256, description="Images per training step.")
    bootstrap_samples: int = Field(
        1000, ge=100, le=20000, description="Bootstrap resamples for the AUC confidence "
        "intervals.")
    seed: int = Field(0, ge=0, description="Seed of the patient split, the bootstrap and "
                      "training.")
    dry_run: bool = Field(False, description="Train and evaluate, but publish nothing and "
                          "keep the current ensemble.")

    @field_validator("models")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"models must not repeat a name, got {value}")
        return value
