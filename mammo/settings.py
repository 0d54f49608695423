"""Typed settings for every part of the system.

One `Settings` object contains every path, address, size, threshold and timeout. It reads the
environment (prefix ``MAMMO_``) and an optional ``.env`` file once, when an entry point builds
it; no other module reads the environment. Relative paths are resolved against the current
working folder when the object is built, so a settings object always carries absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The four classifiers, in the order used for columns and reports.
MODEL_NAMES: tuple[str, ...] = ("cnn", "efficientnetb7", "resnet50", "vgg19")

#: Input size of every model unless a site raises it; EfficientNetB7's native size is 600.
DEFAULT_INPUT_SIZE = 224

Language = Literal["en", "tr"]


class Settings(BaseSettings):
    """Settings of the mammography second-opinion service.

    Every field can be set through an environment variable named ``MAMMO_<FIELD>``, for
    example ``MAMMO_DATABASE_URL``. Mapping fields take JSON, for example
    ``MAMMO_INPUT_SIZES='{"efficientnetb7": 600}'``.
    """

    model_config = SettingsConfigDict(
        env_prefix="MAMMO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    # --- Folders -------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("var"),
        description="Data folder holding incoming/, work/, archive/, quarantine/ and local state.",
    )
    incoming_dir: Path | None = Field(
        None, description="Watched folder for new DICOM files; default <data_dir>/incoming."
    )
    model_repository: Path | None = Field(
        None,
        description="Model repository in TF Serving layout <name>/<version>/; "
        "default <data_dir>/models.",
    )
    model_config_file: Path = Field(
        Path(__file__).resolve().parent.parent / "serving" / "models.config",
        description="TF Serving ModelServerConfig (text format) naming the served models.",
    )
    serving_base_path_prefix: str = Field(
        "/models",
        description="Folder where the TF Serving container mounts the model repository; the "
        "local server maps base_path values under it onto model_repository.",
    )

    # --- Database ------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the results database; default SQLite file "
        "<data_dir>/mammo.db. Example: postgresql+psycopg2://user@host:5432/mammo. "
        "Kept secret because it may hold a password: repr() and logs show '**********'.",
    )
    database_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the database URL; used when "
        "database_url is not set.",
    )

    database_retries: int = Field(
        5, ge=0, le=20, description="Retries of a database transaction whose connection "
        "failed or could not be opened, for example while PostgreSQL restarts."
    )
    database_retry_backoff_seconds: float = Field(
        0.5, ge=0, description="Delay before the first such retry, in seconds; doubles on "
        "each retry."
    )

    # --- Serving -------------------------------------------------------------------------
    serving_address: str = Field(
        "127.0.0.1:8500", description="host:port of the TF Serving gRPC API."
    )
    serving_timeout_seconds: float = Field(
        60.0, gt=0, description="Deadline of one gRPC call, in seconds."
    )
    serving_max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4 * 1024 * 1024,
        description="Largest gRPC message sent or received, in bytes; requests are split "
        "to stay under it.",
    )
    serving_max_images_per_request: int = Field(
        32,
        ge=1,
        le=1024,
        description="Maximum number of images in one Predict request. With batching enabled, TF Serving "
        "rejects a request of more images than max_batch_size in batching_parameters.txt "
        "with INVALID_ARGUMENT, so keep this at or below it.",
    )
    serving_retries: int = Field(
        5, ge=0, le=20, description="Retries of a call that failed with UNAVAILABLE or "
        "DEADLINE_EXCEEDED."
    )
    serving_retry_backoff_seconds: float = Field(
        0.5, ge=0, description="First retry delay in seconds; doubles on each retry."
    )
    serving_ready_timeout_seconds: float = Field(
        300.0, gt=0, description="How long `mammo serve-models --wait` waits for all models."
    )
    serving_poll_seconds: float = Field(
        2.0, gt=0, description="How often the local model server looks for new versions."
    )
    serving_load_retries: int = Field(
        5, ge=0, le=100, description="Polls on which the local model server tries a failed "
        "version load again, like TF Serving's --max_num_load_retries."
    )
    serving_tls_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA certificates that sign the model server's "
        "certificate. Setting it makes the client use TLS.",
    )
    serving_tls_cert_file: Path | None = Field(
        None,
        description="PEM client certificate for servers that require mutual TLS; needs "
        "serving_tls_key_file and serving_tls_ca_file.",
    )
    serving_tls_key_file: Path | None = Field(
        None, description="PEM private key of serving_tls_cert_file."
    )
    serving_tls_server_name: str | None = Field(
        None,
        description="Host name expected in the server's certificate when it differs from the "
        "host of serving_address (gRPC option grpc.ssl_target_name_override).",
    )
    model_names: tuple[str, ...] = Field(
        MODEL_NAMES, min_length=1, description="Models scored for every instance."
    )
    input_sizes: dict[str, int] = Field(
        default_factory=dict,
        description="Input height and width per model for new exports; missing models "
        f"use {DEFAULT_INPUT_SIZE}.",
    )

    # --- Models and training -------------------------------------------------------------
    imagenet_weights: Literal["imagenet", "none"] = Field(
        "imagenet",
        description="Backbone initialisation: 'imagenet' tries the local weights folder, "
        "then Keras' download, then falls back to random weights with a warning.",
    )
    weights_dir: Path | None = Field(
        None,
        description="Folder with Keras ImageNet weight files (the names Keras downloads), "
        "for sites without internet.",
    )

    # --- Ensemble ------------------------------------------------------------------------
    ensemble_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight per model in the ensemble mean; missing models weigh 1.",
    )
    operating_threshold: float = Field(
        0.5, gt=0, lt=1, description="Ensemble probability at or above which a case is "
        "'suspicious', used until a retraining run stores a threshold for the "
        "served model versions."
    )
    target_sensitivity: float = Field(
        0.9, gt=0, lt=1, description="Sensitivity on held-out labelled cases for which the "
        "retraining flow chooses each version's threshold and the ensemble threshold."
    )

    # --- Intake and preprocessing --------------------------------------------------------
    stability_seconds: float = Field(
        2.0, ge=0, description="A file counts as complete once its size and mtime have not "
        "changed for this many seconds."
    )
    max_wait_seconds: float = Field(
        30.0, ge=0, description="How long one run waits for growing files before leaving "
        "them for the next run."
    )
    batch_size: int = Field(
        32, ge=1, le=1024, description="Instances preprocessed, scored and written together. "
        "Each batch costs two Prefect task runs and one transaction, so larger batches lower "
        "the overhead per image; 32 is TF Serving's max_batch_size in "
        "serving/batching_parameters.txt, one GPU batch per model."
    )
    allowed_modalities: tuple[str, ...] = Field(
        ("MG",), min_length=1, description="DICOM Modality values accepted for scoring."
    )
    max_pixels: int = Field(
        80_000_000, gt=0, description="Largest Rows x Columns accepted; larger images are "
        "quarantined as oversize."
    )
    preprocess_workers: int | None = Field(
        None, ge=0, le=256, description="Worker processes that hash, read and preprocess "
        "files while the flow scores the previous batch; unset for one per CPU core the "
        "flow may use, 0 to do it all in the flow's process one file after the other."
    )
    preprocess_executor: Literal["processes", "dask"] = Field(
        "processes", description="Where the workers run: 'processes' for a process pool on "
        "the flow's machine, 'dask' for Prefect's Dask task runner (prefect-dask) on the "
        "cluster at dask_scheduler_address, or on a temporary local cluster of "
        "preprocess_workers processes listening on 127.0.0.1 when it is unset."
    )
    dask_scheduler_address: str | None = Field(
        None, description="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786, "
        "used when preprocess_executor is 'dask'."
    )
    prepare_ahead_batches: int = Field(
        1, ge=1, le=16, description="Prepared batches kept waiting while the flow scores "
        "one. The flow holds at most this many plus 3 batches of canonical images."
    )

    # --- Orchestration -------------------------------------------------------------------
    process_interval_seconds: int = Field(
        60, ge=5, description="Schedule interval of the process_incoming deployment."
    )
    retrain_cron: str = Field(
        "0 2 * * 0", min_length=9, description="Cron schedule of the retrain_models "
        "deployment in `mammo serve`; default Sundays at 02:00."
    )
    retrain_timezone: str = Field(
        "UTC", description="IANA time zone of retrain_cron, e.g. Europe/Istanbul."
    )
    language: Language = Field(
        "en", description="Language of user-facing texts: 'en' (English) or 'tr' (Turkish)."
    )

    @field_validator("data_dir", "incoming_dir", "model_repository", "weights_dir",
                     "model_config_file", "serving_tls_ca_file", "serving_tls_cert_file",
                     "serving_tls_key_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("input_sizes")
    @classmethod
    def _check_input_sizes(cls, value: dict[str, int]) -> dict[str, int]:
        for name, size in value.items():
            if not 32 <= size <= 2048:
                raise ValueError(
                    f"input size of model {name!r} must be between 32 and 2048 pixels, "
                    f"got {size}"
                )
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.incoming_dir is None:
            self.incoming_dir = self.data_dir / "incoming"
        if self.model_repository is None:
            self.model_repository = self.data_dir / "models"
        unknown = set(self.ensemble_weights) - set(self.model_names)
        if unknown:
            raise ValueError(
                f"ensemble_weights names models that are not served: {sorted(unknown)}; "
                f"served models are {list(self.model_names)}"
            )
        if any(weight < 0 for weight in self.ensemble_weights.values()):
            raise ValueError(f"ensemble weights must not be negative, got {self.ensemble_weights}")
        self._check_serving_tls()
        return self

    def _check_serving_tls(self) -> None:
        has_cert = self.serving_tls_cert_file is not None
        has_key = self.serving_tls_key_file is not None
        if has_cert != has_key:
            raise ValueError(
                "serving_tls_cert_file and serving_tls_key_file must be set together for mutual "
                f"TLS, got cert {self.serving_tls_cert_file} and key {self.serving_tls_key_file}"
            )
        if has_cert and self.serving_tls_ca_file is None:
            raise ValueError(
                "serving_tls_cert_file needs serving_tls_ca_file, the CA of the server's "
                "certificate"
            )

    # --- Derived paths -------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        """Folder of per-run work folders, one per claiming run."""
        return self.data_dir / "work"

    @property
    def archive_dir(self) -> Path:
        """Archive of scored files as <StudyInstanceUID>/<SOPInstanceUID>.dcm."""
        return self.data_dir / "archive"

    @property
    def quarantine_dir(self) -> Path:
        """Quarantined files as <reason_code>/<file name>, original bytes kept."""
        return self.data_dir / "quarantine"

    @property
    def prefect_home(self) -> Path:
        return self.data_dir / "prefect"

    @property
    def keras_home(self) -> Path:
        return self.data_dir / "keras"

    @property
    def retraining_dir(self) -> Path:
        """Per-run retraining files as <flow run id>/<model>/: checkpoints, ROC curves."""
        return self.data_dir / "retraining"

    def input_size(self, model_name: str) -> int:
        """Input height and width used when exporting ``model_name``."""
        return self.input_sizes.get(model_name, DEFAULT_INPUT_SIZE)

    def ensemble_weight(self, model_name: str) -> float:
        return self.ensemble_weights.get(model_name, 1.0)

    def resolved_database_url(self) -> str:
        """Return the database URL, reading the Prefect Secret block if one is named."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        if self.database_secret_block:
            from prefect.blocks.system import Secret

            return Secret.load(self.database_secret_block).get()
        return f"sqlite:///{self.data_dir / 'mammo.db'}"

    def ensure_folders(self) -> None:
        """Create the data folders if they are missing."""
        for folder in (self.data_dir, self.incoming_dir, self.work_dir, self.archive_dir,
                       self.quarantine_dir, self.model_repository):
            folder.mkdir(parents=True, exist_ok=True)

    def export_tool_homes(self) -> None:
        """Point Prefect and Keras at folders inside the data folder.

        Call from an entry point before Prefect or Keras is imported; both read their home
        folder from the environment at import time.
        """
        os.environ.setdefault("PREFECT_HOME", str(self.prefect_home))
        os.environ.setdefault("KERAS_HOME", str(self.keras_home))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Send the project's module loggers to the Prefect run logs too.
        os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,db,serving,models")
        # Those loggers also run outside flows (CLI commands, the model server).
        os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
