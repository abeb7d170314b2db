"""Task ids across versions: recognising the outcomes an output folder holds under the ids of
the scheme before this one.

Ids are now the request (prompt, parameters as sent, occurrence among identical requests; see
`job`). Before (a job.json without `"task_ids": 2`) they were a hash of the whole row: every
cell by column name, the occurrence among identical rows, and the parameters. A
folder of that version resumes by recognising those ids: `legacy_ids` computes them for the
current plan, and `alias_records` turns each finished legacy task the new plan still holds
into a journal record under its new id that `replaces` the old one.

Pure (planning layer): no I/O; the runner appends what `alias_records` returns.
"""
from __future__ import annotations

import hashlib
import json
import math
from array import array
from typing import Any, Optional

from batchgen.planning.settings import JobConfig
from batchgen.planning.tasks import TASK_ID_VERSION, Plan

# job.json's field saying which scheme the folder's journal uses; a folder without it (or with
# another value) that holds outcomes is a legacy one.
TASK_IDS_KEY = "task_ids"


def job_json_fields() -> dict:
    """What job.json records of the id scheme (merged into the document OutputFolder writes)."""
    return {TASK_IDS_KEY: TASK_ID_VERSION}


# The parameters the previous scheme knew: a column named after a later one was data then.
PARAMETERS = ("model", "quality", "style", "size", "response_format", "n")

def is_legacy(job_doc: Optional[dict]) -> bool:
    """Whether a folder's job.json (None: no folder yet) names tasks by the old ids."""
    return isinstance(job_doc, dict) and job_doc.get(TASK_IDS_KEY) != TASK_ID_VERSION


def legacy_ids(table, config: JobConfig, plan: Plan) -> list:
    """For each task of `plan` (same order), the id the previous scheme gave it.

    A copy of the previous `job._make_plan`'s hashing, kept apart from the current code so
    that later changes to planning cannot change it. `table` is the input as read."""
    columns = list(table.column_names)
    param_columns = [c for c in PARAMETERS if c in columns]
    if config.limit is not None:
        table = table.slice(0, config.limit)
    points = plan.points
    ordered = sorted(columns)
    lists = {c: table.column(c).to_pylist() for c in columns}
    values = [lists[c] for c in ordered]
    header = "\x1e".join(ordered)
    seen: dict = {}
    row_params = [lists[c] for c in param_columns]
    keys: dict = {}      # (row's own parameters, point index) -> the parameters' part of the id
    ids: list = []
    blake2b = hashlib.blake2b
    for i, cells in enumerate(zip(*values)):
        row_key = header + "\x1f" + "\x1f".join(map(repr, cells))
        occurrence = seen.get(row_key, 0)
        seen[row_key] = occurrence + 1
        row_hash = blake2b(f"{row_key}\x1d{occurrence}".encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()
        own: dict = {}
        for param, col_values in zip(param_columns, row_params):
            value = _cell(col_values[i])
            if value is not None:
                own[param] = _row_param(param, value)
        own_key = tuple(own.items())
        for p_index in range(len(points)):
            key = keys.get((own_key, p_index))
            if key is None:
                params = {**config.defaults, **own, **points[p_index]}
                params = {k: params[k] for k in PARAMETERS if params.get(k) is not None}
                key = keys[(own_key, p_index)] = json.dumps(params, sort_keys=True).encode()
            ids.append(blake2b(row_hash + key, digest_size=8).hexdigest())
    if len(ids) != len(plan.tasks):
        raise ValueError(f"legacy_ids: {len(ids)} ids for a plan of {len(plan.tasks)} tasks; "
                         "give the table and config the plan was made from")
    return ids


def _cell(value):
    """The previous scheme's empty-cell rule (job._cell at the time)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _row_param(param: str, value) -> Any:
    """The previous scheme's row parameter (job._row_param at the time; None: not a whole n)."""
    if param == "n":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    return str(value).strip()


def alias_records(plan: Plan, legacy: list, replay, fallback_origin: dict) -> list:
    """The journal lines that carry a legacy folder's outcomes over to the new ids.

    For each task of `plan` whose legacy id (`legacy`, from legacy_ids) has a final record in
    `replay` (journal.Replay) and whose new id has none: a copy of that record under the new
    id, with `"replaces": <old id>` as its first key, so the journal's fast replay (which reads
    only lines that start with `{"task_id":`) hands it to Replay.apply. Each group of records
    is preceded by the `{"origin": ...}` line of the run that made them, so their provenance
    stays theirs; `fallback_origin` stands for records older than origin lines (job.json's
    provenance). Returns [] when there is nothing to carry over; appending the lines again is
    harmless (a task with a final record under its new id is skipped)."""
    states = replay.states
    groups: dict = {}        # origin index -> records
    for task, old in zip(plan.tasks, legacy):
        if task.problem:       # refused tasks were never sent, nor journaled
            continue
        now = states.get(task.task_id)
        if now is not None and now.status is not None:
            continue
        before = states.get(old)
        if before is None or before.status is None:
            continue
        record = before.final
        if not isinstance(record, dict):
            continue
        alias = {"replaces": old, "task_id": task.task_id}
        alias.update((k, v) for k, v in record.items() if k not in alias)
        groups.setdefault(before.origin, []).append(alias)
    lines: list = []
    for origin, records in groups.items():
        known = 0 <= origin < len(replay.origins) and isinstance(replay.origins[origin], dict)
        lines.append({"origin": replay.origins[origin] if known else dict(fallback_origin)})
        lines.extend(records)
    return lines


class ChunkIds:
    """A Batch API chunk's task ids as the state keeps them: their 64-bit keys, a fraction of a
    list of texts (bench/batch_memory.py; a million tasks make twenty chunks of 50,000). Iterates
    as the ids, in order."""

    __slots__ = ("keys",)

    def __init__(self, keys: array):
        self.keys = keys

    @classmethod
    def of(cls, ids):
        """ChunkIds for a list of ids batchgen made (16 hex digits each); anything else (a
        hand-made journal's) is kept as it is."""
        if not isinstance(ids, list):
            return ids
        keys = array("Q")
        for task_id in ids:
            key = hex_key(task_id)
            if key is None:
                return ids
            keys.append(key)
        return cls(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return ("%016x" % key for key in self.keys)


def hex_key(task_id) -> Optional[int]:
    """The key of an id of 16 lowercase hex digits (every id batchgen makes), else None."""
    if not isinstance(task_id, str) or len(task_id) != 16:
        return None
    try:
        key = int(task_id, 16)
    except ValueError:
        return None
    return key if "%016x" % key == task_id else None
