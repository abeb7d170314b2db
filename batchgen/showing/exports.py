"""`batchgen export`: a run's images and result rows as a dataset where users keep them —
WebDataset tar shards or Parquet files holding the image bytes — in a local folder or at any
fsspec URL (s3://, gs://, hf://, ...).

The run is read through the output folder's readers (job.json, results.parquet), and every
image is checked against the size and sha256 its row records before it goes out. A shard
appears whole or not at all: a local one is written under a temporary name and renamed, a
remote one is uploaded from a local temporary file in one put (S3 shows a multipart upload only
once it is complete). Exporting again over the same DEST replaces it: the new shards first, then
the dataset card and the manifest, then the shards the new export no longer has are removed.

Each format is one ShardWriter class, registered in WRITERS: its name, its shards' names, whether
it can hold error rows, how it writes a shard, and what the dataset card says of it.
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
from typing import IO, TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Optional, Union

from batchgen._version import __version__
from batchgen.exceptions import BatchgenError, ExportFailed, UsageError
from batchgen.keeping.outdir import IMAGES_DIR, TMP_PREFIX, OutputFolder, read_job, safe_image_path, write_atomic
from batchgen.planning.reader import free_name

if TYPE_CHECKING:
    import pyarrow as pa

# The formats are the writers' registry, WRITERS, below (FORMATS: their names).
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
# Each image's media type, beside it in every format (a GIF or an SVG is not decoded as a PNG is).
CONTENT_TYPE_COLUMN = "content_type"
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                 "gif": "image/gif", "svg": "image/svg+xml"}
_SAFE_KEY = re.compile(r"[0-9A-Za-z_-]+")       # WebDataset splits a name at its first dot
_EXTENSIONS = tuple(CONTENT_TYPES)

PathLike = Union[str, os.PathLike[str]]


@dataclass
class ExportSummary:
    dest: str
    format: str
    images: int                 # samples with an image
    error_rows: int             # rows of failed tasks included (Parquet, include_errors)
    shards: list[str] = field(default_factory=list)     # file names under dest, in order
    removed: list[str] = field(default_factory=list)    # shards of an earlier export, removed


def export(out: PathLike, format: str, to: PathLike, *, shard_size: Optional[int] = None,
           include_errors: bool = False, storage_options: Optional[Mapping[str, Any]] = None) -> ExportSummary:
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
    writer = WRITERS.get(format) if isinstance(format, str) else None
    if writer is None:
        raise UsageError(f"format {format!r} is unknown; export as one of {', '.join(WRITERS)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"the shard size must be a whole number ≥ 1 (e.g. {DEFAULT_SHARD_SIZE}), not {shard_size!r}")
    if include_errors and not writer.includes_errors:
        able = " or ".join(name for name, w in WRITERS.items() if w.includes_errors)
        raise UsageError(f"error rows have no image, so only the {able} format can include them; "
                         f"leave out the error rows, or export as {able}")
    out = Path(out)
    job = read_job(out)
    rows = exported_rows(read_results_table(out), include_errors)
    dest = destination(to, out, storage_options or {})
    dest.check_ours()
    summary = ExportSummary(dest.where, writer.name, 0, 0)
    for number, start in enumerate(range(0, rows.num_rows, shard_size)):
        name = f"{DATA_DIR}/{writer.shard_name(number)}"
        chunk = rows.slice(start, shard_size)
        with dest.writer(name) as f:
            images, errors = writer.write(f, out, chunk, start)
        summary.images += images
        summary.error_rows += errors
        summary.shards.append(name)
    card = dataset_card(job, out.resolve().name, summary, rows, shard_size, writer.columns(rows.schema), writer)
    dest.put(CARD_FILE, card.encode("utf-8"))
    # Written last of what this export adds: a reader that trusts it sees only whole shards.
    dest.put(MANIFEST_FILE, json.dumps(
        {"batchgen": __version__, "format": writer.name, "source": out.resolve().name,
         "images": summary.images, "error_rows": summary.error_rows, "shard_size": shard_size,
         "shards": summary.shards}, indent=1).encode("utf-8"))
    summary.removed = dest.remove_stale(set(summary.shards))
    return summary


# ---- what goes out ----------------------------------------------------------------------

def exported_rows(table: pa.Table, include_errors: bool) -> pa.Table:
    """The results rows to export, in the results' order: rows with an image (status ok), and
    with `include_errors` the rest too. Input columns named `key` or `image` are renamed
    `input_key`, `input_image` (as results.parquet renames its own), so the export's stay fixed.
    A last column, `content_type`, is each image's media type from its file's extension (null
    on an error row); an input column of that name is renamed likewise."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if not include_errors:
        table = table.filter(pc.fill_null(pc.and_(pc.equal(table["status"], "ok"),
                                                  pc.is_valid(table["image_path"])), False))
    fixed = (KEY_COLUMN, IMAGE_COLUMN, CONTENT_TYPE_COLUMN)
    taken = set(table.column_names) | set(fixed)
    names = [free_name(f"input_{n}", taken) if n in fixed else n for n in table.column_names]
    table = table.rename_columns(names).replace_schema_metadata(None)
    paths = table["image_path"] if "image_path" in table.column_names else pa.nulls(table.num_rows, pa.string())
    ext = pc.utf8_lower(pc.struct_field(pc.extract_regex(paths, r"\.(?P<ext>[A-Za-z0-9]+)$"), [0]))
    types = pa.array(list(CONTENT_TYPES.values()), pa.string()).take(
        pc.index_in(ext, value_set=pa.array(list(CONTENT_TYPES), pa.string())))
    return table.append_column(CONTENT_TYPE_COLUMN, types)


@dataclass
class Sample:
    key: str
    row: dict[str, Any]         # the results row, JSON-ready
    image: Optional[bytes]      # None for an error row
    ext: Optional[str]          # png, jpg, webp, ... from the image's file name


def samples(out: Path, chunk: pa.Table, first: int) -> Iterator[Sample]:
    """The rows of `chunk` (starting at row `first` of the export) with their images read and
    checked against the size and sha256 each row records."""
    for i, row in enumerate(chunk.to_pylist()):
        row = {k: _json_ready(v) for k, v in row.items()}
        image: Optional[bytes]
        ext: Optional[str]
        if row.get("status") == "ok" and row.get("image_path") is not None:
            image, ext = _read_image(out, row)
        else:
            image, ext = None, None
        yield Sample(sample_key(row, first + i), row, image, ext)


def sample_key(row: Mapping[str, Any], position: int) -> str:
    """The task id and image index (`<task_id>_<k>`; a failed task's row: its task id); the
    row's position when its id is not a plain name (a WebDataset key may not hold a dot)."""
    task_id, index = row.get("task_id"), row.get("image_index")
    if isinstance(task_id, str) and _SAFE_KEY.fullmatch(task_id):
        return task_id if index is None else f"{task_id}_{index}"
    return f"row{position:09d}"


def _read_image(out: Path, row: dict[str, Any]) -> tuple[bytes, str]:
    rel = safe_image_path(row.get("image_path"))
    if rel is None or not rel.startswith(IMAGES_DIR + "/"):
        raise UsageError(f"{out}/results.parquet names the image {row.get('image_path')!r}, which is not under "
                         f"{out}/{IMAGES_DIR}/; run `batchgen run` again on {out} to rebuild its results")
    path = out / rel
    problem: Optional[str] = None
    try:
        data = path.read_bytes()
    except OSError as e:
        data, problem = b"", f"cannot be read ({e.strerror or e})"
    else:
        expected_size, expected_hash = row.get("bytes"), row.get("sha256")
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


def _json_ready(value: Any) -> Any:
    """A cell as JSON can hold it: NaN and infinities are null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the formats ------------------------------------------------------------------------
# One class per format, everything that differs between formats in it; WRITERS registers them.
# A new format is a new class in WRITERS: the shard names an export recognises as its own, the
# --format choices, the manifest's columns and the dataset card all come from there.

class ShardWriter:
    """An export format. Its shards are `<stem>-<5+ digits>.<extension>` in DATA_DIR."""
    name: ClassVar[str]             # what --format calls it
    stem: ClassVar[str]             # of its shards' names
    extension: ClassVar[str]        # of its shards' names, without the dot
    includes_errors: ClassVar[bool] = False     # can it hold error rows (no image)?

    @classmethod
    def shard_name(cls, number: int) -> str:
        return f"{cls.stem}-{number:05d}.{cls.extension}"

    @classmethod
    def shard_pattern(cls) -> str:
        """A regular expression its shards' names (and no other) match in full."""
        return rf"{re.escape(cls.stem)}-\d{{5,}}\.{re.escape(cls.extension)}"

    @classmethod
    def data_files(cls) -> str:
        """Its shards as a glob under DEST."""
        return f"{DATA_DIR}/*.{cls.extension}"

    @classmethod
    def write(cls, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
        """One shard to `f`, of the rows of `chunk` (row `first` of the export onwards; see
        samples): returns the images and the error rows it holds."""
        raise NotImplementedError

    @classmethod
    def columns(cls, rows_schema: pa.Schema) -> list[tuple[str, str]]:
        """The columns (name, type) the dataset card lists, given the exported rows' schema."""
        return [(f.name, str(f.type)) for f in rows_schema]

    @classmethod
    def card_files(cls, summary: ExportSummary) -> str:
        """The dataset card's paragraph on the files."""
        raise NotImplementedError

    @classmethod
    def card_code(cls, summary: ExportSummary) -> list[str]:
        """The dataset card's lines of Python that load the export."""
        raise NotImplementedError


class WebDatasetWriter(ShardWriter):
    """Tar shards: `KEY.<ext>` (the image) and `KEY.json` (its results row) per sample."""
    name, stem, extension = "webdataset", "shard", "tar"

    @classmethod
    def write(cls, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
        from batchgen.keeping.results import _json_default
        images = 0
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples(out, chunk, first):
                # Without include_errors (which this format refuses) every row has its image.
                assert sample.image is not None
                created = sample.row.get("created")
                mtime = created if isinstance(created, int) else 0
                meta = json.dumps(sample.row, ensure_ascii=False, allow_nan=False,
                                  default=_json_default).encode("utf-8")
                for name, data in ((f"{sample.key}.{sample.ext}", sample.image), (f"{sample.key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), max(0, mtime), 0o644
                    tar.addfile(info, io.BytesIO(data))
                images += 1
        return images, 0

    @classmethod
    def card_files(cls, summary: ExportSummary) -> str:
        return ("Each sample is `KEY.<png|jpg|webp|gif|svg>` (the image as the API made it) and `KEY.json` "
                "(its row of results.parquet: prompt, revised prompt, parameters, sweep point, input "
                "columns, and the image's `content_type`); KEY is the task id and the image's index, "
                "`<task_id>_<k>`.")

    @classmethod
    def card_code(cls, summary: ExportSummary) -> list[str]:
        return ["import webdataset as wds",
                f"ds = wds.WebDataset(\"{_md(summary.dest)}/{cls.brace(summary.shards)}\").decode(\"pil\")"]

    @classmethod
    def brace(cls, shards: list[str]) -> str:
        """The shards as one WebDataset brace pattern: data/shard-{00000..00003}.tar"""
        names = [s.rsplit("/", 1)[-1] for s in shards] or [cls.shard_name(0)]
        if len(names) == 1:
            return f"{DATA_DIR}/{names[0]}"
        prefix, suffix = f"{cls.stem}-", f".{cls.extension}"
        first, last = names[0][len(prefix):-len(suffix)], names[-1][len(prefix):-len(suffix)]
        return f"{DATA_DIR}/{prefix}{{{first}..{last}}}{suffix}"


class ParquetWriter(ShardWriter):
    """Parquet files: `key`, `image` (the bytes; null on an error row), then the results columns."""
    name, stem, extension = "parquet", "part", "parquet"
    includes_errors = True

    @classmethod
    def schema(cls, rows_schema: pa.Schema) -> pa.Schema:
        import pyarrow as pa
        return pa.schema([pa.field(KEY_COLUMN, pa.string()), pa.field(IMAGE_COLUMN, pa.binary()), *rows_schema])

    @classmethod
    def columns(cls, rows_schema: pa.Schema) -> list[tuple[str, str]]:
        return super().columns(cls.schema(rows_schema))

    @classmethod
    def write(cls, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
        """One Parquet file in row groups of ROW_GROUP_IMAGES rows or ROW_GROUP_BYTES of images.
        The images are stored as they are: no compression (they are compressed already), no
        statistics (min/max of images is noise) and no dictionary (every image differs; trying one
        held each row group's images several times over in memory; see bench/README.md)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from batchgen.keeping.results import with_pandas_types
        schema = with_pandas_types(cls.schema(chunk.schema).empty_table()).schema
        others = [n for n in schema.names if n != IMAGE_COLUMN]
        images = errors = 0
        with pq.ParquetWriter(f, schema, compression=dict.fromkeys(others, "zstd") | {IMAGE_COLUMN: "none"},
                              write_statistics=others, use_dictionary=others) as writer:
            start, size = 0, 0
            keys: list[str] = []
            data: list[Optional[bytes]] = []

            def flush() -> None:
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

    @classmethod
    def card_files(cls, summary: ExportSummary) -> str:
        return (f"`key` (`<task_id>_<k>`) and `image` (the image's bytes as the API made it; row groups "
                f"of at most {ROW_GROUP_IMAGES} rows or {ROW_GROUP_BYTES >> 20} MB of images) beside the "
                "columns of results.parquet, then `content_type` (image/png, image/gif, image/svg+xml, "
                "...: an SVG is text, which `datasets`' Image() does not decode).")

    @classmethod
    def card_code(cls, summary: ExportSummary) -> list[str]:
        where = _md(summary.dest)
        return ["import pandas as pd", f"df = pd.read_parquet(\"{where}/{DATA_DIR}\")",
                "from datasets import load_dataset, Image",
                f"ds = load_dataset(\"parquet\", data_files=\"{where}/{cls.data_files()}\", split=\"train\")"
                ".cast_column(\"image\", Image())"]


WRITERS: dict[str, type[ShardWriter]] = {cls.name: cls for cls in (WebDatasetWriter, ParquetWriter)}
FORMATS = tuple(WRITERS)


def _is_shard(name: str) -> bool:
    """Is `name` (in DATA_DIR) a shard of some format's, one an export wrote and may replace?"""
    return re.fullmatch("|".join(w.shard_pattern() for w in WRITERS.values()), name) is not None


# ---- the dataset card -------------------------------------------------------------------

def dataset_card(job: Mapping[str, Any], name: str, summary: ExportSummary, rows: pa.Table, shard_size: int,
                 columns: list[tuple[str, str]], writer: type[ShardWriter]) -> str:
    """README.md for the export: what made it (the job), what is in it (counts, files,
    columns) and how to load it. Hugging Face reads the YAML header when DEST is a dataset repo."""
    settings, provenance = _mapping(job.get("job")), _mapping(job.get("provenance"))
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
             f"    path: \"{writer.data_files()}\"", "tags:", "- batchgen", "- text-to-image", "- synthetic", "---", "",
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
        counts: dict[Any, int] = {}
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
    lines += ["", "## Files", "", writer.card_files(summary), "", "```python", *writer.card_code(summary), "```"]
    lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
    lines += [f"| {_md(n)} | {_md(t)} |" for n, t in columns]
    return "\n".join(lines) + "\n"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _md(value: Any) -> str:
    """Text for a Markdown table cell or code span: one line, no pipe or backtick to break it."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")


# ---- where it goes ----------------------------------------------------------------------

def destination(to: PathLike, out: Path, storage_options: Mapping[str, Any]) -> Destination:
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


def _ours(names: list[str], shards: list[str], where: str) -> None:
    """Refuse a DEST that holds anything an export did not write (nothing there is removed):
    `names` are DEST's, `shards` those of its data folder."""
    has_manifest = MANIFEST_FILE in names
    foreign = sorted([n for n in names if not (n in (MANIFEST_FILE, DATA_DIR) or n.startswith(TMP_PREFIX)
                                               or (has_manifest and n == CARD_FILE))]
                     + [f"{DATA_DIR}/{n}" for n in shards if not (_is_shard(n) or n.startswith(TMP_PREFIX))])
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise UsageError(f"{where} holds files that are not a batchgen export ({shown}); export to an "
                         "empty or new folder (or prefix), or to an earlier export of batchgen, which it replaces")


class FolderDestination:
    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
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
    def writer(self, name: str) -> Iterator[IO[bytes]]:
        from batchgen.keeping.outdir import atomic_file
        with self._failing(), atomic_file(self.path / name) as f:
            yield f

    def put(self, name: str, data: bytes) -> None:
        with self._failing():
            write_atomic(self.path / name, data)

    def remove_stale(self, keep: set[str]) -> list[str]:
        with self._failing():
            # What a killed export left half-written (its writer gone) goes too.
            OutputFolder(self.path / DATA_DIR).remove_temporaries()
            stale = sorted(f"{DATA_DIR}/{n}" for n in _listing(self.path / DATA_DIR) if _is_shard(n))
            for name in set(stale) - keep:
                (self.path / name).unlink(missing_ok=True)
        return sorted(set(stale) - keep)


def _listing(folder: Path) -> list[str]:
    return [e.name for e in os.scandir(folder)] if folder.is_dir() else []


class RemoteDestination:
    """An fsspec filesystem. Each object is put once, whole (from a local temporary file)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any]) -> None:
        self.where = url
        try:
            import fsspec
        except ImportError:
            raise UsageError(f"{url}: exporting to a URL needs fsspec and the filesystem's package: pip install "
                             "'batchgen[s3]' for s3:// (gcsfs for gs://, huggingface_hub for hf://)") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options))
        except (ImportError, ValueError) as e:       # no package for the protocol, or an unknown one
            raise UsageError(f"{url}: {e}; pip install 'batchgen[s3]' for s3://") from None
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except BatchgenError:
            raise
        except Exception as e:   # the filesystem packages raise their own (botocore's, ...)
            raise ExportFailed(f"{what} {self.where} failed: {type(e).__name__}: {e}; check the URL, the "
                               "credentials and the endpoint in the environment (AWS_ENDPOINT_URL, ...), "
                               "then run the same export again") from None

    def _names(self, folder: str) -> list[str]:
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
    def writer(self, name: str) -> Iterator[IO[bytes]]:
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

    def remove_stale(self, keep: set[str]) -> list[str]:
        with self._failing("cleaning"):
            stale = sorted(f"{DATA_DIR}/{n}" for n in self._names(self._path(DATA_DIR))
                           if _is_shard(n) and f"{DATA_DIR}/{n}" not in keep)
            for name in stale:
                self.fs.rm_file(self._path(name))
        return stale


Destination = Union[FolderDestination, RemoteDestination]
