"""The checkpoint: an append-only JSON-lines journal of task outcomes, and its replay.

Each line is written with one os.write() on an O_APPEND descriptor as soon as a task ends, so
a killed process (even `kill -9`) loses no line it wrote: the kernel has it. fsync is grouped
(at most every SYNC_EVERY_S, and at close) so a power cut can lose at most the last second of
lines, whose tasks are then sent again.

Images are not fsynced one by one. A run that ends normally flushes its filesystem to disk and
then writes a `{"synced": ...}` marker line; on replay, an ok line after the last marker is
trusted only if its images are on disk at their recorded size (after a power cut the page
cache may not have reached the disk). Lines before the marker need no check, so resuming a
big finished job reads the journal and stats nothing.

Each run that appends starts with an `{"origin": {...}}` line saying where its outcomes came
from (provider, endpoint, mode, simulated); every outcome after it belongs to that origin.

Replay is the resume path of a 100,000-task job, so it does not parse every line: our own
lines start with `{"task_id":"<id>","status":"<status>"`, which is read by slicing; the JSON
is parsed only when a record's details are needed.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import _gc

FINAL_STATUSES = ("ok", "error")
NOT_DONE = "not_done"   # sent, but stopped before an outcome (auth failure, interrupt): resend
VOID = "void"           # the task's earlier final line was damaged: it is not done after all
_STATUSES = (*FINAL_STATUSES, NOT_DONE, VOID)
SYNC_EVERY_S = 1.0
_HEAD = b'{"task_id":"'
_STATUS = b'","status":"'
_MARKER = b'{"synced":'
_ORIGIN = b'{"origin":'
_BATCH = b'{"batch":'
# ASCII lines (other characters as \u escapes): the C encoder is ~40% faster that way than
# writing UTF-8, and the journal is for batchgen to read, not for people.
_encode = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode


class TaskState:
    """What the journal says of one task: its last final outcome, parsed on demand."""

    __slots__ = ("status", "_line", "_record", "carried_attempts", "_extra_attempts", "origin", "damaged")

    def __init__(self):
        self.status: Optional[str] = None     # "ok" / "error" of the last final record
        self.origin = -1                      # index into Replay.origins of that record; -1: unknown
        self.damaged = False                  # its final line did not parse: the task is not done
        self._line: Optional[bytes] = None
        self._record: Optional[dict] = None
        self.carried_attempts = 0             # sent by not-done records since the last final one
        self._extra_attempts = 0              # not-done attempts that preceded the final one

    def set_final(self, status: str, origin: int, line: Optional[bytes] = None,
                  record: Optional[dict] = None):
        self.status, self.origin, self._line, self._record = status, origin, line, record
        self._extra_attempts, self.carried_attempts = self.carried_attempts, 0

    def short(self) -> bool:
        """An ok answer with fewer images than asked (see the live backend). Read without
        parsing the line: in ASCII JSON a quoted key cannot appear inside a string value."""
        if self._record is not None:
            return "images_expected" in self._record
        return self._line is not None and b'"images_expected":' in self._line

    @property
    def final(self) -> Optional[dict]:
        if self.status is None:
            return None
        if self._record is None:
            try:
                record = json.loads(self._line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                # A line damaged on disk but whole in shape: the task counts as not done.
                self.status, self._line, self.damaged = None, None, True
                return None
            self._record = record
            self._line = None
            if self._extra_attempts:
                self._record["attempts"] = int(self._record.get("attempts") or 0) + self._extra_attempts
        return self._record


@dataclass
class Replay:
    states: dict = field(default_factory=dict)   # task_id -> TaskState
    lines: int = 0
    unsynced: int = 0      # ok lines after the last synced marker (checked against the disk)
    damaged: int = 0       # lines that are not a record (cut short, glued, without status): skipped
    origins: list = field(default_factory=list)   # each run's {"provider", "endpoint", ...}
    replaced: dict = field(default_factory=dict)  # a legacy task id -> the id that replaces it
    batches: dict = field(default_factory=dict)   # Batch API chunk key -> what the journal says of it

    def batch_event(self, event: dict) -> None:
        """A Batch API chunk's progress: planned (its task ids), submitted (its batch id),
        collected (every outcome it will give is in the journal)."""
        chunk = self.batches.setdefault(event.get("chunk"), {})
        chunk.update({k: v for k, v in event.items() if k != "event"})
        chunk.setdefault("events", []).append(event.get("event"))

    def begin_origin(self, origin: dict) -> None:
        """Outcomes applied from now on came from `origin`."""
        self.origins.append(origin)

    def state(self, task_id: str) -> TaskState:
        state = self.states.get(task_id)
        if state is None:
            state = self.states[task_id] = TaskState()
        return state

    def status(self, task_id: str) -> Optional[str]:
        state = self.states.get(task_id)
        return state.status if state else None

    def final(self, task_id: str) -> Optional[dict]:
        state = self.states.get(task_id)
        return state.final if state else None

    def damaged_tasks(self) -> list:
        """Tasks whose final line turned out not to parse when it was read (see TaskState.final)."""
        return [task_id for task_id, state in self.states.items() if state.damaged]

    def apply(self, record: dict) -> None:
        """Take in a record as it is appended (so a run needs no second replay)."""
        state = self.state(record["task_id"])
        if record["status"] == VOID:
            state.status, state._line, state._record, state.damaged = None, None, None, False
        elif record["status"] in FINAL_STATUSES:
            record = dict(record)
            state.set_final(record["status"], len(self.origins) - 1, record=record)
            if state._extra_attempts:
                record["attempts"] = int(record.get("attempts") or 0) + state._extra_attempts
        elif record["status"] == NOT_DONE:
            state.carried_attempts += int(record.get("attempts") or 0)
        old = record.get("replaces")    # a legacy folder's outcome, carried over to the new id
        if isinstance(old, str) and old != record["task_id"]:
            self.replaced[old] = record["task_id"]
            self.states.pop(old, None)


def replay(path, out_dir=None) -> Replay:
    """The state of every task the journal knows.

    With `out_dir`, an ok record after the last synced marker whose images are missing or of
    the wrong size counts as not done. A torn last line (a crash mid-write) is skipped.
    """
    with _gc.paused():
        return _replay(path, out_dir)


def _replay(path, out_dir) -> Replay:
    result = Replay()
    unsynced: list = []     # (state, line) of ok lines since the last marker
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return result
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            result.lines += 1
            if raw.startswith(_HEAD) and raw[28:40] == _STATUS:
                end = raw.find(b'"', 40)
                # A whole record of ours: one head, and the end of an object. Two glued lines
                # or one cut short fail this, and are parsed (and skipped) below.
                if end > 0 and raw.endswith(b"}\n") and raw.count(_HEAD) == 1:
                    status = raw[40:end].decode("ascii", "replace")
                    if status in FINAL_STATUSES:
                        state = result.state(raw[12:28].decode("ascii", "replace"))
                        state.set_final(status, len(result.origins) - 1, line=raw)
                        if status == "ok" and out_dir is not None:
                            unsynced.append(state)
                        continue
            elif raw.startswith(_MARKER):
                unsynced.clear()
                continue
            elif raw.startswith(_BATCH):
                event = _object_under(raw, "batch")
                if isinstance(event.get("chunk"), str):
                    result.batch_event(event)
                else:
                    result.damaged += 1
                continue
            elif raw.startswith(_ORIGIN):
                result.begin_origin(_object_under(raw, "origin"))
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("task_id"), str)
                    and record.get("status") in _STATUSES):
                result.damaged += 1
                continue
            result.apply(record)
            state = result.states[record["task_id"]]
            if state.status == "ok" and record["status"] == "ok" and out_dir is not None:
                unsynced.append(state)
    for state in unsynced:
        if state.status == "ok" and not _images_intact(out_dir, state.final or {}):
            state.status = None
            state._record = None
    result.unsynced = len(unsynced)
    return result


def _object_under(raw: bytes, key: str) -> dict:
    """The object a line holds under `key` (`{"origin": {...}}`), or {} if it holds none."""
    try:
        value = json.loads(raw).get(key)
    except (ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


def _images_intact(out_dir, record) -> bool:
    for image in record.get("images") or ():
        try:
            if os.stat(os.path.join(out_dir, image["image_path"])).st_size != image["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def sync_filesystem(path) -> None:
    """Flush the filesystem that holds `path` to disk: syncfs(2) on Linux, so a run does not
    also wait for every other disk of the machine; os.sync() where there is no syncfs."""
    try:
        import ctypes
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs   # libc's, through the process's symbols
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


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
        line = (_encode(record) + "\n").encode("ascii")
        written = os.write(self._fd, line)
        if written != len(line):
            self._undo_short_write(written)
        self._dirty = True
        self.appended += 1

    def _undo_short_write(self, written: int) -> None:
        """A full disk (or a file-size limit) took part of a line: cut it off again, so the next
        run finds a whole journal, and fail as the disk failed."""
        import errno
        try:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
        except OSError:
            pass   # the torn tail is trimmed when the journal is next opened
        raise OSError(errno.ENOSPC, "the disk took only part of a journal line")

    def sync(self) -> None:
        with self._lock:
            if self._dirty and self._fd >= 0:
                self._dirty = False
                os.fsync(self._fd)

    def _sync_loop(self) -> None:
        while not self._closed.wait(SYNC_EVERY_S):
            self.sync()

    def mark_synced(self) -> None:
        """Flush every file to disk, then say so in the journal (see the module's docstring)."""
        sync_filesystem(self.path.parent)
        self.append({"synced": round(time.time(), 3)})
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
