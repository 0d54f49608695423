"""Serve the flows as Prefect deployments from one process (`mammo serve`).

`process_incoming` runs on an interval schedule with a concurrency limit of one. A slow run
is never overlapped by the next scheduled one; late runs wait and then find nothing left to
claim. For a Prefect server with work pools and workers, use ``deployments/prefect.yaml``.
"""

from __future__ import annotations

import datetime as dt

from mammo.settings import Settings

PROCESS_DEPLOYMENT = "process-incoming"


def serve_deployments(settings: Settings) -> None:
    """Serve every deployment until interrupted."""
    from prefect import serve

    from flows.process_incoming import process_incoming

    process = process_incoming.to_deployment(
        name=PROCESS_DEPLOYMENT,
        interval=dt.timedelta(seconds=settings.process_interval_seconds),
        concurrency_limit=1,
        description="Score the complete DICOM files in the incoming folder.",
        tags=["mammography", "second-opinion"],
    )
    serve(process)
