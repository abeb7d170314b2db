"""`batchgen export`: a run's images and result rows as a dataset where users keep them —
WebDataset tar shards or Parquet files holding the image bytes — in a local folder or at any
fsspec URL (s3://, gs://, hf://, ...).

The run is read through the output folder's readers (job.json, results.parquet), and every
image is checked against the size and sha256 its row records before it goes out. A shard
appears whole or not at all: a local one is written under a temporary name and renamed, a
remote one is uploaded from a local temporary file in one put (S3 shows a multipart upload only
once it is complete). Exporting again over the same DEST replaces it: the new shards first, then
the dataset card and the manifest, then the shards the new export no longer has are removed.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Iterator, Mapping, Optional

from batchgen._version import __version__
from batchgen.exceptions import BatchgenError, ExportFailed, UsageError
from batchgen.keeping.outdir import IMAGES_DIR, TMP_PREFIX, OutputFolder, read_job, safe_image_path, write_atomic
from batchgen.planning.reader import free_name

FORMATS = ("webdataset", "parquet")
DEFAULT_SHARD_SIZE = 2000
# A Parquet row group holds at most 100 images (what Hugging Face writes for image datasets)
# and ends once it holds 32 MB of them, so a reader that streams holds one small group at a
# time, and so does the writer: pyarrow needs about three times a group's size to write it.
ROW_GROUP_IMAGES = 100
ROW_GROUP_BYTES = 32 << 20
MANIFEST_FILE = "batchgen-export.json"
CARD_FILE = "README.md"
# The shards sit in a folder of their own (Hugging Face's layout), so a reader given the folder
# (pandas, pyarrow, DuckDB) finds shards only, not the card.
DATA_DIR = "data"
KEY_COLUMN, IMAGE_COLUMN = "key", "image"
_SHARD_NAME = {"webdataset": "shard-{:05d}.tar", "parquet": "part-{:05d}.parquet"}
_SHARD = re.compile(r"shard-\d{5,}\.tar|part-\d{5,}\.parquet")
_SAFE_KEY = re.compile(r"[0-9A-Za-z_-]+")       # WebDataset splits a name at its first dot
_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")


@dataclass
class ExportSummary:
    dest: str
    format: str
    images: int                 # samples with an image
    error_rows: int             # rows of failed tasks included (Parquet, include_errors)
    shards: list = field(default_factory=list)     # file names under dest, in order
    removed: list = field(default_factory=list)    # shards of an earlier export, removed


def export(out, format: str, to, *, shard_size: Optional[int] = None,
           include_errors: bool = False, storage_options: Optional[Mapping] = None) -> ExportSummary:
    """Export OUT's ok images (and with `include_errors`, Parquet only, its error rows) to `to`,
    a folder or an fsspec URL, as `format` ('webdataset' or 'parquet') in shards of at most
    `shard_size` samples, with a dataset card (README.md) and a manifest. `storage_options` go to
    fsspec (credentials and endpoints otherwise come from the environment, e.g. AWS_ENDPOINT_URL).

    Raises UsageError for bad arguments, a DEST that is not an export, or a run that cannot be
    exported (nothing written; an image found changed stops the export, and the shards written
    before it stay, whole, until an export replaces them), and ExportFailed when DEST could not
    be written (run it again to finish)."""
    from batchgen.keeping.results import read_results_table
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if format not in FORMATS:
        raise UsageError(f"format {format!r} is unknown; export as one of {', '.join(FORMATS)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"the shard size must be a whole number ≥ 1 (e.g. {DEFAULT_SHARD_SIZE}), not {shard_size!r}")
    if include_errors and format != "parquet":
        raise UsageError("error rows have no image, so only the parquet format can include them; "
                         "leave out the error rows, or export as parquet")
    out = Path(out)
    job = read_job(out)
    rows = exported_rows(read_results_table(out), include_errors)
    dest = destination(to, out, storage_options or {})
    dest.check_ours()
    summary = ExportSummary(dest.where, format, 0, 0)
    write = _write_webdataset if format == "webdataset" else _write_parquet
    for number, start in enumerate(range(0, rows.num_rows, shard_size)):
        name = f"{DATA_DIR}/" + _SHARD_NAME[format].format(number)
        chunk = rows.slice(start, shard_size)
        with dest.writer(name) as f:
            images, errors = write(f, out, chunk, start)
        summary.images += images
        summary.error_rows += errors
        summary.shards.append(name)
    columns = [(f.name, str(f.type)) for f in _parquet_schema(rows.schema)] if format == "parquet" \
        else [(f.name, str(f.type)) for f in rows.schema]
    dest.put(CARD_FILE, dataset_card(job, out.resolve().name, summary, rows, shard_size, columns).encode("utf-8"))
    # Written last of what this export adds: a reader that trusts it sees only whole shards.
    dest.put(MANIFEST_FILE, json.dumps(
        {"batchgen": __version__, "format": format, "source": out.resolve().name,
         "images": summary.images, "error_rows": summary.error_rows, "shard_size": shard_size,
         "shards": summary.shards}, indent=1).encode("utf-8"))
    summary.removed = dest.remove_stale(set(summary.shards))
    return summary


# ---- what goes out ----------------------------------------------------------------------

def exported_rows(table, include_errors: bool):
    """The results rows to export, in the results' order: rows with an image (status ok), and
    with `include_errors` the rest too. Input columns named `key` or `image` are renamed
    `input_key`, `input_image` (as results.parquet renames its own), so the export's stay fixed."""
    import pyarrow.compute as pc
    if not include_errors:
        table = table.filter(pc.fill_null(pc.and_(pc.equal(table["status"], "ok"),
                                                  pc.is_valid(table["image_path"])), False))
    taken = set(table.column_names) | {KEY_COLUMN, IMAGE_COLUMN}
    names = [free_name(f"input_{n}", taken) if n in (KEY_COLUMN, IMAGE_COLUMN) else n
             for n in table.column_names]
    return table.rename_columns(names).replace_schema_metadata(None)


@dataclass
class Sample:
    key: str
    row: dict                   # the results row, JSON-ready
    image: Optional[bytes]      # None for an error row
    ext: Optional[str]          # png, jpg, webp, ... from the image's file name


def samples(out: Path, chunk, first: int) -> Iterator[Sample]:
    """The rows of `chunk` (starting at row `first` of the export) with their images read and
    checked against the size and sha256 each row records."""
    for i, row in enumerate(chunk.to_pylist()):
        row = {k: _json_ready(v) for k, v in row.items()}
        if row.get("status") == "ok" and row.get("image_path") is not None:
            image, ext = _read_image(out, row)
        else:
            image, ext = None, None
        yield Sample(sample_key(row, first + i), row, image, ext)


def sample_key(row: dict, position: int) -> str:
    """The task id and image index (`<task_id>_<k>`; a failed task's row: its task id); the
    row's position when its id is not a plain name (a WebDataset key may not hold a dot)."""
    task_id, index = row.get("task_id"), row.get("image_index")
    if isinstance(task_id, str) and _SAFE_KEY.fullmatch(task_id):
        return task_id if index is None else f"{task_id}_{index}"
    return f"row{position:09d}"


def _read_image(out: Path, row: dict) -> tuple[bytes, str]:
    rel = safe_image_path(row.get("image_path"))
    if rel is None or not rel.startswith(IMAGES_DIR + "/"):
        raise UsageError(f"{out}/results.parquet names the image {row.get('image_path')!r}, which is not under "
                         f"{out}/{IMAGES_DIR}/; run `batchgen run` again on {out} to rebuild its results")
    path = out / rel
    try:
        data = path.read_bytes()
    except OSError as e:
        data, problem = None, f"cannot be read ({e.strerror or e})"
    if data is not None:
        expected_size, expected_hash = row.get("bytes"), row.get("sha256")
        problem = None
        if expected_size is not None and len(data) != expected_size:
            problem = f"holds {len(data):,} bytes where results.parquet records {expected_size:,}"
        elif expected_hash is not None and sha256(data).hexdigest() != expected_hash:
            problem = "does not match the sha256 results.parquet records"
    if problem:
        raise UsageError(f"{path} {problem}: the image changed or was lost since the run. Run the job "
                         f"again on {out} (`batchgen run ... --out {out}` makes it again), then export")
    ext = path.suffix.lower().lstrip(".")
    if ext not in _EXTENSIONS:
        from batchgen.keeping.store import image_format
        ext = image_format(data) or "bin"
    return data, ext


def _json_ready(value):
    """A cell as JSON can hold it: NaN and infinities are null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the formats ------------------------------------------------------------------------

def _write_webdataset(f, out: Path, chunk, first: int) -> tuple[int, int]:
    """One tar shard: `KEY.<ext>` (the image) and `KEY.json` (its results row) per sample."""
    from batchgen.keeping.results import _json_default
    images = 0
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples(out, chunk, first):
            mtime = sample.row.get("created") if isinstance(sample.row.get("created"), int) else 0
            meta = json.dumps(sample.row, ensure_ascii=False, allow_nan=False,
                              default=_json_default).encode("utf-8")
            for name, data in ((f"{sample.key}.{sample.ext}", sample.image), (f"{sample.key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), max(0, mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
            images += 1
    return images, 0


def _parquet_schema(results_schema):
    import pyarrow as pa
    return pa.schema([pa.field(KEY_COLUMN, pa.string()), pa.field(IMAGE_COLUMN, pa.binary()), *results_schema])


def _write_parquet(f, out: Path, chunk, first: int) -> tuple[int, int]:
    """One Parquet file: `key`, `image` (the bytes; null on an error row), then the results
    columns, in row groups of ROW_GROUP_IMAGES rows or ROW_GROUP_BYTES of images. The images are stored as they are: no
    compression (they are compressed already), no statistics (min/max of images is noise) and
    no dictionary (every image differs; trying one held each row group's images several times
    over in memory; see bench/README.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchgen.keeping.results import with_pandas_types
    schema = with_pandas_types(_parquet_schema(chunk.schema).empty_table()).schema
    others = [n for n in schema.names if n != IMAGE_COLUMN]
    images = errors = 0
    with pq.ParquetWriter(f, schema, compression=dict.fromkeys(others, "zstd") | {IMAGE_COLUMN: "none"},
                          write_statistics=others, use_dictionary=others) as writer:
        start, keys, data, size = 0, [], [], 0

        def flush():
            table = pa.Table.from_arrays([pa.array(keys, pa.string()), pa.array(data, pa.binary()),
                                          *chunk.slice(start, len(keys)).columns], schema=schema)
            writer.write_table(table, row_group_size=len(keys))

        for sample in samples(out, chunk, first):
            keys.append(sample.key)
            data.append(sample.image)
            size += len(sample.image or b"")
            images, errors = (images + 1, errors) if sample.image is not None else (images, errors + 1)
            if len(keys) == ROW_GROUP_IMAGES or size >= ROW_GROUP_BYTES:
                flush()
                start, keys, data, size = start + len(keys), [], [], 0
        if keys:
            flush()
    return images, errors


# ---- the dataset card -------------------------------------------------------------------

def dataset_card(job: dict, name: str, summary: ExportSummary, rows, shard_size: int, columns: list) -> str:
    """README.md for the export: what made it (the job), what is in it (counts, files,
    columns) and how to load it. Hugging Face reads the YAML header when DEST is a dataset repo."""
    settings = job.get("job") if isinstance(job.get("job"), dict) else {}
    provenance = job.get("provenance") if isinstance(job.get("provenance"), dict) else {}
    pattern = f"{DATA_DIR}/*.tar" if summary.format == "webdataset" else f"{DATA_DIR}/*.parquet"
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
             f"    path: \"{pattern}\"", "tags:", "- batchgen", "- text-to-image", "- synthetic", "---", "",
             f"# {_md(name)}", "",
             f"Images made with batchgen {__version__} through an "
             f"OpenAI-compatible Images API, exported from its output folder `{_md(name)}`.", ""]
    if provenance.get("simulated"):
        lines += ["**Simulated**: these are placeholder images from batchgen's built-in simulator, "
                  "not a real model's.", ""]
    lines += ["## Contents", "",
              f"- {summary.images:,} image(s)" + (f" and {summary.error_rows:,} row(s) of failed tasks (no image)"
                                                 if summary.error_rows else ""),
              f"- {len(summary.shards)} {summary.format} shard(s) of at most {shard_size:,} samples: "
              + (", ".join(f"`{s}`" for s in summary.shards[:5]) + (", …" if len(summary.shards) > 5 else "")
                 if summary.shards else "none")]
    if "sweep_point" in rows.column_names and rows.num_rows:
        counts: dict = {}
        for point in rows.column("sweep_point").to_pylist():
            counts[point] = counts.get(point, 0) + 1
        lines += ["", "| sweep point | rows |", "|---|---:|"]
        lines += [f"| {_md(p or 'all')} | {c:,} |" for p, c in counts.items()]
    lines += ["", "## The job", ""]
    sweep = settings.get("sweep") or []
    described = [("prompt column", settings.get("prompt_column")),
                 ("defaults", ", ".join(f"{k}={v}" for k, v in (settings.get("defaults") or {}).items())),
                 ("sweep", "; ".join(f"{a[0]} = {', '.join(map(str, a[1]))}" for a in sweep
                                     if isinstance(a, (list, tuple)) and len(a) == 2 and isinstance(a[1], list))),
                 ("provider", provenance.get("provider") or settings.get("provider")),
                 ("endpoint", provenance.get("endpoint")), ("mode", provenance.get("mode"))]
    lines += [f"- {label}: `{_md(value)}`" for label, value in described if value]
    if summary.format == "webdataset":
        lines += ["", "## Files", "",
                  "Each sample is `KEY.<png|jpg|webp>` (the image as the API made it) and `KEY.json` (its "
                  "row of results.parquet: prompt, revised prompt, parameters, sweep point, input "
                  "columns); KEY is the task id and the image's index, `<task_id>_<k>`.", "",
                  "```python", "import webdataset as wds",
                  f"ds = wds.WebDataset(\"{_md(summary.dest)}/{_brace(summary.shards)}\").decode(\"pil\")", "```"]
    else:
        lines += ["", "## Files", "",
                  f"`key` (`<task_id>_<k>`) and `image` (the image's bytes as the API made it; row groups "
                  f"of at most {ROW_GROUP_IMAGES} rows or {ROW_GROUP_BYTES >> 20} MB of images) beside the "
                  "columns of results.parquet.", "",
                  "```python", "import pandas as pd", f"df = pd.read_parquet(\"{_md(summary.dest)}/{DATA_DIR}\")",
                  "from datasets import load_dataset, Image",
                  f"ds = load_dataset(\"parquet\", data_files=\"{_md(summary.dest)}/{DATA_DIR}/*.parquet\", split=\"train\")"
                  ".cast_column(\"image\", Image())", "```"]
    lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
    lines += [f"| {_md(n)} | {_md(t)} |" for n, t in columns]
    return "\n".join(lines) + "\n"


def _md(value) -> str:
    """Text for a Markdown table cell or code span: one line, no pipe or backtick to break it."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")


def _brace(shards: list) -> str:
    """The shards as one WebDataset brace pattern: data/shard-{00000..00003}.tar"""
    names = [s.rsplit("/", 1)[-1] for s in shards] or ["shard-00000.tar"]
    if len(names) == 1:
        return f"{DATA_DIR}/{names[0]}"
    first, last = names[0][len("shard-"):-len(".tar")], names[-1][len("shard-"):-len(".tar")]
    return f"{DATA_DIR}/shard-{{{first}..{last}}}.tar"


# ---- where it goes ----------------------------------------------------------------------

def destination(to, out: Path, storage_options: Mapping):
    """A local folder (a path, or a file:// URL) or an fsspec URL."""
    text = os.fspath(to)
    if not isinstance(text, str) or not text.strip():
        raise UsageError("the destination is empty; give a folder or a URL (e.g. s3://bucket/prefix)")
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        return RemoteDestination(text, storage_options)
    path = Path(text)
    if path.resolve() == out.resolve() or path.resolve().is_relative_to(out.resolve() / IMAGES_DIR):
        raise UsageError(f"{text} is the run's own folder; export to another folder (e.g. {out}-export)")
    return FolderDestination(path)


def _ours(names: list, shards: list, where: str) -> None:
    """Refuse a DEST that holds anything an export did not write (nothing there is removed):
    `names` are DEST's, `shards` those of its data folder."""
    has_manifest = MANIFEST_FILE in names
    foreign = sorted([n for n in names if not (n in (MANIFEST_FILE, DATA_DIR) or n.startswith(TMP_PREFIX)
                                               or (has_manifest and n == CARD_FILE))]
                     + [f"{DATA_DIR}/{n}" for n in shards if not (_SHARD.fullmatch(n) or n.startswith(TMP_PREFIX))])
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise UsageError(f"{where} holds files that are not a batchgen export ({shown}); export to an "
                         "empty or new folder (or prefix), or to an earlier export of batchgen, which it replaces")


class FolderDestination:
    def __init__(self, path: Path):
        self.path, self.where = path, str(path)

    @contextlib.contextmanager
    def _failing(self):
        try:
            yield
        except OSError as e:
            raise ExportFailed(f"cannot write {self.where}: {e.strerror or e}; what was written is whole: "
                               "free the space (or fix the folder), then run the same export again") from None

    def check_ours(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.where} is a file; export to a folder")
        data = self.path / DATA_DIR
        if data.exists() and not data.is_dir():
            raise UsageError(f"{data} is a file; export to an empty or new folder")
        _ours(_listing(self.path), _listing(data), self.where)
        with self._failing():
            data.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def writer(self, name: str):
        from batchgen.keeping.outdir import atomic_file
        with self._failing(), atomic_file(self.path / name) as f:
            yield f

    def put(self, name: str, data: bytes) -> None:
        with self._failing():
            write_atomic(self.path / name, data)

    def remove_stale(self, keep: set) -> list:
        with self._failing():
            # What a killed export left half-written (its writer gone) goes too.
            OutputFolder(self.path / DATA_DIR).remove_temporaries()
            stale = sorted(f"{DATA_DIR}/{n}" for n in _listing(self.path / DATA_DIR) if _SHARD.fullmatch(n))
            for name in set(stale) - keep:
                (self.path / name).unlink(missing_ok=True)
        return sorted(set(stale) - keep)


def _listing(folder: Path) -> list:
    return [e.name for e in os.scandir(folder)] if folder.is_dir() else []


class RemoteDestination:
    """An fsspec filesystem. Each object is put once, whole (from a local temporary file)."""

    def __init__(self, url: str, storage_options: Mapping):
        self.where = url
        try:
            import fsspec
        except ImportError:
            raise UsageError(f"{url}: exporting to a URL needs fsspec and the filesystem's package: "
                             "pip install 'batchgen[s3]' for s3:// (gcsfs for gs://, huggingface_hub for hf://)") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options))
        except (ImportError, ValueError) as e:       # no package for the protocol, or an unknown one
            raise UsageError(f"{url}: {e}; pip install 'batchgen[s3]' for s3://") from None
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextlib.contextmanager
    def _failing(self, what: str):
        try:
            yield
        except BatchgenError:
            raise
        except Exception as e:   # the filesystem packages raise their own (botocore's, ...)
            raise ExportFailed(f"{what} {self.where} failed: {type(e).__name__}: {e}; check the URL, the "
                               "credentials and the endpoint in the environment (AWS_ENDPOINT_URL, ...), "
                               "then run the same export again") from None

    def _names(self, folder: str) -> list:
        self.fs.invalidate_cache(folder)
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    def check_ours(self) -> None:
        with self._failing("listing"):
            names = self._names(self.root)
            shards = self._names(self._path(DATA_DIR)) if DATA_DIR in names else []
        _ours(names, shards, self.where)

    @contextlib.contextmanager
    def writer(self, name: str):
        fd, tmp = tempfile.mkstemp(prefix="batchgen-export-", suffix="-" + name.rsplit("/", 1)[-1])
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            with self._failing(f"uploading {name} to"):
                self.fs.put_file(tmp, self._path(name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def put(self, name: str, data: bytes) -> None:
        with self._failing(f"uploading {name} to"):
            self.fs.pipe_file(self._path(name), data)

    def remove_stale(self, keep: set) -> list:
        with self._failing("cleaning"):
            stale = sorted(f"{DATA_DIR}/{n}" for n in self._names(self._path(DATA_DIR))
                           if _SHARD.fullmatch(n) and f"{DATA_DIR}/{n}" not in keep)
            for name in stale:
                self.fs.rm_file(self._path(name))
        return stale
