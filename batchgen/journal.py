"""The checkpoint: an append-only JSON-lines journal of task outcomes, and its replay.

Each line is written with one os.write() on an O_APPEND descriptor as soon as a task ends, so
a killed process (even `kill -9`) loses no line it wrote: the kernel has it. fsync is grouped
(at most every SYNC_EVERY_S, and at close) so a power cut can lose at most the last second of
lines; the images of those tasks are then sent again, never counted twice, because replay
only trusts a line whose images are on disk at their recorded size.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from . import _gc

FINAL_STATUSES = ("ok", "error")
NOT_DONE = "not_done"   # sent, but stopped before an outcome (auth failure, interrupt): resend
SYNC_EVERY_S = 1.0


def read_lines(path) -> Iterator[dict]:
    """Every whole record; a torn last line (a crash mid-write) is skipped."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict) and "task_id" in record:
                    yield record
    except FileNotFoundError:
        return


@dataclass
class TaskState:
    final: Optional[dict] = None      # the last ok/error record
    carried_attempts: int = 0          # requests sent by not-done records since the last final one


@dataclass
class Replay:
    states: dict = field(default_factory=dict)   # task_id -> TaskState
    lines: int = 0

    def final(self, task_id: str) -> Optional[dict]:
        state = self.states.get(task_id)
        return state.final if state else None


def replay(path, out_dir=None) -> Replay:
    """The state of every task the journal knows.

    With `out_dir`, an ok record whose images are missing or of the wrong size (a power cut
    before the page cache reached the disk) counts as not done.
    """
    with _gc.paused():
        return _replay(path, out_dir)


def _replay(path, out_dir) -> Replay:
    result = Replay()
    states = result.states
    for record in read_lines(path):
        result.lines += 1
        state = states.get(record["task_id"])
        if state is None:
            state = states[record["task_id"]] = TaskState()
        status = record.get("status")
        if status in FINAL_STATUSES:
            if out_dir is not None and status == "ok" and not _images_intact(out_dir, record):
                continue
            record["attempts"] = int(record.get("attempts") or 0) + state.carried_attempts
            state.final = record
            state.carried_attempts = 0
        elif status == NOT_DONE:
            state.carried_attempts += int(record.get("attempts") or 0)
    return result


def _images_intact(out_dir, record) -> bool:
    for image in record.get("images") or ():
        try:
            if os.stat(os.path.join(out_dir, image["image_path"])).st_size != image["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


class Journal:
    """Appends records; one write per record, fsync grouped in the background."""

    def __init__(self, path):
        self.path = Path(path)
        self._trim_torn_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = False
        self.appended = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-fsync", daemon=True)
        self._syncer.start()

    def _trim_torn_tail(self) -> None:
        """Cut a half-written last line so the next record starts on a line of its own."""
        try:
            with open(self.path, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                # Walk back to the last newline.
                pos = size
                while pos > 0:
                    step = min(65536, pos)
                    f.seek(pos - step)
                    chunk = f.read(step)
                    idx = chunk.rfind(b"\n")
                    if idx >= 0:
                        f.truncate(pos - step + idx + 1)
                        return
                    pos -= step
                f.truncate(0)
        except FileNotFoundError:
            return

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        os.write(self._fd, line)
        self._dirty = True
        self.appended += 1

    def sync(self) -> None:
        with self._lock:
            if self._dirty and self._fd >= 0:
                self._dirty = False
                os.fsync(self._fd)

    def _sync_loop(self) -> None:
        while not self._closed.wait(SYNC_EVERY_S):
            self.sync()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._syncer.join()
        self.sync()
        with self._lock:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
