"""Progress of a run from its journal and job.json; safe to read while the run writes.

Whether the run is going is the folder's lock (the kernel's: a killed run holds none); how it
ended is what the run wrote in job.json's "run" when it ended (a killed run wrote nothing).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from batchgen.exceptions import UsageError
from batchgen.keeping.journal import replay
from batchgen.keeping.outdir import (
    FINISHED,
    JOB_FILE,
    JOURNAL_FILE,
    RUNNING,
    STOPPED,
    OutputFolder,
    StrPath,
    read_job,
)

# `stopped` for a run that ended without recording why (killed, or the machine went down).
NO_LONGER_RUNNING = "no_longer_running"


@dataclass
class Status:
    out: str
    total: int
    refused: int
    ok: int
    errors: int
    by_code: dict = field(default_factory=dict)
    state: str = FINISHED               # running | finished | stopped
    stopped: Optional[str] = None       # why it stopped: a result error code, or NO_LONGER_RUNNING
    stop_message: Optional[str] = None
    rate_per_min: Optional[float] = None    # only while running
    eta_s: Optional[float] = None
    pace: Optional[dict] = None             # while running: the run's pace and what it has in flight
    in_batches: int = 0                     # tasks in Batch API batches not collected yet
    remote: Optional[dict] = None           # async mode: the server's tasks (see remote_tasks)
    not_in_job: int = 0                     # finished tasks of earlier jobs the folder holds (in_job false)

    @property
    def done(self) -> int:
        return self.ok + self.errors + self.refused

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def as_json(self) -> dict:
        """`batchgen status --json` (the README lists the keys)."""
        return {"out": self.out, "total": self.total, "done": self.done, "ok": self.ok,
                "errors": self.errors + self.refused, "by_code": self.by_code,
                "running": self.running, "state": self.state, "stopped": self.stopped,
                "stop_message": self.stop_message, "rate_per_min": self.rate_per_min,
                "eta_s": self.eta_s, "pace": self.pace, "in_batches": self.in_batches,
                "remote": self.remote, "not_in_job": self.not_in_job}


RATE_WINDOW_S = 600


def _count(out: Path, job: dict, key: str) -> int:
    """A count job.json records; UsageError when it is not one (a damaged or foreign file)."""
    value = job.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"{out / JOB_FILE} is damaged: its {key!r} is {value!r}, not a number of tasks. Run the "
            f"same `batchgen run` command again to rewrite it; if that is refused, remove "
            f"{out / JOB_FILE} first (the journal keeps what is done, and only the rest is sent)")
    return value


def read_status(out: StrPath, now: Optional[float] = None) -> Status:
    out = Path(out)
    job = read_job(out)
    total, refused = _count(out, job, "tasks"), _count(out, job, "refused")
    state = replay(out / JOURNAL_FILE)
    now = time.time() if now is None else now
    ok = errors = 0
    by_code: dict = {}
    recent = []       # when the tasks of the last RATE_WINDOW_S finished (records are read one at a time)
    for task_state in state.states.values():
        final = task_state.final
        if not isinstance(final, dict):
            continue
        if final.get("status") == "ok":
            ok += 1
        else:
            errors += 1
            code = final.get("error_code")
            code = code if code is None or isinstance(code, str) else str(code)
            by_code[code] = by_code.get(code, 0) + 1
        at = final.get("finished_at")
        if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) \
                and at >= now - RATE_WINDOW_S:
            recent.append(at)
    # The journal also holds an earlier job's tasks, which the last run counted in job.json.
    found = job.get("not_in_job")
    elsewhere: dict = found if isinstance(found, dict) else {}
    other_ok, other_errors = (_small(elsewhere.get(k), limit) for k, limit in (("ok", ok), ("errors", errors)))
    ok, errors = ok - other_ok, errors - other_errors
    found = elsewhere.get("by_code")
    codes: dict = found if isinstance(found, dict) else {}
    for code, count in codes.items():
        code = None if code in (None, "null") else code
        if code in by_code:
            by_code[code] -= _small(count, by_code[code])
            if not by_code[code]:
                del by_code[code]
    if refused:
        by_code["invalid_params"] = refused
    status = Status(str(out), total, refused, ok, errors, by_code, not_in_job=other_ok + other_errors)
    held = state.open_batch_keys(("batch",))     # async mode's open tasks: the `remote` line
    if len(held):
        status.in_batches = int((state.join(held) < 0).sum())
    status.state, status.stopped, status.stop_message = run_state(
        job.get("run"), OutputFolder(out).is_locked(), status.done >= total)
    run = job.get("run")
    if status.running and isinstance(run, dict) and isinstance(run.get("pace"), dict):
        status.pace = checked_pace(run["pace"])
    status.remote = remote_tasks(state, run.get("pace") if status.running and isinstance(run, dict) else None)
    if status.running and len(recent) >= 2:
        span = max(now - min(recent), 1.0)
        status.rate_per_min = len(recent) / span * 60
        remaining = max(0, status.total - status.done)
        status.eta_s = remaining / status.rate_per_min * 60 if status.rate_per_min else None
    return status


def remote_tasks(state, pace: object = None) -> Optional[dict]:
    """Async mode's attempts on the server, from the journal: `submitted` (given a task id),
    `collected` (their images are kept), `waiting` (neither collected nor given up: the running
    run, or else the next one, collects them); `finished` (on the server, of those the running
    run waits for) only while a run goes. None for a folder without any."""
    settled = state.attempts_settled
    collected = settled.get("ok", 0)
    submitted = sum(settled.values())
    waiting = 0
    for chunk in state.batches.values():
        if "trace_id" not in chunk or not chunk.get("remote_task_id"):
            continue
        submitted += 1
        task_id = next(iter(chunk.get("task_ids") or ()), None)
        if task_id is not None and state.status(task_id) == "ok":
            collected += 1      # killed between its outcome's line and its own
        else:
            waiting += 1
    if not submitted:
        return None
    finished = pace.get("finished_remotely") if isinstance(pace, dict) else None
    if isinstance(finished, bool) or not isinstance(finished, int) or finished < 0:
        finished = None
    return {"submitted": submitted, "finished": finished, "collected": collected, "waiting": waiting}


def _small(value: object, limit: int) -> int:
    """A count job.json holds, as a whole number from 0 to `limit` (0 when it is none)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, limit))


def run_state(run: object, locked: bool, all_done: bool) -> tuple[str, Optional[str], Optional[str]]:
    """(state, why it stopped, what to do) from job.json's "run" and whether the lock is held."""
    if locked:
        return RUNNING, None, None
    run = run if isinstance(run, dict) else {}
    said = run.get("state")
    if said == FINISHED:
        return FINISHED, None, None
    if said == STOPPED:
        code, message = run.get("stopped"), run.get("stop_message")
        return (STOPPED, code if isinstance(code, str) else "stopped",
                message if isinstance(message, str) else None)
    if said is None and all_done:       # a folder of a version that recorded no end
        return FINISHED, None, None
    return (STOPPED, NO_LONGER_RUNNING,
            "the run ended without finishing (killed, or the machine stopped); run the same "
            "command again to go on")


def format_status(s: Status) -> str:
    from batchgen.planning.summary import format_duration
    pct = 100.0 * s.done / s.total if s.total else 100.0
    lines = [f"{s.out}: {s.done:,}/{s.total:,} tasks done ({pct:.1f}%): {s.ok:,} ok, "
             f"{s.errors + s.refused:,} error(s)" + (f"; {s.in_batches:,} in Batch API batches not collected yet"
                                                     if s.in_batches else "")]
    if s.not_in_job:
        lines.append(f"and {s.not_in_job:,} finished task(s) of earlier jobs, which this one does not ask for "
                     "(in_job false in the results)")
    if s.by_code:
        by_count = sorted(s.by_code.items(), key=lambda kv: -kv[1])
        lines.append("errors by code: " + ", ".join(f"{c} {n:,}" for c, n in by_count))
    if s.running:
        lines.append("running" + (f"; rate {s.rate_per_min:,.1f} tasks/min over the last 10 min, ETA "
                                  f"{format_duration(s.eta_s) if s.eta_s else 'any moment'}"
                                  if s.rate_per_min else ""))
        if s.pace:
            lines.append(format_pace(s.pace))
    elif s.stopped == NO_LONGER_RUNNING:
        lines.append(f"stopped (no longer running): {s.stop_message}")
    elif s.stopped:
        lines.append(f"stopped: {s.stopped}" + (f" — {s.stop_message}" if s.stop_message else ""))
    else:
        lines.append("finished")
    if s.remote:
        r = s.remote
        lines.append(f"async tasks: {r['submitted']:,} submitted"
                     + (f", {r['finished']:,} finished on the server" if r.get("finished") is not None else "")
                     + f", {r['collected']:,} collected, {r['waiting']:,} waiting on the server"
                     + ("" if s.running or not r["waiting"] else " (the next run collects them)"))
    return "\n".join(lines)


PACE_KEYS = ("rate_per_s", "limit_per_s", "in_flight", "peak_in_flight", "window", "latency_s", "rate_limited")


def checked_pace(pace: dict) -> dict:
    """The pace a run wrote in job.json, each value a finite number ≥ 0 or None (job.json is a
    file anyone can edit)."""
    def number(value: object) -> Optional[float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return value
        return None
    return {key: number(pace.get(key)) for key in PACE_KEYS}


def format_pace(pace: dict) -> str:
    """`status`'s line for a run's pace (see checked_pace)."""
    rate, limit, in_flight, window = (pace.get(k) for k in ("rate_per_s", "limit_per_s", "in_flight", "window"))
    words = ["pace " + ("not limited yet" if rate is None else f"{rate:,.2f} requests/s")]
    if limit is not None:
        words.append(f"the server lets {limit:,.2f}/s through")
    if in_flight is not None:
        words.append(f"{in_flight:,.0f} in flight" + (f" (up to {window:,.0f})" if window is not None else ""))
    return "; ".join(words)
