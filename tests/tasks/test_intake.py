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

from tasks.intake import (
    MAX_NAME_BYTES,
    SHORTENED_MARK,
    ClaimedFile,
    WorkFolder,
    iter_candidate_files,
    remove_empty_folders,
    wait_until_complete,
)


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
            assert work.dead_run_ids == ["dead-run"]
            for claimed in reclaimed:
                claimed.path.unlink()

    def test_live_runs_files_are_left_alone(self, tmp_path):
        incoming, work_root = tmp_path / "incoming", tmp_path / "work"
        _drop(incoming, "a.dcm")
        process = self._hold_folder(work_root, incoming, "live-run")
        try:
            with WorkFolder(work_root, "run-b") as work:
                assert work.reclaim_orphans() == []
                assert work.dead_run_ids == []
            assert len(list((work_root / "live-run").iterdir())) == 2
        finally:
            process.kill()
            process.wait()


class TestIterCandidateFiles:
    def test_skips_hidden_entries(self, tmp_path):
        incoming = tmp_path / "incoming"
        real = _drop(incoming, "sub/a.dcm")
        _drop(incoming, ".b.dcm.part")
        _drop(incoming, ".hidden/c.dcm")

        assert list(iter_candidate_files(incoming)) == [real]

    def test_yields_links_and_special_files(self, tmp_path):
        incoming = tmp_path / "incoming"
        real = _drop(incoming, "sub/a.dcm")
        (incoming / "link.dcm").symlink_to(real)
        (incoming / "dangling.dcm").symlink_to(tmp_path / "missing.dcm")
        (incoming / "folder-link").symlink_to(incoming / "sub")
        os.mkfifo(incoming / "pipe.dcm")

        found = list(iter_candidate_files(incoming))

        assert sorted(path.name for path in found) == [
            "a.dcm", "dangling.dcm", "folder-link", "link.dcm", "pipe.dcm"]
        assert found.count(real) == 1  # the folder link is not followed


class TestClaimOddNames:
    @pytest.mark.parametrize("name", [
        "with space.dcm", "-leading-dash.dcm", "mamografi şüpheli ğ.dcm", "a%2Fb.dcm",
        "sub folder/ünïcode.dcm"])
    def test_name_survives_claim(self, tmp_path, name):
        incoming = tmp_path / "incoming"
        source = _drop(incoming, name)

        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, source)
            assert claimed.original_name == name
            assert work.files() == [claimed]
            claimed.path.unlink()

    def test_long_name_is_shortened(self, tmp_path):
        incoming = tmp_path / "incoming"
        name = "ş" * 120 + ".dcm"  # 244 bytes in UTF-8, the claim id makes it too long
        source = _drop(incoming, name)

        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, source)
            assert claimed.original_name == name
            assert len(os.fsencode(claimed.path.name)) <= MAX_NAME_BYTES
            [reclaimed] = work.files()
            assert reclaimed.original_name.endswith(SHORTENED_MARK + "ş" * 12 + ".dcm")
            assert reclaimed.path.read_bytes() == b"data"
            claimed.path.unlink()

    def test_undecodable_name_is_printable(self, tmp_path):
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        raw = os.fsencode(incoming) + b"/latin1-\xfe.dcm"  # not valid UTF-8
        with open(raw, "wb") as stream:
            stream.write(b"data")
        [source] = iter_candidate_files(incoming)

        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, source)
            assert claimed.original_name == "latin1-\ufffd.dcm"
            assert claimed.original_name.encode("utf-8")
            assert work.files()[0].original_name == "latin1-\ufffd.dcm"
            claimed.path.unlink()

    def test_symlink_claimed_as_link(self, tmp_path):
        incoming = tmp_path / "incoming"
        target = _drop(tmp_path, "outside.dcm")
        (incoming).mkdir()
        (incoming / "link.dcm").symlink_to(target)

        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, incoming / "link.dcm")
            assert claimed.path.is_symlink()
            assert work.files() == [claimed]
            claimed.path.unlink()
        assert target.read_bytes() == b"data"

    def test_hidden_files_are_not_inputs(self, tmp_path):
        incoming = tmp_path / "incoming"
        with WorkFolder(tmp_path / "work", "run-a") as work:
            claimed = work.claim(incoming, _drop(incoming, "a.dcm"))
            (work.path / ".scratch.dcm").write_bytes(b"temporary")
            assert work.files() == [claimed]
            claimed.path.unlink()
        assert not work.path.exists()


class TestRemoveEmptyFolders:
    def test_old_empty_folders_removed(self, tmp_path):
        incoming = tmp_path / "incoming"
        kept = _drop(incoming, "full/a.dcm")
        (incoming / "empty" / "nested").mkdir(parents=True)
        (incoming / ".hidden-empty").mkdir()
        past = time.time() - 60
        for folder in (incoming / "empty" / "nested", incoming / "empty"):
            os.utime(folder, (past, past))

        removed = remove_empty_folders(incoming, min_age_seconds=5)

        assert removed == 1  # the parent changed when its child went; next run takes it
        assert not (incoming / "empty" / "nested").exists()
        assert (incoming / ".hidden-empty").exists()
        assert kept.exists()
        assert remove_empty_folders(incoming, min_age_seconds=0) == 1
        assert not (incoming / "empty").exists()

    def test_young_empty_folder_kept(self, tmp_path):
        (tmp_path / "incoming" / "new").mkdir(parents=True)

        assert remove_empty_folders(tmp_path / "incoming", min_age_seconds=60) == 0
        assert (tmp_path / "incoming" / "new").exists()


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

    def test_dangling_symlink_is_complete(self, tmp_path):
        link = tmp_path / "link.dcm"
        link.symlink_to(tmp_path / "missing.dcm")
        past = time.time() - 60
        os.utime(link, (past, past), follow_symlinks=False)

        complete, pending = wait_until_complete([link], stability_seconds=5,
                                                max_wait_seconds=1)
        assert (complete, pending) == ([link], [])

    def test_vanished_file_is_dropped(self, tmp_path):
        complete, pending = wait_until_complete([tmp_path / "gone.dcm"], stability_seconds=1,
                                                max_wait_seconds=1)
        assert (complete, pending) == ([], [])
