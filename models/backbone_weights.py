"""Find the ImageNet weights for a pretrained backbone, or fall back to random weights.

The order is:

1. a local folder (``weights_dir``) holding the file that Keras would download, under the
   same name, for sites without internet access;
2. Keras' own download, through `keras.utils.get_file`, which first looks in its cache
   folder (``<cache_dir>/models``) and checks the file's hash;
3. random weights, with a warning that is logged and returned, so that the model
   repository can store it beside the exported version.

Example:
    >>> resolved = resolve_backbone_weights("vgg19", mode="none")
    >>> resolved.source, resolved.weights
    ('random', None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras

logger = logging.getLogger(__name__)

WeightsSource = Literal["imagenet-local", "imagenet-download", "random", "none"]


@dataclass(frozen=True)
class KerasWeightsFile:
    """A backbone's ImageNet weights file (no top) as keras.applications downloads it."""

    file_name: str
    origin: str
    file_hash: str


# File names, addresses and MD5 hashes as keras 3.15.1 uses them in
# keras/src/applications/resnet.py, vgg19.py and efficientnet.py.
KERAS_WEIGHTS_FILES: dict[str, KerasWeightsFile] = {
    "resnet50": KerasWeightsFile(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "vgg19": KerasWeightsFile(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/",
        "253f8cb515780f3b799900260a226db6",
    ),
    "efficientnetb7": KerasWeightsFile(
        "efficientnetb7_notop.h5",
        "https://storage.googleapis.com/keras-applications/",
        "cbcfe4450ddf6f3ad90b1b398090fe4a",
    ),
}


@dataclass(frozen=True)
class ResolvedBackboneWeights:
    """The weights a backbone is built with, and where they came from.

    Attributes:
        source: ``"imagenet-local"`` (from ``weights_dir``), ``"imagenet-download"`` (from
            Keras' download or its cache), ``"random"`` (no ImageNet weights), or ``"none"``
            for a model without a pretrained backbone.
        weights: The value for a builder's ``backbone_weights`` argument: a weights file
            path, or None for random weights.
        warning: Why the model got random weights although ImageNet weights were requested,
            or None.
    """

    source: WeightsSource
    weights: Path | None
    warning: str | None = None


def resolve_backbone_weights(
    model_name: str,
    *,
    mode: Literal["imagenet", "none"] = "imagenet",
    weights_dir: Path | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = True,
    download_url_prefix: str | None = None,
) -> ResolvedBackboneWeights:
    """Find the ImageNet weights file for ``model_name``'s backbone.

    Args:
        model_name: A classifier name. Names without a pretrained backbone (the CNN)
            return source ``"none"``.
        mode: ``"imagenet"`` (the default) looks for ImageNet weights. ``"none"`` builds
            with random weights, without a warning, because the operator chose it.
        weights_dir: Folder holding Keras weight files under the names Keras downloads,
            for example ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``. Default None.
        cache_dir: Keras cache folder for downloads (the file lands in
            ``<cache_dir>/models``). Default None, which is Keras' own default:
            ``$KERAS_HOME``, else ``~/.keras``.
        allow_download: Whether to try the download when ``weights_dir`` lacks the file.
            Default True.
        download_url_prefix: Address of a mirror that serves the files under their Keras
            names, ending in ``/``. Default None, which uses Keras' own addresses.
    """
    weights_file = KERAS_WEIGHTS_FILES.get(model_name)
    if weights_file is None:
        return ResolvedBackboneWeights(source="none", weights=None)
    if mode == "none":
        return ResolvedBackboneWeights(source="random", weights=None)
    if mode != "imagenet":
        raise ValueError(f"`mode` must be 'imagenet' or 'none'. Received: mode={mode!r}")

    if weights_dir is not None:
        local_path = Path(weights_dir) / weights_file.file_name
        if local_path.is_file():
            logger.info("Using local ImageNet weights for %s from %s", model_name, local_path)
            return ResolvedBackboneWeights(source="imagenet-local", weights=local_path)
        logger.info("No %s in weights folder %s", weights_file.file_name, weights_dir)

    if not allow_download:
        return _random_weights(
            model_name,
            f"ImageNet weights for {model_name} were not found in weights folder "
            f"{weights_dir} and downloading is disabled",
            weights_file,
        )

    origin = (download_url_prefix or weights_file.origin) + weights_file.file_name
    try:
        downloaded = keras.utils.get_file(
            weights_file.file_name,
            origin,
            cache_subdir="models",
            file_hash=weights_file.file_hash,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    # get_file raises a plain Exception ("URL fetch failure on ...") when the host cannot be
    # reached, and ValueError when the downloaded file's hash does not match.
    except Exception as error:  # noqa: BLE001
        return _random_weights(
            model_name,
            f"downloading ImageNet weights for {model_name} from {origin} failed: {error}",
            weights_file,
        )
    return ResolvedBackboneWeights(source="imagenet-download", weights=Path(downloaded))


def _random_weights(model_name: str, reason: str,
                    weights_file: KerasWeightsFile) -> ResolvedBackboneWeights:
    warning = (
        f"{model_name} is built with random backbone weights because {reason}. Its scores "
        f"carry no ImageNet pretraining. To fix this, put {weights_file.file_name} into the "
        "weights folder (MAMMO_WEIGHTS_DIR), or set MAMMO_IMAGENET_WEIGHTS=none to choose "
        "random weights on purpose."
    )
    logger.warning(warning)
    return ResolvedBackboneWeights(source="random", weights=None, warning=warning)
