"""Publish version 1 of every configured model that has no version yet.

Bootstrapped models are untrained: the pretrained backbones carry ImageNet weights (or
random ones, with a warning), and every head is randomly initialised. Their scores mean
nothing until the retraining flow publishes a trained version. The metadata records this as
``"training": "none"``.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from mammo.errors import ConfigurationError
from mammo.settings import Settings

from models.architectures import BUILDERS, build_classifier, validate_input_size
from models.backbone_weights import resolve_backbone_weights
from models.export import export_saved_model
from models.repository import ModelRepository

logger = logging.getLogger(__name__)


def bootstrap_models(settings: Settings, input_sizes: dict[str, int] | None = None, *,
                     allow_download: bool = True,
                     download_url_prefix: str | None = None) -> list[dict[str, Any]]:
    """Build, export and publish version 1 of each model in ``settings.model_names`` that has
    no version yet, and return the stored metadata of each new version.

    Models that already have a version are left alone, so a second run publishes nothing.
    One model is built, exported and freed at a time, so peak memory stays near that of the
    largest single model.

    Args:
        settings: Supplies ``model_repository``, ``model_names``, ``input_size(name)``,
            ``imagenet_weights``, ``weights_dir`` and ``keras_home`` (the download cache).
        input_sizes: Input size per model name that overrides ``settings.input_size``.
            Default None.
        allow_download: Whether backbone weights missing from ``settings.weights_dir`` may
            be downloaded. Default True.
        download_url_prefix: Mirror serving the Keras weight files under their Keras names.
            Default None, which uses Keras' own addresses.

    Raises:
        ConfigurationError: if ``settings.model_names`` or ``input_sizes`` names a model
            without an architecture, or an input size is invalid. This is checked before any
            model is built.
    """
    overrides = dict(input_sizes or {})
    unknown = sorted((set(settings.model_names) | set(overrides)) - set(BUILDERS))
    if unknown:
        raise ConfigurationError(
            f"No architecture for model names {unknown}; known models are {list(BUILDERS)}. "
            "Fix MAMMO_MODEL_NAMES or the input size overrides."
        )
    sizes: dict[str, int] = {}
    for name in settings.model_names:
        try:
            sizes[name] = validate_input_size(overrides.get(name, settings.input_size(name)))
        except ValueError as error:
            raise ConfigurationError(f"Invalid input size for model {name}: {error}") from error

    repository = ModelRepository(Path(settings.model_repository))
    published = []
    for name in settings.model_names:
        existing = repository.latest_version(name)
        if existing is not None:
            logger.info("Skipping %s: version %d already exists", name, existing)
            continue
        version = _publish_untrained(repository, settings, name, sizes[name],
                                     allow_download, download_url_prefix)
        published.append(repository.version_metadata(name, version))
    return published


def _publish_untrained(repository: ModelRepository, settings: Settings, name: str,
                       input_size: int, allow_download: bool,
                       download_url_prefix: str | None) -> int:
    weights = resolve_backbone_weights(
        name,
        mode=settings.imagenet_weights,
        weights_dir=settings.weights_dir,
        cache_dir=settings.keras_home,
        allow_download=allow_download,
        download_url_prefix=download_url_prefix,
    )
    logger.info("Building %s at %dx%d with backbone weights from %s",
                name, input_size, input_size, weights.source)
    model = build_classifier(name, input_size, weights.weights)
    metadata = {
        "architecture": name,
        "input_size": input_size,
        "weights_source": weights.source,
        "weights_warning": weights.warning,
        "weights_file": None if weights.weights is None else str(weights.weights),
        "training": "none",
        "parameters": int(model.count_params()),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    try:
        return repository.publish(
            name,
            lambda folder: export_saved_model(model, folder, input_size, model_name=name),
            metadata,
        )
    finally:
        # Free this model before the next is built. clear_session drops Keras' global
        # graph state, and gc collects the variables the export's tf.function captured.
        del model
        keras.backend.clear_session()
        gc.collect()
