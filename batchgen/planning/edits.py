"""Image edits: the input images (and masks) a table names, found, checked and hashed.

A table with an image column asks for edits (`/images/edits`). Each cell names one image or
several (a list in Parquet/JSON Lines, `a.png|b.png` in CSV): a path relative to the input
file, or an http(s) URL. Files are read here, before planning, because a task's id covers
their bytes (replacing a file makes a new task; moving it does not); a URL's bytes are only
known once it is downloaded at sending time, so its id covers the URL's text.

A markup image (a `markup` column, gpt-image-2.6's markup-guided edits: the picture drawn over
with what to change) goes with the images as the mask does, one per row, and its bytes are part
of the task id in the same way.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

from batchgen.exceptions import UsageError
from batchgen.planning.reader import not_regular

# The API's limits for the GPT image models' edits: PNG, JPEG or WebP, under 50 MB each, up to 16.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGES = 16
IMAGE_KINDS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# What the journal and the results keep of an edit's inputs ("|" between several images).
RECORD_FIELDS = ("input_image", "input_sha256", "mask_image", "mask_sha256", "markup_image", "markup_sha256")


@dataclass(frozen=True, slots=True)
class EditInput:
    """What one row gives an edit: its images, its mask, and why it cannot be sent (if so)."""
    images: tuple               # absolute paths or URLs, as they will be sent
    digests: tuple              # sha256 of each file's bytes; for a URL, of its text ("url:" first)
    mask: Optional[str] = None
    mask_digest: Optional[str] = None
    problem: Optional[str] = None
    markup: Optional[str] = None
    markup_digest: Optional[str] = None
    # The references as the cell wrote them (a relative path stays relative): what the journal,
    # results and messages show, so no machine's absolute paths leave it. Empty: `images`.
    given: tuple = ()
    mask_given: Optional[str] = None
    markup_given: Optional[str] = None

    @property
    def key(self) -> bytes:
        """What a task id adds for these inputs (an edit without markup keeps the id it had
        before markup existed)."""
        return ("|".join(self.digests) + ("\x1c" + self.mask_digest if self.mask_digest else "")
                + ("\x1b" + self.markup_digest if self.markup_digest else "")).encode()

    def as_record(self) -> dict:
        """The inputs as the journal and the results keep them (RECORD_FIELDS; the markup's
        only when there is one)."""
        values: tuple = ("|".join(self.given or self.images), "|".join(self.digests),
                         self.mask_given or self.mask, self.mask_digest)
        if self.markup is not None:
            values += (self.markup_given or self.markup, self.markup_digest)
        return dict(zip(RECORD_FIELDS, values))

    def named(self) -> list:
        """(field, as sent, as given, digest) for each image, then the mask, then the markup."""
        given = self.given or self.images
        parts = [("image", ref, shown, digest) for ref, shown, digest in zip(self.images, given, self.digests)]
        if self.mask:
            parts.append(("mask", self.mask, self.mask_given or self.mask, self.mask_digest))
        if self.markup:
            parts.append(("markup", self.markup, self.markup_given or self.markup, self.markup_digest))
        return parts


class InputProblem(ValueError):
    """A local input that cannot be sent: what is wrong with it, to follow its name."""


def read_regular(path: str, limit: int) -> bytes:
    """A local file's bytes, checked to be a regular file of at most `limit` bytes (by fstat of
    what was opened) before anything is read: a FIFO or a device never hangs or fills memory.
    Opened non-blocking, so a FIFO without a writer returns at once. Raises InputProblem."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputProblem("no such file") from None
    except OSError as e:
        raise InputProblem(f"cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        kind = not_regular(st.st_mode)
        if kind:
            raise InputProblem(f"is {kind}, not an image file" + ("" if kind == "a folder" else
                               "; save the image to a file and name that"))
        if st.st_size > limit:
            raise InputProblem(f"{st.st_size / 2**20:.1f} MB, over the limit of {limit / 2**20:g} MB")
        # One byte past the size it had: a file still growing is caught, not read without end.
        chunks, left = [], st.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > st.st_size:
            raise InputProblem("changed while it was read; run again once it is written")
        return data
    except OSError as e:
        raise InputProblem(f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def input_bytes(ref: str, digest: Optional[str]) -> bytes:
    """A local input's bytes to send, which must be those its task id was made from: a file
    changed since planning is refused (InputProblem), never sent under the old id."""
    data = read_regular(ref, MAX_IMAGE_BYTES)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise InputProblem("changed since the run was planned (its task id is that of the bytes read "
                           "then); run the same command again to plan it with its new contents")
    return data


_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}


def _names(kinds) -> str:
    names = [_NAMES[k] for k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def sniff(data: bytes) -> Optional[str]:
    """'png', 'jpeg' or 'webp' from the magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def edit_columns(columns: list, image_column: Optional[str], mask_column: Optional[str],
                 markup_column: Optional[str] = None) -> tuple:
    """(image column, mask column, markup column) of an edits table, (None, None, None) for
    generations; raises UsageError for a named column the table lacks."""
    for option, name in (("--image-column", image_column), ("--mask-column", mask_column),
                         ("--markup-column", markup_column)):
        if name is not None and name not in columns:
            raise UsageError(f"{option} {name!r}: the input has no such column; its columns are "
                             f"{', '.join(map(repr, columns))}")
    image = image_column or ("image" if "image" in columns else None)
    mask = mask_column or ("mask" if "mask" in columns else None)
    markup = markup_column or ("markup" if "markup" in columns else None)
    for column, what in ((mask, "masks"), (markup, "markup images")):
        if column is not None and image is None:
            raise UsageError(f"the column {column!r} holds {what}, but no column holds the images to edit; "
                             "add an 'image' column or name it with --image-column NAME")
    return image, mask, markup


def _refs(cell) -> list:
    """The image references in one cell. A cell of text that is a JSON list of texts is that
    list: a JSON Lines column with a name on one line and a list on another is read as text
    (reader._arrow_array), its lists as their JSON."""
    if cell is None:
        return []
    if isinstance(cell, str) and cell.lstrip().startswith("["):
        import json
        try:
            parsed = json.loads(cell)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(c, str) for c in parsed):
            cell = parsed
    if isinstance(cell, (list, tuple)):
        return [str(c).strip() for c in cell if c is not None and str(c).strip()]
    return [part.strip() for part in str(cell).split("|") if part.strip()]


class _Files:
    """Reads and checks local images once each, however many rows name them."""

    def __init__(self, base: str):
        self.base = base
        self.seen: dict = {}         # absolute path -> (sha256 or None, problem or None)

    def check(self, ref: str, what: str, kinds=tuple(IMAGE_KINDS)) -> tuple:
        """(what is sent, digest, problem) for one reference."""
        if is_url(ref):
            return ref, "url:" + hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest(), None
        path = os.path.normpath(os.path.join(self.base, ref))
        if path not in self.seen:
            self.seen[path] = self._read(path, kinds)
        digest, problem = self.seen[path]
        return path, digest, problem and f"{what} {ref!r}: {problem}"

    @staticmethod
    def _read(path: str, kinds) -> tuple:
        try:
            data = read_regular(path, MAX_IMAGE_BYTES)
        except InputProblem as e:
            return None, str(e).replace("over the limit", "over the API's limit")
        kind = sniff(data)
        if kind not in kinds:
            return None, f"is not a {_names(kinds)} image" + (f" (it is {_NAMES[kind]})" if kind else "")
        return hashlib.sha256(data).hexdigest(), None


def _one(files: _Files, cell, column: Optional[str], what: str, kinds=tuple(IMAGE_KINDS)) -> tuple:
    """(as given, what is sent, digest, problem) of a cell that may name one image (a mask, a
    markup image), all None when it names none."""
    refs = _refs(cell)
    if len(refs) > 1:
        return None, None, None, f"the {column!r} cell names {len(refs)} {what}s; an edit takes one"
    if not refs:
        return None, None, None, None
    return (refs[0], *files.check(refs[0], what, kinds))


def read_edit_inputs(table, source: str, image_column: str, mask_column: Optional[str],
                     markup_column: Optional[str] = None) -> list:
    """Each row's EditInput (the whole table, in order)."""
    files = _Files(os.path.dirname(os.path.abspath(source)))
    images = table.column(image_column).to_pylist()
    masks = table.column(mask_column).to_pylist() if mask_column else [None] * len(images)
    markups = table.column(markup_column).to_pylist() if markup_column else [None] * len(images)
    inputs = []
    for cell, mask_cell, markup_cell in zip(images, masks, markups):
        refs = _refs(cell)
        problem = None
        if not refs:
            problem = f"the {image_column!r} cell is empty: an edit needs an input image"
        elif len(refs) > MAX_IMAGES:
            problem = f"{len(refs)} input images; the API takes at most {MAX_IMAGES}"
        checked = [files.check(r, "input image") for r in refs[:MAX_IMAGES]]
        problem = problem or next((p for _, _, p in checked if p), None)
        mask_given, mask, mask_digest, mask_problem = _one(files, mask_cell, mask_column, "mask", ("png",))
        markup_given, markup, markup_digest, markup_problem = _one(files, markup_cell, markup_column,
                                                                   "markup image")
        problem = problem or mask_problem or markup_problem
        inputs.append(EditInput(tuple(c[0] for c in checked), tuple(c[1] or "" for c in checked),
                                mask, mask_digest, problem, markup, markup_digest,
                                tuple(refs[:MAX_IMAGES]), mask_given, markup_given))
    return inputs
