"""Progress of a run from its journal and job.json; safe to read while the run writes."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .exceptions import UsageError
from .journal import replay
from .outdir import JOB_FILE, JOURNAL_FILE, read_job


@dataclass
class Status:
    out: str
    total: int
    refused: int
    ok: int
    errors: int
    by_code: dict = field(default_factory=dict)
    rate_per_min: Optional[float] = None
    eta_s: Optional[float] = None

    @property
    def done(self) -> int:
        return self.ok + self.errors + self.refused


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


def read_status(out, now: Optional[float] = None) -> Status:
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
    if refused:
        by_code["invalid_params"] = refused
    status = Status(str(out), total, refused, ok, errors, by_code)
    if len(recent) >= 2:
        span = max(now - min(recent), 1.0)
        status.rate_per_min = len(recent) / span * 60
        remaining = max(0, status.total - status.done)
        status.eta_s = remaining / status.rate_per_min * 60 if status.rate_per_min else None
    return status


def format_status(s: Status) -> str:
    from .planning import format_duration
    pct = 100.0 * s.done / s.total if s.total else 100.0
    lines = [f"{s.out}: {s.done:,}/{s.total:,} tasks done ({pct:.1f}%): {s.ok:,} ok, "
             f"{s.errors + s.refused:,} error(s)"]
    if s.by_code:
        lines.append("errors by code: " + ", ".join(f"{c} {n:,}" for c, n in sorted(s.by_code.items(), key=lambda kv: -kv[1])))
    if s.rate_per_min:
        eta = format_duration(s.eta_s) if s.eta_s else "done"
        lines.append(f"rate: {s.rate_per_min:,.1f} tasks/min over the last 10 min; ETA {eta}")
    return "\n".join(lines)
