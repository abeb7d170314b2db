"""Reading the prompt table (CSV, TSV, Parquet, JSON Lines) into an Arrow table, with clear errors.

pyarrow reads, not pandas: importing pandas is slow (see bench/README.md), and a run would pay
it before its first request. What a column holds (the same for every format, so results look alike):
- CSV/TSV: a column whose cells are all whole numbers is int64, all numbers float64, all
  true/false bool, anything else text (dates too); an empty cell is missing (null), while
  "NA" or "null" stay text. Duplicate or empty header names become `a.1`, `Unnamed: 2`, as pandas
  names them.
- Parquet: the file's own types; a pandas index stored as a column is dropped.
- JSON Lines: one object per line, JSON's own types; a key missing from a line is null, and a
  column mixing types (a number here, a string there) is read as text.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Optional

from batchgen.exceptions import UsageError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}
_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}


def check_encoding(encoding, what: str = "--encoding") -> None:
    """Raise UsageError unless `encoding` names a text encoding Python knows (`what`: where
    it was given)."""
    import codecs
    known = False
    if isinstance(encoding, str) and encoding.strip():
        try:
            known = codecs.lookup(encoding)._is_text_encoding
        except LookupError:
            pass
    if not known:
        raise UsageError(f"{what} {encoding!r} is not a text encoding Python knows; name the file's "
                         "encoding, e.g. cp1252 (Excel on Windows), latin-1 or utf-16 (or leave it out "
                         "for UTF-8)")


def read_table(path, encoding: Optional[str] = None):
    """The table at `path` as a pyarrow.Table with unique string column names, at least one row."""
    import pyarrow as pa

    if encoding is not None:
        check_encoding(encoding)
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}; "
            "batchgen reads .csv, .tsv, .parquet and .jsonl (or give a job file, .toml)")
    if regular_file(path).st_size == 0:
        raise UsageError(f"{path}: the file is empty; it needs a header and at least one row")
    try:
        if kind in ("csv", "tsv"):
            table = _read_csv(path, "\t" if kind == "tsv" else ",", encoding)
        elif kind == "parquet":
            table = _read_parquet(path)
        else:
            table = _read_jsonl(path, encoding)
    except UnicodeDecodeError as e:
        raise _not_this_encoding(path, encoding, e) from None
    except LookupError as e:     # checked above; a codec that fails to load
        raise UsageError(f"{path}: cannot read it with --encoding {encoding!r} ({e}); save it as "
                         "UTF-8, or name another encoding") from None
    except (pa.ArrowException, ValueError, OSError) as e:
        if kind in ("csv", "tsv") and "UTF8" in str(e):
            raise _not_this_encoding(path, encoding, _first_decode_error(path)) from None
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (corrupt, or not Parquet)" if kind == "parquet" else ""
        raise UsageError(f"{path}: cannot read it as {_FORMAT_NAMES[kind]}{hint}: {first_line}") from None
    if table.num_columns == 0:
        raise UsageError(f"{path}: the file is empty; it needs a header and at least one row")
    if table.num_rows == 0:
        raise UsageError(f"{path}: no rows (only a header); add at least one prompt")
    # Parsing takes about three times the table's size, which the Arrow allocator keeps for
    # its own later use; given back, the rest of the run (Python and numpy) can have it.
    pa.default_memory_pool().release_unused()
    return table.rename_columns(unique_names(table.column_names))


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def not_regular(mode: int) -> Optional[str]:
    """What a file of this stat mode is when it is not a regular file ("a FIFO (named pipe)"),
    else None."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


def regular_file(path) -> os.stat_result:
    """`path`'s stat when it is a regular file; otherwise UsageError saying what it is. Checked
    before anything is read: a FIFO would block the read, a device never end it."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror or e})") from None
    kind = not_regular(found.st_mode)
    if kind == "a folder":
        raise UsageError(f"{path}: is a folder, not a file")
    if kind:
        raise UsageError(f"{path}: is {kind}, not a regular file; save the table to a file and give its path")
    return found


def unique_names(names) -> list:
    """Header names as pandas makes them: an empty one `Unnamed: i`, a repeat `name.1`."""
    out: list = []
    seen: set = set()
    for i, name in enumerate(names):
        name = str(name) if name is not None and str(name) != "" else f"Unnamed: {i}"
        out.append(free_name(name, seen))
    return out


def free_name(name: str, taken: set) -> str:
    """`name`, or the first of `name.1`, `name.2`, ... not in `taken` (pandas' rule); taken."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}.{k}"
    taken.add(candidate)
    return candidate


def table_from(data, what: str):
    """A table in memory — a pandas DataFrame, a pyarrow Table, a list of dicts (one per row),
    or anything with the Arrow stream interface (polars) — as read_table gives a file: a
    pyarrow.Table with unique string column names and at least one row. `what` names it in
    errors. A DataFrame's index is dropped (as a Parquet file's stored index is); a column mixing
    types (a list of dicts, or a DataFrame's object column) is text, as in JSON Lines."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns"):
        table = _from_pandas(data)
    elif type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "to_frame"):
        name = data.name if isinstance(data.name, str) else "prompt"
        raise UsageError(f"{what} is one column (a pandas Series); give a DataFrame, e.g. "
                         f"series.to_frame({name!r}) (its column named as --prompt-column, default 'prompt')")
    elif isinstance(data, (list, tuple)):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise UsageError(f"{what}: item {i} is a {type(row).__name__}, not a dict; give one dict "
                                 "per row, e.g. [{\"prompt\": \"an otter\"}, ...]")
        table = _rows_table(data)
    elif hasattr(data, "__arrow_c_stream__"):
        try:
            table = pa.table(data)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise UsageError(f"{what} is a {type(data).__name__} that is not a table ({e}); give a path, "
                             "a pandas DataFrame, a pyarrow Table or a list of dicts") from None
    else:
        raise UsageError(f"{what} is a {type(data).__name__}; give a path (CSV, Parquet, JSONL or a job "
                         "file), a pandas DataFrame, a pyarrow Table or a list of dicts")
    if table.num_columns == 0:
        raise UsageError(f"{what} has no columns; it needs a prompt column and at least one row")
    if table.num_rows == 0:
        raise UsageError(f"{what} has no rows; add at least one prompt")
    return table.rename_columns(unique_names(table.column_names))


def _from_pandas(df):
    import pyarrow as pa
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        # A column pyarrow cannot type (mixed values): that column as text, the others as theirs.
        arrays = []
        for i in range(df.shape[1]):
            column = df.iloc[:, i]
            try:
                arrays.append(pa.array(column, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                arrays.append(_arrow_array([None if v is None or v != v else v for v in column.tolist()]))
        return pa.Table.from_arrays(arrays, names=[str(c) for c in df.columns])


# ---- the formats ------------------------------------------------------------------------

_TRUE, _FALSE = ["true", "True", "TRUE"], ["false", "False", "FALSE"]


def _read_csv(path: Path, delimiter: str, encoding: Optional[str]):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # pyarrow skips a UTF-8 byte-order mark itself; any other encoding is transcoded by Python.
    read = pcsv.ReadOptions(encoding=encoding or "utf8")
    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)

    def read_csv(as_text=()):
        convert = pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True,
                                      true_values=_TRUE, false_values=_FALSE,
                                      column_types={name: pa.string() for name in as_text})
        return pcsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)

    # pyarrow infers each column's type (in C++, in parallel); what it found beyond whole
    # numbers, numbers and true/false (dates, times, an all-empty column) is read again as text.
    table = read_csv()
    kept = (pa.int64(), pa.float64(), pa.bool_(), pa.string())
    as_text = {f.name for f in table.schema if f.type not in kept}
    return read_csv(as_text) if as_text else table


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pandas_meta = table.schema.pandas_metadata or {}
    index_columns = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
    return table.drop_columns([c for c in index_columns if c in table.column_names])


def _read_jsonl(path: Path, encoding: Optional[str]):
    with open(path, encoding=encoding or "utf-8-sig") as f:
        return _rows_table(_json_objects(f))


def _json_objects(lines):
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"line {number} is not a JSON object ({{\"prompt\": ...}})")
        yield doc


def _rows_table(docs):
    """Rows (dicts) as a table: a key missing from a row is null, a column mixing types text."""
    import pyarrow as pa

    columns: dict = {}
    rows = 0
    for doc in docs:
        for key, value in doc.items():
            values = columns.get(key)
            if values is None:
                values = columns[key] = [None] * rows
            values.append(value)
        rows += 1
        for values in columns.values():
            if len(values) < rows:
                values.append(None)
    return pa.table({str(key): _arrow_array(values) for key, values in columns.items()})


def _arrow_array(values: list):
    """Python values as an Arrow array; values of mixed types (JSON allows it) as text."""
    import pyarrow as pa
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v)
                         for v in values], type=pa.string())


# ---- encoding errors --------------------------------------------------------------------

def _first_decode_error(path: Path) -> UnicodeDecodeError:
    """Where a file stops being UTF-8 (pyarrow's own error does not say)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    return UnicodeDecodeError("utf-8", data, 0, 1, "invalid data")


def _not_this_encoding(path: Path, encoding: Optional[str], e: UnicodeDecodeError) -> UsageError:
    return UsageError(
        f"{path}: not {encoding or 'UTF-8'} text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
        "save it as UTF-8, or name its encoding with --encoding (e.g. --encoding cp1252 "
        "for Excel on Windows, --encoding latin-1)")
