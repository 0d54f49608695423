"""Read and validate the TF Serving model config file (ModelServerConfig in text format).

The same file drives the TF Serving container (``--model_config_file``) and the local model
server. Each ``base_path`` is a path inside the container, below the mount point
``serving_base_path_prefix`` (``/models``). The local server maps it onto the model repository
on this machine, so ``/models/cnn`` becomes ``<model_repository>/cnn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from google.protobuf import text_format
from tensorflow_serving.config import file_system_storage_path_source_pb2
from tensorflow_serving.config import model_server_config_pb2

from mammo.errors import ConfigurationError

#: The only model_platform the local server can load (SavedModels through TensorFlow).
TENSORFLOW_PLATFORM = "tensorflow"

VersionPolicy = (
    file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
)


@dataclass(frozen=True)
class ModelSource:
    """One served model: its name, where its version folders are and which to serve."""

    name: str
    base_path: str
    local_path: Path
    version_policy: VersionPolicy
    version_labels: dict[str, int] = field(default_factory=dict)


def read_model_server_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """Parse a ModelServerConfig text file.

    Raises ConfigurationError naming the file when it cannot be read or parsed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read model config file {path}: {error}") from error

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigurationError(
            f"model config file {path} is not a valid ModelServerConfig in text format: {error}"
        ) from error
    return config


def validate_model_server_config(
    config: model_server_config_pb2.ModelServerConfig, base_path_prefix: str
) -> None:
    """Check that the config lists models the local server and the client can use.

    Raises ConfigurationError in each of these cases:

    - the config uses custom_model_config or lists no model;
    - a name is empty or repeated, or a platform is not "tensorflow";
    - a base_path is not a normalised absolute path below ``base_path_prefix``;
    - a version label points at a version number below 1.
    """
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigurationError(
            "model config must contain model_config_list, because custom_model_config is not "
            "supported"
        )
    models = config.model_config_list.config
    if not models:
        raise ConfigurationError(
            "model config lists no model. Add a config { ... } entry per model"
        )

    seen: set[str] = set()
    for model in models:
        if not model.name:
            raise ConfigurationError(f"model with base_path {model.base_path!r} has no name")
        if model.name in seen:
            raise ConfigurationError(f"model name {model.name!r} appears more than once")
        seen.add(model.name)

        if model.model_platform != TENSORFLOW_PLATFORM:
            raise ConfigurationError(
                f"model {model.name!r} has model_platform {model.model_platform!r}, "
                f"expected {TENSORFLOW_PLATFORM!r}"
            )
        relative_base_path(model.name, model.base_path, base_path_prefix)
        for label, version in model.version_labels.items():
            if version <= 0:
                raise ConfigurationError(
                    f"version label {label!r} of model {model.name!r} points at version "
                    f"{version}, expected a positive version number"
                )


def relative_base_path(name: str, base_path: str, base_path_prefix: str) -> PurePosixPath:
    """Return ``base_path`` relative to the container mount point ``base_path_prefix``."""
    path = PurePosixPath(base_path)
    prefix = PurePosixPath(base_path_prefix)
    if not path.is_absolute() or ".." in path.parts or str(path) != base_path.rstrip("/"):
        raise ConfigurationError(
            f"model {name!r} has base_path {base_path!r}, expected a normalised absolute path "
            f"such as {str(prefix / name)!r}"
        )
    if not path.is_relative_to(prefix) or path == prefix:
        raise ConfigurationError(
            f"model {name!r} has base_path {base_path!r}, which is not below the mount point "
            f"{base_path_prefix!r}. Expected {str(prefix / name)!r}"
        )
    return path.relative_to(prefix)


def load_model_sources(
    config_file: Path, base_path_prefix: str, model_repository: Path
) -> list[ModelSource]:
    """Read and validate the config file and map each base_path into ``model_repository``."""
    config = read_model_server_config(config_file)
    validate_model_server_config(config, base_path_prefix)

    sources = []
    for model in config.model_config_list.config:
        relative = relative_base_path(model.name, model.base_path, base_path_prefix)
        sources.append(
            ModelSource(
                name=model.name,
                base_path=model.base_path,
                local_path=Path(model_repository) / relative,
                version_policy=model.model_version_policy,
                version_labels=dict(model.version_labels),
            )
        )
    return sources
