"""A local Prefect server for `mammo serve --with-server` on a single machine.

Deployment schedules need a Prefect server: the temporary API that Prefect starts when no
``PREFECT_API_URL`` is set runs no scheduler service, so served deployments would never get
a scheduled run. This module starts ``prefect server start`` on 127.0.0.1 with its state in
the data folder, waits until its health check passes, and stops it again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mammo.errors import ConfigurationError

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
HEALTH_POLL_SECONDS = 0.5


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def local_prefect_server(port: int, *, log_file: Path,
                         startup_timeout_seconds: float = 120.0) -> Iterator[str]:
    """Run a Prefect server on 127.0.0.1:``port`` and yield its API URL.

    The server inherits ``PREFECT_HOME`` (set by the entry point to the data folder), so its
    database lives there. On exit it gets SIGTERM, then SIGKILL after
    ``STOP_GRACE_SECONDS``. Raises ConfigurationError when the port is taken or the server
    does not become healthy in time; the message points at ``log_file``.
    """
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        raise ConfigurationError(f"a Prefect server already responds on {api_url}; set "
                                 f"PREFECT_API_URL={api_url} and run `mammo serve` without "
                                 "--with-server, or choose another --server-port")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port), "--analytics-off"]
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED":
                                        "false"})
    logger.info("Starting Prefect server on %s (pid %d, log %s)", api_url, process.pid,
                log_file)
    try:
        deadline = time.monotonic() + startup_timeout_seconds
        while not _healthy(api_url):
            if process.poll() is not None:
                raise ConfigurationError(f"the Prefect server exited with code "
                                         f"{process.returncode} while starting; see {log_file}")
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the Prefect server on {api_url} was not healthy "
                                         f"after {startup_timeout_seconds:.0f} s; see {log_file}")
            time.sleep(HEALTH_POLL_SECONDS)
        logger.info("Prefect server ready on %s; the UI is at http://127.0.0.1:%d", api_url,
                    port)
        yield api_url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        # A server stuck in shutdown must not keep the port for the next start.
        logger.warning("Prefect server pid %d did not stop within %.0f s; killing it",
                       process.pid, STOP_GRACE_SECONDS)
        process.kill()
        process.wait()
    logger.info("Prefect server stopped")
