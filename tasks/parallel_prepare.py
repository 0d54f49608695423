"""Prepare batches on worker processes, ahead of the batch being scored.

`PreparationPipeline` turns the claimed files of a run into `PreparedBatch` objects, the
same outcomes that `tasks.prepare.prepare_batch` gives, with the work split in two:

1. `prepare_file`, on a worker, for every file: the regular-file and empty checks, gzip
   decompression, one read of the bytes, their SHA-256, the DICOM header checks of
   `read_instance` on those bytes, and the canonical image.
2. The duplicate decision, in the parent process and in claim order: SOPInstanceUID plus
   content hash against ``seen_in_run`` and the results database, asked once per batch.
   Only the parent reads and updates ``seen_in_run``, so parallel workers cannot score one
   instance twice.

Each file is read once and crosses the process boundary once. The price is that a
duplicate is preprocessed before it is recognised, so a study sent twice costs the CPU of
a new one, although it is scored once. In return the workers never wait for the parent's
decisions or the database.

A background thread runs these steps batch after batch and hands finished batches to the
flow through a queue of ``ahead`` batches, so the workers prepare the next batches while the
flow scores, records and moves the current one. The workers always have the files of the
batch after the one being collected, so at most ``ahead + 3`` batches of canonical images
exist at a time: the one being scored, ``ahead`` in the queue, the one being collected and
the one after it.

The workers are a `concurrent.futures.ProcessPoolExecutor` (``MAMMO_PREPROCESS_WORKERS``
processes, forked from a clean server process so that no worker inherits the flow's gRPC
or TensorFlow threads) or Prefect's Dask task runner (``MAMMO_PREPROCESS_EXECUTOR=dask``).
With 0 workers every step runs in the flow's own thread, one file after the other.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mammo.errors import InputRejected, ReasonCode
from mammo.settings import Settings
from tasks.dicom_read import read_instance
from tasks.intake import ClaimedFile
from tasks.prepare import (
    HEADER_ALLOWANCE_BYTES,
    MAX_BYTES_PER_PIXEL,
    InstanceInfo,
    PreparedBatch,
    Rejection,
    ScoredInput,
    Unarchived,
    _append,
    _check_regular_and_not_empty,
    _classify,
    _decompress_if_gzip,
    _name_original,
    _with_decompressed,
    hash_file,
)
from tasks.preprocess import preprocess

logger = logging.getLogger(__name__)

#: Seconds between checks of the stop flag while the preparation thread waits for room in
#: the queue, and while the flow waits for the next batch.
POLL_SECONDS = 0.5

#: Returns the (content hash, archive path) stored for each of the given SOPInstanceUIDs
#: that an earlier run scored; UIDs never scored are left out.
ScoredLookup = Callable[[Sequence[str]], Mapping[str, tuple[str, str]]]


# --- Work done on the workers ---------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessFailure:
    """The reason and message of an `InputRejected` raised while preprocessing."""

    reason: ReasonCode
    message: str


@dataclass(frozen=True)
class PreparedFile:
    """A claimed file whose DICOM header passed the checks, with its hash and the outcome of
    its preprocessing."""

    claimed: ClaimedFile
    dicom_path: Path
    content_hash: str
    info: InstanceInfo
    #: The decompressed copy of a gzip file, else None.
    decompressed_path: Path | None
    #: The canonical image, or why preprocessing rejected the instance.
    image: np.ndarray | PreprocessFailure


def prepare_file(claimed: ClaimedFile, *, image_size: int,
                 allowed_modalities: tuple[str, ...], max_pixels: int
                 ) -> PreparedFile | Rejection:
    """Check, decompress, hash, read and preprocess one claimed file, reading it once.

    Runs on a worker, which has no log handlers, so the caller logs the rejections.
    Returns a `Rejection` with the reason and message that `tasks.prepare.prepare_batch`
    gives for the same file. An `InputRejected` from decoding or preprocessing is returned
    as a `PreprocessFailure` in `PreparedFile.image`, because whether it counts depends on
    the duplicate decision: a duplicate of a scored instance stays a duplicate.
    """
    max_dicom_bytes = max_pixels * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE_BYTES
    try:
        _check_regular_and_not_empty(claimed)
        decompressed = _decompress_if_gzip(claimed, max_bytes=max_dicom_bytes)
    except InputRejected as rejected:
        return Rejection(claimed, rejected.reason, rejected.message)

    dicom_path = decompressed or claimed.path
    try:
        data, content_hash = _read_and_hash(dicom_path, max_bytes=max_dicom_bytes)
    except OSError as error:
        _discard(decompressed)
        return Rejection(claimed, ReasonCode.INCOMPLETE,
                         f"cannot read {claimed.original_name}: {error}; send the file again")
    try:
        instance = read_instance(dicom_path, allowed_modalities=allowed_modalities,
                                 max_pixels=max_pixels, data=data)
    except InputRejected as rejected:
        _discard(decompressed)
        return Rejection(claimed, rejected.reason,
                         _name_original(rejected.message, dicom_path, claimed),
                         content_hash=content_hash)
    del data  # the data set has its own copy of the Pixel Data, so free the file's bytes
    try:
        image: np.ndarray | PreprocessFailure = preprocess(instance, image_size)
    except InputRejected as rejected:
        image = PreprocessFailure(rejected.reason, rejected.message)
    info = InstanceInfo.from_instance(instance)
    return PreparedFile(claimed, dicom_path, content_hash, info, decompressed, image)


def _read_and_hash(path: Path, *, max_bytes: int) -> tuple[bytes | None, str]:
    """Return the file's bytes and their SHA-256 hex digest.

    A file larger than ``max_bytes`` is too large for an image of the allowed size. It is
    hashed in chunks instead of being read into memory, and its bytes are returned as None,
    so `read_instance` reads the file itself.
    """
    if path.stat().st_size > max_bytes:
        return None, hash_file(path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _discard(decompressed: Path | None) -> None:
    # Duplicates and rejections keep or drop the file as it arrived, so the decompressed
    # copy is no longer needed.
    if decompressed is not None:
        decompressed.unlink(missing_ok=True)


# --- Executors --------------------------------------------------------------------------------


class Executor(Protocol):
    """Pool of workers, as the pipeline uses it."""

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on a worker; the result has a ``result()`` method."""


class InlineExecutor:
    """Run each submitted call at once in the calling thread (0 worker processes)."""

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except Exception as error:  # raised to the caller by future.result()
            future.set_exception(error)
        return future


class DaskExecutor:
    """Submit each call as a Prefect task run to an entered `prefect_dask.DaskTaskRunner`.

    Every call becomes a task run named after the function, so the Prefect UI shows each
    file's inspection and preprocessing on the Dask worker that ran it.
    """

    def __init__(self, runner: Any) -> None:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        self._runner = runner
        self._tasks = {
            function: task(function, cache_policy=NO_CACHE, persist_result=False)
            for function in (prepare_file,)
        }

    @property
    def scheduler_address(self) -> str:
        """Address of the Dask scheduler, such as ``tcp://127.0.0.1:40123``."""
        return self._runner.client.scheduler.address

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        prefect_task = self._tasks[function]
        parameters = dict(zip(_positional_names(function), args)) | kwargs
        return self._runner.submit(prefect_task, parameters)


def _positional_names(function: Callable[..., Any]) -> list[str]:
    code = function.__code__
    return list(code.co_varnames[:code.co_argcount])


def default_worker_count() -> int:
    """Return the number of CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def open_settings_executor(settings: Settings, file_count: int
                           ) -> AbstractContextManager[Executor]:
    """Open the executor that the settings select, or none when there is nothing to do."""
    if file_count == 0:
        return open_executor("processes", 0)
    return open_executor(settings.preprocess_executor, settings.preprocess_workers,
                         dask_address=settings.dask_scheduler_address)


def open_executor(kind: str, workers: int | None, *,
                  dask_address: str | None = None) -> AbstractContextManager[Executor]:
    """Return a context manager that starts the workers and shuts them down on exit.

    ``kind`` is "processes" or "dask". ``workers`` is the number of worker processes, None
    for one per CPU core; 0 with "processes" runs everything in the calling thread. With
    "dask" and no ``dask_address``, a temporary local Dask cluster of ``workers`` processes
    listens on 127.0.0.1 only. With an address, the scheduler there runs the work and
    ``workers`` is ignored.
    """
    count = default_worker_count() if workers is None else workers
    if kind == "processes":
        return _ProcessPool(count)
    if kind == "dask":
        return _DaskRunner(max(count, 1), dask_address)
    raise ValueError(f"unknown preprocessing executor {kind!r}; use 'processes' or 'dask'")


class _ProcessPool(AbstractContextManager):
    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> Executor:
        if self._workers == 0:
            return InlineExecutor()
        logger.info("Starting %d preprocessing worker processes", self._workers)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers, mp_context=_worker_context(),
            initializer=_init_worker)
        return self._pool

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            logger.info("Stopped the preprocessing worker processes")


def _worker_context() -> multiprocessing.context.BaseContext:
    """Return the start method of the worker processes.

    "forkserver" where the platform has it: a fresh server process imports this module
    (pydicom, NumPy, OpenCV) once, and each worker is forked from it, so N workers cost one
    import instead of N. Like "spawn", it keeps the flow's gRPC and TensorFlow threads out
    of the workers, which "fork" would copy in an undefined state.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _init_worker() -> None:
    # Each worker runs one file at a time and the pool has a worker per core, so OpenCV's
    # own threads would only compete with the other workers.
    import cv2

    cv2.setNumThreads(1)


class _DaskRunner(AbstractContextManager):
    def __init__(self, workers: int, address: str | None) -> None:
        from prefect_dask import DaskTaskRunner

        if address:
            self._runner = DaskTaskRunner(address=address)
        else:
            # One single-threaded process per worker, because decoding and the LUTs hold
            # the GIL for part of their time. No dashboard, and every port on 127.0.0.1.
            self._runner = DaskTaskRunner(cluster_kwargs={
                "n_workers": workers, "threads_per_worker": 1, "processes": True,
                "host": "127.0.0.1", "dashboard_address": None,
            })
        self._address = address

    def __enter__(self) -> Executor:
        logger.info("Starting Prefect's Dask task runner (%s)",
                    self._address or "temporary local cluster on 127.0.0.1")
        self._runner.__enter__()
        # The runner starts or connects to the cluster on first use; do it here so that a
        # cluster that cannot start fails the run before any file is prepared.
        executor = DaskExecutor(self._runner)
        logger.info("Dask scheduler at %s", executor.scheduler_address)
        return executor

    def __exit__(self, *exc_info: object) -> None:
        self._runner.__exit__(*exc_info)


# --- The pipeline -----------------------------------------------------------------------------


class _Stop(Exception):
    """The flow stopped reading batches, so the preparation thread ends."""


class PreparationPipeline:
    """Prepare ``files`` in batches of ``batch_size`` on ``executor``, ``ahead`` batches
    ahead of the batch the caller is working on.

    ``find_scored`` is asked once per batch for the SOPInstanceUIDs that this run has not
    seen yet. ``seen_in_run`` maps the SOPInstanceUIDs this run has taken so far to their
    content hash and is updated here.

    Iterate over it, or call `next_batch` until it returns None. Use it as a context
    manager: leaving the block stops the preparation thread. Batches already handed out
    are the caller's; files of batches never handed out stay in the work folder.
    """

    def __init__(
        self,
        executor: Executor,
        files: list[ClaimedFile],
        *,
        batch_size: int,
        image_size: int,
        find_scored: ScoredLookup,
        seen_in_run: MutableMapping[str, str],
        allowed_modalities: tuple[str, ...],
        max_pixels: int,
        ahead: int = 1,
    ) -> None:
        if batch_size < 1 or ahead < 1:
            raise ValueError(f"batch_size and ahead must be at least 1, got {batch_size} "
                             f"and {ahead}")
        self._executor = executor
        self._chunks = [files[start:start + batch_size]
                        for start in range(0, len(files), batch_size)]
        self._image_size = image_size
        self._find_scored = find_scored
        self._seen_in_run = seen_in_run
        self._read_options = {"allowed_modalities": allowed_modalities,
                              "max_pixels": max_pixels}
        self._ready: queue.Queue[PreparedBatch | BaseException | None] = queue.Queue(ahead)
        self._stop = threading.Event()
        self._finished = False
        self._inline = isinstance(executor, InlineExecutor)
        self._thread: threading.Thread | None = None

    # --- Caller side ----------------------------------------------------------------------
    def __enter__(self) -> PreparationPipeline:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PreparedBatch]:
        while (batch := self.next_batch()) is not None:
            yield batch

    def next_batch(self) -> PreparedBatch | None:
        """Return the next prepared batch, or None after the last one.

        Raises what the preparation raised, for example a database error from the
        duplicate lookup or a worker process that died.
        """
        if self._finished:
            return None
        if self._inline:
            # Without workers nothing can run ahead: prepare the batch now, in this thread.
            return self._next_inline()
        self.start()
        item = self._get()
        if item is None:
            self._finished = True
            return None
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    def start(self) -> None:
        """Start preparing in the background; `next_batch` and ``with`` call it.

        Start it in the flow, outside any task run: the thread copies the caller's context,
        so that the Dask task runner submits the workers' task runs under the flow run.
        """
        if self._inline or self._thread is not None:
            return
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._produce,),
                                        name="prepare-ahead", daemon=True)
        self._thread.start()

    def _get(self) -> PreparedBatch | BaseException | None:
        while True:
            try:
                return self._ready.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("the preparation thread ended without a result")

    def close(self) -> None:
        """Stop the preparation thread and wait for it to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._finished = True

    # --- Preparation ------------------------------------------------------------------------
    def _next_inline(self) -> PreparedBatch | None:
        if not self._chunks:
            self._finished = True
            return None
        chunk = self._chunks.pop(0)
        return self._finish(self._start(chunk))

    def _produce(self) -> None:
        try:
            upcoming = self._start(self._chunks[0]) if self._chunks else []
            for number in range(len(self._chunks)):
                current = upcoming
                # The workers get the next batch's files before this batch is collected,
                # so they stay busy while this thread decides and waits for room.
                following = number + 1
                upcoming = (self._start(self._chunks[following])
                            if following < len(self._chunks) else [])
                self._put(self._finish(current))
            self._put(None)
        except _Stop:
            logger.info("Preparation stopped before the last batch")
        except BaseException as error:  # handed to the flow by next_batch
            try:
                self._put(error)
            except _Stop:
                pass

    def _put(self, item: PreparedBatch | BaseException | None) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                self._ready.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _start(self, chunk: list[ClaimedFile]) -> list[tuple[ClaimedFile, Any]]:
        """Submit `prepare_file` for every file of a batch."""
        return [(claimed, self._executor.submit(prepare_file, claimed,
                                                image_size=self._image_size,
                                                **self._read_options))
                for claimed in chunk]

    def _finish(self, submitted: list[tuple[ClaimedFile, Any]]) -> PreparedBatch:
        """Decide every file of a batch in claim order and return the batch."""
        results = [(claimed, future.result()) for claimed, future in submitted]
        unseen = sorted({result.info.sop_instance_uid for _, result in results
                         if isinstance(result, PreparedFile)} - self._seen_in_run.keys())
        scored_before = self._find_scored(unseen) if unseen else {}

        batch = PreparedBatch()
        for claimed, prepared in results:
            if isinstance(prepared, Rejection):
                logger.warning("Rejected %s: %s (%s)", claimed.claim_id, prepared.reason,
                               prepared.message)
                batch.rejections.append(prepared)
                continue
            uid = prepared.info.sop_instance_uid
            outcome = _classify(claimed, prepared.info, prepared.content_hash,
                                scored_before.get, self._seen_in_run)
            if isinstance(outcome, Unarchived):
                # Its archive file appears only after this batch's moves, so a copy later
                # in the run must be found here and recorded as a duplicate.
                self._seen_in_run[uid] = prepared.content_hash
                batch.unarchived.append(_with_decompressed(outcome,
                                                           prepared.decompressed_path))
                continue
            if outcome is not None:
                _discard(prepared.decompressed_path)
                _append(batch, outcome)
                continue
            self._collect(batch, prepared)
        return batch

    def _collect(self, batch: PreparedBatch, prepared: PreparedFile) -> None:
        """Add a new instance to the batch: to score, or rejected by its preprocessing."""
        claimed, uid = prepared.claimed, prepared.info.sop_instance_uid
        if isinstance(prepared.image, PreprocessFailure):
            failure = prepared.image
            logger.warning("Rejected SOPInstanceUID %s: %s (%s)", uid, failure.reason,
                           failure.message)
            batch.rejections.append(Rejection(
                claimed, failure.reason,
                _name_original(failure.message, prepared.dicom_path, claimed),
                content_hash=prepared.content_hash, sop_instance_uid=uid))
            _discard(prepared.decompressed_path)
            return
        self._seen_in_run[uid] = prepared.content_hash
        logger.debug("Prepared SOPInstanceUID %s (%s %s)", uid, prepared.info.laterality,
                     prepared.info.view)
        batch.to_score.append(ScoredInput(claimed, prepared.content_hash, prepared.info,
                                          prepared.decompressed_path))
        batch.images.append(prepared.image)
