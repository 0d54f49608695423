"""The flow's preprocessing on a local Dask cluster through Prefect's Dask task runner."""

from __future__ import annotations

import shutil

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tasks.parallel_prepare import open_executor


@pytest.mark.usefixtures("prefect_harness")
class TestDaskPreprocessing:
    def test_local_cluster_listens_on_loopback(self):
        with open_executor("dask", 1) as executor:
            address = executor.scheduler_address

        assert address.startswith("tcp://127.0.0.1:")

    def test_flow_prepares_on_dask(self, flow_settings, cbis_ddsm_files, monkeypatch):
        from flows.process_incoming import process_incoming

        monkeypatch.setenv("MAMMO_PREPROCESS_EXECUTOR", "dask")
        monkeypatch.setenv("MAMMO_PREPROCESS_WORKERS", "2")
        incoming = flow_settings.incoming_dir
        for source in cbis_ddsm_files[:3]:
            shutil.copyfile(source, incoming / f"{source.parent.name}_{source.name}")
        shutil.copyfile(cbis_ddsm_files[0], incoming / "copy.dcm")
        (incoming / "notes.txt").write_text("not a DICOM file\n")

        result = process_incoming()

        assert result["scored"] == 3
        assert result["duplicates"] == 1
        assert result["quarantined"] == 1
        task_names = _task_run_names(result["flow_run_id"])
        assert task_names.count("prepare_file") == 5
        assert list(incoming.iterdir()) == []


def _task_run_names(flow_run_id: str) -> list[str]:
    """Return the task name of every task run of the flow run, e.g. "prepare_file"."""
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
    return [task_run.name.rsplit("-", 1)[0] for task_run in task_runs]
