"""Fault-injection harness shared by the fault tests and ``bench/kill_and_rerun.py``.

It builds what a fault run needs from real parts. The CNN is bootstrapped at 32 px and served
alone (a model config file lists only ``cnn``), the inputs are small MG DICOM files with
unique UIDs, and ``mammo process`` runs as a subprocess configured by ``MAMMO_*`` variables.
An audit then reads the results database and the data folder and counts every input's
outcomes.

The audit matches inputs to outcome rows by their original file name, which every outcome
table stores (``instances.file_name``, ``duplicate_records.file_name``,
``quarantine_records.file_name``). An input with no outcome is lost, and an input with more
than one is doubled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tests.tasks.mammogram_files import make_dataset

FAULT_MODEL = "cnn"
FAULT_INPUT_SIZE = 32  # the smallest size the architectures accept, for fast scoring
IMAGE_SIZE = 64  # rows and columns of the test mammograms

#: TF Serving model config that serves the CNN alone, in the layout of serving/models.config.
CNN_ONLY_MODEL_CONFIG = """\
model_config_list {
  config {
    name: "cnn"
    base_path: "/models/cnn"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 1 } }
  }
}
"""

#: Seconds a `mammo process` run may take before the harness gives up on it.
RUN_TIMEOUT_SECONDS = 180.0


def publish_fault_model(root: Path) -> tuple[Path, Path]:
    """Bootstrap the CNN at `FAULT_INPUT_SIZE` under ``root``; return (repository, config)."""
    from mammo.settings import Settings
    from models.bootstrap import bootstrap_models

    repository = root / "models"
    settings = Settings(data_dir=root / "bootstrap", model_repository=repository,
                        imagenet_weights="none", model_names=(FAULT_MODEL,))
    bootstrap_models(settings, input_sizes={FAULT_MODEL: FAULT_INPUT_SIZE})
    config = root / "cnn_only.config"
    config.write_text(CNN_ONLY_MODEL_CONFIG)
    return repository, config


def fault_environment(data_dir: Path, *, database_url: str, repository: Path,
                      model_config: Path, serving_address: str,
                      batch_size: int = 4) -> dict[str, str]:
    """Return the ``MAMMO_*`` variables of a fault run; callers add the serving settings."""
    return {
        "MAMMO_DATA_DIR": str(data_dir),
        "MAMMO_DATABASE_URL": database_url,
        "MAMMO_MODEL_REPOSITORY": str(repository),
        "MAMMO_MODEL_CONFIG_FILE": str(model_config),
        "MAMMO_MODEL_NAMES": f'["{FAULT_MODEL}"]',
        "MAMMO_SERVING_ADDRESS": serving_address,
        "MAMMO_STABILITY_SECONDS": "0",
        "MAMMO_BATCH_SIZE": str(batch_size),
    }


# --- Inputs --------------------------------------------------------------------------------
def make_mammogram(rng: np.random.Generator) -> Dataset:
    """Return a 64x64 12-bit MONOCHROME2 MG data set with new UIDs and random breast pixels."""
    rows, columns = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    breast = np.hypot(rows - IMAGE_SIZE / 2, columns) < IMAGE_SIZE * 0.45
    pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint16)
    pixels[breast] = rng.integers(800, 4000, int(breast.sum()), dtype=np.uint16)

    return make_dataset(pixels, PatientID="FAULT-TEST", AccessionNumber=None, StudyDate=None,
                        Laterality="L" if rng.random() < 0.5 else "R", ViewPosition="CC")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class InputSet:
    """Files written into an incoming folder and the outcome each one must end in."""

    #: SOPInstanceUID -> (StudyInstanceUID, SHA-256) of each distinct instance.
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: File names of instances, duplicates and non-DICOM files, as written.
    scored_names: list[str] = field(default_factory=list)
    duplicate_names: list[str] = field(default_factory=list)
    not_dicom_names: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.scored_names + self.duplicate_names + self.not_dicom_names


def write_inputs(incoming: Path, *, instances: int, duplicates: int = 0, not_dicom: int = 0,
                 seed: int = 0, prefix: str = "", duplicates_dir: Path | None = None
                 ) -> InputSet:
    """Write ``instances`` distinct mammograms, byte copies of the first ``duplicates`` of
    them under other names, and ``not_dicom`` text files into ``incoming``.

    The copies go to ``duplicates_dir`` instead when it is given, so a test can deliver
    them later with `deliver`. Each file is written under a hidden name and renamed, as a
    PACS export should do, so a run never claims a half-written file.
    """
    rng = np.random.default_rng(seed)
    incoming.mkdir(parents=True, exist_ok=True)
    inputs = InputSet()

    def publish(name: str, write, folder: Path = incoming) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.part"
        write(partial)
        final = folder / name
        os.rename(partial, final)
        return final

    for index in range(instances):
        ds = make_mammogram(rng)
        name = f"{prefix}mg{index:04d}.dcm"
        path = publish(name, lambda target: ds.save_as(target, enforce_file_format=True))
        inputs.instances[ds.SOPInstanceUID] = (ds.StudyInstanceUID, sha256_of(path))
        inputs.scored_names.append(name)
    for index in range(duplicates):
        source = incoming / inputs.scored_names[index]
        name = f"{prefix}copy{index:04d}.dcm"
        publish(name, lambda target: shutil.copyfile(source, target),
                duplicates_dir or incoming)
        inputs.duplicate_names.append(name)
    for index in range(not_dicom):
        name = f"{prefix}notes{index:04d}.txt"
        publish(name, lambda target: target.write_text(f"not a DICOM file {index}\n"))
        inputs.not_dicom_names.append(name)
    return inputs


def deliver(folder: Path, incoming: Path) -> None:
    """Move every file of ``folder`` into ``incoming`` by rename."""
    for path in sorted(folder.iterdir()):
        os.rename(path, incoming / path.name)


# --- Runs in a subprocess ------------------------------------------------------------------
def start_process_run(environment: dict[str, str], log_path: Path,
                      crash_at: tuple[str, int, str] | None = None) -> subprocess.Popen:
    """Start ``mammo process`` in a new process group, its output appended to ``log_path``.

    ``crash_at`` is (target, call number, "before" or "after"): the run then kills itself
    at that call, see `tests.faults.crash_at`.
    """
    command = [sys.executable, "-m", "mammo.cli", "process"]
    if crash_at is not None:
        target, call_number, when = crash_at
        command = [sys.executable, "-m", "tests.faults.crash_at", target, str(call_number),
                   when]
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            command,
            env={**os.environ, **environment}, stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    finally:
        log.close()


def wait_for_work_folder(work_dir: Path, process: subprocess.Popen, known: set[str],
                         timeout: float = RUN_TIMEOUT_SECONDS,
                         with_files: bool = False) -> str | None:
    """Wait until a run folder not in ``known`` appears in ``work_dir``; return its name.

    With ``with_files``, wait until that folder also contains a claimed or reclaimed file.
    Returns None when the process exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if work_dir.is_dir():
            for folder in sorted(work_dir.iterdir()):
                if folder.name in known or folder.name.startswith("."):
                    continue
                if not with_files or _holds_claimed_file(folder):
                    return folder.name
        if process.poll() is not None:
            return None
        time.sleep(0.01)
    raise TimeoutError(f"no run folder appeared in {work_dir} within {timeout} s")


def _holds_claimed_file(folder: Path) -> bool:
    try:
        return any(not entry.name.startswith(".") for entry in folder.iterdir())
    except FileNotFoundError:
        return False


def kill_process_group(process: subprocess.Popen) -> None:
    """Send SIGKILL to the run and any child it started, then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def run_to_completion(environment: dict[str, str], log_path: Path,
                      crash_at: tuple[str, int, str] | None = None) -> int:
    """Run ``mammo process`` once and return its exit code (-9 after a ``crash_at`` kill)."""
    process = start_process_run(environment, log_path, crash_at)
    try:
        return process.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        # A run killed by crash_at leaves its preparation workers behind.
        kill_process_group(process)


@dataclass
class KillRound:
    """What one kill-and-rerun round did: where each kill landed and the runs after them."""

    #: Archived files that each killed run waited for, and the jitter after it, in seconds.
    kill_targets: list[int] = field(default_factory=list)
    kill_jitters: list[float] = field(default_factory=list)
    #: Files in the archive right after each kill, to show where in the run it landed.
    archived_at_kill: list[int] = field(default_factory=list)
    killed_runs: int = 0
    finished_before_kill: int = 0
    final_runs: int = 0
    final_exit_codes: list[int] = field(default_factory=list)


def count_archived(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "archive").rglob("*.dcm") if p.is_file())


def kill_and_rerun(environment: dict[str, str], data_dir: Path, *, kills: int,
                   expected_archived: int, rng: np.random.Generator, log_path: Path,
                   max_jitter: float = 0.3, max_final_runs: int = 3) -> KillRound:
    """Start runs and SIGKILL each at a random point, then run until one run completes.

    For each run a target is drawn uniformly between the files archived so far and
    ``expected_archived - 1``. Once the run has claimed its first file, the harness waits
    until the archive contains the target number of files, then a jitter drawn uniformly from
    [0, ``max_jitter``] seconds, and kills the run. Kills therefore land at random points of
    intake, preparation, scoring, the database write or the file moves, whatever the speed
    of the machine, and never in the interpreter's start-up or the checks before intake.
    """
    work_dir = data_dir / "work"
    result = KillRound()
    for _ in range(kills):
        known = {p.name for p in work_dir.iterdir()} if work_dir.is_dir() else set()
        archived = count_archived(data_dir)
        target = int(rng.integers(archived, max(archived, expected_archived - 1) + 1))
        jitter = float(rng.uniform(0.0, max_jitter))
        result.kill_targets.append(target)
        result.kill_jitters.append(round(jitter, 3))

        process = start_process_run(environment, log_path)
        try:
            if wait_for_work_folder(work_dir, process, known, with_files=True) is not None:
                deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
                while (count_archived(data_dir) < target and process.poll() is None
                       and time.monotonic() < deadline):
                    time.sleep(0.005)
                time.sleep(jitter)
            if process.poll() is None:
                result.killed_runs += 1
            else:
                result.finished_before_kill += 1
        finally:
            kill_process_group(process)
        result.archived_at_kill.append(count_archived(data_dir))

    while result.final_runs < max_final_runs:
        code = run_to_completion(environment, log_path)
        result.final_runs += 1
        result.final_exit_codes.append(code)
        if code == 0:
            break
    return result


# --- Audit ---------------------------------------------------------------------------------
@dataclass
class Audit:
    """Outcomes of a set of inputs, read from the database and the data folder."""

    inputs: int = 0
    outcomes: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    wrong_outcome: list[str] = field(default_factory=list)
    scored_instances: int = 0
    duplicate_records: int = 0
    quarantine_records: int = 0
    incomplete_scores: list[str] = field(default_factory=list)
    archive_files: int = 0
    archive_problems: list[str] = field(default_factory=list)
    quarantine_files: int = 0
    left_in_work: list[str] = field(default_factory=list)
    left_in_incoming: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every input has exactly one outcome and every file is where it belongs."""
        return not (self.lost or self.doubled or self.wrong_outcome or self.incomplete_scores
                    or self.archive_problems or self.left_in_work or self.left_in_incoming)

    def summary(self) -> str:
        return (f"{self.inputs} inputs, {self.outcomes} outcomes ({self.scored_instances} "
                f"scored, {self.duplicate_records} duplicates, {self.quarantine_records} "
                f"quarantined), {len(self.doubled)} doubled, {len(self.lost)} lost, "
                f"{self.archive_files} archived, {len(self.left_in_work)} left in work")


def run_statuses(database_url: str) -> list[str]:
    """Return the status of every row of processing_runs, oldest run first."""
    from sqlalchemy import create_engine, select

    from db.schema import ProcessingRun

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(
                select(ProcessingRun.status).order_by(ProcessingRun.started_at)))
    finally:
        engine.dispose()


def audit_outcomes(database_url: str, data_dir: Path, inputs: InputSet,
                   model_count: int = 1) -> Audit:
    """Count the outcomes of ``inputs`` and check the archive, quarantine and work folders."""
    from sqlalchemy import create_engine, func, select

    from db.schema import DuplicateRecord, Instance, ModelScore, QuarantineRecord, SecondOpinion

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            instance_rows = connection.execute(select(
                Instance.sop_instance_uid, Instance.file_name, Instance.content_hash,
                Instance.archive_path)).all()
            duplicate_names = connection.scalars(select(DuplicateRecord.file_name)).all()
            quarantine_names = connection.scalars(select(QuarantineRecord.file_name)).all()
            opinions = Counter(connection.scalars(select(SecondOpinion.sop_instance_uid)))
            scores = dict(connection.execute(
                select(ModelScore.sop_instance_uid, func.count())
                .group_by(ModelScore.sop_instance_uid)).all())
    finally:
        engine.dispose()

    audit = Audit(inputs=len(inputs.names), scored_instances=len(instance_rows),
                  duplicate_records=len(duplicate_names),
                  quarantine_records=len(quarantine_names))
    outcome_kinds: dict[str, list[str]] = {}
    for _, name, _, _ in instance_rows:
        outcome_kinds.setdefault(name, []).append("scored")
    for name in duplicate_names:
        outcome_kinds.setdefault(name, []).append("duplicate")
    for name in quarantine_names:
        outcome_kinds.setdefault(name, []).append("quarantine")
    audit.outcomes = sum(len(kinds) for kinds in outcome_kinds.values())

    expected_kind = {name: "scored_or_duplicate" for name in inputs.scored_names}
    expected_kind.update({name: "scored_or_duplicate" for name in inputs.duplicate_names})
    expected_kind.update({name: "quarantine" for name in inputs.not_dicom_names})
    for name in inputs.names:
        kinds = outcome_kinds.get(name, [])
        if not kinds:
            audit.lost.append(name)
        elif len(kinds) > 1:
            audit.doubled.append(name)
        elif (expected_kind[name] == "quarantine") != (kinds[0] == "quarantine"):
            audit.wrong_outcome.append(f"{name}: {kinds[0]}")
    audit.doubled.extend(f"{name} (not an input)" for name in outcome_kinds
                         if name not in expected_kind)

    # Every distinct instance: one result, one score per model, its bytes in the archive.
    stored = {uid: (content_hash, Path(path)) for uid, _, content_hash, path in instance_rows}
    for uid, (_, content_hash) in inputs.instances.items():
        if uid not in stored:
            audit.archive_problems.append(f"{uid}: no instance row")
            continue
        if opinions.get(uid) != 1 or scores.get(uid) != model_count:
            audit.incomplete_scores.append(
                f"{uid}: {opinions.get(uid, 0)} second opinions, {scores.get(uid, 0)} scores")
        stored_hash, archive_path = stored[uid]
        if stored_hash != content_hash:
            audit.archive_problems.append(f"{uid}: stored hash differs from the input's")
        if not archive_path.is_file():
            audit.archive_problems.append(f"{uid}: {archive_path} is missing")
        elif sha256_of(archive_path) != content_hash:
            audit.archive_problems.append(f"{uid}: archived bytes differ from the input's")

    archived = [p for p in (data_dir / "archive").rglob("*") if p.is_file()]
    audit.archive_files = len(archived)
    if len(archived) != len(inputs.instances):
        audit.archive_problems.append(
            f"archive holds {len(archived)} files for {len(inputs.instances)} instances")
    audit.quarantine_files = sum(1 for p in (data_dir / "quarantine").rglob("*") if p.is_file())
    audit.left_in_work = sorted(str(p.relative_to(data_dir)) for p in
                                (data_dir / "work").rglob("*") if p.is_file())
    audit.left_in_incoming = sorted(str(p.relative_to(data_dir)) for p in
                                    (data_dir / "incoming").rglob("*") if p.is_file())
    return audit
