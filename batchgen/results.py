"""The output schema, and the journal + plan turned into results.parquet and metadata.jsonl.

One row per image; a task without images (refused, failed, or not done yet) is one row with
its error. Built in one pass into column lists, then handed to pyarrow whole.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
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
_IMAGE_FIELDS = ("image_path", "image_url", "sha256", "width", "height", "bytes", "revised_prompt")
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


def build_table(plan: Plan, replay, unfinished_code: str = "interrupted",
                unfinished_message: str = "not finished yet; run the same command again to finish it",
                table=None) -> pa.Table:
    """The results table for every task of the plan.

    `replay` is the journal's state; tasks with no final record get `unfinished_code`.
    `table` is the input (a pyarrow.Table), for the pass-through columns.
    """
    lines: list = []
    encode = json.JSONEncoder(check_circular=False, allow_nan=False).encode
    labels = [point_label(p) for p in plan.points]
    row_indices = []
    for task in plan.tasks:
        params = task.params
        base = {"task_id": task.task_id, "row_index": task.row_index, "prompt": task.prompt,
                "model": params.get("model"), "quality": params.get("quality"),
                "style": params.get("style"), "size": params.get("size"),
                "response_format": params.get("response_format"), "n": task.images_expected,
                "sweep_point": labels[task.point]}
        record = None if task.problem else replay.final(task.task_id)
        if task.problem:
            rows = [{"status": "error", "error_code": "invalid_params", "error_message": task.problem,
                     "attempts": 0, "est_cost_usd": 0.0}]
        elif record is None:
            state = replay.states.get(task.task_id)
            rows = [{"status": "error", "error_code": unfinished_code, "error_message": unfinished_message,
                     "attempts": state.carried_attempts if state else 0, "est_cost_usd": 0.0}]
        else:
            outcome = {k: record.get(k) for k in _OUTCOME_FIELDS}
            usage = record.get("usage") or {}
            outcome["total_tokens"] = usage.get("total_tokens") if isinstance(usage, dict) else None
            if record["status"] == "ok":
                price = models.price_per_image(params.get("model"), params.get("quality"), params.get("size"))
                rows = []
                for image in record.get("images") or ():
                    row = {**outcome, "status": "ok", "image_index": image.get("image_index", 0),
                           "est_cost_usd": price}
                    row.update({k: image.get(k) for k in _IMAGE_FIELDS})
                    rows.append(row)
            else:
                rows = [{**outcome, "status": "error", "est_cost_usd": 0.0}]
        for row in rows:
            row.update(base)
            lines.append(encode(row))
            row_indices.append(task.row_index)
    result = _parse_rows(lines)
    if table is not None and plan.passthrough:
        picked = table.select(plan.passthrough).take(_int64_array(row_indices))
        for name, column in zip(plan.passthrough, picked.columns):
            result = result.append_column(name if name not in COLUMNS else f"input_{name}", column)
    return result


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
        read_options=pjson.ReadOptions(use_threads=True, block_size=max(1 << 20, min(len(data), 1 << 26))),
        parse_options=pjson.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore"))
    return table.select(COLUMNS).combine_chunks()


def _int64_array(values: list) -> pa.Array:
    """Python ints as an Arrow array, straight from their machine bytes (see _parse_rows)."""
    from array import array
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(array("q", values))])


def with_pandas_types(table: pa.Table) -> pa.Table:
    """The same table, with the pandas metadata that makes pd.read_parquet give integer
    columns as nullable Int64 (ints stay ints, a missing value is <NA>, not a float NaN).

    Written by hand, as pyarrow would write it for such a DataFrame: building the DataFrame
    to let pyarrow describe it would import pandas, half a second of every run."""
    from importlib import metadata as dist
    try:
        pandas_version = dist.version("pandas")
    except dist.PackageNotFoundError:
        pandas_version = "2.0.0"
    columns = [{"name": f.name, "field_name": f.name, "pandas_type": _pandas_type(f.type),
                "numpy_type": _numpy_type(f.type), "metadata": None} for f in table.schema]
    doc = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
           "creator": {"library": "pyarrow", "version": pa.__version__},
           "pandas_version": pandas_version}
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


def write_results(out_dir, table: pa.Table, key: str = "") -> int:
    """Write results.parquet and metadata.jsonl; returns the number of images."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    out_dir = Path(out_dir)
    images = int(pc.sum(_is_ok(table)).as_py() or 0)
    typed = with_pandas_types(table)
    typed = typed.replace_schema_metadata({**(typed.schema.metadata or {}), _KEY: key.encode(),
                                           _IMAGES: str(images).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(typed, sink, compression="zstd")
    write_atomic(out_dir / "results.parquet", sink.getvalue().to_pybytes())
    write_metadata(out_dir, typed)
    return images


def _is_ok(table: pa.Table):
    """status == "ok", row by row. A regex, not pc.equal(..., "ok"): turning the Python "ok"
    into an Arrow scalar makes pyarrow import pandas (see _parse_rows)."""
    import pyarrow.compute as pc
    return pc.match_substring_regex(table["status"], "^ok$")


def write_metadata(out_dir, table: pa.Table) -> None:
    """Hugging Face imagefolder metadata: one line per image, `file_name` relative to OUT."""
    ok = table.filter(_is_ok(table))
    keep = [c for c in ok.column_names if c not in ("image_path", "status", "error_code",
                                                       "error_message", "http_status")]
    ok = ok.select(["image_path", *keep]).rename_columns(["file_name", *keep])
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default).encode
    with atomic_file(Path(out_dir) / "metadata.jsonl") as f:
        # A batch at a time, so a big run never holds the whole text in memory.
        for batch in ok.to_batches(max_chunksize=10_000):
            lines = []
            for row in batch.to_pylist():
                try:
                    lines.append(encode(row))
                except ValueError:   # NaN or infinity, which JSON cannot say: null
                    lines.append(encode({k: None if isinstance(v, float) and not math.isfinite(v)
                                         else v for k, v in row.items()}))
            if lines:
                f.write(("\n".join(lines) + "\n").encode("utf-8"))


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
