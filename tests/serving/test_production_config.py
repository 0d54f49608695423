"""The production files in serving/: parsed with TF Serving's own message definitions.

models.config is parsed with ``model_server_config_pb2.ModelServerConfig`` from the
tensorflow-serving-api wheel; batching_parameters.txt and monitoring.config with classes
built from TF Serving's .proto field definitions (tests/serving/tf_serving_protos.py). A
misspelt field name fails ``text_format.Parse``, so it fails here before it reaches a GPU host.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from mammo.settings import MODEL_NAMES, Settings
from tests.serving.tf_serving_protos import BatchingParameters, MonitoringConfig

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"
COMPOSE_FILE = SERVING_DIR / "compose.gpu.yaml"

#: Flags of tensorflow_model_server (tensorflow_serving/model_servers/main.cc) that the
#: compose file may pass. A flag missing here is a typo or needs checking against main.cc.
KNOWN_MODEL_SERVER_FLAGS = {
    "port",
    "rest_api_port",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "file_system_poll_wait_seconds",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "ssl_config_file",
    "grpc_channel_arguments",
    "grpc_max_threads",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "per_process_gpu_memory_fraction",
}


def parse_text(path: Path, message):
    text_format.Parse(path.read_text(encoding="utf-8"), message)
    return message


def split_volume(volume: str) -> tuple[str, str]:
    """Split a compose short volume ``source:target[:mode]`` into source and target.

    The source may contain ``${NAME:-default}``, so the split starts from the right.
    """
    for mode in (":ro", ":rw"):
        volume = volume.removesuffix(mode)
    source, _, target = volume.rpartition(":")
    return source, target


@pytest.fixture(scope="module")
def batching_parameters():
    return parse_text(SERVING_DIR / "batching_parameters.txt", BatchingParameters())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model_server_flags(compose: dict) -> dict[str, str]:
    flags = {}
    for argument in compose["services"]["tf-serving"]["command"]:
        match = re.fullmatch(r"--([a-z0-9_]+)=(.*)", argument)
        assert match, f"argument {argument!r} is not of the form --flag=value"
        flags[match.group(1)] = match.group(2)
    return flags


class TestModelsConfig:
    def test_parses_as_model_server_config(self) -> None:
        config = parse_text(
            SERVING_DIR / "models.config", model_server_config_pb2.ModelServerConfig()
        )

        models = config.model_config_list.config
        assert [model.name for model in models] == list(MODEL_NAMES)
        for model in models:
            assert model.base_path == f"/models/{model.name}"
            assert model.model_platform == "tensorflow"
            assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
            assert model.model_version_policy.latest.num_versions == 1

    def test_misspelt_field_fails(self) -> None:
        with pytest.raises(text_format.ParseError, match="base_pth"):
            text_format.Parse(
                'model_config_list { config { name: "cnn" base_pth: "/models/cnn" } }',
                model_server_config_pb2.ModelServerConfig(),
            )


class TestBatchingParameters:
    def test_sets_scheduler_fields(self, batching_parameters) -> None:
        for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                      "num_batch_threads"):
            assert batching_parameters.HasField(field), f"{field} is not set"
        assert batching_parameters.max_batch_size.value >= 1
        assert batching_parameters.num_batch_threads.value >= 1
        assert batching_parameters.batch_timeout_micros.value >= 0

    def test_allowed_sizes_end_at_max(self, batching_parameters) -> None:
        # BatchingParameters requires increasing sizes ending at max_batch_size.
        sizes = list(batching_parameters.allowed_batch_sizes)
        assert sizes == sorted(set(sizes))
        assert sizes[-1] == batching_parameters.max_batch_size.value

    def test_queue_suits_bulk_job(self, batching_parameters) -> None:
        queue = batching_parameters.max_enqueued_batches.value
        assert queue > batching_parameters.num_batch_threads.value

    def test_client_requests_fit_max_batch_size(self, batching_parameters) -> None:
        # TF Serving rejects a request of more images than max_batch_size.
        settings = Settings()
        max_batch_size = batching_parameters.max_batch_size.value
        assert settings.serving_max_images_per_request <= max_batch_size
        assert settings.batch_size <= max_batch_size

    def test_misspelt_field_fails(self) -> None:
        with pytest.raises(text_format.ParseError, match="max_batch_sise"):
            text_format.Parse("max_batch_sise { value: 8 }", BatchingParameters())

    def test_wrapper_without_value_fails(self) -> None:
        # The scalar fields are Int64Value messages, so a bare number is rejected.
        with pytest.raises(text_format.ParseError):
            text_format.Parse("max_batch_size: 8", BatchingParameters())


class TestMonitoringConfig:
    def test_enables_prometheus(self) -> None:
        config = parse_text(SERVING_DIR / "monitoring.config", MonitoringConfig())

        assert config.prometheus_config.enable is True
        assert config.prometheus_config.path == "/monitoring/prometheus/metrics"

    def test_misspelt_field_fails(self) -> None:
        with pytest.raises(text_format.ParseError, match="prometheus"):
            text_format.Parse("prometheus { enable: true }", MonitoringConfig())


class TestComposeFile:
    def test_flags_are_model_server_flags(self, model_server_flags: dict[str, str]) -> None:
        unknown = set(model_server_flags) - KNOWN_MODEL_SERVER_FLAGS
        assert not unknown, f"unknown tensorflow_model_server flags: {sorted(unknown)}"

    def test_required_flags_are_set(self, model_server_flags: dict[str, str]) -> None:
        assert model_server_flags["model_config_file"] == "/config/models.config"
        assert model_server_flags["enable_batching"] == "true"
        assert model_server_flags["batching_parameters_file"] == "/config/batching_parameters.txt"
        assert model_server_flags["monitoring_config_file"] == "/config/monitoring.config"
        assert int(model_server_flags["file_system_poll_wait_seconds"]) > 0

    def test_config_files_are_mounted(self, compose: dict, model_server_flags) -> None:
        volumes = compose["services"]["tf-serving"]["volumes"]
        mounts = {target: source for source, target in map(split_volume, volumes)}
        for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
            container_path = model_server_flags[flag]
            assert container_path in mounts, f"{container_path} is not mounted"
            assert (SERVING_DIR / mounts[container_path]).resolve().is_file()

    def test_repository_mounted_at_base_path_prefix(self, compose: dict) -> None:
        volumes = compose["services"]["tf-serving"]["volumes"]
        sources = [source for source, target in map(split_volume, volumes) if target == "/models"]
        assert sources == ["${MAMMO_HOST_DATA_DIR:-../var}/models"]
        assert Settings().serving_base_path_prefix == "/models"

    def test_uses_gpu_image_and_device(self, compose: dict) -> None:
        service = compose["services"]["tf-serving"]
        assert service["image"].endswith("-gpu}") or service["image"].endswith("-gpu")
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]

    def test_worker_settings_are_known(self, compose: dict) -> None:
        environment = compose["services"]["worker"]["environment"]
        # MAMMO_PROJECT_DIR is read by deployments/prefect.yaml, not by Settings.
        names = {name for name in environment if name.startswith("MAMMO_")} - {
            "MAMMO_PROJECT_DIR"
        }
        fields = Settings.model_fields
        unknown = {name for name in names if name.removeprefix("MAMMO_").lower() not in fields}
        assert not unknown, f"worker sets unknown settings {sorted(unknown)}"

    def test_worker_reaches_services_by_name(self, compose: dict) -> None:
        environment = compose["services"]["worker"]["environment"]
        assert environment["MAMMO_SERVING_ADDRESS"] == "tf-serving:8500"
        assert "@postgres:5432/" in environment["MAMMO_DATABASE_URL"]
        assert environment["PREFECT_API_URL"] == "http://prefect-server:4200/api"

    def test_worker_dockerfile_exists(self, compose: dict) -> None:
        build = compose["services"]["worker"]["build"]
        assert (SERVING_DIR / build["context"] / build["dockerfile"]).resolve().is_file()
