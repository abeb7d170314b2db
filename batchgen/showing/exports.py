"""`batchgen export`: a run's images and result rows as a dataset where users keep them —
WebDataset tar shards or Parquet files holding the image bytes — in a local folder or at any
fsspec URL (s3://, gs://, hf://, ...).

The run is read through the output folder's readers (job.json, results.parquet), and every
image is checked against the size and sha256 its row records before it goes out. A shard
appears whole or not at all: a local one is written under a temporary name and renamed, a
remote one is uploaded from a local temporary file in one put (S3 shows a multipart upload only
once it is complete).

An export touches only its own: what DEST's manifest lists, the card, the manifest, the lock.
Anything else there makes it refuse DEST untouched. Exporting again replaces the earlier export
so that a reader following the card never sees two exports' rows, whenever the process dies or
the disk fills: the manifest says "incomplete" (and owns old and new shards), the new shards go
into a folder of their own (data/export-N/), the card switches to them, the manifest says
"complete", and only then are the earlier shards removed. `verify` checks a DEST against its
manifest.

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
from typing import IO, TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Optional, Union, cast

from batchgen._version import __version__
from batchgen.exceptions import BatchgenError, ExportFailed, FolderBusy, UsageError
from batchgen.keeping.outdir import IMAGES_DIR, LOCK_FILE, TMP_PREFIX, OutputFolder, read_job, safe_image_path
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

    Raises UsageError for bad arguments, a DEST that holds anything its manifest does not list
    (nothing there is touched), another export writing DEST (FolderBusy), or a run that cannot
    be exported; ExportFailed when DEST could not be written. Either way DEST's card names one
    whole export (the earlier one, or this one once all its shards are in place) and its manifest
    says whether the last export finished; running the export again finishes it."""
    from batchgen.keeping.results import read_results_table
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    writer_cls = WRITERS.get(format) if isinstance(format, str) else None
    if writer_cls is None:
        raise UsageError(f"format {format!r} is unknown; export as one of {', '.join(WRITERS)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"the shard size must be a whole number ≥ 1 (e.g. {DEFAULT_SHARD_SIZE}), not {shard_size!r}")
    if include_errors and not writer_cls.includes_errors:
        able = " or ".join(name for name, w in WRITERS.items() if w.includes_errors)
        raise UsageError(f"error rows have no image, so only the {able} format can include them; "
                         f"leave out the error rows, or export as {able}")
    out = Path(out)
    job = read_job(out)
    rows = exported_rows(read_results_table(out), include_errors)
    writer = writer_cls.for_rows(rows)
    dest = destination(to, out, storage_options or {})
    faults = Faults.from_environment()
    survey(dest).refuse_foreign()           # before the lock, which would add a file to a foreign DEST
    with dest.held():
        before = survey(dest)               # again under the lock: another export may have ended meanwhile
        before.refuse_foreign()
        dest.remove_temporaries()
        faults.at("begin")
        generation = before.generation + 1
        folder = f"{DATA_DIR}/{EXPORT_PREFIX}{generation}"
        names = [f"{folder}/{writer.shard_name(i)}" for i in range(math.ceil(rows.num_rows / shard_size))]
        earlier = before.owned_shards()
        base = {"batchgen": __version__, "generation": generation, "format": writer.name,
                "source": out.resolve().name, "shard_size": shard_size,
                "data_files": writer.data_files(folder)}
        # First, the manifest says an export is under way and owns both its new shards and the
        # earlier ones: a kill from here on leaves a DEST the next export recognises as its own.
        dest.put(MANIFEST_FILE, _manifest({**base, "complete": False, "note": INCOMPLETE_NOTE,
                                           "shards": [{"name": n} for n in names], "earlier": earlier}),
                 faults, "manifest:incomplete")
        summary = ExportSummary(dest.where, writer.name, 0, 0)
        entries = []
        for number, name in enumerate(names):
            chunk = rows.slice(number * shard_size, shard_size)
            with dest.writer(name, faults, f"shard:{number}") as f:
                images, errors = writer.write(cast(IO[bytes], f), out, chunk, number * shard_size)
            summary.images += images
            summary.error_rows += errors
            summary.shards.append(name)
            entries.append({"name": name, "rows": images + errors, "bytes": f.size, "sha256": f.hexdigest()})
        dest.settle(folder)
        # The card is the switch for readers: its data files are this export's folder, whose
        # shards are all in place; until now it named the earlier export's, still all there.
        card = dataset_card(job, out.resolve().name, summary, rows, shard_size,
                            writer.columns(rows.schema), writer, folder)
        dest.put(CARD_FILE, card.encode("utf-8"), faults, "card")
        done = {**base, "complete": True, "images": summary.images, "error_rows": summary.error_rows,
                "shards": entries}
        dest.put(MANIFEST_FILE, _manifest({**done, "earlier": earlier}), faults, "manifest:complete")
        summary.removed = dest.remove(earlier, [d for d in before.owned_folders() if d != folder], faults)
        dest.put(MANIFEST_FILE, _manifest({**done, "earlier": []}), faults, "manifest:clean")
    return summary


def _manifest(doc: dict) -> bytes:
    return json.dumps(doc, indent=1).encode("utf-8") + b"\n"


INCOMPLETE_NOTE = ("an export into this folder has not finished (interrupted, or running now): the card names "
                   "one whole export's files (the earlier export's, or this one's once all are written); run "
                   "the same export again to finish it")


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
    """An export format. Its shards are `<stem>-<5 digits>.<extension>` in the export's folder
    (DATA_DIR/export-N). An export makes one instance (for_rows), which may look at all the
    rows first, so that every shard is laid out alike."""
    name: ClassVar[str]             # what --format calls it
    stem: ClassVar[str]             # of its shards' names
    extension: ClassVar[str]        # of its shards' names, without the dot
    includes_errors: ClassVar[bool] = False     # can it hold error rows (no image)?

    @classmethod
    def for_rows(cls, rows: pa.Table) -> ShardWriter:
        return cls()

    @classmethod
    def shard_name(cls, number: int) -> str:
        return f"{cls.stem}-{number:05d}.{cls.extension}"

    @classmethod
    def data_files(cls, folder: str) -> str:
        """Its shards in `folder` as a glob under DEST."""
        return f"{folder}/*.{cls.extension}"

    def write(self, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
        """One shard to `f`, of the rows of `chunk` (row `first` of the export onwards; see
        samples): returns the images and the error rows it holds."""
        raise NotImplementedError

    @classmethod
    def count_rows(cls, f: IO[bytes]) -> Optional[int]:
        """The rows (samples) a shard holds, for `export --verify`; None: this format cannot say."""
        return None

    @classmethod
    def columns(cls, rows_schema: pa.Schema) -> list[tuple[str, str]]:
        """The columns (name, type) the dataset card lists, given the exported rows' schema."""
        return [(f.name, str(f.type)) for f in rows_schema]

    def card_files(self, summary: ExportSummary) -> str:
        """The dataset card's paragraph on the files."""
        raise NotImplementedError

    def card_code(self, summary: ExportSummary, folder: str) -> list[str]:
        """The dataset card's lines of Python that load the export, whose shards are in `folder`."""
        raise NotImplementedError


class WebDatasetWriter(ShardWriter):
    """Tar shards: `KEY.<ext>` (the image) and `KEY.json` (its results row) per sample. Every
    sample of an export has the same two names: `datasets` (and the Hub) infer the columns from
    the first samples and refuse an archive whose samples differ ("don't share the same prefix
    or the same types"), so an export that mixes image formats stores every image as `KEY.png`
    (the bytes as the API made them; readers decode by content)."""
    name, stem, extension = "webdataset", "shard", "tar"

    def __init__(self, image_ext: str = "png", mixed: bool = False) -> None:
        self.image_ext, self.mixed = image_ext, mixed

    @classmethod
    def for_rows(cls, rows: pa.Table) -> WebDatasetWriter:
        found = {_extension_of(p) for p in rows.column("image_path").to_pylist()}
        if len(found) == 1 and None not in found:
            return cls(found.pop() or MIXED_IMAGE_EXT)
        return cls(MIXED_IMAGE_EXT, mixed=bool(found))

    def write(self, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
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
                for name, data in ((f"{sample.key}.{self.image_ext}", sample.image), (f"{sample.key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), max(0, mtime), 0o644
                    tar.addfile(info, io.BytesIO(data))
                images += 1
        return images, 0

    @classmethod
    def count_rows(cls, f: IO[bytes]) -> Optional[int]:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            return len({m.name.split(".", 1)[0] for m in tar if m.isfile()})

    def card_files(self, summary: ExportSummary) -> str:
        what = (f"`KEY.{self.image_ext}` (the image as the API made it)" if not self.mixed
                else f"`KEY.{self.image_ext}` (the image as the API made it, of whichever format its row's "
                     "`image_path` says: every sample's image has the one name, so that `datasets` and the Hub "
                     "read every sample alike; PIL and the readers below decode by content)")
        return (f"Each sample is {what} and `KEY.json` (its row of results.parquet: prompt, revised "
                "prompt, parameters, sweep point, input columns, and the image's `content_type`); KEY is "
                "the task id and the image's index, `<task_id>_<k>`.")

    def card_code(self, summary: ExportSummary, folder: str) -> list[str]:
        where = _md(summary.dest)
        return ["from datasets import load_dataset",
                f"ds = load_dataset(\"webdataset\", data_files=\"{where}/{self.data_files(folder)}\", split=\"train\")",
                "import webdataset as wds",
                f"samples = wds.WebDataset(\"{where}/{self.brace(summary.shards, folder)}\", shardshuffle=False)"
                ".decode(\"pil\")"]

    @classmethod
    def brace(cls, shards: list[str], folder: str) -> str:
        """The shards as one WebDataset brace pattern: data/export-1/shard-{00000..00003}.tar"""
        names = [s.rsplit("/", 1)[-1] for s in shards] or [cls.shard_name(0)]
        if len(names) == 1:
            return f"{folder}/{names[0]}"
        prefix, suffix = f"{cls.stem}-", f".{cls.extension}"
        first, last = names[0][len(prefix):-len(suffix)], names[-1][len(prefix):-len(suffix)]
        return f"{folder}/{prefix}{{{first}..{last}}}{suffix}"


# The one image name of a WebDataset export whose images are of several formats.
MIXED_IMAGE_EXT = "png"


def _extension_of(image_path: Any) -> Optional[str]:
    """The image's extension as a sample names it (jpeg as jpg), or None when its file name does
    not say (the export then reads it from the bytes, and names images alike by MIXED_IMAGE_EXT)."""
    ext = Path(image_path).suffix.lower().lstrip(".") if isinstance(image_path, str) else ""
    ext = "jpg" if ext == "jpeg" else ext
    return ext if ext in _EXTENSIONS else None


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

    def write(self, f: IO[bytes], out: Path, chunk: pa.Table, first: int) -> tuple[int, int]:
        """One Parquet file in row groups of ROW_GROUP_IMAGES rows or ROW_GROUP_BYTES of images.
        The images are stored as they are: no compression (they are compressed already), no
        statistics (min/max of images is noise) and no dictionary (every image differs; trying one
        held each row group's images several times over in memory; see bench/README.md)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from batchgen.keeping.results import with_pandas_types
        schema = with_pandas_types(self.schema(chunk.schema).empty_table()).schema
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
    def count_rows(cls, f: IO[bytes]) -> Optional[int]:
        import pyarrow.parquet as pq
        return int(pq.ParquetFile(f).metadata.num_rows)

    def card_files(self, summary: ExportSummary) -> str:
        return (f"`key` (`<task_id>_<k>`) and `image` (the image's bytes as the API made it; row groups "
                f"of at most {ROW_GROUP_IMAGES} rows or {ROW_GROUP_BYTES >> 20} MB of images) beside the "
                "columns of results.parquet, then `content_type` (image/png, image/gif, image/svg+xml, "
                "...: an SVG is text, which `datasets`' Image() does not decode).")

    def card_code(self, summary: ExportSummary, folder: str) -> list[str]:
        where = _md(summary.dest)
        return ["import pandas as pd", f"df = pd.read_parquet(\"{where}/{folder}\")",
                "from datasets import load_dataset, Image",
                f"ds = load_dataset(\"parquet\", data_files=\"{where}/{self.data_files(folder)}\", split=\"train\")"
                ".cast_column(\"image\", Image())"]


WRITERS: dict[str, type[ShardWriter]] = {cls.name: cls for cls in (WebDatasetWriter, ParquetWriter)}
FORMATS = tuple(WRITERS)


# ---- the dataset card -------------------------------------------------------------------

def dataset_card(job: Mapping[str, Any], name: str, summary: ExportSummary, rows: pa.Table, shard_size: int,
                 columns: list[tuple[str, str]], writer: ShardWriter, folder: str) -> str:
    """README.md for the export: what made it (the job), what is in it (counts, files,
    columns) and how to load it. Hugging Face reads the YAML header when DEST is a dataset repo."""
    settings, provenance = _mapping(job.get("job")), _mapping(job.get("provenance"))
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
             f"    path: \"{writer.data_files(folder)}\"", "tags:", "- batchgen", "- text-to-image", "- synthetic",
             "---", "",
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
    lines += ["", "## Files", "", writer.card_files(summary), "",
              "```python", *writer.card_code(summary, folder), "```"]
    lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
    lines += [f"| {_md(n)} | {_md(t)} |" for n, t in columns]
    return "\n".join(lines) + "\n"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _md(value: Any) -> str:
    """Text for a Markdown table cell or code span: one line, no pipe or backtick to break it."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")


# ---- what DEST holds ----------------------------------------------------------------------
# An export owns exactly what its manifest lists (the shards of the export it describes, and of
# earlier ones it has yet to remove), the card and the manifest, the lock, and the temporaries
# of its own writers. Anything else in DEST is the user's: it is never written or removed, and
# it makes the export refuse DEST.

EXPORT_PREFIX = "export-"       # DATA_DIR/export-N/: the shards of DEST's N-th export
# A shard's name as a manifest may give it: in an export's folder, or straight in DATA_DIR (an
# export written before export folders). A manifest is read back as data: other names make it
# no export's.
_SHARD_NAME = re.compile(rf"{DATA_DIR}/(?:{EXPORT_PREFIX}\d{{1,9}}/)?[0-9A-Za-z_]+-\d{{5,}}\.[0-9a-z]{{1,16}}")
_EXPORT_FOLDER = re.compile(rf"{DATA_DIR}/{EXPORT_PREFIX}(\d{{1,9}})")
_TEMPORARY = re.compile(rf"(?:.*/)?{re.escape(TMP_PREFIX)}[^/]+\.\d+")


@dataclass
class ShardEntry:
    name: str
    rows: Optional[int] = None
    bytes: Optional[int] = None
    sha256: Optional[str] = None


@dataclass
class Manifest:
    """DEST's batchgen-export.json, checked: what an export there wrote, and whether it finished."""
    complete: bool
    generation: int
    format: Optional[str]
    shards: list[ShardEntry]
    earlier: list[str]          # shards of earlier exports not removed yet
    images: Optional[int] = None
    error_rows: Optional[int] = None
    data_files: Optional[str] = None

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Raises ValueError, saying why, for a manifest batchgen did not write."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
            raise ValueError("it is not a batchgen manifest")
        shards = []
        for item in doc["shards"]:
            if isinstance(item, str):                        # before export folders: names only
                item = {"name": item}
            if not isinstance(item, dict):
                raise ValueError(f"it lists a shard as {item!r}")
            shards.append(ShardEntry(str(item.get("name")), _count(item.get("rows")), _count(item.get("bytes")),
                                     item.get("sha256") if isinstance(item.get("sha256"), str) else None))
        earlier = doc.get("earlier", [])
        if not isinstance(earlier, list):
            raise ValueError("its earlier shards are not a list")
        for name in [e.name for e in shards] + earlier:
            if not (isinstance(name, str) and _SHARD_NAME.fullmatch(name)):
                raise ValueError(f"it names {name!r}, which is not a batchgen shard")
        generation = doc.get("generation", 0)
        if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation < 10**9 - 1:
            raise ValueError(f"its generation is {generation!r}")
        data_files = doc.get("data_files")
        return cls(doc.get("complete", True) is not False, generation,
                   doc.get("format") if isinstance(doc.get("format"), str) else None, shards, earlier,
                   _count(doc.get("images")), _count(doc.get("error_rows")),
                   data_files if isinstance(data_files, str) else None)

    def names(self) -> list[str]:
        return [e.name for e in self.shards]

    def owned(self) -> list[str]:
        """Every shard name DEST's exports own: this one's and the earlier ones' not removed yet."""
        return list(dict.fromkeys(self.names() + self.earlier))


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class Survey:
    """What DEST holds, read only: its manifest (None when it has none) and the files no
    export owns."""
    where: str
    manifest: Optional[Manifest]
    files: list[str]                    # every file under DEST, relative, "/"-separated
    foreign: list[str]
    folders: list[str] = field(default_factory=list)     # every folder under DEST (local)
    unreadable: Optional[str] = None    # why the manifest could not be read

    @property
    def generation(self) -> int:
        return self.manifest.generation if self.manifest else 0

    def owned_shards(self) -> list[str]:
        """Every shard the manifest lists that is there (an export replacing it removes them)."""
        present = set(self.files)
        return sorted(n for n in (self.manifest.owned() if self.manifest else []) if n in present)

    def owned_folders(self) -> list[str]:
        """The export folders an export replacing this one removes: those of the shards the
        manifest lists (some perhaps never written) and empty ones a killed export left."""
        listed = self.manifest.owned() if self.manifest else []
        return sorted({n.rsplit("/", 1)[0] for n in listed} - {DATA_DIR}
                      | {d for d in self.folders if _EXPORT_FOLDER.fullmatch(d)})

    def refuse_foreign(self) -> None:
        if self.unreadable:
            raise UsageError(f"{self.where}'s {MANIFEST_FILE} is unreadable ({self.unreadable}), so batchgen "
                             f"cannot tell its files from yours; nothing was changed. Export to an empty or new "
                             f"folder (or prefix), or remove {self.where} if it is an export you no longer want")
        if self.foreign:
            shown = ", ".join(self.foreign[:5]) + (f", … ({len(self.foreign)} in all)" if len(self.foreign) > 5 else "")
            whose = ("no batchgen export's manifest lists them" if self.manifest
                     else f"it is not a batchgen export (no {MANIFEST_FILE})")
            raise UsageError(f"{self.where} holds files batchgen did not write ({shown}): {whose}. Nothing was "
                             f"changed. Export to an empty or new folder (or prefix), or move those files out "
                             f"of {self.where} and export again")


def survey(dest: Destination) -> Survey:
    files, folders = dest.listing()
    manifest, unreadable = None, None
    if MANIFEST_FILE in files:
        try:
            manifest = Manifest.parse(dest.read(MANIFEST_FILE))
        except (ValueError, UnicodeDecodeError) as e:
            unreadable = str(e)
    listed = set(manifest.owned()) if manifest else set()
    own_folders = {DATA_DIR} | {n.rsplit("/", 1)[0] for n in listed}
    ours = {MANIFEST_FILE, LOCK_FILE} | listed | ({CARD_FILE} if manifest else set())
    foreign = [n for n in files if n not in ours and not _TEMPORARY.fullmatch(n)]
    # An export folder the manifest no longer names is ours while empty: a killed export
    # removed its shards but not yet the folder.
    foreign += [f"{d}/" for d in folders if d not in own_folders
                and (not _EXPORT_FOLDER.fullmatch(d) or any(n.startswith(d + "/") for n in files))]
    return Survey(dest.where, manifest, files, sorted(set(foreign)), folders, unreadable)


# ---- verify ---------------------------------------------------------------------------------

@dataclass
class Verdict:
    """`batchgen export --verify DEST`: whether DEST is one whole export, and if not, why."""
    dest: str
    format: Optional[str]
    images: int
    shards: int
    problems: list[str]

    @property
    def whole(self) -> bool:
        return not self.problems


def verify(to: PathLike, storage_options: Optional[Mapping[str, Any]] = None) -> Verdict:
    """Check DEST against its manifest: it finished; every shard it lists is there with its size,
    row count and sha256; the card names its files; nothing else is there. Read only. Raises
    UsageError when DEST is no export at all (missing, empty, or without a manifest)."""
    dest = destination(to, None, storage_options or {})
    found = survey(dest)
    if found.manifest is None and found.unreadable is None:
        what = "holds no batchgen export" if found.files else "is empty or does not exist"
        raise UsageError(f"{dest.where} {what} (no {MANIFEST_FILE}); give the --to folder of an export")
    manifest = found.manifest
    if manifest is None:
        return Verdict(dest.where, None, 0, 0, [f"{MANIFEST_FILE} is unreadable ({found.unreadable}); "
                                                "export to it again to replace it"])
    problems: list[str] = []
    present = set(found.files)
    card = dest.read(CARD_FILE) if CARD_FILE in present else None
    if not manifest.complete:
        running = " (an export is writing it now)" if dest.is_locked() else ""
        if card is None:
            readers = "there is no card yet, so nothing to read"
        elif manifest.data_files and f'path: "{manifest.data_files}"'.encode() in card:
            readers = "the card already names its files, all written"
        else:
            readers = "the card still names the earlier export's files, all there"
        problems.append(f"the last export did not finish{running}: its manifest says so, and {readers}. "
                        "Run the same export again to finish it")
    writer_cls = WRITERS.get(manifest.format or "")
    for entry in manifest.shards:
        problem = _check_shard(dest, entry, writer_cls, present) if manifest.complete else None
        if problem:
            problems.append(f"{entry.name} {problem}")
    if manifest.complete:
        rows = sum(e.rows or 0 for e in manifest.shards)
        counted = all(e.rows is not None for e in manifest.shards)     # not by exports before export folders
        if counted and manifest.images is not None and rows != manifest.images + (manifest.error_rows or 0):
            problems.append(f"its shards hold {rows:,} rows where the manifest counts "
                            f"{manifest.images + (manifest.error_rows or 0):,}")
        left = [n for n in manifest.earlier if n in present]
        if left:
            problems.append(f"{len(left)} shard(s) of an earlier export are still there ({left[0]}"
                            f"{', …' if len(left) > 1 else ''}): "
                            "the export that replaced it was stopped before removing them")
        if card is None:
            problems.append(f"{CARD_FILE} (the dataset card) is missing")
        elif manifest.data_files and f'path: "{manifest.data_files}"'.encode() not in card:
            problems.append(f"{CARD_FILE} does not name this export's files ({manifest.data_files})")
    if found.foreign:
        problems.append(f"it holds files no export wrote: {', '.join(found.foreign[:5])}"
                        + (", …" if len(found.foreign) > 5 else ""))
    images = manifest.images or 0
    return Verdict(dest.where, manifest.format, images, len(manifest.shards), problems)


def _check_shard(dest: Destination, entry: ShardEntry, writer_cls: Optional[type[ShardWriter]],
                 present: set[str]) -> Optional[str]:
    if entry.name not in present:
        return "is missing"
    size = dest.size(entry.name)
    if entry.bytes is not None and size != entry.bytes:
        return f"holds {size:,} bytes where the manifest records {entry.bytes:,}"
    if entry.sha256 is not None:
        digest = sha256()
        with dest.open(entry.name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            return "does not match the sha256 the manifest records"
    if entry.rows is not None and writer_cls is not None:
        try:
            with dest.open(entry.name) as f:
                rows = writer_cls.count_rows(f)
        except Exception as e:      # a shard that does not parse: tarfile's and pyarrow's own errors
            return f"cannot be read as {writer_cls.name} ({type(e).__name__}: {e})"
        if rows is not None and rows != entry.rows:
            return f"holds {rows:,} rows where the manifest records {entry.rows:,}"
    return None


# ---- test hooks: a step where the process dies, pauses or finds the disk full ---------------

FAULT_VARIABLE = "BATCHGEN_TEST_EXPORT_FAULT"


@dataclass
class Faults:
    """`BATCHGEN_TEST_EXPORT_FAULT=STEP=ACTION` (tests only): at STEP (`begin`, `shard:0:writing`,
    `card:written`, `remove:0`, ...) kill this process (`kill`, as kill -9 would), wait for a line
    on stdin (`pause`, after saying so on stderr), or fail the write as a full disk (`enospc`)."""
    step: Optional[str] = None
    action: Optional[str] = None

    @classmethod
    def from_environment(cls) -> Faults:
        step, _, action = os.environ.get(FAULT_VARIABLE, "").rpartition("=")
        return cls(step, action) if step else cls()

    def at(self, step: str) -> None:
        if step != self.step:
            return
        if self.action == "kill":
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.action == "pause":
            import sys
            print(f"batchgen export paused at {step}", file=sys.stderr, flush=True)
            sys.stdin.readline()
        elif self.action == "enospc":
            import errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Counted:
    """A shard's file as its writer sees it, counting and hashing what goes through it (for
    the manifest) and calling the fault hook when the first bytes are written."""

    def __init__(self, f: IO[bytes], faults: Faults, step: str) -> None:
        self._f, self._faults, self._step = f, faults, step
        self._hash, self.size = sha256(), 0

    def write(self, data: Any) -> int:
        if not self.size:
            self._faults.at(self._step + ":writing")
        n = self._f.write(data)
        view = memoryview(data)[:n] if n is not None else memoryview(data)
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# ---- where it goes ----------------------------------------------------------------------

def destination(to: PathLike, out: Optional[Path], storage_options: Mapping[str, Any]) -> Destination:
    """A local folder (a path, or a file:// URL) or an fsspec URL."""
    text = os.fspath(to)
    if not isinstance(text, str) or not text.strip():
        raise UsageError("the destination is empty; give a folder or a URL (e.g. s3://bucket/prefix)")
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        return RemoteDestination(text, storage_options)
    path = Path(text)
    if out is not None and (path.resolve() == out.resolve()
                            or path.resolve().is_relative_to(out.resolve() / IMAGES_DIR)):
        raise UsageError(f"{text} is the run's own folder; export to another folder (e.g. {out}-export)")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{text} is a file; export to a folder")
    return FolderDestination(path)


class FolderDestination:
    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise ExportFailed(f"cannot write {self.where}: {e.strerror or e}; nothing of the earlier export "
                               "was lost (its card still names its files, all whole) and the manifest says "
                               "this one is incomplete: free the space (or fix the folder), then run the same "
                               "export again") from None

    def listing(self) -> tuple[list[str], list[str]]:
        """Every file and every folder under DEST, relative ("/"-separated); symlinks are files."""
        files: list[str] = []
        folders: list[str] = []
        if not self.path.is_dir():
            return files, folders
        for root, dirs, names in os.walk(self.path):
            rel = os.path.relpath(root, self.path)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            files += [prefix + n for n in names]
            for d in list(dirs):
                if os.path.islink(os.path.join(root, d)):
                    dirs.remove(d)
                    files.append(prefix + d)
            folders += [prefix + d for d in dirs]
        return sorted(files), sorted(folders)

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        return open(self.path / name, "rb")

    def _folder(self) -> OutputFolder:
        return OutputFolder(self.path)

    def is_locked(self) -> bool:
        return self._folder().is_locked()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """DEST for this export alone: the output folder's lock (released by the kernel if the
        process dies), so a second export into DEST at once is refused as a second run is."""
        folder = self._folder()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            folder.lock()
        except FolderBusy:
            try:
                holder = (self.path / LOCK_FILE).read_text(errors="replace").strip()
            except OSError:
                holder = ""
            raise FolderBusy(f"{self.where} is being written by another batchgen export"
                             + (f" (process {holder})" if holder.isdigit() else "")
                             + "; one export writes a folder at a time. Wait for it to finish, then run "
                               "this export again") from None
        except OSError as e:
            raise UsageError(f"cannot write {self.where}: {e.strerror or e}; export to another folder") from None
        try:
            yield
        finally:
            folder.unlock()

    def remove_temporaries(self) -> None:
        """What killed exports left half-written (their writers gone)."""
        _, folders = self.listing()
        for folder in ["", *folders]:
            OutputFolder(self.path / folder).remove_temporaries()

    @contextlib.contextmanager
    def writer(self, name: str, faults: Faults, step: str) -> Iterator[_Counted]:
        from batchgen.keeping.outdir import atomic_file
        with self._failing():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.path / name) as f:
                counted = _Counted(f, faults, step)
                yield counted
        faults.at(step + ":written")

    def put(self, name: str, data: bytes, faults: Faults, step: str) -> None:
        with self.writer(name, faults, step) as f:
            f.write(data)

    def settle(self, folder: str) -> None:
        """The shards' names in `folder` on disk before the card names them (each file's bytes
        were synced as it was written), so that a power cut cannot keep the card and lose them."""
        if not (self.path / folder).is_dir():      # no shards: nothing to export
            return
        with self._failing():
            fd = os.open(self.path / folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, names: list[str], folders: list[str], faults: Faults) -> list[str]:
        """Remove these shards, then these export folders (once empty); returns the shards removed."""
        removed = []
        with self._failing():
            for number, name in enumerate(names):
                (self.path / name).unlink(missing_ok=True)
                removed.append(name)
                faults.at(f"remove:{number}")
            for folder in folders:
                with contextlib.suppress(OSError):      # not empty: a temporary of a live writer
                    (self.path / folder).rmdir()
        return removed


class RemoteDestination:
    """An fsspec filesystem. Each object is put once, whole (from a local temporary file). No
    lock: two exports into one URL at once are not prevented (see the README)."""

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

    def listing(self) -> tuple[list[str], list[str]]:
        with self._failing("listing"):
            # All of it: fsspec keeps a filesystem (and what it listed, sizes and etags) across calls.
            self.fs.invalidate_cache()
            try:
                found = self.fs.find(self.root)
            except FileNotFoundError:
                found = []
        prefix = self.root.lstrip("/") + "/"
        return sorted(p.lstrip("/")[len(prefix):] for p in found if p.lstrip("/").startswith(prefix)), []

    def read(self, name: str) -> bytes:
        with self._failing(f"reading {name} from"):
            return bytes(self.fs.cat_file(self._path(name)))

    def size(self, name: str) -> int:
        with self._failing(f"reading {name} from"):
            return int(self.fs.size(self._path(name)))

    def open(self, name: str) -> IO[bytes]:
        return self.fs.open(self._path(name), "rb")

    def is_locked(self) -> bool:
        return False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        yield

    def remove_temporaries(self) -> None:
        """None: each object is put whole."""

    def settle(self, folder: str) -> None:
        """Nothing: an object is visible once its put returns."""

    @contextlib.contextmanager
    def writer(self, name: str, faults: Faults, step: str) -> Iterator[_Counted]:
        fd, tmp = tempfile.mkstemp(prefix="batchgen-export-", suffix="-" + name.rsplit("/", 1)[-1])
        try:
            with os.fdopen(fd, "wb") as f:
                counted = _Counted(f, faults, step)
                yield counted
            with self._failing(f"uploading {name} to"):
                self.fs.put_file(tmp, self._path(name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        faults.at(step + ":written")

    def put(self, name: str, data: bytes, faults: Faults, step: str) -> None:
        with self.writer(name, faults, step) as f:
            f.write(data)

    def remove(self, names: list[str], folders: list[str], faults: Faults) -> list[str]:
        removed = []
        with self._failing("cleaning"):
            for number, name in enumerate(names):
                self.fs.rm_file(self._path(name))
                removed.append(name)
                faults.at(f"remove:{number}")
        return removed


Destination = Union[FolderDestination, RemoteDestination]
