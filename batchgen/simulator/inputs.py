"""The input images of an edit: what their bytes are (by magic bytes, as the API sniffs them, not
by file name or declared type), their size and whether they carry transparency, and the bytes
behind a JSON image reference (a base64 ``data:`` URL, or a link to the simulator's own files).

Limits (OpenAI's image edit reference): each input image a PNG, WebP or JPEG under 50 MB, at
most 16 of them; the mask a PNG under 4 MB with an alpha channel, the size of the first image.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Callable, Optional

from PIL import Image, UnidentifiedImageError

from .validation import ApiError, bad

MAX_IMAGE_BYTES = 50 * 2**20
MAX_MASK_BYTES = 4 * 2**20
MAX_IMAGES = 16
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[^;,]*)*;base64,", re.ASCII)

# Fetches an http(s) image reference: its bytes, or None when it cannot be downloaded.
Fetch = Callable[[str], Optional[bytes]]


@dataclass(frozen=True)
class InputImage:
    field: str             # where it came from, for messages: "image", "image[1]", "mask"
    sha256: str            # of its bytes, hex
    format: Optional[str]  # "png", "jpeg" or "webp" by magic bytes; None for anything else
    width: int             # 0 when the header cannot be read
    height: int
    size: int              # bytes
    alpha: bool            # an alpha channel or a transparent colour

    @property
    def short(self) -> str:
        """The first 16 hex digits of its sha256: how an answer names the input it edits."""
        return self.sha256[:16]


def sniff_format(data: bytes) -> Optional[str]:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def inspect(data: bytes, field: str) -> InputImage:
    """What the bytes are; reads the header only (no pixels are decoded)."""
    fmt = sniff_format(data)
    width = height = 0
    alpha = False
    if fmt is not None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            fmt = None   # the right magic, a broken header: not an image the API can read
    return InputImage(field, hashlib.sha256(data).hexdigest(), fmt, width, height, len(data), alpha)


def too_big(field: str, limit: int) -> ApiError:
    return bad(f"Invalid '{field}': the file is too large. Each image must be smaller than "
               f"{limit // 2**20} MB.", param=field, code="file_too_large")


def resolve_reference(ref: object, field: str, fetch: Fetch, limit: int) -> InputImage:
    """An image reference of the JSON body ({"image_url": ...} or {"file_id": ...}) → its image."""
    if not isinstance(ref, dict):
        raise bad(f"Invalid type for '{field}': expected an object with 'image_url' or "
                  f"'file_id'.", param=field, code="invalid_type")
    given = [k for k in ("image_url", "file_id") if ref.get(k) is not None]
    unknown = sorted(k for k in ref if k not in ("image_url", "file_id"))
    if unknown:
        raise bad(f"Unknown parameter: '{field}.{unknown[0]}'.", param=f"{field}.{unknown[0]}",
                  code="unknown_parameter")
    if len(given) != 1:
        raise bad(f"Invalid '{field}': provide exactly one of 'image_url' or 'file_id'.",
                  param=field)
    if given[0] == "file_id":
        raise bad(f"Invalid '{field}.file_id': the batchgen simulator keeps no uploaded images; "
                  f"send the image as an 'image_url' (a data: URL).", param=f"{field}.file_id",
                  code="unsupported_value")
    url = ref["image_url"]
    if not isinstance(url, str):
        raise bad(f"Invalid type for '{field}.image_url': expected a string.",
                  param=f"{field}.image_url", code="invalid_type")
    data = _data_url(url, field, limit) if url.startswith("data:") else _download(url, field, fetch)
    if len(data) > limit:
        raise too_big(field, limit)
    return inspect(data, field)


def _data_url(url: str, field: str, limit: int) -> bytes:
    m = _DATA_URL.match(url)
    if m is None:
        raise bad(f"Invalid '{field}.image_url': a data URL must read "
                  f"'data:<type>;base64,<data>'.", param=f"{field}.image_url",
                  code="invalid_image_url")
    text = url[m.end():]
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise too_big(field, limit)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"Invalid '{field}.image_url': the base64 data cannot be decoded.",
                  param=f"{field}.image_url", code="invalid_image_url") from None


def _download(url: str, field: str, fetch: Fetch) -> bytes:
    data = fetch(url) if url.startswith(("http://", "https://")) else None
    if data is None:
        raise bad(f"Error while downloading {url}.", param=f"{field}.image_url",
                  code="invalid_image_url")
    return data
