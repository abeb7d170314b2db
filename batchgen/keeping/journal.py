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
is parsed only when a record's details are needed, from the line read back at its offset: the
state keeps a few dozen bytes a task (see Replay; figures in bench/README.md), never the
records, so a run's memory does not grow with its journal.
"""
from __future__ import annotations

import math
import os
import threading
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from batchgen.planning.identity import ChunkIds, hex_key
from batchgen.rules.pricing import billed
from batchgen.util import fastjson, gcpause

if TYPE_CHECKING:
    import numpy as np  # imported where it is used: its import time is paid only then

    from batchgen.keeping.outdir import StrPath

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
# Lines are compact UTF-8 JSON written by orjson (see fastjson): a record's line begins
# {"task_id":"…","status":"…", so replay reads most of them without parsing them.


# ---- the state the journal gives ----------------------------------------------------------
#
# One compact event per task line, in journal order (a 64-bit key, a kind byte, the line's byte
# offset and its cost: a few dozen bytes, where a dict of records cost far more; the origin is
# kept once per run, as the event where its lines begin), resolved into a sorted array of keys,
# each with its last final event (bench/README.md has the figures). A record is read back from the journal (by
# offset) and parsed only when it is needed: the results read each once.

_OK, _ERROR, _NOT_DONE, _VOID, _FORGET = 1, 2, 3, 4, 5
_SHORT = 8                    # on an ok event: the answer had fewer images than asked
_KIND = 7
_KINDS = {"ok": _OK, "error": _ERROR, NOT_DONE: _NOT_DONE, VOID: _VOID}
_FAST_KINDS = {b"ok": _OK, b"error": _ERROR}
_STATUS_OF = {_OK: "ok", _ERROR: "error"}
READ_WINDOW = 1 << 18        # journal bytes read at a time when records are read back
RECENT_MAX = 65536            # status lookups of this run's outcomes kept in a dict until resolved


def task_key(task_id: str) -> int:
    """A task id as the 64-bit key the state is kept by: the id's own value when it is 16
    hex digits (every id batchgen makes), else a hash of it (ids of hand-made journals)."""
    key = hex_key(task_id)
    if key is not None:
        return key
    import hashlib
    return int.from_bytes(hashlib.blake2b(task_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _fast_key(raw: bytes) -> Optional[int]:
    """The key of a line's id (bytes 12-28) when it is 16 lowercase hex digits, else None."""
    try:
        key = int(raw[12:28], 16)
    except ValueError:
        return None
    return key if b"%016x" % key == raw[12:28] else None


_COST = b'"cost_usd":'
_NO_COST = float("nan")
# cost_usd null: answers were billed at a price batchgen does not know (not 0, not "none").
UNKNOWN_COST = -1.0


def _fast_cost(raw: bytes) -> float:
    """A record line's top-level cost_usd (what its answers were billed), NaN for none,
    UNKNOWN_COST for null. The last occurrence: a record writes it after its params (where
    --param could name one)."""
    at = raw.rfind(_COST)
    if at < 0:
        return _NO_COST
    start = at + len(_COST)
    if raw.startswith(b"null", start):
        return UNKNOWN_COST
    end = start
    while end < len(raw) and raw[end] in b"0123456789.eE+-":
        end += 1
    try:
        cost = float(raw[start:end])
    except ValueError:
        return _NO_COST
    return cost if math.isfinite(cost) and cost >= 0 else _NO_COST


def _numpy(values, dtype):
    """An array module's values as a numpy array (a copy: the array may still grow)."""
    import numpy as np
    return np.frombuffer(values, dtype=dtype).copy() if len(values) else np.empty(0, dtype)


def _view(values, dtype):
    """An array module's values seen as a numpy array, without a copy. While the view lives
    the array cannot grow (BufferError), so it must not outlive the function that takes it:
    index it (which copies), never return it."""
    import numpy as np
    return np.frombuffer(values, dtype=dtype) if len(values) else np.empty(0, dtype)


def _by_event(values, dtype, events, missing):
    """values[events] as a numpy array, `missing` where an event is -1."""
    import numpy as np
    view = _view(values, dtype)
    if not len(view):
        return np.full(len(events), missing, dtype)
    taken = view[events]          # a copy; -1 takes the last value, replaced below
    taken[events < 0] = missing
    return taken


class TaskState:
    """What the journal says of one task (a view of Replay's compact state)."""

    __slots__ = ("_replay", "_key")

    def __init__(self, replay: "Replay", key: int):
        self._replay, self._key = replay, key

    @property
    def status(self) -> Optional[str]:
        return self._replay._status_of_key(self._key)

    @property
    def origin(self) -> int:
        """Index into Replay.origins of the last final record; -1: unknown (older than origins)."""
        event = self._replay.final_event(self._key)
        return self._replay.origin_of(event) if event >= 0 else -1

    @property
    def carried_attempts(self) -> int:
        """Attempts sent by not-done records since the last final one."""
        return self._replay.carried_attempts(self._key)

    @property
    def damaged(self) -> bool:
        return self._key in self._replay._damaged

    @property
    def final(self) -> Optional[dict]:
        return self._replay._final_of_key(self._key)

    def short(self) -> bool:
        """An ok answer with fewer images than asked (see the live backend)."""
        event = self._replay.final_event(self._key)
        return event >= 0 and bool(self._replay._kind[event] & _SHORT)


class _States:
    """Replay.states: task id -> TaskState, in the order the journal first names them."""

    def __init__(self, replay: "Replay"):
        self._replay = replay

    def get(self, task_id: str, default: Optional[TaskState] = None) -> Optional[TaskState]:
        key = task_key(task_id)
        return TaskState(self._replay, key) if self._replay._knows(key) else default

    def __getitem__(self, task_id: str) -> TaskState:
        state = self.get(task_id)
        if state is None:
            raise KeyError(task_id)
        return state

    def __contains__(self, task_id: str) -> bool:
        return self.get(task_id) is not None

    def __len__(self) -> int:
        return len(self._replay._resolve().keys)

    def __iter__(self) -> Iterator[str]:
        return (task_id for task_id, _ in self.items())

    def items(self) -> Iterator[tuple[str, TaskState]]:
        replay = self._replay
        for key in replay._keys_in_journal_order():
            yield replay.task_id_of(key), TaskState(replay, key)

    def values(self) -> Iterator[TaskState]:
        return (state for _, state in self.items())


@dataclass
class _Resolved:
    keys: np.ndarray      # numpy uint64, sorted: every key the events name
    final: np.ndarray     # numpy int64: the event of each key's last final outcome, -1: none
    extra: dict           # key -> (carried attempts, attempts before its final): keys with not-done lines
    events: int           # how many events this covers


def chunk_kind(chunk: dict) -> str:
    """Which mode's remote work a journal chunk is: an async mode attempt carries its trace id."""
    return "async" if "trace_id" in chunk else "batch"


class Replay:
    """The state of every task the journal knows: each task's last final outcome, the origin
    of that outcome, the attempts of not-done lines, the Batch API's chunks.

    Kept as compact events (see above); `status`, `final` and `states` read them, and
    `join` gives the outcome of many tasks at once (the plan's, in the runner and results)."""

    def __init__(self, path: Optional[StrPath] = None) -> None:
        self.path = path
        self.lines = 0
        self.unsynced = 0     # ok lines after the last synced marker (checked against the disk)
        self.damaged = 0      # lines that are not a record (cut short, glued, without status): skipped
        self.origins: list = []    # each run's {"provider", "endpoint", ...}
        self.replaced: dict = {}   # a legacy task id -> the id that replaces it
        self.batches: dict = {}    # Batch API chunk key -> what the journal says of it
        self.attempts_settled: dict = {}   # async mode: attempts let go with a task id, by how they ended
        self._key = array("Q")
        self._kind = array("B")
        self._origin_starts: list = []    # origin -> its first event (see origin_of)
        self._pos = array("q")     # the line's byte offset in the journal; < 0: -1 - index into _held
        self._cost = array("d")    # what the line's answers were billed (USD), NaN when it says not
        self._attempts: dict = {}  # event -> attempts, of not-done events
        self._held: list = []      # records applied without a place in the journal
        self._irregular: set = set()   # keys with a not-done, void or forget event
        self._names: dict = {}     # key -> task id, for ids that are not 16 hex digits
        self._damaged: set = set() # keys whose final line did not parse when it was read
        self._recent: dict = {}    # key -> its last final/void/forget event since the last resolve
        self._resolved: Optional[_Resolved] = None
        self._fd = -1
        self._window = (0, b"")    # journal bytes read from an offset (see _line_at)

    def __del__(self):
        if self._fd >= 0:
            os.close(self._fd)

    # ---- taking lines in ------------------------------------------------------------------

    def batch_event(self, event: dict) -> None:
        """A Batch API chunk's progress: planned (its task ids), submitted (its batch id),
        collected (every outcome it will give is in the journal).

        An async mode attempt is a chunk of one task keyed by its trace id; once collected
        nothing more is asked of it, so it is let go (counted in `attempts_settled` by how it
        ended): the state holds only the attempts still open, not one per attempt ever sent."""
        key = event.get("chunk")
        if event.get("event") == "collected" and "trace_id" in self.batches.get(key, ()):
            chunk = self.batches.pop(key)
            settled = str(event.get("status"))
            self.attempts_settled[settled] = self.attempts_settled.get(settled, 0) + bool(chunk.get("remote_task_id"))
            return
        chunk = self.batches.setdefault(key, {})
        chunk.update({k: ChunkIds.of(v) if k == "task_ids" else v for k, v in event.items() if k != "event"})
        chunk.setdefault("events", []).append(event.get("event"))

    def open_batch_keys(self, kinds: tuple = ("batch", "async")) -> np.ndarray:
        """The keys of the tasks held by remote chunks not collected yet (planned or submitted:
        the work may run, or may exist unrecorded), sorted (numpy uint64): Batch API chunks
        ("batch") and async mode attempts ("async", keyed by a trace id). No run sends them again
        until their chunk is collected, unless its mode is the one that collects that kind."""
        import numpy as np
        parts = [np.frombuffer(ids.keys, np.uint64) if isinstance(ids, ChunkIds)
                 else np.array([task_key(t) for t in ids if isinstance(t, str)], np.uint64)
                 for chunk in self.batches.values()
                 if "collected" not in chunk.get("events", ()) and chunk_kind(chunk) in kinds
                 for ids in (chunk.get("task_ids") or (),)]
        # Sorted, not deduplicated: membership needs no more (np.unique's hashing costs ten times a sort).
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.uint64)

    def begin_origin(self, origin: dict) -> None:
        """Outcomes applied from now on came from `origin`."""
        self.origins.append(origin)
        self._origin_starts.append(len(self._key))

    def _event(self, key: int, kind: int, pos: int, cost: float = _NO_COST) -> int:
        event = len(self._key)
        self._key.append(key)
        self._kind.append(kind)
        self._cost.append(cost)
        self._pos.append(pos)
        if kind & _KIND != _NOT_DONE:
            self._recent[key] = event
            if len(self._recent) > RECENT_MAX:
                self._resolve()
        return event

    def _key_of(self, task_id: str) -> int:
        key = hex_key(task_id)
        if key is None:         # not an id batchgen makes: its hash, and its name kept
            key = task_key(task_id)
            self._names[key] = task_id
        return key

    def task_id_of(self, key: int) -> str:
        return self._names.get(key) or "%016x" % key

    def apply(self, record: dict, pos: Optional[int] = None) -> None:
        """Take in a record: a line read from the journal at byte offset `pos`, or one this
        run appends there (so a run needs no second replay); without `pos` it is kept here."""
        key = self._key_of(record["task_id"])
        status = record["status"]
        kind = _KINDS[status]
        if status in FINAL_STATUSES:
            if pos is None:
                self._held.append(dict(record))
                pos = -len(self._held)
            if status == "ok" and "images_expected" in record:
                kind |= _SHORT
            cost = billed(record)
            self._event(key, kind, pos, _NO_COST if cost is None else cost)
        elif status == NOT_DONE:
            self._attempts[self._event(key, kind, -1)] = int(record.get("attempts") or 0)
            self._irregular.add(key)
        else:      # VOID: the final line was damaged, the task is not done after all
            self._event(key, kind, -1)
            self._irregular.add(key)
        self._damaged.discard(key)
        old = record.get("replaces")    # a legacy folder's outcome, carried over to the new id
        if isinstance(old, str) and old != record["task_id"]:
            self.replaced[old] = record["task_id"]
            old_key = self._key_of(old)
            self._event(old_key, _FORGET, -1)
            self._irregular.add(old_key)

    # ---- reading it ----------------------------------------------------------------------

    def _resolve(self) -> _Resolved:
        """Each key's last final event, from the events so far (numpy: sorted once).

        The state of a long journal is mostly these arrays, so the previous resolution is let
        go first and the usual case (each key named once) keeps the sort's own arrays: the
        peak is the state and one sort, not twice the state."""
        resolved = self._resolved
        if resolved is not None and resolved.events == len(self._key):
            return resolved
        import numpy as np
        self._resolved = resolved = None
        keys = _view(self._key, np.uint64)
        order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)   # by key, then journal order
        keys = keys[order]                          # a copy: the view is let go
        last = np.ones(len(keys), bool)             # the last event of each key
        last[:-1] = keys[1:] != keys[:-1]
        if last.all():
            unique, final = keys, order             # a regular key's last event is its final one
        else:
            unique, final = keys[last], order[last]
        del last
        extra: dict = {}
        changed: dict = {}
        for key in self._irregular:
            k = np.uint64(key)
            lo, hi = int(np.searchsorted(keys, k)), int(np.searchsorted(keys, k, side="right"))
            if lo == hi:
                continue
            last_final, carried, before = -1, 0, 0
            for event in order[lo:hi].tolist():
                kind = self._kind[event] & _KIND
                if kind == _NOT_DONE:
                    carried += self._attempts.get(event, 0)
                elif kind in (_OK, _ERROR):
                    last_final, before, carried = event, carried, 0
                elif kind == _VOID:
                    last_final = -1
                else:        # forgotten: a legacy id whose outcome went to its new id
                    last_final, before, carried = -1, 0, 0
            changed[int(np.searchsorted(unique, k))] = last_final
            if carried or before:
                extra[key] = (carried, before)
        if changed:
            final[np.fromiter(changed, np.int64, len(changed))] = np.fromiter(changed.values(), np.int64,
                                                                                 len(changed))
        del keys, order
        self._resolved = _Resolved(unique, final, extra, len(self._key))
        self._recent.clear()
        return self._resolved

    def final_event(self, key: int) -> int:
        """The event of the key's last final outcome, -1 if it has none (or it is damaged)."""
        event = self._recent.get(key)
        if event is None:
            resolved = self._resolve() if self._resolved is None else self._resolved
            import numpy as np
            i = int(np.searchsorted(resolved.keys, np.uint64(key)))
            if i == len(resolved.keys) or int(resolved.keys[i]) != key:
                return -1
            event = int(resolved.final[i])
        elif self._kind[event] & _KIND not in (_OK, _ERROR):
            return -1
        return -1 if event < 0 or key in self._damaged else event

    def _knows(self, key: int) -> bool:
        import numpy as np
        keys = self._resolve().keys
        i = int(np.searchsorted(keys, np.uint64(key)))
        return i < len(keys) and int(keys[i]) == key

    def _status_of_key(self, key: int) -> Optional[str]:
        event = self.final_event(key)
        return None if event < 0 else _STATUS_OF[self._kind[event] & _KIND]

    def status(self, task_id: str) -> Optional[str]:
        return self._status_of_key(task_key(task_id))

    def carried_attempts(self, key: int) -> int:
        return self._resolve().extra.get(key, (0, 0))[0]

    def _final_of_key(self, key: int) -> Optional[dict]:
        self._resolve()
        event = self.final_event(key)
        return None if event < 0 else self.record(event, key)

    def final(self, task_id: str) -> Optional[dict]:
        return self._final_of_key(task_key(task_id))

    @property
    def states(self) -> _States:
        return _States(self)

    def origin_of(self, event: int) -> int:
        """Index into origins of the run that wrote the event; -1: older than origin lines."""
        return bisect_right(self._origin_starts, event) - 1

    def is_ok(self, event: int) -> bool:
        return self._kind[event] & _KIND == _OK

    def is_short(self, event: int) -> bool:
        return bool(self._kind[event] & _SHORT)

    def record(self, event: int, key: Optional[int] = None) -> Optional[dict]:
        """The record of a final event, parsed from its line; None (and the task counts as
        not done) when the line is damaged on disk but whole in shape."""
        if key is None:
            key = self._key[event]
        pos = self._pos[event]
        if pos < 0:
            record = dict(self._held[-1 - pos])
        else:
            try:
                parsed = fastjson.loads(self._line_at(pos))
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                self._damaged.add(key)
                return None
            record = parsed
        before = self._resolve().extra.get(key, (0, 0))[1] if key in self._irregular else 0
        if before:
            record["attempts"] = int(record.get("attempts") or 0) + before
        return record

    def _line_at(self, pos: int) -> bytes:
        # Tasks finish about in plan order, so the lines the results read one after another
        # lie close together: read a window of the journal at a time, not a line.
        start, window = self._window
        offset = pos - start
        if 0 <= offset < len(window):
            end = window.find(b"\n", offset)
            if end >= 0:
                return window[offset:end + 1]
        if self._fd < 0:
            assert self.path is not None    # a line with a place was read from the journal there
            self._fd = os.open(self.path, os.O_RDONLY)
        line = os.pread(self._fd, READ_WINDOW, pos)
        self._window = (pos, line)
        end = line.find(b"\n")
        while end < 0:
            more = os.pread(self._fd, 1 << 16, pos + len(line))
            if not more:
                return line
            end = more.find(b"\n")
            end = -1 if end < 0 else len(line) + end
            line += more
        return line[:end + 1]

    def join(self, keys: np.ndarray) -> np.ndarray:
        """For each key (a numpy uint64 array): the event of its last final outcome, -1 for none."""
        import numpy as np
        resolved = self._resolve()
        if not len(resolved.keys):
            return np.full(len(keys), -1, np.int64)
        # In place where it can be: this runs over every task of the plan at once.
        i = np.searchsorted(resolved.keys, keys)
        np.minimum(i, len(resolved.keys) - 1, out=i)
        found = resolved.keys[i] == keys
        events = resolved.final[i]
        del i
        events[~found] = -1
        if self._damaged:
            damaged = np.fromiter(self._damaged, np.uint64, len(self._damaged))
            events[np.isin(keys, damaged)] = -1
        return events

    def costs(self, events: np.ndarray) -> np.ndarray:
        """What each event's answers were billed (USD; NaN: the line does not say, or no event;
        UNKNOWN_COST: billed at a price not known)."""
        import numpy as np
        return _by_event(self._cost, np.float64, events, np.nan)

    def kinds(self, events: np.ndarray) -> np.ndarray:
        """The kind byte of each event (-1: 0)."""
        import numpy as np
        return _by_event(self._kind, np.uint8, events, 0)

    def _keys_in_journal_order(self):
        import numpy as np
        keys = _numpy(self._key, np.uint64)
        unique, first = np.unique(keys, return_index=True)
        for key in unique[np.argsort(first, kind="stable")]:
            yield int(key)

    def finished_elsewhere(self, planned: np.ndarray) -> list:
        """The keys with a final outcome that `planned` (a sorted numpy uint64 array) does not
        hold, in the order the journal first names them: an earlier input's tasks."""
        import numpy as np
        resolved = self._resolve()
        if not len(resolved.keys):
            return []
        done = resolved.final >= 0
        if len(planned):
            # Membership by binary search: less memory than np.isin, which sorts both arrays.
            i = np.searchsorted(planned, resolved.keys)
            np.minimum(i, len(planned) - 1, out=i)
            done &= planned[i] != resolved.keys
            del i
        picked = resolved.keys[done]
        if not len(picked):
            return []
        # Their first event: in journal order, the first event of each picked key.
        events = np.flatnonzero(np.isin(_view(self._key, np.uint64), picked))
        keys = _view(self._key, np.uint64)[events]
        _, first = np.unique(keys, return_index=True)
        in_order = keys[np.sort(first)]
        return [k for k in in_order.tolist() if self.final_event(k) >= 0]

    def damaged_tasks(self) -> list:
        """Tasks whose final line turned out not to parse when it was read (see record)."""
        return [self.task_id_of(key) for key in self._damaged]


def replay(path: StrPath, out_dir: Optional[StrPath] = None) -> Replay:
    """The state of every task the journal knows.

    With `out_dir`, an ok record after the last synced marker whose images are missing or of
    the wrong size counts as not done. A torn last line (a crash mid-write) is skipped.
    """
    with gcpause.paused():
        return _replay(path, out_dir)


def _replay(path, out_dir) -> Replay:
    result = Replay(path)
    unsynced = array("Q")     # keys of ok lines since the last marker
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return result
    pos = 0
    # Our own lines go straight into the arrays, past _event's note of this run's outcomes:
    # resolved once at the end, not every RECENT_MAX lines (each a sort of all so far).
    add_key, add_kind, add_pos, add_cost = (result._key.append, result._kind.append, result._pos.append,
                                            result._cost.append)
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            at, pos = pos, pos + len(raw)
            result.lines += 1
            if raw.startswith(_HEAD) and raw[28:40] == _STATUS:
                end = raw.find(b'"', 40)
                # A whole record of ours: one head, and the end of an object. Two glued lines
                # or one cut short fail this, and are parsed (and skipped) below.
                if end > 0 and raw.endswith(b"}\n") and raw.count(_HEAD) == 1:
                    kind = _FAST_KINDS.get(raw[40:end])
                    key = _fast_key(raw) if kind is not None else None
                    if kind is not None and key is not None:
                        if kind == _OK:
                            if b'"images_expected":' in raw:
                                kind |= _SHORT
                            if out_dir is not None:
                                unsynced.append(key)
                        add_key(key)
                        add_kind(kind)
                        add_pos(at)
                        add_cost(_fast_cost(raw))
                        continue
            elif raw.startswith(_MARKER):
                del unsynced[:]
                continue
            elif raw.startswith(_BATCH):
                batch = _object_under(raw, "batch")
                if isinstance(batch.get("chunk"), str):
                    result.batch_event(batch)
                else:
                    result.damaged += 1
                continue
            elif raw.startswith(_ORIGIN):
                result.begin_origin(_object_under(raw, "origin"))
                continue
            try:
                record = fastjson.loads(raw)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("task_id"), str)
                    and record.get("status") in _STATUSES):
                result.damaged += 1
                continue
            result.apply(record, at)
            if record["status"] == "ok" and out_dir is not None:
                unsynced.append(result._key_of(record["task_id"]))
    result.unsynced = len(unsynced)
    result._resolve()
    for key in dict.fromkeys(unsynced):
        if result._status_of_key(key) == "ok" and not _images_intact(out_dir, result._final_of_key(key) or {}):
            result._event(key, _VOID, -1)     # its image did not reach the disk: not done
            result._irregular.add(key)
    return result


def _object_under(raw: bytes, key: str) -> dict:
    """The object a line holds under `key` (`{"origin": {...}}`), or {} if it holds none."""
    try:
        value = fastjson.loads(raw).get(key)
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


def sync_filesystem(path: StrPath) -> None:
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

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)
        self._trim_torn_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size    # where the next line starts: one writer holds the lock
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

    def append(self, record: dict) -> int:
        """Write one line; returns its byte offset (where Replay reads the record back)."""
        line = fastjson.dumps_line(record)
        written = os.write(self._fd, line)
        if written != len(line):
            self._undo_short_write(written)
        at, self._size = self._size, self._size + written
        self._dirty = True
        self.appended += 1
        return at

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

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
