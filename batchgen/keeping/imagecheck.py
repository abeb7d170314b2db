"""SVG and GIF answers checked before they are kept: an SVG is parsed as XML (safely) and must
have an `<svg>` root; a GIF is walked block by block to its trailer, counting its frames.

A server's bytes are untrusted: both checks are bounded by the bytes' size (an SVG over
MAX_SVG_BYTES is refused before it is parsed), read nothing but the bytes given, and raise
BadResponse for anything they do not accept.

Why the standard library's expat and not defusedxml: entities are declared only in a DOCTYPE's
internal subset (`<!DOCTYPE svg [ ... ]>`), and any such subset is refused outright, as is any
entity declaration; an external DTD (the SVG 1.1 DOCTYPE many tools write) is never fetched,
since no handler for it is set and parameter entities are never parsed. So neither external
entities (XXE) nor entity expansion (billion laughs) can happen; that is the whole of what
defusedxml would add here, in three handlers.
"""
from __future__ import annotations

import re
from typing import Optional
from xml.parsers import expat

from batchgen.exceptions import BadResponse

MAX_SVG_BYTES = 10 * 1024 * 1024
MAX_SVG_DEPTH = 512            # elements nested deeper than this: not a picture, a parser attack
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
_GIF_MAGIC = (b"GIF87a", b"GIF89a")
# An SVG as a model writes it: optional BOM and whitespace, then markup (<?xml, <!--, <svg).
_XML_START = re.compile(rb"^(\xef\xbb\xbf)?\s*<[?!a-zA-Z]")
# A length in user units or px ("512", "512.5px"); other units (%, em, mm) say nothing in pixels.
_PIXELS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(px)?\s*$")
_VIEWBOX = re.compile(r"^\s*-?[\d.]+[\s,]+-?[\d.]+[\s,]+([\d.]+)[\s,]+([\d.]+)\s*$")


def is_gif(data: bytes) -> bool:
    return data.startswith(_GIF_MAGIC)


def looks_like_svg(data: bytes) -> bool:
    """Markup rather than an image format's magic: worth checking as an SVG."""
    return _XML_START.match(data[:64]) is not None


class _Refused(Exception):
    pass


def svg_size(data: bytes) -> tuple[Optional[int], Optional[int]]:
    """(width, height) in pixels from the root's width/height attributes (else its viewBox;
    None when neither says); raises BadResponse if the bytes are not a well-formed SVG
    document, are over MAX_SVG_BYTES, or hold a DOCTYPE's internal subset or an entity."""
    if len(data) > MAX_SVG_BYTES:
        raise BadResponse(f"the SVG is {len(data):,} bytes, over batchgen's limit of {MAX_SVG_BYTES:,}")
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    root: dict = {}
    depth = 0

    def refuse_doctype(_name, _system_id, _public_id, has_internal_subset) -> None:
        if has_internal_subset:
            raise _Refused("its DOCTYPE has an internal subset (refused: it could declare entities)")

    def refuse_entity(*_args) -> None:
        raise _Refused("it declares an entity")

    def start(name: str, attributes: dict) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_SVG_DEPTH:
            raise _Refused(f"its elements nest more than {MAX_SVG_DEPTH} deep")
        if not root:
            root["name"], root["attributes"] = name, attributes

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except _Refused as e:
        raise BadResponse(f"the SVG is refused: {e}") from None
    except expat.ExpatError as e:
        raise BadResponse(f"the SVG is not well-formed XML ({expat.errors.messages[e.code]}, "
                          f"line {e.lineno})") from None
    if root.get("name") not in ("svg", f"{SVG_NAMESPACE} svg"):
        found = str(root.get("name", "")).rsplit(" ", 1)[-1][:40]
        raise BadResponse(f"the XML's root element is <{found}>, not <svg>")
    attributes = root["attributes"]
    width, height = _pixels(attributes.get("width")), _pixels(attributes.get("height"))
    if width is None or height is None:
        box = _VIEWBOX.match(attributes.get("viewBox") or "")
        if box:
            width = width if width is not None else _whole(box[1])
            height = height if height is not None else _whole(box[2])
    return width, height


def _pixels(value: Optional[str]) -> Optional[int]:
    m = _PIXELS.match(value or "")
    return _whole(m[1]) if m else None


def _whole(text: str) -> Optional[int]:
    try:
        number = round(float(text))
    except ValueError:
        return None
    return number if 0 < number <= 1_000_000 else None


def gif_info(data: bytes) -> tuple[int, int, int]:
    """(width, height, frames) of a GIF, read from its blocks without decoding a pixel; raises
    BadResponse if it is cut short or malformed (a GIF must reach its trailer)."""
    if not is_gif(data) or len(data) < 13:
        raise BadResponse("the GIF's header is missing or cut short")
    width, height = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)   # after the global colour table
    frames = 0
    end = len(data)
    while True:
        if pos >= end:
            raise BadResponse(f"the GIF is cut short after {frames} frame(s) (no trailer)")
        block = data[pos]
        if block == 0x3B:           # trailer
            break
        if block == 0x21:           # extension: label, then data sub-blocks
            pos = _skip_sub_blocks(data, pos + 2, frames)
        elif block == 0x2C:         # image descriptor, local colour table, LZW code size, data
            if pos + 10 > end:
                raise BadResponse(f"the GIF is cut short in frame {frames + 1}")
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
            pos = _skip_sub_blocks(data, pos, frames)
            frames += 1
        else:
            raise BadResponse(f"the GIF holds an unknown block (0x{block:02x}) after {frames} frame(s)")
    if not frames:
        raise BadResponse("the GIF holds no frame")
    if not (width and height):
        raise BadResponse(f"the GIF's screen is {width}x{height}")
    return width, height, frames


def _skip_sub_blocks(data: bytes, pos: int, frames: int) -> int:
    """The position after a chain of data sub-blocks (each its length, then its bytes; 0 ends)."""
    end = len(data)
    while True:
        if pos >= end:
            raise BadResponse(f"the GIF is cut short after {frames} frame(s)")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
