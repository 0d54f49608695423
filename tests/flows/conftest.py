"""Fixtures of the flow tests: small real models, a local model server, Prefect's test API.

The models are the four real architectures built at a small input size with random backbone
weights, so the tests stay fast; their scores are meaningless, but every part of the path is
the production one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo.settings import MODEL_NAMES, Settings
from tests.flows.flow_environment import served_flow_settings

TEST_INPUT_SIZE = 64


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


VERSION_ONE_SEED = 1204


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """All four models at a small input size, published as version 1.

    The weights come from a fixed seed, so tests that compare a retrained candidate with
    version 1 see the same version 1 in every session.
    """
    import keras

    from models.bootstrap import bootstrap_models

    keras.utils.set_random_seed(VERSION_ONE_SEED)
    root = tmp_path_factory.mktemp("models")
    settings = Settings(data_dir=tmp_path_factory.mktemp("bootstrap"), model_repository=root,
                        imagenet_weights="none")
    bootstrap_models(settings, input_sizes={name: TEST_INPUT_SIZE for name in MODEL_NAMES})
    return root


@pytest.fixture
def flow_settings(tmp_path, monkeypatch, model_repository, fresh_postgres_url) -> Settings:
    """Settings of the flow under test, served by a local model server."""
    with served_flow_settings(monkeypatch, {
        "MAMMO_DATA_DIR": str(tmp_path / "data"),
        "MAMMO_MODEL_REPOSITORY": str(model_repository),
        "MAMMO_DATABASE_URL": fresh_postgres_url,
        "MAMMO_STABILITY_SECONDS": "0",
        "MAMMO_BATCH_SIZE": "3",
    }) as settings:
        yield settings


