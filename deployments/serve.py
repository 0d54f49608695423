"""Serve the flows as Prefect deployments from one process (`mammo serve`).

`process_incoming` runs on an interval schedule with a concurrency limit of one. A slow run
is never overlapped by the next scheduled one; late runs wait and then find nothing left to
claim. `retrain_models` runs on the weekly cron schedule of ``MAMMO_RETRAIN_CRON``, also one
run at a time. For a Prefect server with work pools and workers, use
``deployments/prefect.yaml``.
"""

from __future__ import annotations

import datetime as dt
import os

from mammo.errors import ConfigurationError
from mammo.settings import Settings

PROCESS_DEPLOYMENT = "process-incoming"
RETRAIN_DEPLOYMENT = "retrain-models"


def serve_deployments(settings: Settings, *, with_server: bool = False,
                      server_port: int = 4200) -> None:
    """Serve every deployment until interrupted.

    With ``with_server``, a local Prefect server is started first (see
    `deployments.prefect_server`) and stopped afterwards. Otherwise ``PREFECT_API_URL`` must
    name a running Prefect server, because Prefect's temporary API runs no scheduler.
    """
    if not with_server:
        _serve(settings)
        return

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.prefect_server import local_prefect_server

    log_file = settings.data_dir / "prefect-server.log"
    with local_prefect_server(server_port, log_file=log_file) as api_url:
        # Scheduled runs execute in subprocesses, which read the API URL from the environment.
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            _serve(settings)


def _serve(settings: Settings) -> None:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    from flows.process_incoming import process_incoming

    if not PREFECT_API_URL.value():
        raise ConfigurationError(
            "no Prefect server is configured, and Prefect's temporary API runs no scheduler, "
            "so scheduled runs would never start; run `mammo serve --with-server`, or start "
            "`prefect server start` and set PREFECT_API_URL")

    process = process_incoming.to_deployment(
        name=PROCESS_DEPLOYMENT,
        interval=dt.timedelta(seconds=settings.process_interval_seconds),
        concurrency_limit=1,
        description="Score the complete DICOM files in the incoming folder.",
        tags=["mammography", "second-opinion"],
    )
    serve(process, retrain_deployment(settings))


def retrain_deployment(settings: Settings):
    """Return the retrain_models deployment on its weekly cron schedule, one run at a time.

    Its parameters are the defaults of `RetrainParameters`; an operator changes them for one
    run in the Prefect UI's form.
    """
    from prefect.schedules import Cron

    from flows.retrain_models import retrain_models

    return retrain_models.to_deployment(
        name=RETRAIN_DEPLOYMENT,
        schedule=Cron(settings.retrain_cron, timezone=settings.retrain_timezone),
        concurrency_limit=1,
        description="Fine-tune the models on newly labelled cases and promote those that "
        "are not worse on held-out cases.",
        tags=["mammography", "retraining"],
    )
