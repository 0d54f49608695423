"""Fine-tuning of a served model version on labelled images.

Training starts from the weights of an exported version (`restore_exported_weights` loads
them into a freshly built model of the same architecture and input size), so ImageNet
weights are never needed here. Pretrained backbones stay frozen except for the top
``unfreeze_fraction`` of their layers; their BatchNormalization layers always stay frozen
(see `models.architectures.set_backbone_trainable`).

Training uses binary cross-entropy with class weights, EarlyStopping on the validation loss
(restoring the best weights) and ReduceLROnPlateau. The trained model is saved as a
``.keras`` file before anything is exported.
"""

from __future__ import annotations

import gc
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models.architectures import (
    INPUT_NAME,
    OUTPUT_NAME,
    PRETRAINED_MODEL_NAMES,
    build_classifier,
    set_backbone_trainable,
)
from models.export import (
    SIGNATURE_NAME,
    check_saved_model,
    export_saved_model,
    restore_exported_weights,
)

logger = logging.getLogger(__name__)

#: Images fed to the one-step smoke fit.
SMOKE_CASES = 4


@dataclass(frozen=True)
class TrainingOptions:
    """How one model is fine-tuned.

    Args:
        epochs: Maximum number of epochs; EarlyStopping may stop sooner.
        learning_rate: Initial Adam learning rate.
        unfreeze_fraction: Fraction of a pretrained backbone's layers, from the top, that
            are trained. 0 trains the head only. Ignored for the CNN, which trains whole.
        batch_size: Images per training step.
        early_stopping_patience: Epochs without a lower validation loss before stopping.
        reduce_lr_patience: Epochs without a lower validation loss before the learning rate
            is halved.
        seed: Seed of Keras' and NumPy's random generators.
    """

    epochs: int
    learning_rate: float
    unfreeze_fraction: float
    batch_size: int
    early_stopping_patience: int = 3
    reduce_lr_patience: int = 2
    seed: int = 0


@dataclass(frozen=True)
class TrainingHistory:
    epochs_run: int
    best_validation_loss: float
    final_learning_rate: float


def build_from_export(name: str, input_size: int, export_dir: Path) -> keras.Model:
    """Build model ``name`` and load the weights of the exported version in ``export_dir``."""
    model = build_classifier(name, input_size, backbone_weights=None)
    restore_exported_weights(model, export_dir)
    return model


def compile_for_fine_tuning(model: keras.Model, name: str, options: TrainingOptions) -> None:
    """Unfreeze the configured part of a pretrained backbone, then compile the model."""
    if name in PRETRAINED_MODEL_NAMES:
        trainable = set_backbone_trainable(model, float(options.unfreeze_fraction))
        logger.info("%s: %d backbone layers trainable", name, trainable)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )


def fine_tune(model: keras.Model, name: str, training: tuple[np.ndarray, np.ndarray],
              validation: tuple[np.ndarray, np.ndarray], class_weight: dict[int, float],
              options: TrainingOptions, checkpoint_path: Path) -> TrainingHistory:
    """Fine-tune a compiled model and save it to ``checkpoint_path`` (a ``.keras`` file).

    ``training`` and ``validation`` are (uint8 images [N, size, size, 1], float labels [N]).
    """
    keras.utils.set_random_seed(options.seed)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=options.reduce_lr_patience, min_lr=1e-7),
    ]
    history = model.fit(
        training[0], training[1],
        validation_data=validation,
        epochs=options.epochs,
        batch_size=options.batch_size,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    losses = history.history.get("val_loss", [float("nan")])
    checkpoint_path = Path(checkpoint_path)
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(checkpoint_path)
    result = TrainingHistory(
        epochs_run=len(losses),
        best_validation_loss=float(np.nanmin(losses)),
        final_learning_rate=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
    )
    logger.info("%s: trained %d epochs, best validation loss %.4f, saved %s", name,
                result.epochs_run, result.best_validation_loss, checkpoint_path)
    return result


def smoke_check(name: str, input_size: int, export_dir: Path, images: np.ndarray,
                labels: np.ndarray, options: TrainingOptions, work_dir: Path) -> None:
    """Prove on a few cases that fine-tuning, saving and exporting ``name`` all work.

    Restores the served version, fits one step on at most `SMOKE_CASES` images, saves a
    ``.keras`` file, exports a SavedModel and checks it against the serving contract. Every
    file is removed afterwards. Errors propagate unchanged.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_from_export(name, input_size, export_dir)
    try:
        compile_for_fine_tuning(model, name, options)
        count = min(SMOKE_CASES, len(images))
        model.fit(images[:count], labels[:count], epochs=1, steps_per_epoch=1,
                  batch_size=count, verbose=0)
        model.save(work_dir / f"{name}-smoke.keras")
        export_saved_model(model, work_dir / f"{name}-smoke-export", input_size,
                           model_name=name)
        check_saved_model(work_dir / f"{name}-smoke-export", input_size)
    finally:
        del model
        release_memory()
        shutil.rmtree(work_dir, ignore_errors=True)
    logger.info("%s: smoke check passed (one-step fit, .keras save, export, contract check)",
                name)


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Return the model's malignancy probabilities for uint8 [N, size, size, 1] images."""
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0),
                      dtype=np.float64).ravel()


def predict_export(export_dir: Path, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Return the probabilities of an exported version through its serving signature."""
    loaded = tf.saved_model.load(str(export_dir))
    try:
        signature = loaded.signatures[SIGNATURE_NAME]
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = tf.constant(images[start:start + batch_size], dtype=tf.uint8)
            outputs.append(signature(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy())
        return np.concatenate(outputs).astype(np.float64).ravel()
    finally:
        del loaded
        gc.collect()


def release_memory() -> None:
    """Free the memory of models the caller no longer references, before building the next."""
    keras.backend.clear_session()
    gc.collect()
