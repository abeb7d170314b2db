"""The output schema, and the journal + plan turned into results.parquet and metadata.jsonl.

One row per image; a task without images (refused, failed, or not done yet) is one row with
its error. Built in one pass as JSON rows that pyarrow parses with the schema, 10,000 at a
time; a row and its metadata.jsonl line share the encoding of the fields they have in common.
pandas is never imported here (see _parse_rows).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import orjson
import pyarrow as pa

from batchgen._version import __version__
from batchgen.exceptions import UsageError
from batchgen.keeping.outdir import METADATA_FILE, RESULTS_FILE, atomic_file
from batchgen.planning.edits import RECORD_FIELDS
from batchgen.planning.reader import free_name
from batchgen.planning.settings import point_label
from batchgen.planning.tasks import ROWS_AT_A_TIME, Plan
from batchgen.rules import models, pricing
from batchgen.util import arrowbuf

if TYPE_CHECKING:
    import pandas as pd

    from batchgen.keeping.journal import Replay
    from batchgen.keeping.outdir import Provenance, StrPath

SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("row_index", pa.int64()),
    ("prompt", pa.string()),
    ("model", pa.string()),
    ("quality", pa.string()),
    ("style", pa.string()),
    ("size", pa.string()),
    ("response_format", pa.string()),
    ("n", pa.int64()),
    ("output_format", pa.string()),     # the GPT image models' own parameters
    ("output_compression", pa.int64()),
    ("background", pa.string()),
    ("moderation", pa.string()),
    ("input_fidelity", pa.string()),    # edits
    ("complexity", pa.string()),        # gpt-image-2.6: how much the model plans before rendering
    ("extra_params", pa.string()),      # --param's parameters as sent, a JSON object
    ("image_index", pa.int64()),
    ("status", pa.string()),
    ("revised_prompt", pa.string()),
    ("image_path", pa.string()),
    ("image_url", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("bytes", pa.int64()),
    ("frames", pa.int64()),             # a GIF's frame count; null for every other format
    ("error_code", pa.string()),
    ("error_message", pa.string()),
    ("http_status", pa.int64()),
    ("attempts", pa.int64()),
    ("latency_s", pa.float64()),
    ("created", pa.int64()),
    ("trace_id", pa.string()),
    # Where the row came from (outdir.Provenance).
    ("provider", pa.string()),
    ("endpoint", pa.string()),
    ("mode", pa.string()),
    ("simulated", pa.bool_()),
    ("batch_id", pa.string()),          # the Batch API's batch that made the row
    ("remote_task_id", pa.string()),    # async mode: the server's task that made the row
    ("sweep_point", pa.string()),
    ("est_cost_usd", pa.float64()),     # per image; null: batchgen has no price for it (not 0)
    ("gateway_cost_usd", pa.float64()), # per image, as a gateway reported it (x-litellm-response-cost)
    ("input_tokens", pa.int64()),       # the response's usage, for the whole request (all n images)
    ("output_tokens", pa.int64()),
    ("total_tokens", pa.int64()),
    ("input_image", pa.string()),       # edits: the images sent ("|" between several), and sha256s
    ("input_sha256", pa.string()),
    ("mask_image", pa.string()),
    ("mask_sha256", pa.string()),
    ("markup_image", pa.string()),      # markup-guided edits (gpt-image-2.6): the markup sent
    ("markup_sha256", pa.string()),
    # False: a task an earlier job of this folder asked for (other rows, sweep values, defaults)
    # and the current job does not, kept so every image stays listed. `in_input` is its first
    # name, kept with the same value for code written against it.
    ("in_input", pa.bool_()),
    ("in_job", pa.bool_()),
])
_IN_JOB = '"in_input":true,"in_job":true'
_NOT_IN_JOB = '"in_input":false,"in_job":false'
COLUMNS = SCHEMA.names
_PROVENANCE = ("provider", "endpoint", "mode", "simulated")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The rows as parsed: the provenance columns come from a small table of origins, repeated by
# each row's `origin` index (one int per row, not four repeated texts to parse).
_ROW_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in _PROVENANCE] + [("origin", pa.int64())])
_OUTCOME_FIELDS = ("error_code", "error_message", "http_status", "attempts", "latency_s",
                   "created", "trace_id", "batch_id", "remote_task_id")


@dataclass
class Results:
    """results.parquet and metadata.jsonl as written so far, under temporary names:
    write_results puts them in place."""
    files: "_ResultsFiles"
    images: int
    not_in_input: int = 0     # tasks listed that the current input no longer holds


_CHUNK = 10_000   # rows turned into Arrow (one row group) and metadata lines written at a time


# One JSON text per results row, built from fragments so that what a row of results.parquet
# and its metadata.jsonl line share is encoded once: JSON, because pyarrow reads it in C and
# turning Python lists into Arrow directly would import pandas (see _parse_rows).
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False,
                           separators=(",", ":")).encode
_encode_any = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False,
                               separators=(",", ":"), default=lambda v: _json_default(v)).encode
_encode_str = json.encoder.encode_basestring


def _fields(values: dict) -> str:
    """A dict's members as JSON, without the braces: orjson (half the time of formatting them
    one by one), or the standard library for what orjson cannot write (an integer past 64
    bits, a lone surrogate: values an earlier version's journal may hold)."""
    try:
        return orjson.dumps(values).decode()[1:-1]
    except orjson.JSONEncodeError:
        return _encode(values)[1:-1]


def _value(v) -> str:
    """One JSON value; the common types without the encoder's machinery."""
    if v is None:
        return "null"
    kind = type(v)
    if kind is str:
        return _encode_str(v)
    if kind is int:
        return str(v)
    if kind is float and math.isfinite(v):
        return repr(v)     # the shortest text that reads back as the same float, as json writes it
    return _encode(v)


class _ResultsFiles:
    """results.parquet (a row group at a time) and metadata.jsonl (a piece at a time), written
    under temporary names that commit() puts in place, or discard() removes."""

    def __init__(self, out_dir, schema: pa.Schema):
        import contextlib

        import pyarrow.parquet as pq
        self._stack = contextlib.ExitStack()
        out_dir = Path(out_dir)
        try:
            self._parquet = self._stack.enter_context(atomic_file(out_dir / RESULTS_FILE))
            self._metadata = self._stack.enter_context(atomic_file(out_dir / METADATA_FILE))
            self._writer = pq.ParquetWriter(self._parquet, with_pandas_types(schema), compression="zstd")
        except BaseException:
            self.discard()
            raise
        self.schema = schema

    def add(self, rows: pa.Table, metadata: str) -> None:
        if rows.num_rows:
            self._writer.write_table(rows)
        if metadata:
            # "replace": a lone surrogate from an earlier version's journal cannot be UTF-8.
            self._metadata.write(metadata.encode("utf-8", "replace"))

    def commit(self, extra: dict) -> None:
        """Both files in place (results.parquet first), with `extra` in its key-value metadata."""
        try:
            self._writer.add_key_value_metadata(extra)
            self._writer.close()
        except BaseException:
            self.discard()
            raise
        # Last in, first out: metadata.jsonl is put in place first and results.parquet, which
        # holds the key of what it was built from, last; a crash between the two leaves a
        # key that does not match, so the next run builds both again.
        self._stack.close()

    def discard(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            try:
                writer.close()
            except (OSError, pa.ArrowException):
                pass
        self._stack.__exit__(OSError, OSError("discarded"), None)


class _Rows:
    """Results rows and metadata.jsonl lines as they are made, written _CHUNK at a time so
    neither is held whole."""

    def __init__(self, passthrough: "_Passthrough", origins: list, files: _ResultsFiles, table,
                 batch_discount: float):
        self.passthrough = passthrough
        self.batch_discount = batch_discount
        self.origin_texts = [_origin_fragment(o) for o in origins]
        self.origin_table = _origin_table(origins)
        self.files = files
        self.table = table
        self.lines: list = []
        self.metadata: list = []
        self.images = 0
        self.row_indices: list = []     # input row of each row, for the pass-through columns

    def _flush_if_full(self) -> None:
        if len(self.lines) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        rows = _with_provenance(_parse_rows(self.lines), self.origin_table)
        if self.passthrough.source_names:
            rows = _append_passthrough(rows, self.table, self.passthrough.source_names,
                                       self.passthrough.names, self.row_indices)
        self.images += len(self.metadata)
        self.files.add(rows, "\n".join(self.metadata) + "\n" if self.metadata else "")
        self.lines, self.metadata, self.row_indices = [], [], []

    def ok(self, base: str, record: dict, price, origin: int, row_index) -> None:
        """One row per image of an ok record. `base` holds the task's own fields."""
        if len(self.lines) >= _CHUNK:
            self.flush()
        get = record.get
        images = get("images") or ()
        batch = "batch_id" in record
        paid = pricing.usd(get("cost_usd"))
        if paid is not None:     # what its answers cost, shared by its images
            price = paid / max(1, len(images))
        elif batch and price is not None:
            price = price * self.batch_discount
        usage = get("usage")
        # Built on every row: the token counts written out, not by a comprehension.
        shared = ({"attempts": get("attempts"), "latency_s": get("latency_s"), "created": get("created"),
                   "trace_id": get("trace_id"), "input_tokens": usage.get("input_tokens"),
                   "output_tokens": usage.get("output_tokens"), "total_tokens": usage.get("total_tokens"),
                   "est_cost_usd": price} if isinstance(usage, dict) else
                  {"attempts": get("attempts"), "latency_s": get("latency_s"), "created": get("created"),
                   "trace_id": get("trace_id"), "input_tokens": None, "output_tokens": None,
                   "total_tokens": None, "est_cost_usd": price})
        gateway = get("gateway_cost_usd")
        if gateway is not None:
            gateway = pricing.usd(gateway)
            if gateway is not None:
                shared["gateway_cost_usd"] = gateway / max(1, len(images))
        if batch:
            shared["batch_id"] = get("batch_id")
        if "remote_task_id" in record:
            shared["remote_task_id"] = get("remote_task_id")
        status = f'"status":"ok","http_status":{_value(get("http_status"))},"origin":{origin}'
        extra = self.passthrough.fragment(row_index)
        provenance = self.origin_texts[origin]
        lines, metadata, row_indices = self.lines, self.metadata, self.row_indices
        for image in images:
            path = _encode_str(image.get("image_path") or "")
            get = image.get
            common = _fields({**shared, "image_url": get("image_url"), "sha256": get("sha256"),
                              "width": get("width"), "height": get("height"), "bytes": get("bytes"),
                              "frames": get("frames"),
                              "revised_prompt": get("revised_prompt"), "image_index": get("image_index", 0)})
            lines.append(f'{{{base},{status},"image_path":{path},{common}}}')
            metadata.append(f'{{"file_name":{path},{base},{common},{provenance}{extra}}}')
            row_indices.append(row_index)
        expected = record.get("images_expected")
        if isinstance(expected, int):
            got = len(record.get("images") or ())
            # The answer's cost is on its images' rows: none here, unless that cost is unknown.
            missing_cost = "null" if price is None else "0.0"
            for index in range(got, expected):
                self.lines.append(f'{{{base},"status":"error","error_code":"missing_image",'
                                  f'"error_message":"asked for {expected} images, the answer had {got}",'
                                  f'"image_index":{index},"est_cost_usd":{missing_cost},"origin":{origin}}}')
                self.row_indices.append(row_index)

    def error(self, base: str, error: dict, origin: int, row_index, record=None) -> None:
        self._flush_if_full()
        # An error costs what its answers were billed (images that could not be used): 0 when
        # none was, null when one was at a price batchgen does not know.
        cost = pricing.billed(record) if record is not None else None
        if cost is None and record is not None and "cost_usd" in record and record["cost_usd"] is None:
            shown = "null"
        else:
            shown = _value(cost or 0.0)
        self.lines.append(f'{{{base},"status":"error","est_cost_usd":{shown},"origin":{origin},'
                          f'{_encode(error)[1:-1]}}}')
        self.row_indices.append(row_index)

    def finish(self, not_in_input: int) -> Results:
        if self.lines or self.metadata:
            self.flush()
        return Results(self.files, self.images, not_in_input)


def _append_passthrough(result: pa.Table, table, source_names: list, names: list, row_indices: list) -> pa.Table:
    """The input's own columns, taken for each row; null for rows of tasks no longer in it
    (they come last, after every row of the current input)."""
    planned = row_indices
    if None in row_indices:
        planned = row_indices[:row_indices.index(None)]
    missing = len(row_indices) - len(planned)
    picked = table.select(source_names).take(arrowbuf.int64_array(planned))
    for name, column in zip(names, picked.columns):
        if missing:
            column = pa.chunked_array(column.chunks + [pa.nulls(missing, column.type)], column.type)
        result = result.append_column(name, column)
    return result


def _origin_table(origins: list) -> dict:
    """The provenance values of each origin, by column, typed as SCHEMA says (else None), for
    _with_provenance to repeat by index."""
    table = {}
    for name in _PROVENANCE:
        kind = bool if SCHEMA.field(name).type == pa.bool_() else str
        table[name] = [o.get(name) if isinstance(o.get(name), kind) else None for o in origins]
    return table


def _with_provenance(rows: pa.Table, origins: dict) -> pa.Table:
    """The rows in SCHEMA's order, the provenance columns repeated from `origins` by each
    row's index. Built from buffers with numpy: Table.take would import pyarrow.compute,
    a cost on every run."""
    origin = rows.column("origin")
    index = arrowbuf.numpy_ints(origin.chunk(0)) if origin.num_chunks else None   # one after _parse_rows
    columns = [_repeated(origins[n], index, SCHEMA.field(n).type) if n in _PROVENANCE else rows.column(n)
               for n in COLUMNS]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _repeated(values: list, index, kind: pa.DataType) -> pa.Array:
    """values[i] for each i of `index` (a numpy int array; None: no rows) as an Arrow array."""
    import numpy as np
    if index is None or not len(index):
        return pa.nulls(0, kind)
    present = np.array([v is not None for v in values])[index]
    if kind == pa.bool_():
        return arrowbuf.bool_array(np.array([bool(v) for v in values])[index], present)
    texts = [v.encode("utf-8", "replace") if v is not None else b"" for v in values]
    if int(np.array([len(t) for t in texts], np.int64)[index].sum()) >= 2 ** 31:
        # past a string array's 32-bit offsets: a chunk of each half
        return pa.chunked_array([_repeated(values, part, kind) for part in np.array_split(index, 2)], kind)
    return arrowbuf.binary_array([texts[i] for i in index.tolist()], kind, present)


def _origin_fragment(d: dict) -> str:
    return (f'"provider":{_value(d.get("provider"))},"endpoint":{_value(d.get("endpoint"))},'
            f'"mode":{_value(d.get("mode"))},"simulated":{_value(d.get("simulated"))}')


def results_schema(plan: Plan, table: Optional[pa.Table]) -> pa.Schema:
    """SCHEMA, then the input's own columns (named as passthrough_names says) with their types."""
    if table is None or not plan.passthrough:
        return SCHEMA
    names = passthrough_names(plan.passthrough)
    return pa.schema(list(SCHEMA) + [pa.field(n, table.schema.field(s).type)
                                     for n, s in zip(names, plan.passthrough)])


def build_results(plan: Plan, replay: Replay, unfinished_code: str = "interrupted",
                  unfinished_message: str = "not finished yet; run the same command again to finish it",
                  table: Optional[pa.Table] = None, provenance: Optional[Provenance] = None,
                  earlier: Optional[Provenance] = None, out_dir: Optional[StrPath] = None) -> Results:
    """The results for every task of the plan: one row per image, one per task without images;
    then the tasks an earlier input of this folder held (`in_input` false), so every image
    on disk is listed. Written to OUT (`out_dir`) as they are made, a chunk at a time, under
    temporary names: write_results puts them in place.

    `replay` is the journal's state; tasks with no final record get `unfinished_code`.
    `table` is the input (a pyarrow.Table), for the pass-through columns. `provenance` is
    this run's origin (for rows nothing was sent for); `earlier` what job.json recorded
    before, for outcomes of a version that wrote no origin lines.
    """
    from batchgen.keeping.outdir import Provenance
    labels = [point_label(p) for p in plan.points]
    here = provenance.as_dict() if provenance is not None else {}
    # Indexed by a record's origin: each run's origin line, then (-1) outcomes of a version
    # that wrote none, then (current) this run's, for rows nothing was sent for.
    origins = [(Provenance.from_dict(o) or Provenance("", None, "live", False)).as_dict()
               for o in replay.origins]
    origins += [earlier.as_dict() if earlier is not None else here, here]
    current, legacy = len(origins) - 1, len(origins) - 2
    variants: dict = {}        # (variant index, point) -> (JSON fragment, price)
    use_table = table if plan.passthrough else None
    passthrough = _Passthrough(plan, use_table)
    files = _ResultsFiles(out_dir, results_schema(plan, use_table))
    prices = pricing.load(plan.config.prices, plan.config.models, plan.config.provider)
    try:
        rows = _Rows(passthrough, origins, files, use_table, prices.batch_discount)
        tasks = plan.tasks
        keys = tasks.keys()
        step = ROWS_AT_A_TIME * tasks.n_points
        for start in range(0, len(tasks), step):
            stop = min(start + step, len(tasks))
            events = replay.join(keys[start:stop]).tolist()
            passthrough.window(start // tasks.n_points, (stop - 1) // tasks.n_points + 1)
            for k, (task, event) in enumerate(zip(tasks.at(range(start, stop)), events), start):
                key = (id(task.params), task.point)
                cached = variants.get(key)
                if cached is None:
                    cached = variants[key] = _variant_fragment(task.params, labels[task.point], prices)
                variant, price = cached
                base = (f'"task_id":"{task.task_id}","row_index":{task.row_index},{_IN_JOB},'
                        f'"prompt":{_encode_str(task.prompt) if task.prompt is not None else "null"},{variant}')
                if task.edit is not None:
                    base += "," + _encode(task.edit.as_record())[1:-1]
                record = replay.record(event) if event >= 0 and not task.problem else None
                if record is not None and record["status"] == "ok":
                    origin = replay.origin_of(event)
                    rows.ok(base, record, price, origin if origin >= 0 else legacy, task.row_index)
                    continue
                if task.problem:
                    error = {"error_code": "invalid_params", "error_message": task.problem, "attempts": 0}
                elif record is None:
                    error = {"error_code": unfinished_code, "error_message": unfinished_message,
                             "attempts": replay.carried_attempts(int(keys[k]))}
                else:
                    error = {k: record.get(k) for k in _OUTCOME_FIELDS}
                    error.update(_usage(record))
                origin = current if record is None else replay.origin_of(event)
                rows.error(base, error, origin if origin >= 0 else legacy, task.row_index, record)
        del keys
        orphans = _rows_not_in_input(plan, replay, rows, legacy, out_dir)
        return rows.finish(orphans)
    except BaseException:
        files.discard()
        raise


def _variant_fragment(params: dict, label: str, prices) -> tuple:
    """The parameter columns of a row as one JSON fragment, and the (live) price per image."""
    columns = {name: params.get(name) for name in models.PARAMETERS}
    n = params.get("n")
    columns["n"] = n if isinstance(n, int) else 1
    extra = {k: v for k, v in params.items() if k not in columns}
    columns["extra_params"] = _encode_any(extra) if extra else None
    columns["sweep_point"] = label
    return _encode_any(columns)[1:-1], prices.per_image(params)


def _rows_not_in_input(plan: Plan, replay, rows: _Rows, legacy: int, out_dir: Optional[StrPath]) -> int:
    """Rows for the journal's finished tasks that this plan does not hold (an earlier job's:
    other rows, sweep values or defaults), from what their journal lines recorded of the
    request. Each is labelled over the sweep axes of every job the folder recorded, and takes
    the row of the current input that holds its prompt, if one does (so `report` shows it
    beside that prompt's other points). Returns how many tasks."""
    import numpy as np
    keys = replay.finished_elsewhere(np.sort(plan.tasks.keys()))
    if not keys:
        return 0
    from batchgen.keeping.outdir import history_axes, read_job
    axes = [axis for axis, _ in plan.config.sweep]
    earlier: list = []        # axes only earlier jobs swept: named where a task has a value
    if out_dir is not None and (Path(out_dir) / "job.json").exists():
        try:
            earlier = [a for a in history_axes(read_job(out_dir)) if a not in axes]
        except UsageError:
            pass
    prices = pricing.load(plan.config.prices, plan.config.models, plan.config.provider)
    # Two passes over their journal lines, so no more than their prompts is held at once:
    # the prompts first (to find their rows), then the rows.
    found, prompts = [], set()
    for key in keys:
        event = replay.final_event(key)
        record = replay.record(event, key)
        if record is None:      # its line was damaged: not done after all
            continue
        found.append((key, event))
        if isinstance(record.get("prompt"), str):
            prompts.add(record["prompt"])
    row_of = plan.tasks.rows_of(prompts)
    del prompts
    for key, event in found:
        record = replay.record(event, key) or {}
        found_params = record.get("params")
        params: dict = found_params if isinstance(found_params, dict) else {}
        prompt = record.get("prompt") if isinstance(record.get("prompt"), str) else None
        point = {a: params.get(a) for a in axes}
        point.update({a: params[a] for a in earlier if params.get(a) is not None})
        variant, price = _variant_fragment(params, point_label(point), prices)
        base = (f'"task_id":{_encode_str(replay.task_id_of(key))},"row_index":{_value(row_of.get(prompt))},'
                f'{_NOT_IN_JOB},"prompt":{_value(prompt)},{variant}')
        inputs = record.get("inputs")
        if isinstance(inputs, dict):
            base += "," + _encode_any({k: inputs.get(k) if isinstance(inputs.get(k), str) else None
                                       for k in RECORD_FIELDS})[1:-1]
        origin = replay.origin_of(event)
        if record.get("status") == "ok":
            rows.ok(base, record, price, origin if origin >= 0 else legacy, None)
        else:
            error = {k: record.get(k) for k in _OUTCOME_FIELDS}
            error.update(_usage(record))
            rows.error(base, error, origin if origin >= 0 else legacy, None, record)
    return len(found)


_TOKEN_FIELDS = ("input_tokens", "output_tokens", "total_tokens")


def _usage(record: dict) -> dict:
    """The token counts of a record's usage (GPT image models report it; dall-e does not)."""
    usage = record.get("usage")
    if not isinstance(usage, dict):
        return {}
    return {k: usage.get(k) for k in _TOKEN_FIELDS if isinstance(usage.get(k), int)}


# Names a pass-through column may not take: the results' own, and metadata.jsonl's file_name.
RESERVED_NAMES = frozenset(COLUMNS) | {"file_name"}


def passthrough_names(names: list) -> list:
    """The names the input's own columns get in the results: their own, unless it is reserved
    (then `input_<name>`, or `input_<name>.1`, `.2`, ... when that is taken too). A column
    keeps its own name whenever it can; the names are unique."""
    taken = set(RESERVED_NAMES) | {n for n in names if n not in RESERVED_NAMES}
    out = []
    for name in names:
        out.append(name if name not in RESERVED_NAMES else free_name(f"input_{name}", taken))
    return out


class _Passthrough:
    """The input's own columns as JSON fragments for metadata.jsonl, for the rows of a window
    (the rows whose tasks are being written; only they are Python values at a time)."""

    def __init__(self, plan: Plan, table):
        self.names = passthrough_names(plan.passthrough)
        self.source_names = plan.passthrough if table is not None else []
        self._table = table
        self._columns: list = []
        self._first = 0
        self._cache: dict = {}

    def window(self, first: int, end: int) -> None:
        """Rows first..end-1 of the input are next."""
        if self.source_names:
            self._columns = [self._table.column(n).slice(first, end - first).to_pylist() for n in self.source_names]
            self._first = first
            self._cache = {}

    def fragment(self, row_index: Optional[int]) -> str:
        if not self.source_names:
            return ""
        if row_index is None:    # a task no longer in the input
            return "," + ",".join(f"{_encode_str(n)}:null" for n in self.names)
        text = self._cache.get(row_index)
        if text is None:
            values = {n: c[row_index - self._first] for n, c in zip(self.names, self._columns)}
            try:
                text = "," + _encode_any(values)[1:-1]
            except ValueError:   # NaN or infinity, which JSON cannot say: null
                text = "," + _encode_any({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                          for k, v in values.items()})[1:-1]
            self._cache[row_index] = text
        return text


def _parse_rows(lines: list) -> pa.Table:
    """Rows, as JSON texts, into a table of SCHEMA (a missing key is null).

    pyarrow's JSON reader, not pa.Table.from_pydict: converting Python lists makes pyarrow
    import pandas (to ask whether they are pandas objects), a cost on every run. The
    text goes in as an Arrow buffer: through a Python file object (io.BytesIO) the reader
    is slower, most of all on its first call."""
    import pyarrow.json as pjson
    if not lines:
        return _ROW_SCHEMA.empty_table()
    # Blocks of 1 MiB, parsed in parallel when this process may use more than one CPU
    # (on one, the thread hand-offs only cost time); a line must fit in a block.
    read = pjson.ReadOptions(use_threads=_cpus() > 1, block_size=max(1 << 20, _longest(lines) + 1))
    parse = pjson.ParseOptions(explicit_schema=_ROW_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pjson.read_json(pa.BufferReader(("\n".join(lines) + "\n").encode("utf-8")),
                                read_options=read, parse_options=parse)
    except (pa.ArrowInvalid, UnicodeEncodeError):
        # A value the schema cannot take: journals of earlier versions kept server values
        # unchecked (a number for a text, a lone surrogate). Typed field by field instead.
        typed = "\n".join(map(_typed_row, lines)) + "\n"
        table = pjson.read_json(pa.BufferReader(typed.encode("utf-8")), read_options=read, parse_options=parse)
    return table.select(_ROW_SCHEMA.names).combine_chunks()


def _typed_row(line: str) -> str:
    """A results row with each value of the type its column holds, or null."""
    row = json.loads(line)
    return _encode({f.name: _typed(row.get(f.name), f.type) for f in _ROW_SCHEMA if f.name in row})


def _typed(value, kind: pa.DataType):
    if value is None:
        return None
    if pa.types.is_string(kind):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else None
    if pa.types.is_boolean(kind):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if pa.types.is_integer(kind):
        if isinstance(value, float):
            value = int(value) if value.is_integer() else None
        return value if value is not None and -2 ** 63 <= value < 2 ** 63 else None
    return float(value) if math.isfinite(value) else None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _longest(lines: list) -> int:
    return max(map(len, lines)) * 4   # characters to UTF-8 bytes, at most


def with_pandas_types(table):
    """The same table (or schema), with the pandas metadata that makes pd.read_parquet give integer
    columns as nullable Int64 (ints stay ints, a missing value is <NA>, not a float NaN).

    Written by hand, as pyarrow would write it for such a DataFrame: building the DataFrame
    to let pyarrow describe it would import pandas, a cost on every run."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    columns = [{"name": f.name, "field_name": f.name, "pandas_type": _pandas_type(f.type),
                "numpy_type": _numpy_type(f.type), "metadata": None} for f in schema]
    doc = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
           "creator": {"library": "pyarrow", "version": pa.__version__},
           "pandas_version": None}   # written without pandas (pyarrow does not read it)
    metadata = {**(schema.metadata or {}), b"pandas": json.dumps(doc).encode()}
    if isinstance(table, pa.Schema):
        return table.with_metadata(metadata)
    return table.replace_schema_metadata(metadata)


_FLOATS = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _pandas_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return str(t)                      # int64, uint8, ...
    if pa.types.is_floating(t):
        return _FLOATS[str(t)]
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "unicode"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_timestamp(t):
        return "datetimetz" if t.tz else "datetime"
    if pa.types.is_date(t):
        return "date"
    return "object"


def _numpy_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):   # the nullable pandas dtype: Int64, UInt8, ...
        name = str(t)
        return "U" + name[1:].capitalize() if name.startswith("u") else name.capitalize()
    if pa.types.is_floating(t):
        return _FLOATS[str(t)]
    if pa.types.is_boolean(t):
        return "boolean"             # nullable too
    if pa.types.is_timestamp(t) and not t.tz:
        return f"datetime64[{t.unit}]"
    return "object"


_KEY = b"batchgen.results_key"
_IMAGES = b"batchgen.images"
_NOT_IN_INPUT = b"batchgen.not_in_input"


def results_key(plan: Plan, unfinished_code: str, unfinished_message: str, journal_path: StrPath,
                provenance: Optional[Provenance] = None) -> str:
    """What results.parquet was built from: the plan's tasks in order, the journal's length,
    how unfinished tasks are labelled and where they would be sent. The same key means the
    same table, so a rerun that finds nothing to do need not rebuild it."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    try:
        journal_bytes = os.stat(journal_path).st_size
    except OSError:
        journal_bytes = -1
    h.update(f"{__version__}\x1f{journal_bytes}\x1f{unfinished_code}\x1f{unfinished_message}\x1f"
             f"{plan.passthrough}\x1f{plan.passthrough_digest}\x1f{provenance}\x1f".encode())
    # The tasks in order (row after row, each row's sweep points): their ids say it all.
    h.update(b"%d\x1f%d\x1f" % (len(plan.tasks), plan.tasks.n_points))
    h.update(plan.tasks.ids)
    return h.hexdigest()


def results_up_to_date(out_dir: StrPath, key: str) -> Optional[tuple[int, int]]:
    """(images, tasks not in the input) of results.parquet if it was built with `key`, else None."""
    import pyarrow.parquet as pq
    try:
        meta = pq.read_metadata(Path(out_dir) / RESULTS_FILE).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    if meta.get(_KEY) != key.encode() or not (Path(out_dir) / METADATA_FILE).exists():
        return None
    return int(meta.get(_IMAGES, b"0")), int(meta.get(_NOT_IN_INPUT, b"0"))


def import_writers() -> None:
    """Import what building and writing results needs (mostly pyarrow.parquet). The
    runner calls it while its first requests are in flight, so the end of a run need not."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def write_results(out_dir: StrPath, results: Results, key: str = "") -> int:
    """Put results.parquet and metadata.jsonl in place; returns the number of images."""
    results.files.commit({_KEY: key.encode(), _IMAGES: str(results.images).encode(),
                          _NOT_IN_INPUT: str(results.not_in_input).encode()})
    return results.images


def _json_default(value):
    """Values JSON has no type for, from pass-through columns: dates as ISO 8601, bytes as
    base64, anything else as its text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        import base64
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_results(out_dir: StrPath) -> pd.DataFrame:
    import pandas as pd
    return pd.read_parquet(Path(out_dir) / RESULTS_FILE)


def read_results_table(out_dir: StrPath) -> pa.Table:
    """OUT/results.parquet as a pyarrow Table (its own types); UsageError when OUT has none
    or it cannot be read."""
    import pyarrow.parquet as pq
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise UsageError(f"{out_dir} has no {RESULTS_FILE}: run `batchgen run ... --out {out_dir}` first")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{path} is not readable ({e}); run `batchgen run` again to rebuild it") from None
