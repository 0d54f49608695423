"""The layer that turns the serving input into what a backbone expects.

Every classifier takes the canonical grayscale image as uint8 ``[batch, height, width, 1]``.
This layer casts it to float32, repeats the channel for backbones trained on RGB images and
applies the backbone's own ``keras.applications.<module>.preprocess_input``. Because it sits
inside the exported graph, the serving client never needs to know a backbone's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

#: Preprocessing function and output channel count per input mode. The functions take float
#: pixel values in [0, 255]. None stands for the custom CNN's division by 255.
_PREPROCESSORS: dict[str, tuple[Callable | None, int]] = {
    "rescale": (None, 1),
    "resnet50": (keras.applications.resnet50.preprocess_input, 3),
    "vgg19": (keras.applications.vgg19.preprocess_input, 3),
    "efficientnet": (keras.applications.efficientnet.preprocess_input, 3),
}

INPUT_MODES: tuple[str, ...] = tuple(_PREPROCESSORS)


@keras.saving.register_keras_serializable(package="mammo")
class GrayscaleToBackboneInput(keras.layers.Layer):
    """Cast a uint8 grayscale batch to float32 and normalise it for one backbone.

    Args:
        mode: Which normalisation to apply, one of `INPUT_MODES`. ``"rescale"`` (the
            default) divides by 255 and keeps one channel. ``"resnet50"``, ``"vgg19"`` and
            ``"efficientnet"`` repeat the channel three times and call that backbone's
            ``preprocess_input``. That call is caffe-style BGR mean subtraction for ResNet50
            and VGG19, and a pass-through for EfficientNet, whose rescaling is part of the
            backbone itself.
        **kwargs: Passed to `keras.layers.Layer`, for example ``name``.

    Example:
        >>> import numpy as np
        >>> layer = GrayscaleToBackboneInput("vgg19")
        >>> tuple(layer(np.zeros((2, 32, 32, 1), dtype="uint8")).shape)
        (2, 32, 32, 3)
    """

    def __init__(self, mode: str = "rescale", **kwargs) -> None:
        if mode not in _PREPROCESSORS:
            raise ValueError(
                f"`mode` must be one of {list(INPUT_MODES)}. Received: mode={mode!r}"
            )
        # The layer computes in float32 under any global dtype policy, because
        # the backbones' preprocessing constants are float32.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        preprocess, channels = _PREPROCESSORS[self.mode]
        images = ops.cast(inputs, "float32")
        if channels == 3:
            images = ops.repeat(images, 3, axis=-1)
        if preprocess is None:
            return images / 255.0
        return preprocess(images)

    def compute_output_shape(self, input_shape):
        _, channels = _PREPROCESSORS[self.mode]
        return (*input_shape[:-1], channels)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
