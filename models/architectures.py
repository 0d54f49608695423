"""The four classifiers: a custom CNN and three ImageNet backbones with their heads.

Every model has the serving contract built in. The input, named ``image``, is uint8
``[batch, height, width, 1]``. The output, named ``malignancy_probability``, is one sigmoid
unit, float32 ``[batch, 1]``. The cast to float, the conversion to three channels and the
backbone's normalisation run inside the graph (see `models.input_layers`).

Pretrained backbones are built frozen. Call `set_backbone_trainable` to unfreeze their top
layers for fine-tuning, then compile the model again.

Example (random backbone weights, smallest input size):

    >>> model = build_classifier("resnet50", 32, backbone_weights=None)
    >>> model.output_names
    ['malignancy_probability']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from mammo.settings import DEFAULT_INPUT_SIZE

from models.input_layers import GrayscaleToBackboneInput

INPUT_NAME = "image"
OUTPUT_NAME = "malignancy_probability"
BACKBONE_LAYER_NAME = "backbone"

#: Smallest height and width that every Keras application used here accepts (keras 3.15,
#: `obtain_input_shape(min_size=32)` in resnet.py, vgg19.py and efficientnet.py). The CNN's
#: three pooling steps need at least 8 pixels, so the same limit is safe for it.
MIN_INPUT_SIZE = 32

#: Largest size accepted, the same upper limit as `Settings.input_sizes`.
MAX_INPUT_SIZE = 2048

BackboneWeights = str | Path | None


def validate_input_size(
    input_size: int | None,
    *,
    default_size: int = DEFAULT_INPUT_SIZE,
    min_size: int = MIN_INPUT_SIZE,
    max_size: int = MAX_INPUT_SIZE,
) -> int:
    """Return the square input size to build with, or raise `ValueError`.

    Args:
        input_size: Height and width in pixels, or None for ``default_size``.
        default_size: Size used when ``input_size`` is None.
        min_size: Smallest accepted size.
        max_size: Largest accepted size.
    """
    if input_size is None:
        return default_size
    if isinstance(input_size, bool) or not isinstance(input_size, int):
        raise ValueError(
            f"`input_size` must be an integer number of pixels. "
            f"Received: input_size={input_size!r}"
        )
    if not min_size <= input_size <= max_size:
        raise ValueError(
            f"`input_size` must be between {min_size} and {max_size} pixels. "
            f"Received: input_size={input_size}"
        )
    return input_size


def _image_input(input_size: int) -> keras.KerasTensor:
    return keras.Input(shape=(input_size, input_size, 1), dtype="uint8", name=INPUT_NAME)


def _probability(features: keras.KerasTensor) -> keras.KerasTensor:
    # float32 even under a mixed-precision policy, because the contract fixes the dtype.
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(features)


def _frozen_backbone(application: Callable[..., keras.Model], input_size: int,
                     backbone_weights: BackboneWeights) -> keras.Model:
    backbone = application(
        include_top=False,
        weights=None if backbone_weights is None else str(backbone_weights),
        input_shape=(input_size, input_size, 3),
        name=BACKBONE_LAYER_NAME,
    )
    backbone.trainable = False
    return backbone


def build_cnn(input_size: int = DEFAULT_INPUT_SIZE, backbone_weights: BackboneWeights = None,
              *, filters: tuple[int, ...] = (32, 64, 128), dense_units: int = 128,
              dropout_rate: float = 0.5) -> keras.Model:
    """Build the custom CNN: convolution blocks, then dense layers.

    Args:
        input_size: Height and width in pixels, default 224.
        backbone_weights: Must be None, because the CNN has no pretrained backbone. The
            argument exists so that every builder has the same signature.
        filters: Filters of each block of Conv2D (3x3, ReLU) and MaxPooling2D (2x2),
            default (32, 64, 128).
        dense_units: Units of the hidden Dense layer, default 128.
        dropout_rate: Dropout before the output, default 0.5.
    """
    if backbone_weights is not None:
        raise ValueError(
            "`backbone_weights` must be None for the CNN, which has no pretrained backbone. "
            f"Received: backbone_weights={backbone_weights!r}"
        )
    input_size = validate_input_size(input_size)
    image = _image_input(input_size)
    x = GrayscaleToBackboneInput("rescale", name="rescale")(image)
    for index, block_filters in enumerate(filters, start=1):
        x = layers.Conv2D(block_filters, 3, padding="same", activation="relu",
                          name=f"block{index}_conv")(x)
        x = layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return keras.Model(image, _probability(x), name="cnn")


def build_efficientnetb7(input_size: int = DEFAULT_INPUT_SIZE,
                         backbone_weights: BackboneWeights = "imagenet", *,
                         dense_units: int = 256, dropout_rate: float = 0.5) -> keras.Model:
    """Build EfficientNetB7 (all its layers, top removed) with a Flatten head.

    The head is Flatten, BatchNormalization, Dense (ReLU), Dropout and the output. Its first
    Dense layer grows with the square of the input size: at 600 pixels it contains most of the
    model's parameters.

    Args:
        input_size: Height and width in pixels, default 224 (EfficientNetB7's native size is
            600).
        backbone_weights: ``"imagenet"`` (Keras' download, the default), a path to a Keras
            ``efficientnetb7_notop.h5`` file, or None for random weights.
        dense_units: Units of the hidden Dense layer, default 256.
        dropout_rate: Dropout after the hidden Dense layer, default 0.5.
    """
    input_size = validate_input_size(input_size)
    image = _image_input(input_size)
    x = GrayscaleToBackboneInput("efficientnet", name="preprocess")(image)
    backbone = _frozen_backbone(keras.applications.EfficientNetB7, input_size, backbone_weights)
    # training=False keeps the backbone's BatchNormalization in inference mode even after
    # it is unfrozen, as the Keras transfer-learning guide advises.
    x = backbone(x, training=False)
    x = layers.Flatten(name="flatten")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return keras.Model(image, _probability(x), name="efficientnetb7")


def build_resnet50(input_size: int = DEFAULT_INPUT_SIZE,
                   backbone_weights: BackboneWeights = "imagenet", *,
                   dense_units: int = 256, dense_layers: int = 3,
                   dropout_rate: float = 0.5) -> keras.Model:
    """Build ResNet50 (top removed) with a head of three Dense layers.

    The head is Dropout, Flatten, BatchNormalization, ``dense_layers`` Dense layers (ReLU)
    and the output.

    Args:
        input_size: Height and width in pixels, default 224.
        backbone_weights: ``"imagenet"`` (Keras' download, the default), a path to a Keras
            ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` file, or None for random
            weights.
        dense_units: Units of each hidden Dense layer, default 256.
        dense_layers: Number of hidden Dense layers, default 3.
        dropout_rate: Dropout on the backbone's features, default 0.5.
    """
    input_size = validate_input_size(input_size)
    image = _image_input(input_size)
    x = GrayscaleToBackboneInput("resnet50", name="preprocess")(image)
    backbone = _frozen_backbone(keras.applications.ResNet50, input_size, backbone_weights)
    x = backbone(x, training=False)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    for index in range(1, dense_layers + 1):
        x = layers.Dense(dense_units, activation="relu", name=f"dense{index}")(x)
    return keras.Model(image, _probability(x), name="resnet50")


def build_vgg19(input_size: int = DEFAULT_INPUT_SIZE,
                backbone_weights: BackboneWeights = "imagenet", *,
                dense_units: int = 256, dropout_rate: float = 0.5) -> keras.Model:
    """Build VGG19 (top removed, frozen) with a head ending in a sigmoid.

    The head is Flatten, Dropout, BatchNormalization, Dense (ReLU) and the output. The
    Flatten comes first because Dense layers on the 4-D feature map would score each
    position separately.

    Args:
        input_size: Height and width in pixels, default 224 (VGG19's native size).
        backbone_weights: ``"imagenet"`` (Keras' download, the default), a path to a Keras
            ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` file, or None for random
            weights.
        dense_units: Units of the hidden Dense layer, default 256.
        dropout_rate: Dropout on the backbone's features, default 0.5.
    """
    input_size = validate_input_size(input_size)
    image = _image_input(input_size)
    x = GrayscaleToBackboneInput("vgg19", name="preprocess")(image)
    backbone = _frozen_backbone(keras.applications.VGG19, input_size, backbone_weights)
    x = backbone(x, training=False)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    return keras.Model(image, _probability(x), name="vgg19")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "cnn": build_cnn,
    "efficientnetb7": build_efficientnetb7,
    "resnet50": build_resnet50,
    "vgg19": build_vgg19,
}

#: Models whose builder loads a pretrained backbone.
PRETRAINED_MODEL_NAMES: tuple[str, ...] = ("efficientnetb7", "resnet50", "vgg19")


def build_classifier(name: str, input_size: int = DEFAULT_INPUT_SIZE,
                     backbone_weights: BackboneWeights = None, **head_options) -> keras.Model:
    """Build the classifier called ``name``.

    Args:
        name: ``"cnn"``, ``"efficientnetb7"``, ``"resnet50"`` or ``"vgg19"``.
        input_size: Height and width in pixels, default 224.
        backbone_weights: For the pretrained models, ``"imagenet"``, a path to the Keras
            weights file, or None (the default) for random weights. Ignored for the CNN.
            `models.backbone_weights.resolve_backbone_weights` picks the value.
        **head_options: Passed to the builder, for example ``dropout_rate``.
    """
    builder = BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"`name` must be one of {list(BUILDERS)}. Received: name={name!r}")
    if name not in PRETRAINED_MODEL_NAMES:
        backbone_weights = None
    return builder(input_size, backbone_weights, **head_options)


def set_backbone_trainable(model: keras.Model, fraction_or_layers: float | int) -> int:
    """Unfreeze the top part of a model's pretrained backbone.

    Returns the number of backbone layers that are trainable afterwards.

    The lower backbone layers stay frozen, and so do all backbone BatchNormalization
    layers, because updating their statistics on small medical data sets undoes the
    pretraining. The head stays trainable. Compile the model again afterwards, because
    Keras reads the trainable flags when it compiles.

    Args:
        model: A model from `build_efficientnetb7`, `build_resnet50` or `build_vgg19`.
        fraction_or_layers: A float in [0, 1] unfreezes that fraction of the backbone's
            layers, counted from the top and rounded up. An int unfreezes that many layers
            from the top. 0 freezes the whole backbone again.
    """
    try:
        backbone = model.get_layer(BACKBONE_LAYER_NAME)
    except ValueError:
        raise ValueError(
            f"`model` must contain a pretrained backbone layer named {BACKBONE_LAYER_NAME!r}. "
            f"Received: model named {model.name!r}, which has none"
        ) from None

    backbone_layers = backbone.layers
    if isinstance(fraction_or_layers, bool):
        raise ValueError(
            "`fraction_or_layers` must be a float in [0, 1] or a non-negative int. "
            f"Received: fraction_or_layers={fraction_or_layers!r}"
        )
    if isinstance(fraction_or_layers, float):
        if not 0.0 <= fraction_or_layers <= 1.0:
            raise ValueError(
                "`fraction_or_layers` as a float must be in [0, 1]. "
                f"Received: fraction_or_layers={fraction_or_layers}"
            )
        count = math.ceil(fraction_or_layers * len(backbone_layers))
    elif isinstance(fraction_or_layers, int):
        if fraction_or_layers < 0:
            raise ValueError(
                "`fraction_or_layers` as an int must not be negative. "
                f"Received: fraction_or_layers={fraction_or_layers}"
            )
        count = fraction_or_layers
    else:
        raise ValueError(
            "`fraction_or_layers` must be a float in [0, 1] or a non-negative int. "
            f"Received: fraction_or_layers={fraction_or_layers!r}"
        )
    if count > len(backbone_layers):
        warnings.warn(
            f"fraction_or_layers={fraction_or_layers} asks for more layers than the backbone "
            f"has ({len(backbone_layers)}); unfreezing all of them. Pass an int up to "
            f"{len(backbone_layers)} or a float in [0, 1].",
            stacklevel=2,
        )
        count = len(backbone_layers)

    if count == 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    first_trainable = len(backbone_layers) - count
    for index, layer in enumerate(backbone_layers):
        is_batch_norm = isinstance(layer, layers.BatchNormalization)
        layer.trainable = index >= first_trainable and not is_batch_norm
    return sum(layer.trainable for layer in backbone_layers)
