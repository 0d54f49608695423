"""Flow parameters of the wrong type or shape, from the API (a deployment's flow run) and
from a direct call, which goes through the check the engine applies when a run starts. Each
is rejected before any file, folder or row is touched."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from prefect.exceptions import ParameterTypeError, PrefectHTTPStatusError
from sqlalchemy import create_engine, func, select

from db.schema import ProcessingRun
from mammo.errors import ConfigurationError
from tests.faults.harness import write_inputs

#: Parameters that the API rejects against the deployment's schema, and the run rejects too.
API_REJECTED = [
    pytest.param({"batch_size": "8"}, id="string-for-number"),
    pytest.param({"batch_size": True}, id="boolean-for-number"),
    pytest.param({"batch_size": 0}, id="batch-size-zero"),
    pytest.param({"batch_size": 100_000}, id="batch-size-too-large"),
    pytest.param({"model_names": {"cnn": 1}}, id="object-for-list"),
    pytest.param({"model_names": "cnn"}, id="string-for-list"),
    pytest.param({"model_names": []}, id="empty-model-list"),
    pytest.param({"model_names": ["cnn", "cnn"]}, id="repeated-model"),
    pytest.param({"model_names": [""]}, id="empty-model-name"),
    pytest.param({"model_names": [1]}, id="number-for-model-name"),
]
#: JSON Schema counts 8.0 as an integer, so the API accepts it. The run's strict check
#: rejects it before the flow body starts.
INVALID_PARAMETERS = [*API_REJECTED, pytest.param({"batch_size": 8.0}, id="float-for-number")]


def _run_rows(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(ProcessingRun))
    engine.dispose()
    return count


def _assert_untouched(fault_env, data_dir, names: list[str]) -> None:
    assert sorted(p.name for p in (data_dir / "incoming").iterdir()) == sorted(names)
    assert list((data_dir / "work").iterdir()) == []
    assert [p for p in (data_dir / "archive").rglob("*") if p.is_file()] == []
    assert _run_rows(fault_env["MAMMO_DATABASE_URL"]) == 0


@pytest.fixture
def deployment_id(prefect_api_url):
    from flows.process_incoming import process_incoming

    return process_incoming.to_deployment(name="parameter-checks").apply()


async def _create_flow_run(deployment_id, parameters):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.create_flow_run_from_deployment(deployment_id,
                                                            parameters=parameters)


async def _count_flow_runs(deployment_id) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))
    return len(runs)


@pytest.mark.parametrize("parameters", API_REJECTED)
def test_api_rejects_invalid_parameters(deployment_id, parameters):
    before = asyncio.run(_count_flow_runs(deployment_id))

    with pytest.raises(PrefectHTTPStatusError, match="409"):
        asyncio.run(_create_flow_run(deployment_id, parameters))

    assert asyncio.run(_count_flow_runs(deployment_id)) == before


def test_api_accepts_valid_parameters(deployment_id):
    flow_run = asyncio.run(_create_flow_run(deployment_id,
                                            {"batch_size": 8, "model_names": ["cnn"]}))

    assert flow_run.parameters == {"batch_size": 8, "model_names": ["cnn"]}


def test_invalid_parameters_rejected_before_side_effects(fault_env, tmp_path):
    from flows.process_incoming import process_incoming

    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=3, seed=61)

    for case in INVALID_PARAMETERS:
        with pytest.raises(ParameterTypeError):
            process_incoming(**case.values[0])
        _assert_untouched(fault_env, data_dir, inputs.names)


def test_unconfigured_model_rejected_before_side_effects(fault_env, tmp_path):
    from flows.process_incoming import process_incoming

    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=3, seed=62)
    shutil.rmtree(data_dir / "work")

    with pytest.raises(ConfigurationError, match=r"\['vgg19'\] are not configured models"):
        process_incoming(model_names=["vgg19"])

    assert not (data_dir / "work").exists()
    assert sorted(p.name for p in (data_dir / "incoming").iterdir()) == sorted(inputs.names)
    assert _run_rows(fault_env["MAMMO_DATABASE_URL"]) == 0


def test_valid_parameters_run(fault_env, tmp_path):
    from flows.process_incoming import process_incoming

    data_dir = tmp_path / "data"
    write_inputs(data_dir / "incoming", instances=5, seed=63)

    result = process_incoming(batch_size=2, model_names=["cnn"])

    assert result["scored"] == 5
    assert result["files_claimed"] == 5
