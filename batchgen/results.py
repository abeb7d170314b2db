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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow as pa

from . import models
from .job import Plan, point_label

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
    ("image_index", pa.int64()),
    ("status", pa.string()),
    ("revised_prompt", pa.string()),
    ("image_path", pa.string()),
    ("image_url", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("bytes", pa.int64()),
    ("error_code", pa.string()),
    ("error_message", pa.string()),
    ("http_status", pa.int64()),
    ("attempts", pa.int64()),
    ("latency_s", pa.float64()),
    ("created", pa.int64()),
    ("trace_id", pa.string()),
    # Beyond the contract:
    ("sweep_point", pa.string()),
    ("est_cost_usd", pa.float64()),
    ("total_tokens", pa.int64()),
])
COLUMNS = SCHEMA.names
_OUTCOME_FIELDS = ("error_code", "error_message", "http_status", "attempts", "latency_s",
                   "created", "trace_id")


@contextmanager
def atomic_file(path):
    """A file that appears at `path` whole, or not at all (temp name, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


@dataclass
class Results:
    """results.parquet's table, and metadata.jsonl's text (one line per image)."""
    table: pa.Table
    metadata: list            # the text in pieces of up to _CHUNK lines, each ending in "\n"
    images: int


_CHUNK = 10_000   # rows turned into Arrow (and metadata lines joined) at a time: bounded text


# One JSON text per results row, built from fragments so that what a row of results.parquet
# and its metadata.jsonl line share is encoded once: JSON, because pyarrow reads it in C and
# turning Python lists into Arrow directly would import pandas (see _parse_rows).
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False,
                           separators=(",", ":")).encode
_encode_any = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False,
                               separators=(",", ":"), default=lambda v: _json_default(v)).encode
_encode_str = json.encoder.encode_basestring


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


def build_results(plan: Plan, replay, unfinished_code: str = "interrupted",
                  unfinished_message: str = "not finished yet; run the same command again to finish it",
                  table=None) -> Results:
    """The results for every task of the plan: one row per image, one per task without images.

    `replay` is the journal's state; tasks with no final record get `unfinished_code`.
    `table` is the input (a pyarrow.Table), for the pass-through columns.
    """
    labels = [point_label(p) for p in plan.points]
    variants: dict = {}        # (id of the shared params dict, point) -> (JSON fragment, price)
    passthrough = _Passthrough(plan, table)
    lines: list = []
    tables: list = []
    metadata: list = []
    pieces: list = []
    images = 0
    row_indices: list = []
    for task in plan.tasks:
        if len(lines) >= _CHUNK:
            tables.append(_parse_rows(lines))
            lines = []
        if len(metadata) >= _CHUNK:
            images += len(metadata)
            pieces.append("\n".join(metadata) + "\n")
            metadata = []
        params = task.params
        key = (id(params), task.point)
        cached = variants.get(key)
        if cached is None:
            cached = variants[key] = (_encode({
                "model": params.get("model"), "quality": params.get("quality"),
                "style": params.get("style"), "size": params.get("size"),
                "response_format": params.get("response_format"), "n": task.images_expected,
                "sweep_point": labels[task.point]})[1:-1],
                models.price_per_image(params.get("model"), params.get("quality"), params.get("size")))
        variant, price = cached
        base = (f'"task_id":"{task.task_id}","row_index":{task.row_index},'
                f'"prompt":{_encode_str(task.prompt) if task.prompt is not None else "null"},{variant}')
        record = None if task.problem else replay.final(task.task_id)
        if record is not None and record["status"] == "ok":
            get = record.get
            # Field by field, not a dict through the encoder: a third of the time per row.
            shared = (f'"attempts":{_value(get("attempts"))},"latency_s":{_value(get("latency_s"))},'
                      f'"created":{_value(get("created"))},"trace_id":{_value(get("trace_id"))},'
                      f'"total_tokens":{_value(_total_tokens(record))},'
                      f'"est_cost_usd":{_value(price)}')
            status = f'"status":"ok","http_status":{_value(get("http_status"))}'
            for image in record.get("images") or ():
                path = _encode_str(image.get("image_path") or "")
                get = image.get
                common = (f'{shared},"image_url":{_value(get("image_url"))},"sha256":{_value(get("sha256"))},'
                          f'"width":{_value(get("width"))},"height":{_value(get("height"))},'
                          f'"bytes":{_value(get("bytes"))},"revised_prompt":{_value(get("revised_prompt"))},'
                          f'"image_index":{_value(get("image_index", 0))}')
                lines.append(f'{{{base},{status},"image_path":{path},{common}}}')
                metadata.append(f'{{"file_name":{path},{base},{common}{passthrough.fragment(task.row_index)}}}')
                row_indices.append(task.row_index)
            continue
        if task.problem:
            error = {"error_code": "invalid_params", "error_message": task.problem, "attempts": 0}
        elif record is None:
            state = replay.states.get(task.task_id)
            error = {"error_code": unfinished_code, "error_message": unfinished_message,
                     "attempts": state.carried_attempts if state else 0}
        else:
            error = {k: record.get(k) for k in _OUTCOME_FIELDS}
            error["total_tokens"] = _total_tokens(record)
        lines.append(f'{{{base},"status":"error","est_cost_usd":0.0,{_encode(error)[1:-1]}}}')
        row_indices.append(task.row_index)
    if lines or not tables:
        tables.append(_parse_rows(lines))
    if metadata:
        images += len(metadata)
        pieces.append("\n".join(metadata) + "\n")
    result = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table is not None and plan.passthrough:
        picked = table.select(plan.passthrough).take(_int64_array(row_indices))
        for name, column in zip(passthrough.names, picked.columns):
            result = result.append_column(name, column)
    return Results(result, pieces, images)


def _total_tokens(record: dict):
    usage = record.get("usage")     # GPT image models report it; dall-e does not
    return usage.get("total_tokens") if isinstance(usage, dict) else None


class _Passthrough:
    """The input's own columns as JSON fragments for metadata.jsonl, one per input row."""

    def __init__(self, plan: Plan, table):
        self.names = [n if n not in COLUMNS else f"input_{n}" for n in plan.passthrough]
        use = table is not None and plan.passthrough
        self._columns = [table.column(n).to_pylist() for n in plan.passthrough] if use else []
        self._cache: dict = {}

    def fragment(self, row_index: int) -> str:
        if not self._columns:
            return ""
        text = self._cache.get(row_index)
        if text is None:
            values = {n: c[row_index] for n, c in zip(self.names, self._columns)}
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
    import pandas (to ask whether they are pandas objects), half a second of every run."""
    import io

    import pyarrow.json as pjson
    if not lines:
        return SCHEMA.empty_table()
    data = ("\n".join(lines) + "\n").encode("utf-8")
    table = pjson.read_json(
        io.BytesIO(data),
        # Blocks of 1 MiB, parsed in parallel when this process may use more than one CPU
        # (on one, the thread hand-offs cost ~40%); a line must fit in a block.
        read_options=pjson.ReadOptions(use_threads=_cpus() > 1, block_size=max(1 << 20, _longest(lines) + 1)),
        parse_options=pjson.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore"))
    return table.select(COLUMNS).combine_chunks()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _longest(lines: list) -> int:
    return max(map(len, lines)) * 4   # characters to UTF-8 bytes, at most


def _int64_array(values: list) -> pa.Array:
    """Python ints as an Arrow array, straight from their machine bytes (see _parse_rows)."""
    from array import array
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(array("q", values))])


def with_pandas_types(table: pa.Table) -> pa.Table:
    """The same table, with the pandas metadata that makes pd.read_parquet give integer
    columns as nullable Int64 (ints stay ints, a missing value is <NA>, not a float NaN).

    Written by hand, as pyarrow would write it for such a DataFrame: building the DataFrame
    to let pyarrow describe it would import pandas, half a second of every run."""
    columns = [{"name": f.name, "field_name": f.name, "pandas_type": _pandas_type(f.type),
                "numpy_type": _numpy_type(f.type), "metadata": None} for f in table.schema]
    doc = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
           "creator": {"library": "pyarrow", "version": pa.__version__},
           "pandas_version": None}   # written without pandas (pyarrow does not read it)
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          b"pandas": json.dumps(doc).encode()})


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


def results_key(plan: Plan, unfinished_code: str, unfinished_message: str, journal_path) -> str:
    """What results.parquet was built from: the plan's tasks in order, the journal's length and
    how unfinished tasks are labelled. The same key means the same table, so a rerun that
    finds nothing to do need not rebuild it."""
    import hashlib
    from . import __version__
    h = hashlib.blake2b(digest_size=16)
    try:
        journal_bytes = os.stat(journal_path).st_size
    except OSError:
        journal_bytes = -1
    h.update(f"{__version__}\x1f{journal_bytes}\x1f{unfinished_code}\x1f{unfinished_message}\x1f"
             f"{plan.passthrough}\x1f".encode())
    h.update("".join(t.task_id for t in plan.tasks).encode())
    h.update(",".join(str(t.row_index) for t in plan.tasks).encode())
    return h.hexdigest()


def results_up_to_date(out_dir, key: str) -> Optional[int]:
    """The image count of results.parquet if it was built with `key`, else None."""
    import pyarrow.parquet as pq
    try:
        meta = pq.read_schema(Path(out_dir) / "results.parquet").metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    if meta.get(_KEY) != key.encode() or not (Path(out_dir) / "metadata.jsonl").exists():
        return None
    return int(meta.get(_IMAGES, b"0"))


def import_writers() -> None:
    """Import what building and writing results needs (~25 ms, mostly pyarrow.parquet). The
    runner calls it while its first requests are in flight, so the end of a run need not."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def write_results(out_dir, results: Results, key: str = "") -> int:
    """Write results.parquet and metadata.jsonl; returns the number of images."""
    import pyarrow.parquet as pq
    out_dir = Path(out_dir)
    typed = with_pandas_types(results.table)
    typed = typed.replace_schema_metadata({**(typed.schema.metadata or {}), _KEY: key.encode(),
                                           _IMAGES: str(results.images).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(typed, sink, compression="zstd")
    write_atomic(out_dir / "results.parquet", sink.getvalue().to_pybytes())
    with atomic_file(out_dir / "metadata.jsonl") as f:
        # Hugging Face imagefolder metadata: one line per image, `file_name` relative to OUT.
        for piece in results.metadata:
            f.write(piece.encode("utf-8"))
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


def read_results(out_dir):
    import pandas as pd
    return pd.read_parquet(Path(out_dir) / "results.parquet")
