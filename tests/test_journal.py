"""The checkpoint: append, replay, torn lines."""
import json

import pytest

from batchgen.keeping.journal import Journal, replay


def test_replay_keeps_the_last_final_outcome_and_carries_unfinished_attempts(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        j.append({"task_id": "a", "status": "not_done", "attempts": 2})
        j.append({"task_id": "a", "status": "error", "error_code": "api_error", "attempts": 1})
        j.append({"task_id": "b", "status": "not_done", "attempts": 1})
        j.append({"task_id": "a", "status": "ok", "attempts": 1, "images": []})
    state = replay(path)
    assert state.final("a")["status"] == "ok" and state.final("a")["attempts"] == 1
    assert state.final("b") is None and state.states["b"].carried_attempts == 1
    state = replay(path)
    assert state.lines == 4


def test_a_torn_last_line_is_ignored_and_trimmed(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(json.dumps({"task_id": "a", "status": "ok", "images": []}).encode() + b'\n{"task_id": "b", "sta')
    assert replay(path).final("b") is None
    with Journal(path) as j:
        j.append({"task_id": "c", "status": "ok", "images": []})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["a", "c"]


def test_an_ok_line_whose_image_is_missing_or_short_is_not_trusted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"12345")
    (tmp_path / "images" / "b.png").write_bytes(b"")
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        for tid, size in (("a", 5), ("b", 5), ("c", 5)):
            j.append({"task_id": tid, "status": "ok",
                      "images": [{"image_path": f"images/{tid}.png", "bytes": size}]})
    state = replay(path, out_dir=tmp_path)
    assert state.final("a") is not None
    assert state.final("b") is None and state.final("c") is None


def test_lines_before_the_synced_marker_are_trusted_after_it_checked(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        j.append({"task_id": "a" * 16, "status": "ok", "images": [{"image_path": "images/a.png", "bytes": 5}]})
        j.mark_synced()
        j.append({"task_id": "b" * 16, "status": "ok", "images": [{"image_path": "images/b.png", "bytes": 5}]})
    state = replay(path, out_dir=tmp_path)
    assert state.status("a" * 16) == "ok"        # flushed to disk before the marker: no stat needed
    assert state.status("b" * 16) is None        # after it, and its image is not there: resend
    assert state.unsynced == 1


def test_the_fast_path_and_json_agree(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        j.append({"task_id": "c" * 16, "status": "not_done", "attempts": 2})
        j.append({"task_id": "c" * 16, "status": "error", "error_code": "api_error", "attempts": 3})
        j.append({"status": "ok", "task_id": "d" * 16, "attempts": 1})  # another key order: parsed as JSON
    state = replay(path)
    assert state.status("c" * 16) == "error" and state.final("c" * 16)["attempts"] == 5
    assert state.final("c" * 16)["error_code"] == "api_error"
    assert state.status("d" * 16) == "ok"


def test_syncing_flushes_the_output_filesystem_and_refuses_a_missing_folder(tmp_path, monkeypatch):
    import ctypes
    import os
    import sys

    from batchgen.keeping.journal import sync_filesystem
    flushed = []                                 # what was flushed, in order
    real_cdll = ctypes.CDLL

    class SpiedLibc:                             # the real libc; its syncfs is watched
        def __init__(self, *args, **kwargs):
            self._libc = real_cdll(*args, **kwargs)

        @property
        def syncfs(self):
            real = self._libc.syncfs              # AttributeError where libc has none

            def syncfs(fd):
                st = os.fstat(fd)
                flushed.append(("syncfs", st.st_dev, st.st_ino))
                return real(fd)
            return syncfs

    monkeypatch.setattr(ctypes, "CDLL", SpiedLibc)
    monkeypatch.setattr(os, "sync", lambda: flushed.append(("sync",)))
    folder = os.stat(tmp_path)
    sync_filesystem(tmp_path)
    if sys.platform.startswith("linux"):
        # syncfs(2) on the folder itself, and it succeeded: not os.sync() of every disk
        assert flushed == [("syncfs", folder.st_dev, folder.st_ino)]
    else:
        assert flushed == [("sync",)]
    flushed.clear()
    with pytest.raises(FileNotFoundError):
        sync_filesystem(tmp_path / "gone")
    assert flushed == []

    class FailingLibc:                           # a filesystem whose syncfs fails
        def __init__(self, *args, **kwargs):
            pass

        def syncfs(self, fd):
            flushed.append(("syncfs",))
            return -1

    monkeypatch.setattr(ctypes, "CDLL", FailingLibc)
    sync_filesystem(tmp_path)
    assert flushed == [("syncfs",), ("sync",)]  # then every disk is flushed instead


def test_the_synced_marker_is_appended_after_the_flush_and_then_fsynced(tmp_path, monkeypatch):
    import os

    import batchgen.keeping.journal
    path = tmp_path / "journal.jsonl"
    events = []                                  # (what, the journal's bytes at that moment)
    monkeypatch.setattr(batchgen.keeping.journal, "sync_filesystem",
                        lambda folder: events.append(("flush " + str(folder), path.read_bytes())))
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", path.read_bytes())), real_fsync(fd)))
    record = {"task_id": "a" * 16, "status": "ok", "images": [{"image_path": "images/a.png", "bytes": 5}]}
    with Journal(path) as j:
        j.append(record)
        j.mark_synced()
        during = list(events)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2 and json.loads(lines[0]) == record and list(json.loads(lines[1])) == ["synced"]
    flushes = [i for i, (what, _) in enumerate(during) if what.startswith("flush")]
    assert [during[i][0] for i in flushes] == [f"flush {tmp_path}"]   # the journal's own folder, once
    assert during[flushes[0]][1] == lines[0]                           # the record is written, the marker not yet
    assert ("fsync", lines[0] + lines[1]) in during[flushes[0] + 1:]    # then the marker itself reaches the disk
    # What the marker promises: the ok line before it is trusted without looking at the disk
    # (its image is not there), while the same line after the last marker is not.
    assert replay(path, out_dir=tmp_path).status("a" * 16) == "ok"
    with Journal(path) as j:
        j.append(record)
    assert replay(path, out_dir=tmp_path).status("a" * 16) is None
