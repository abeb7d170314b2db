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

    @property
    def key(self) -> bytes:
        """What a task id adds for these inputs (an edit without markup keeps the id it had
        before markup existed)."""
        return ("|".join(self.digests) + ("\x1c" + self.mask_digest if self.mask_digest else "")
                + ("\x1b" + self.markup_digest if self.markup_digest else "")).encode()

    def as_record(self) -> dict:
        """The inputs as the journal and the results keep them (RECORD_FIELDS; the markup's
        only when there is one)."""
        values: tuple = ("|".join(self.images), "|".join(self.digests), self.mask, self.mask_digest)
        if self.markup is not None:
            values += (self.markup, self.markup_digest)
        return dict(zip(RECORD_FIELDS, values))


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
    """The image references in one cell."""
    if cell is None:
        return []
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
            size = os.path.getsize(path)
            if size > MAX_IMAGE_BYTES:
                return None, f"{size / 2**20:.1f} MB, over the API's limit of {MAX_IMAGE_BYTES // 2**20} MB"
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, "no such file"
        except IsADirectoryError:
            return None, "is a folder, not an image"
        except OSError as e:
            return None, f"cannot be read ({e.strerror or e})"
        kind = sniff(data)
        if kind not in kinds:
            return None, f"is not a {_names(kinds)} image" + (f" (it is {_NAMES[kind]})" if kind else "")
        return hashlib.sha256(data).hexdigest(), None


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
        mask = mask_digest = None
        mask_refs = _refs(mask_cell)
        if len(mask_refs) > 1:
            problem = problem or f"the {mask_column!r} cell names {len(mask_refs)} masks; an edit takes one"
        elif mask_refs:
            mask, mask_digest, mask_problem = files.check(mask_refs[0], "mask", ("png",))
            problem = problem or mask_problem
        markup = markup_digest = None
        markup_refs = _refs(markup_cell)
        if len(markup_refs) > 1:
            problem = problem or f"the {markup_column!r} cell names {len(markup_refs)} markup images; an edit takes one"
        elif markup_refs:
            markup, markup_digest, markup_problem = files.check(markup_refs[0], "markup image")
            problem = problem or markup_problem
        inputs.append(EditInput(tuple(c[0] for c in checked), tuple(c[1] or "" for c in checked),
                                mask, mask_digest, problem, markup, markup_digest))
    return inputs
