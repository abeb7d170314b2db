"""Images on disk: check the bytes are an image, hash them, and write them atomically.

The one place a server's image bytes are checked: PNG, JPEG and WebP by their header, a GIF
walked to its trailer (its frames counted), an SVG parsed safely (imagecheck). The bytes choose
only which of those known extensions the file gets, never any other part of its path.

Names come from the task id only (never from prompt text). Images are spread over
`images/<first two hex digits of the task id>/` so no folder holds more than a few thousand
files even for a million images.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from batchgen.exceptions import BadResponse
from batchgen.keeping.imagecheck import gif_info, is_gif, looks_like_svg, svg_size
from batchgen.keeping.outdir import IMAGES_DIR, write_atomic
from batchgen.planning.edits import sniff
from batchgen.rules.models import FORMAT_EXTENSIONS


def image_format(data: bytes) -> Optional[str]:
    """The file extension for these bytes, from their magic number; None if not an image."""
    kind = sniff(data)
    if kind is not None:
        return FORMAT_EXTENSIONS[kind]
    if is_gif(data):
        return "gif"
    return "svg" if looks_like_svg(data) else None


_PNG = b"\x89PNG\r\n\x1a\n"
_IHDR_SIZE = struct.Struct(">II")


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header; raises BadResponse if it is not a readable image."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
        # The common case, read straight from the IHDR chunk (cheaper than Pillow's open).
        width, height = _IHDR_SIZE.unpack_from(data, 16)
        if width and height:
            return width, height
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, struct.error) as e:
        raise BadResponse(f"the image bytes are not a readable image: {e}") from None


@dataclass
class SavedImage:
    image_path: str   # relative to OUT
    sha256: str
    width: Optional[int]     # None: an SVG that states no size in pixels
    height: Optional[int]
    bytes: int
    frames: Optional[int] = None     # a GIF's frames; None for every other format

    def image_record(self, index: int, url: Optional[str], revised_prompt: Optional[str]) -> dict:
        """An answer's image as a journal record lists it: its place, the file (frames only for
        a GIF), where it came from and the prompt the model used."""
        fields = {"image_index": index, "image_path": self.image_path, "sha256": self.sha256,
                  "width": self.width, "height": self.height, "bytes": self.bytes}
        if self.frames is not None:
            fields["frames"] = self.frames
        fields["image_url"] = url
        fields["revised_prompt"] = revised_prompt
        return fields


_HEX = frozenset("0123456789abcdef")


def relative_image_path(task_id: str, image_index: int, n: int, ext: str) -> str:
    # The id is the file's name: only batchgen's own (hex digits) may become one, whatever a
    # server or a hand-edited journal claims, so no name can leave OUT/images.
    if not (isinstance(task_id, str) and 8 <= len(task_id) <= 64 and _HEX.issuperset(task_id)):
        raise BadResponse(f"refusing to name an image after {task_id[:80]!r}: not a task id batchgen made")
    name = task_id if n == 1 else f"{task_id}_{image_index}"
    return f"{IMAGES_DIR}/{task_id[:2]}/{name}.{ext}"


class ImageStore:
    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        # OUT and a separator, as os.path.join puts them before a relative path: joined by hand,
        # as is the folder below, since os.path's join and dirname cost a fair share of saving
        # a small image.
        self._prefix = os.path.join(os.fspath(self.out_dir), "")
        self._made_dirs: set[str] = set()      # relative folders made

    def save(self, task_id: str, image_index: int, n: int, data: bytes) -> SavedImage:
        """Check, hash and write one image; raises BadResponse if the bytes are not an image.

        Blocking; the live backend calls it in a worker thread for big images.
        """
        if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
            # The usual answer, a PNG, sized from its header (image_size's first case, inline)
            ext, frames = "png", None
            width, height = _IHDR_SIZE.unpack_from(data, 16)
            if not (width and height):
                width, height = image_size(data)
        else:
            ext, width, height, frames = self._kind_and_size(data)
        rel = relative_image_path(task_id, image_index, n, ext)
        final = self._prefix + rel
        folder = rel[:rel.rindex("/")]
        if folder not in self._made_dirs:
            os.makedirs(self._prefix + folder, exist_ok=True)
            self._made_dirs.add(folder)
        write_atomic(final, data, fsync=False)
        return SavedImage(rel, hashlib.sha256(data).hexdigest(), width, height, len(data), frames)

    @staticmethod
    def _kind_and_size(data: bytes) -> tuple:
        """(extension, width, height, GIF frames) of an image's bytes; raises BadResponse if
        they are not an image."""
        ext = image_format(data)
        if ext is None:
            raise BadResponse(f"the response's image is not PNG, JPEG, WebP, GIF or SVG "
                              f"(starts with {data[:8]!r})")
        frames = None
        width: Optional[int]
        height: Optional[int]
        if ext == "gif":
            _, _, frames = gif_info(data)
            width, height = image_size(data)     # Pillow's header read refuses a decompression bomb
        elif ext == "svg":
            width, height = svg_size(data)
        else:
            width, height = image_size(data)
        return ext, width, height, frames
