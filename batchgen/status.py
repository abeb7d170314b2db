"""Progress of a run from its journal and job.json; safe to read while the run writes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .journal import replay
from .outdir import JOURNAL_FILE, read_job


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


def read_status(out, now: Optional[float] = None) -> Status:
    out = Path(out)
    job = read_job(out)
    state = replay(out / JOURNAL_FILE)
    ok = errors = 0
    by_code: dict = {}
    finished = []
    for task_state in state.states.values():
        final = task_state.final
        if final is None:
            continue
        if final["status"] == "ok":
            ok += 1
        else:
            errors += 1
            by_code[final.get("error_code")] = by_code.get(final.get("error_code"), 0) + 1
        if final.get("finished_at"):
            finished.append(final["finished_at"])
    refused = int(job.get("refused", 0))
    if refused:
        by_code["invalid_params"] = refused
    status = Status(str(out), int(job.get("tasks", 0)), refused, ok, errors, by_code)
    now = time.time() if now is None else now
    recent = [t for t in finished if t >= now - RATE_WINDOW_S]
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
