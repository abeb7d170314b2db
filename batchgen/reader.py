"""Reading the prompt table (CSV, Parquet, JSONL) into a DataFrame, with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import UsageError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}


def read_table(path, encoding: Optional[str] = None):
    import pandas as pd

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}; "
            "batchgen reads .csv, .tsv, .parquet and .jsonl (or give a job file, .toml)")
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a file")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: the file is empty; it needs a header and at least one row")
    try:
        if kind in ("csv", "tsv"):
            df = pd.read_csv(
                path, sep="\t" if kind == "tsv" else ",", encoding=encoding or "utf-8-sig",
                # Only an empty cell is missing: a prompt "NA" or "null" is text.
                keep_default_na=False, na_values=[""])
        elif kind == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, lines=True, encoding=encoding or "utf-8", dtype=False)
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{path}: not {encoding or 'UTF-8'} text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8, or name its encoding with --encoding (e.g. --encoding cp1252 "
            "for Excel on Windows, --encoding latin-1)") from None
    except LookupError:
        raise UsageError(f"--encoding {encoding!r} is not an encoding Python knows") from None
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path}: the file is empty; it needs a header and at least one row") from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        what = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}[kind]
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot read it as {what}: {first_line}") from None
    except Exception as e:  # pyarrow raises its own types for corrupt files
        if type(e).__module__.startswith("pyarrow"):
            raise UsageError(f"{path}: cannot read it as Parquet (corrupt or not Parquet): {e}") from None
        raise
    if len(df) == 0:
        raise UsageError(f"{path}: no rows (only a header); add at least one prompt")
    df.columns = [str(c) for c in df.columns]
    return df
