"""Tiny SavedModels that meet the serving contract, and helpers to publish and score them.

Each tiny model returns the mean pixel value divided by 255 as its malignancy probability, so
a test can compute the expected score of any image exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from mammo.settings import Settings

#: Input size per model in the test repository. Canonical test images are CANONICAL_SIZE
#: pixels square, so the client shrinks them for three models and sends them unchanged to one.
MODEL_SIZES = {"cnn": 32, "efficientnetb7": 64, "resnet50": 32, "vgg19": 48}
CANONICAL_SIZE = 64
REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "models.config"


def save_mean_model(
    version_dir: Path,
    size: int,
    *,
    input_dtype: tf.DType = tf.uint8,
    channels: int = 1,
    output_name: str = "malignancy_probability",
    divisor: float = 255.0,
) -> None:
    """Save a SavedModel whose output is mean(image) / divisor with shape [batch, 1].

    The division runs in float64 and the result is rounded once to float32. Changing a keyword
    argument from its default breaks the contract, and ``divisor=0`` gives non-finite output.
    """

    class MeanModel(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, size, size, channels], input_dtype, name="image")]
        )
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            # An exact integer sum and a float64 division, rounded once to float32. TensorFlow
            # may turn a float32 division by a constant into a multiplication by its reciprocal,
            # which rounds twice.
            total = tf.reduce_sum(tf.cast(image, tf.int64), axis=[1, 2, 3])
            probability = tf.cast(total, tf.float64) / (size * size * channels * divisor)
            return {output_name: tf.cast(probability, tf.float32)[:, tf.newaxis]}

    model = MeanModel()
    tf.saved_model.save(model, str(version_dir), signatures={"serving_default": model.serve})


def publish_version(
    model_dir: Path,
    version: int,
    size: int,
    *,
    warmup_batch_sizes: tuple[int, ...] = (),
    warmup_size: int | None = None,
    **kwargs: object,
) -> Path:
    """Write a version to ``.staging/`` and rename it into place, as the model repository does.

    One warmup record of zeros is written per entry of ``warmup_batch_sizes``, at
    ``warmup_size`` pixels (default ``size``). Other keyword arguments go to `save_mean_model`.
    """
    from models.export import write_warmup_requests

    staging = model_dir / ".staging" / str(version)
    staging.parent.mkdir(parents=True, exist_ok=True)
    save_mean_model(staging, size, **kwargs)
    if warmup_batch_sizes:
        write_warmup_requests(staging, warmup_size or size, model_dir.name, warmup_batch_sizes)
    target = model_dir / str(version)
    os.rename(staging, target)
    return target


def expected_probability(value: int) -> np.float64:
    """Return the score of a constant image with pixel ``value``, as the model computes it."""
    return np.float64(np.float32(value / 255.0))


def make_settings(repository: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=repository.parent,
        model_repository=repository,
        model_config_file=REPOSITORY_CONFIG,
        serving_address="127.0.0.1:0",
        serving_timeout_seconds=20.0,
        serving_retries=3,
        serving_retry_backoff_seconds=0.1,
        serving_poll_seconds=0.2,
    )
    values.update(overrides)
    return Settings(**values)
