"""Tests of serving.model_config: parsing, validation and base path mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo.errors import ConfigurationError
from serving.model_config import (
    load_model_sources,
    read_model_server_config,
    validate_model_server_config,
)
from tests.serving.tiny_models import REPOSITORY_CONFIG



def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.config"
    path.write_text(body, encoding="utf-8")
    return path


def model_entry(name: str, base_path: str, platform: str = "tensorflow") -> str:
    return (
        f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "{platform}" }}\n'
    )


class TestLoadModelSources:
    def test_repository_config_lists_four_models(self, tmp_path: Path) -> None:
        sources = load_model_sources(REPOSITORY_CONFIG, "/models", tmp_path)

        assert [source.name for source in sources] == ["cnn", "efficientnetb7", "resnet50", "vgg19"]
        for source in sources:
            assert source.base_path == f"/models/{source.name}"
            assert source.local_path == tmp_path / source.name
            assert source.version_policy.WhichOneof("policy_choice") == "latest"
            assert source.version_policy.latest.num_versions == 1

    def test_nested_base_path_maps_below_repository(self, tmp_path: Path) -> None:
        config = write_config(
            tmp_path, "model_config_list { " + model_entry("cnn", "/mnt/site/cnn") + "}"
        )

        (source,) = load_model_sources(config, "/mnt", tmp_path / "repo")

        assert source.local_path == tmp_path / "repo" / "site" / "cnn"

    def test_version_labels_are_kept(self, tmp_path: Path) -> None:
        config = write_config(
            tmp_path,
            'model_config_list { config { name: "cnn" base_path: "/models/cnn" '
            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 '
            'versions: 2 } } version_labels { key: "stable" value: 1 } } }',
        )

        (source,) = load_model_sources(config, "/models", tmp_path)

        assert source.version_labels == {"stable": 1}
        assert list(source.version_policy.specific.versions) == [1, 2]


class TestReadModelServerConfig:
    def test_missing_file_raises(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match="cannot read model config file"):
            read_model_server_config(tmp_path / "absent.config")

    def test_invalid_text_raises(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "model_config_list { config { nme: 1 } }")

        with pytest.raises(ConfigurationError, match="not a valid ModelServerConfig"):
            read_model_server_config(config)


class TestValidateModelServerConfig:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("", "must contain model_config_list"),
            ("model_config_list { }", "lists no model"),
            (
                "model_config_list { " + model_entry("cnn", "/models/cnn") * 2 + "}",
                "'cnn' appears more than once",
            ),
            (
                "model_config_list { " + model_entry("cnn", "/models/cnn", "onnx") + "}",
                "model_platform 'onnx'",
            ),
            ("model_config_list { " + model_entry("", "/models/cnn") + "}", "has no name"),
            (
                "model_config_list { " + model_entry("cnn", "/data/cnn") + "}",
                "not below the mount point '/models'",
            ),
            ("model_config_list { " + model_entry("cnn", "/models") + "}", "not below"),
            (
                "model_config_list { " + model_entry("cnn", "/models/../cnn") + "}",
                "normalised absolute path",
            ),
            (
                "model_config_list { " + model_entry("cnn", "models/cnn") + "}",
                "normalised absolute path",
            ),
            (
                'model_config_list { config { name: "cnn" base_path: "/models/cnn" '
                'model_platform: "tensorflow" version_labels { key: "stable" value: 0 } } }',
                "expected a positive version number",
            ),
        ],
    )
    def test_invalid_config_raises(self, tmp_path: Path, body: str, message: str) -> None:
        config = read_model_server_config(write_config(tmp_path, body))

        with pytest.raises(ConfigurationError, match=message):
            validate_model_server_config(config, "/models")
