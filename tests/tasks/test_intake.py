"""Intake: claiming by atomic rename, reclaiming dead runs' files, completeness."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tasks.intake import ClaimedFile, WorkFolder, iter_candidate_files, wait_until_complete


def _drop(folder: Path, name: str, content: bytes = b"data", age_seconds: float = 60) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


class TestWorkFolderClaim:
    def test_claim_moves_file_and_keeps_name(self, tmp_path):
        incoming = tmp_path / "incoming"
        source = _drop(incoming, "study 1/image%1.dcm")

        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, source)
            assert not source.exists()
            assert claimed.path.read_bytes() == b"data"
            assert claimed.original_name == "study 1/image%1.dcm"
            assert ClaimedFile.from_work_path(claimed.path) == claimed
            assert work.files() == [claimed]
            claimed.path.unlink()

    def test_second_run_cannot_claim_same_file(self, tmp_path):
        incoming = tmp_path / "incoming"
        source = _drop(incoming, "a.dcm")

        with WorkFolder(tmp_path / "work", "run-a") as first, \
                WorkFolder(tmp_path / "work", "run-b") as second:
            assert first.claim(incoming, source) is not None
            assert second.claim(incoming, source) is None
            assert len(first.files()) == 1
            assert second.files() == []
            first.files()[0].path.unlink()

    def test_empty_folder_removed_on_exit(self, tmp_path):
        with WorkFolder(tmp_path / "work", "run-a") as work:
            path = work.path
        assert not path.exists()

    def test_folder_with_files_kept_on_exit(self, tmp_path):
        incoming = tmp_path / "incoming"
        with WorkFolder(tmp_path / "work", "run-a") as work:
            work.claim(incoming, _drop(incoming, "a.dcm"))
        assert len(list(work.path.iterdir())) == 2  # the file and the lock


class TestReclaimOrphans:
    def _hold_folder(self, work_root: Path, incoming: Path, run_id: str) -> subprocess.Popen:
        script = textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from tasks.intake import WorkFolder
            incoming = Path({str(incoming)!r})
            with WorkFolder(Path({str(work_root)!r}), {run_id!r}) as work:
                for path in sorted(incoming.iterdir()):
                    work.claim(incoming, path)
                print("claimed", flush=True)
                time.sleep(600)
        """)
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                   text=True, cwd=Path(__file__).resolve().parents[2])
        assert process.stdout.readline().strip() == "claimed"
        return process

    def test_dead_runs_files_are_reclaimed(self, tmp_path):
        incoming, work_root = tmp_path / "incoming", tmp_path / "work"
        for name in ("a.dcm", "b.dcm"):
            _drop(incoming, name)
        process = self._hold_folder(work_root, incoming, "dead-run")
        process.send_signal(signal.SIGKILL)
        process.wait()

        with WorkFolder(work_root, "run-b") as work:
            reclaimed = work.reclaim_orphans()
            assert sorted(c.original_name for c in reclaimed) == ["a.dcm", "b.dcm"]
            assert not (work_root / "dead-run").exists()
            for claimed in reclaimed:
                claimed.path.unlink()

    def test_live_runs_files_are_left_alone(self, tmp_path):
        incoming, work_root = tmp_path / "incoming", tmp_path / "work"
        _drop(incoming, "a.dcm")
        process = self._hold_folder(work_root, incoming, "live-run")
        try:
            with WorkFolder(work_root, "run-b") as work:
                assert work.reclaim_orphans() == []
            assert len(list((work_root / "live-run").iterdir())) == 2
        finally:
            process.kill()
            process.wait()


class TestIterCandidateFiles:
    def test_skips_hidden_files_and_symlinks(self, tmp_path):
        incoming = tmp_path / "incoming"
        real = _drop(incoming, "sub/a.dcm")
        _drop(incoming, ".b.dcm.part")
        _drop(incoming, ".hidden/c.dcm")
        (incoming / "link.dcm").symlink_to(real)

        assert list(iter_candidate_files(incoming)) == [real]


class TestWaitUntilComplete:
    def test_old_file_is_complete_at_once(self, tmp_path):
        path = _drop(tmp_path, "a.dcm", age_seconds=60)

        started = time.monotonic()
        complete, pending = wait_until_complete([path], stability_seconds=5,
                                                max_wait_seconds=30)
        assert (complete, pending) == ([path], [])
        assert time.monotonic() - started < 5

    def test_new_file_complete_after_it_stops_changing(self, tmp_path):
        path = _drop(tmp_path, "a.dcm", age_seconds=0)

        complete, pending = wait_until_complete([path], stability_seconds=0.5,
                                                max_wait_seconds=10)
        assert (complete, pending) == ([path], [])

    def test_growing_file_stays_pending(self, tmp_path):
        path = _drop(tmp_path, "a.dcm", age_seconds=0)
        stop = threading.Event()

        def keep_writing():
            with path.open("ab") as stream:
                while not stop.is_set():
                    stream.write(b"x" * 100)
                    stream.flush()
                    time.sleep(0.05)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            complete, pending = wait_until_complete([path], stability_seconds=1.0,
                                                    max_wait_seconds=2.0)
        finally:
            stop.set()
            writer.join()
        assert (complete, pending) == ([], [path])

    def test_vanished_file_is_dropped(self, tmp_path):
        complete, pending = wait_until_complete([tmp_path / "gone.dcm"], stability_seconds=1,
                                                max_wait_seconds=1)
        assert (complete, pending) == ([], [])
