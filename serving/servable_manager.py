"""Load, track and unload the model versions (servables) the local model server serves.

`ServableManager` polls each model folder, applies the model's version policy, loads new
versions with ``tf.saved_model.load``, replays their warmup records and unloads versions the
policy drops. It records the state of every version it has seen, as TF Serving's servable
state monitor does: LOADING while loading, AVAILABLE once loaded, END after an unload (OK
status) or a failed load (error status).

A failed load is tried again on each of the next polls, at most ``max_load_retries`` times,
like TF Serving's ``--max_num_load_retries`` (default 5). TF Serving waits
``--load_retry_interval_micros`` (default 1 minute) between attempts; the local server waits
one poll interval. After the last retry the version stays END with its error until the
server restarts or its folder disappears.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from serving.model_config import ModelSource
from serving.rpc_status import RpcStatusError
from serving.version_policy import SAVED_MODEL_FILENAME, list_ready_versions, select_versions
from serving.warmup import replay_warmup_records

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State

#: The meta graph TF Serving loads from a SavedModel (tag ``serve``).
SERVING_TAG = tf.saved_model.SERVING

#: tensorflow.error.Code numbers stored in ModelVersionStatus.status.error_code.
_ERROR_CODE_OK = 0
_ERROR_CODE_UNKNOWN = 2

#: Default of TF Serving's --max_num_load_retries: retries after the first failed load.
DEFAULT_MAX_LOAD_RETRIES = 5


@dataclass(frozen=True)
class Servable:
    """One loaded model version: its SavedModel object and its SignatureDefs."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    saved_model: Any


@dataclass(frozen=True)
class VersionStatus:
    """State of one model version, with the load error for END after a failed load."""

    version: int
    state: int
    error_code: int = _ERROR_CODE_OK
    error_message: str = ""


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """Return the SignatureDefs of the ``serve`` meta graph in ``version_dir/saved_model.pb``.

    These are the SignatureDefs TF Serving returns from GetModelMetadata, with the graph's
    tensor names (such as ``serving_default_image:0``), dtypes and shapes.
    """
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / SAVED_MODEL_FILENAME).read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVING_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"SavedModel in {version_dir} has no meta graph tagged {SERVING_TAG!r}")


def load_servable(name: str, version: int, version_dir: Path) -> Servable:
    """Load one version folder as a Servable and replay its warmup records.

    Raises the load's error, or `serving.warmup.WarmupError` when a warmup request fails.
    """
    signature_defs = read_signature_defs(version_dir)
    saved_model = tf.saved_model.load(str(version_dir), tags=[SERVING_TAG])
    servable = Servable(name, version, version_dir, signature_defs, saved_model)

    warmup = replay_warmup_records(servable)
    if warmup.requests:
        logger.info(
            "Replayed %d warmup requests for model %s version %d in %.3f s",
            warmup.requests, name, version, warmup.seconds,
        )
    else:
        logger.info("Model %s version %d has no warmup records", name, version)
    return servable


class ServableManager:
    """Registry of the loaded versions that each model's version policy selects.

    Thread-safe: request handlers call `resolve` and `version_statuses` while the polling
    thread loads and unloads versions.

    Args:
        sources: the models to serve, from the model config file.
        max_load_retries: polls on which a failed load is tried again.
    """

    def __init__(
        self, sources: list[ModelSource], max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES
    ) -> None:
        self._sources = {source.name: source for source in sources}
        self._max_load_retries = max_load_retries
        self._failed_loads: dict[str, dict[int, int]] = {name: {} for name in self._sources}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._loaded: dict[str, dict[int, Servable]] = {name: {} for name in self._sources}
        self._statuses: dict[str, dict[int, VersionStatus]] = {name: {} for name in self._sources}
        self._warned_empty: set[str] = set()
        self._warned_kept: set[tuple[str, tuple[int, ...]]] = set()
        self._stop_polling = threading.Event()
        self._poll_thread: threading.Thread | None = None

    @property
    def model_names(self) -> list[str]:
        return list(self._sources)

    # --- Polling -------------------------------------------------------------------------
    def poll(self) -> None:
        """Scan every model folder once, load new versions and unload dropped ones."""
        with self._poll_lock:
            for source in self._sources.values():
                self._poll_model(source)

    def start_polling(self, interval_seconds: float) -> None:
        """Call `poll` every ``interval_seconds`` in a daemon thread until `stop_polling`."""
        self._stop_polling.clear()
        self._poll_thread = threading.Thread(
            target=self._poll_loop, args=(interval_seconds,), name="servable-poll", daemon=True
        )
        self._poll_thread.start()

    def stop_polling(self) -> None:
        self._stop_polling.set()
        if self._poll_thread is not None:
            self._poll_thread.join()
            self._poll_thread = None

    def _poll_loop(self, interval_seconds: float) -> None:
        while not self._stop_polling.wait(interval_seconds):
            try:
                self.poll()
            except Exception:
                # Keep polling, because the next pass may succeed once the file system recovers.
                logger.exception("Polling the model repository failed")

    def _poll_model(self, source: ModelSource) -> None:
        ready = list_ready_versions(source.local_path)
        if not ready:
            if source.name not in self._warned_empty:
                logger.warning(
                    "No versions of model %s found under %s (base_path %s)",
                    source.name, source.local_path, source.base_path,
                )
                self._warned_empty.add(source.name)
        else:
            self._warned_empty.discard(source.name)

        aspired = select_versions(source.version_policy, ready)
        failures = self._failed_loads[source.name]
        for version in set(failures) - set(ready):
            # The folder is gone, so a folder published again under this number starts afresh.
            del failures[version]
        given_up = {
            version for version, count in failures.items() if count > self._max_load_retries
        }
        with self._lock:
            loaded = set(self._loaded[source.name])

        for version in sorted(aspired - loaded - given_up):
            self._load_version(source, version)

        self._unload_dropped_versions(source.name, aspired)

    def _load_version(self, source: ModelSource, version: int) -> None:
        version_dir = source.local_path / str(version)
        failures = self._failed_loads[source.name]
        attempt = failures.get(version, 0) + 1
        self._set_status(source.name, VersionStatus(version, State.LOADING))
        logger.info(
            "Loading model %s version %d from %s (attempt %d of %d)",
            source.name, version, version_dir, attempt, self._max_load_retries + 1,
        )
        try:
            servable = load_servable(source.name, version, version_dir)
        except Exception as error:
            failures[version] = attempt
            retry = (
                "retrying on the next poll"
                if attempt <= self._max_load_retries
                else "giving up until the server restarts"
            )
            logger.exception(
                "Loading model %s version %d failed on attempt %d of %d, %s",
                source.name, version, attempt, self._max_load_retries + 1, retry,
            )
            failed = VersionStatus(version, State.END, _ERROR_CODE_UNKNOWN, f"load failed: {error}")
            self._set_status(source.name, failed)
            return

        failures.pop(version, None)
        with self._lock:
            self._loaded[source.name][version] = servable
            self._statuses[source.name][version] = VersionStatus(version, State.AVAILABLE)
        logger.info("Model %s version %d is AVAILABLE", source.name, version)

    def _unload_dropped_versions(self, name: str, aspired: set[int]) -> None:
        with self._lock:
            loaded = self._loaded[name]
            dropped = sorted(set(loaded) - aspired)
            if dropped and not aspired & set(loaded):
                # Keep the old version until a selected version is loaded, so a failed load
                # leaves the model served. NOTE: TF Serving's availability-preserving policy
                # also loads before it unloads, but whether it keeps the old version after the
                # new one fails to load is not verified here.
                if (name, tuple(dropped)) not in self._warned_kept:
                    logger.warning(
                        "Model %s keeps serving version(s) %s because no selected version %s "
                        "is loaded", name, dropped, sorted(aspired),
                    )
                    self._warned_kept.add((name, tuple(dropped)))
                return
            for version in dropped:
                del loaded[version]
                self._statuses[name][version] = VersionStatus(version, State.END)
        for version in dropped:
            logger.info("Unloaded model %s version %d", name, version)

    def _set_status(self, name: str, status: VersionStatus) -> None:
        with self._lock:
            self._statuses[name][status.version] = status

    # --- Queries from request handlers ---------------------------------------------------
    def resolve(self, model_spec: model_pb2.ModelSpec) -> Servable:
        """Return the servable a request's ModelSpec names, as TF Serving resolves it.

        No version means the highest loaded version. A version_label is looked up in the
        model's version_labels. Raises RpcStatusError with NOT_FOUND for an unknown model or
        a version that is not loaded, and INVALID_ARGUMENT for an unknown version label.
        """
        name = model_spec.name
        source = self._sources.get(name)

        if model_spec.HasField("version"):
            version: int | None = model_spec.version.value
        elif model_spec.version_label:
            labels = source.version_labels if source else {}
            if model_spec.version_label not in labels:
                raise RpcStatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {model_spec.version_label}",
                )
            version = labels[model_spec.version_label]
        else:
            version = None

        with self._lock:
            loaded = self._loaded.get(name, {})
            if version is None and loaded:
                return loaded[max(loaded)]
            if version is not None and version in loaded:
                return loaded[version]

        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise RpcStatusError(
            grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}"
        )

    def version_statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Return the status of every version of ``name`` seen so far, or of one version.

        Raises RpcStatusError with NOT_FOUND when there is nothing to report.
        """
        with self._lock:
            statuses = dict(self._statuses.get(name, {}))

        if version is not None:
            if version not in statuses:
                raise RpcStatusError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
                )
            return [statuses[version]]
        if not statuses:
            raise RpcStatusError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        return [statuses[number] for number in sorted(statuses)]
