"""Measure `process_incoming` end to end against its floors, its memory, and its scaling.

Every command builds a site of its own in a temporary folder. The site has a results
database, created on the PostgreSQL server at ``--postgres-url`` and dropped at the end. It
has the local model server (`mammo serve-models`) on a free port of 127.0.0.1 in a
subprocess, and a model repository.
By default the repository contains four tiny SavedModels that meet the serving contract and
return the mean pixel value: they stand in for a GPU, which scores far faster than these
CPUs run the real architectures. ``--model-repository`` serves another repository instead.
The inputs are copies of DICOM files (default the eight CBIS-DDSM samples, about 10 MB and
4400 x 2900 pixels each) written with new Study, Series and SOP Instance UIDs.

The flow runs in a subprocess of its own, after a warm-up flow has started Prefect's
temporary local API, so the timed run contains only `process_incoming` itself. Modes:

- ``sequential``: ``MAMMO_PREPROCESS_WORKERS=0``, every step in the flow's process, one
  batch after the other (the flow before worker processes);
- ``parallel``: ``--workers`` worker processes, the next batch prepared while the current
  one is scored.

Commands (one run each; every variant side by side):

    .venv/bin/python bench/end_to_end.py throughput --instances 200 --baseline 33c50ee \
        --also-batch-size 8
    .venv/bin/python bench/end_to_end.py memory --instances 500 2000
    .venv/bin/python bench/end_to_end.py scaling --instances 400 --workers 1 2

``throughput`` reports instances per second of the flow and of its floors, measured on the
same instances: preprocessing only (`read_instance` and `preprocess`, in one process and on
``--workers`` processes), the SHA-256 of every file (which the flow needs to deduplicate
and the floor leaves out) and models only (`ServingClient.score` on the canonical images in
batches of ``--batch-size``, which also counts the gRPC bytes sent per instance). It runs
the sequential and parallel modes, the parallel mode again for each ``--also-batch-size``,
and with ``--baseline GIT_REF`` the parallel flow of that commit, from a temporary git
worktree, as the before figure. Each run also reports the CPU seconds of the flow process,
its worker processes, Prefect's API server and the model server.
``memory`` reports the peak resident set size of the flow process and of the flow process
plus its worker processes, sampled every 0.2 s with psutil (the Prefect API server that
the flow process starts is left out). ``scaling`` reports, for 0..N worker processes,
preprocessing-only throughput on that many processes, the flow's throughput with that many
workers, and the share of the flow's time above the preprocessing-only time, with and
without the SHA-256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY_ROOT))

MODES = ("sequential", "parallel")
SAMPLE_SECONDS = 0.2


# --- The site -------------------------------------------------------------------------------


@dataclass
class Site:
    root: Path
    database_url: str
    serving_address: str
    model_repository: Path
    batch_size: int
    server_pid: int = 0
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def incoming(self) -> Path:
        return self.root / "data" / "incoming"

    def flow_environment(self, workers: int) -> dict[str, str]:
        return {
            **os.environ,
            "MAMMO_DATA_DIR": str(self.root / "data"),
            "MAMMO_DATABASE_URL": self.database_url,
            "MAMMO_MODEL_REPOSITORY": str(self.model_repository),
            "MAMMO_SERVING_ADDRESS": self.serving_address,
            "MAMMO_STABILITY_SECONDS": "0",
            "MAMMO_BATCH_SIZE": str(self.batch_size),
            "MAMMO_PREPROCESS_WORKERS": str(workers),
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _publish_tiny_models(repository: Path, size: int) -> None:
    from mammo.settings import MODEL_NAMES
    from tests.serving.tiny_models import publish_version

    for name in MODEL_NAMES:
        publish_version(repository / name, 1, size)


def _create_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mammo_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
            {"name": name})
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _wait_until_served(environment: dict[str, str], timeout: float = 300) -> None:
    from mammo.settings import Settings
    from serving.client import ServingClient

    deadline = time.monotonic() + timeout
    variables = {key: value for key, value in environment.items() if key.startswith("MAMMO_")}
    with _environment(variables):
        settings = Settings()
    while True:
        try:
            with ServingClient(settings) as client:
                client.check_models()
            return
        except Exception as error:  # the server is still loading the models
            if time.monotonic() > deadline:
                raise TimeoutError(f"the local model server at {settings.serving_address} "
                                   f"did not serve every model within {timeout} s: {error}")
            time.sleep(1)


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def open_site(args: argparse.Namespace) -> Iterator[Site]:
    """Create the database, the model repository and the model server; remove them after."""
    root = Path(tempfile.mkdtemp(prefix="mammo-bench-", dir=args.tmp_dir))
    repository = args.model_repository or root / "models"
    if args.model_repository is None:
        _publish_tiny_models(repository, args.model_size)
    database_url = _create_database(args.postgres_url)
    site = Site(root, database_url, f"127.0.0.1:{_free_port()}", repository, args.batch_size)
    server = None
    try:
        from db.migrate import upgrade

        upgrade(database_url)
        environment = site.flow_environment(0)
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mammo"), "serve-models"], env=environment,
            stdout=subprocess.DEVNULL, stderr=open(root / "model-server.log", "wb"))
        site.server_pid = server.pid
        _wait_until_served(environment)
        yield site
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        _drop_database(args.postgres_url, database_url)
        shutil.rmtree(root, ignore_errors=True)


# --- Inputs ---------------------------------------------------------------------------------


def write_instances(folder: Path, count: int, sources: list[Path]) -> float:
    """Write ``count`` copies of ``sources`` with new UIDs; return the seconds it took."""
    import pydicom
    from pydicom.uid import generate_uid

    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    datasets = [pydicom.dcmread(path) for path in sources]
    for index in range(count):
        dataset = datasets[index % len(datasets)]
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        # Intake skips names starting with a dot, so no run claims a partial file.
        target = folder / f"{index:05d}.dcm"
        dataset.save_as(folder / f".{target.name}", enforce_file_format=True)
        os.rename(folder / f".{target.name}", target)
    return time.perf_counter() - start


# --- Flow runs ------------------------------------------------------------------------------


@dataclass
class FlowRun:
    seconds: float
    counts: dict
    peak_flow_bytes: int
    peak_with_workers_bytes: int
    #: CPU seconds used during the timed run, by "flow", "workers", "prefect_api" and
    #: "model_server".
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def _cpu(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _is_worker(process) -> bool:
    # Worker processes, the forkserver they are forked from and the resource tracker.
    return "multiprocessing" in " ".join(process.cmdline())


def run_flow(site: Site, workers: int, *, batch_size: int | None = None,
             code_root: Path = REPOSITORY_ROOT) -> FlowRun:
    """Run `process_incoming` once in a subprocess and sample its memory and CPU time.

    ``code_root`` is the checkout whose flow runs: this one, or a worktree of an earlier
    commit for a before-and-after comparison.
    """
    import psutil

    environment = site.flow_environment(workers)
    if batch_size is not None:
        environment["MAMMO_BATCH_SIZE"] = str(batch_size)
    command = [sys.executable, str(code_root / "bench" / "end_to_end.py"), "_run-flow"]
    log = open(site.root / "flow.log", "ab")
    process = subprocess.Popen(command, env=environment, cwd=code_root,
                               stdout=subprocess.PIPE, stderr=log, text=True)
    peaks = {"flow": 0, "with_workers": 0}
    # CPU seconds per process id: at the start of the timed run, and the latest sample.
    cpu_start: dict[int, float] = {}
    cpu_last: dict[int, tuple[str, float]] = {}
    measuring = threading.Event()
    done = threading.Event()
    parent = psutil.Process(process.pid)
    server = psutil.Process(site.server_pid)

    groups: dict[int, str] = {}

    def processes() -> list[tuple[str, object]]:
        found = [("flow", parent), ("model_server", server)]
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                # A process just started may still show its parent's command line, so a
                # process seen once as a worker stays one.
                if groups.get(child.pid) != "workers":
                    groups[child.pid] = "workers" if _is_worker(child) else "prefect_api"
                found.append((groups[child.pid], child))
        return found

    def sample() -> None:
        while not done.is_set():
            if measuring.is_set():
                total = 0
                for group, member in processes():
                    with contextlib.suppress(psutil.Error):
                        cpu_last[member.pid] = (group, _cpu(member))
                        if group == "flow":
                            peaks["flow"] = max(peaks["flow"], member.memory_info().rss)
                        if group in ("flow", "workers"):
                            total += member.memory_info().rss
                peaks["with_workers"] = max(peaks["with_workers"], total)
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = None
    cpu_end: dict[int, tuple[str, float]] = {}
    for line in process.stdout:
        if line.startswith("START"):
            for group, member in processes():
                with contextlib.suppress(psutil.Error):
                    cpu_start[member.pid] = _cpu(member)
            measuring.set()
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            for group, member in processes():
                with contextlib.suppress(psutil.Error):
                    cpu_last[member.pid] = (group, _cpu(member))
            measuring.clear()
            cpu_end = dict(cpu_last)
    process.wait()
    done.set()
    sampler.join()
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"the flow run failed with exit code {process.returncode}; see "
                           f"{site.root / 'flow.log'}")
    shutil.rmtree(site.root / "data" / "archive", ignore_errors=True)
    cpu: dict[str, float] = {"flow": 0.0, "workers": 0.0, "prefect_api": 0.0,
                             "model_server": 0.0}
    for pid, (group, seconds) in cpu_end.items():
        cpu[group] += seconds - cpu_start.get(pid, 0.0)
    return FlowRun(result["seconds"], result["counts"], peaks["flow"],
                   peaks["with_workers"], cpu)


def _run_flow_here() -> None:
    """Entry point of the flow subprocess: warm Prefect up, then time one flow run."""
    from prefect import flow

    from flows.process_incoming import process_incoming

    @flow
    def warm_up() -> None:
        """Start Prefect's temporary local API before the timed run."""

    warm_up()
    print("START", flush=True)
    start = time.perf_counter()
    counts = process_incoming()
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": seconds, "counts": counts}, default=str),
          flush=True)


# --- Floors ---------------------------------------------------------------------------------


def _preprocess_one(path: Path, size: int):
    from tasks.dicom_read import read_instance
    from tasks.preprocess import preprocess

    return preprocess(read_instance(path), size)


def _single_thread_opencv() -> None:
    import cv2

    cv2.setNumThreads(1)


def preprocessing_seconds(files: list[Path], size: int, workers: int) -> float:
    """Return the seconds to read and preprocess ``files`` in one process (0) or on
    ``workers`` processes."""
    if workers == 0:
        start = time.perf_counter()
        for path in files:
            _preprocess_one(path, size)
        return time.perf_counter() - start
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread_opencv) as pool:
        list(pool.map(_preprocess_one, files[:workers], [size] * workers))  # start workers
        start = time.perf_counter()
        list(pool.map(_preprocess_one, files, [size] * len(files)))
        return time.perf_counter() - start


def model_seconds(site: Site, files: list[Path], size: int) -> tuple[float, float]:
    """Return the seconds to score the canonical images of ``files``, and the gRPC bytes
    sent per instance."""
    import grpc
    import numpy as np

    import serving.client
    from mammo.settings import Settings

    sent = {"bytes": 0}
    # The client sends the four models' requests from several threads at once.
    counting = threading.Lock()

    class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            if details.method.endswith("/Predict"):
                with counting:
                    sent["bytes"] += request.ByteSize()
            return continuation(details, request)

    open_channel = serving.client.open_channel
    serving.client.open_channel = lambda settings, options: grpc.intercept_channel(
        open_channel(settings, options), CountingInterceptor())
    variables = {key: value for key, value in site.flow_environment(0).items()
                 if key.startswith("MAMMO_")}
    with _environment(variables):
        settings = Settings()
    images = [_preprocess_one(path, size) for path in files]
    try:
        with serving.client.ServingClient(settings) as client:
            client.check_models()
            start = time.perf_counter()
            for first in range(0, len(images), site.batch_size):
                client.score(np.stack(images[first:first + site.batch_size]))
            seconds = time.perf_counter() - start
    finally:
        serving.client.open_channel = open_channel
    return seconds, sent["bytes"] / len(images)


# --- Commands -------------------------------------------------------------------------------


def _sources(args: argparse.Namespace) -> list[Path]:
    if args.sources:
        return args.sources
    from mammo.cli import sample_files

    return sample_files()


def _workers(args: argparse.Namespace) -> list[int]:
    from tasks.parallel_prepare import default_worker_count

    return args.workers or [default_worker_count()]


def hashing_seconds(files: list[Path]) -> float:
    """Return the seconds to take the SHA-256 of ``files`` in one process, as the flow
    does to deduplicate them."""
    from tasks.prepare import hash_file

    start = time.perf_counter()
    for path in files:
        hash_file(path)
    return time.perf_counter() - start


@contextlib.contextmanager
def checkout_of(ref: str | None) -> Iterator[Path | None]:
    """Yield a temporary git worktree of ``ref`` of this repository, or None without one."""
    if ref is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="mammo-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(REPOSITORY_ROOT), "worktree", "add", "--detach",
                    str(folder), ref], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPOSITORY_ROOT), "worktree", "remove", "--force",
                        str(folder)], check=False, capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


@dataclass(frozen=True)
class Variant:
    label: str
    code_root: Path
    workers: int
    batch_size: int


def _variants(args: argparse.Namespace, workers: int, baseline: Path | None
              ) -> list[Variant]:
    variants = []
    if baseline is not None:
        variants.append(Variant(f"before ({args.baseline}), parallel", baseline, workers,
                                args.baseline_batch_size))
    variants.append(Variant("sequential", REPOSITORY_ROOT, 0, args.batch_size))
    variants.append(Variant("parallel", REPOSITORY_ROOT, workers, args.batch_size))
    variants += [Variant(f"parallel, batch {size}", REPOSITORY_ROOT, workers, size)
                 for size in args.also_batch_size]
    return variants


def command_throughput(args: argparse.Namespace) -> None:
    workers = _workers(args)[0]
    with open_site(args) as site, checkout_of(args.baseline) as baseline:
        floor_folder = site.root / "floor"
        write_instances(floor_folder, args.instances, _sources(args))
        files = sorted(floor_folder.glob("*.dcm"))
        prep_one = preprocessing_seconds(files, args.model_size, 0)
        prep_parallel = preprocessing_seconds(files, args.model_size, workers)
        hashing = hashing_seconds(files)
        models, grpc_bytes = model_seconds(site, files, args.model_size)
        shutil.rmtree(floor_folder)

        print(f"{args.instances} instances, canonical size {args.model_size}, {workers} "
              "worker processes in parallel mode")
        print(f"preprocessing only, 1 process:   {prep_one:8.2f} s "
              f"({args.instances / prep_one:6.1f} instances/s)")
        print(f"preprocessing only, {workers} processes: {prep_parallel:8.2f} s "
              f"({args.instances / prep_parallel:6.1f} instances/s)")
        print(f"SHA-256 of every file, 1 process: {hashing:7.2f} s")
        print(f"models only, batches of {args.batch_size}:     {models:8.2f} s "
              f"({args.instances / models:6.1f} instances/s)")
        print(f"gRPC bytes sent per instance:    {grpc_bytes:8.0f}")
        # The sum floor: one process preprocesses, then the models score, with no overlap.
        # The pipelined floor is the slower of the two stages, with the preprocessing on as
        # many processes as the run uses. A run without workers cannot overlap the stages,
        # so its pipelined floor is the sum floor.
        floor = prep_one + models
        print(f"{'run':<30}{'batch':>6}{'flow s':>8}{'inst/s':>8}{'over sum floor':>16}"
              f"{'pipelined floor s':>19}{'over it':>9}   CPU s: flow, workers, "
              "Prefect API, model server")
        for variant in _variants(args, workers, baseline):
            write_instances(site.incoming, args.instances, _sources(args))
            run = run_flow(site, variant.workers, batch_size=variant.batch_size,
                           code_root=variant.code_root)
            scored = run.counts["scored"]
            if scored != args.instances:
                raise RuntimeError(f"{variant.label}: scored {scored} of {args.instances} "
                                   f"instances: {run.counts}")
            pipelined = max(prep_parallel, models) if variant.workers else floor
            cpu = run.cpu_seconds
            print(f"{variant.label:<30}{variant.batch_size:>6}{run.seconds:>8.2f}"
                  f"{args.instances / run.seconds:>8.1f}"
                  f"{(run.seconds - floor) / run.seconds:>16.1%}"
                  f"{pipelined:>19.2f}{(run.seconds - pipelined) / run.seconds:>9.1%}   "
                  f"{cpu['flow']:.2f}, {cpu['workers']:.2f}, {cpu['prefect_api']:.2f}, "
                  f"{cpu['model_server']:.2f}", flush=True)


def command_memory(args: argparse.Namespace) -> None:
    workers = _workers(args)[0]
    with open_site(args) as site:
        print(f"batch size {args.batch_size}, {workers} worker processes in parallel mode; "
              "peak resident set size in MiB")
        print(f"{'mode':<12}{'instances':>10}{'flow s':>9}{'flow process':>14}"
              f"{'with workers':>14}")
        for count in args.instances:
            for mode in MODES:
                write_instances(site.incoming, count, _sources(args))
                run = run_flow(site, workers if mode == "parallel" else 0)
                if run.counts["scored"] != count:
                    raise RuntimeError(f"{mode}: the flow scored {run.counts['scored']} of "
                                       f"{count} instances: {run.counts}")
                print(f"{mode:<12}{count:>10}{run.seconds:>9.1f}"
                      f"{run.peak_flow_bytes / 2**20:>14.0f}"
                      f"{run.peak_with_workers_bytes / 2**20:>14.0f}", flush=True)


def command_scaling(args: argparse.Namespace) -> None:
    counts = args.workers or [1, 2]
    with open_site(args) as site:
        floor_folder = site.root / "floor"
        write_instances(floor_folder, args.instances, _sources(args))
        files = sorted(floor_folder.glob("*.dcm"))
        single = preprocessing_seconds(files, args.model_size, 0)
        hashing = hashing_seconds(files)
        print(f"{args.instances} instances, batch size {args.batch_size}; SHA-256 of every "
              f"file {hashing:.2f} s in one process")
        print(f"{'workers':>8}{'preprocessing only/s':>22}{'speed-up':>10}{'flow/s':>8}"
              f"{'flow over preprocessing':>25}{'less the SHA-256':>18}"
              "   CPU s: flow, workers, Prefect API, model server")
        for workers in [0, *counts]:
            seconds = (single if workers == 0
                       else preprocessing_seconds(files, args.model_size, workers))
            write_instances(site.incoming, args.instances, _sources(args))
            run = run_flow(site, workers)
            # The SHA-256 runs on the workers, so it shares their processes.
            hash_share = hashing / max(workers, 1)
            cpu = run.cpu_seconds
            print(f"{workers:>8}{args.instances / seconds:>22.1f}{single / seconds:>10.2f}"
                  f"{run.counts['scored'] / run.seconds:>8.1f}"
                  f"{(run.seconds - seconds) / run.seconds:>25.1%}"
                  f"{(run.seconds - seconds - hash_share) / run.seconds:>18.1%}   "
                  f"{cpu['flow']:.2f}, {cpu['workers']:.2f}, {cpu['prefect_api']:.2f}, "
                  f"{cpu['model_server']:.2f}", flush=True)
        shutil.rmtree(floor_folder)


def _default_batch_size() -> int:
    from mammo.settings import Settings

    return Settings.model_fields["batch_size"].default


def main() -> None:
    if sys.argv[1:2] == ["_run-flow"]:
        _run_flow_here()
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("throughput", command_throughput), ("memory", command_memory),
                          ("scaling", command_scaling)):
        command = commands.add_parser(name)
        command.set_defaults(handler=handler)
        command.add_argument("--instances", type=int, nargs="+" if name == "memory" else None,
                             default=[500, 2000] if name == "memory" else 200,
                             help="instances written into the incoming folder per run")
        command.add_argument("--workers", type=int, nargs="+",
                             help="worker processes of the parallel mode (scaling: each "
                             "count in turn); default one per CPU core")
        command.add_argument("--batch-size", type=int, default=_default_batch_size(),
                             help="instances per batch (MAMMO_BATCH_SIZE); default the "
                             "setting's default")
        if name == "throughput":
            command.add_argument("--also-batch-size", type=int, nargs="*", default=[],
                                 help="run the parallel mode again with each of these "
                                 "batch sizes")
            command.add_argument("--baseline", metavar="GIT_REF",
                                 help="also run the flow of this commit (parallel mode), "
                                 "from a temporary git worktree, as the before figure")
            command.add_argument("--baseline-batch-size", type=int, default=8,
                                 help="batch size of the --baseline run (default 8, the "
                                 "default before it became 32)")
        command.add_argument("--model-size", type=int, default=224,
                             help="input size of the tiny models and canonical size, pixels")
        command.add_argument("--model-repository", type=Path,
                             help="serve this model repository instead of tiny models")
        command.add_argument("--postgres-url",
                             default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
                             help="PostgreSQL server on which a benchmark database is created "
                             "and dropped")
        command.add_argument("--tmp-dir", type=Path, help="folder for the site; default the "
                             "system temporary folder")
        command.add_argument("sources", nargs="*", type=Path,
                             help="DICOM files to copy; default the CBIS-DDSM samples")
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
