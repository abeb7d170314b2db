"""Prompt-dependent PNG, JPEG and WebP images (and gpt-image-2.6's SVG and animated GIF),
made cheaply and cached.

A per-size, per-layout index pattern is built once with Pillow, and each prompt only picks a
layout and a palette (a PNG's PLTE chunk), so a cache miss costs a hash, a 768-byte palette and
a CRC.  JPEG/WebP and transparent output go through Pillow, ~25 ms for a 1024x1024 WebP: a
prompt picks one of ENCODED_VARIANTS pictures per (size, format, settings), so a long run pays
for a few hundred encodings and is then answered from a bounded LRU (PNG stays one picture per
prompt).  ``photo=True`` serves noise that does not compress (a 1024x1024
PNG is about 3 MB), cut per prompt from one noise pool per size.  An SVG is a few shapes in
the prompt's colours; a GIF is GIF_FRAMES frames of the drawing, its shape's colour cycling.
"""
from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

from PIL import Image, ImageChops, ImageDraw

if TYPE_CHECKING:
    from .validation import ImageRequest

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "svg": "image/svg+xml",
                 "gif": "image/gif"}
GIF_FRAMES = 4
_LAYOUTS = 16      # per size: 4 gradients x 4 shapes, one picked per prompt
_GRADIENT_TOP = 191  # gradient uses palette entries 0..191, shapes 192..255
_NOISE_ROWS = 512  # spare rows in a photo noise pool: where a prompt's image starts


ENCODED_VARIANTS = 512


def _ramp(x: int, y: int, count: int) -> bytes:
    return bytes(x + (y - x) * k // (count - 1) for k in range(count))


# _RAMPS[segment][from level][to level]: channel ramps between 16 levels (0, 17, ..., 255).
_RAMPS = tuple(
    tuple(tuple(_ramp(a * 17, b * 17, count) for b in range(16)) for a in range(16))
    for count in (_GRADIENT_TOP + 1, 255 - _GRADIENT_TOP)
)


def _chunk_parts(tag: bytes, data) -> list:
    """A PNG chunk as pieces, so that big data is copied once, by the caller's join."""
    return [struct.pack(">I", len(data)), tag, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))]


def _chunk(tag: bytes, data) -> bytes:
    return b"".join(_chunk_parts(tag, data))


def _png(width: int, height: int, color_type: int, raw: bytes, channels: int,
         level: int) -> tuple[bytes, bytes]:
    """Return (IHDR chunk, IDAT chunk) for raw rows of 8-bit samples (filter type 0)."""
    stride = width * channels
    view = memoryview(raw)
    rows: list[bytes | memoryview] = []
    for y in range(height):
        rows.append(b"\x00")
        rows.append(view[y * stride:(y + 1) * stride])
    return _ihdr(width, height, color_type), _chunk(b"IDAT", zlib.compress(b"".join(rows), level))


def _ihdr(width: int, height: int, color_type: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))


def _stored_zlib(data) -> bytes:
    """A zlib stream of stored (uncompressed) deflate blocks: no compression work at all."""
    view = memoryview(data)
    size = len(view)
    parts: list[bytes | memoryview] = [b"\x78\x01"]
    for pos in range(0, max(size, 1), 65535):
        block = view[pos:pos + 65535]
        last = 1 if pos + 65535 >= size else 0
        parts.append(struct.pack("<BHH", last, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    parts.append(struct.pack(">I", zlib.adler32(view)))
    return b"".join(parts)


class _LRU:
    """A least-recently-used map bounded by entries and by bytes."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
            return value[0]
        return None

    def put(self, key, value, size: int) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.items[key] = (value, size)
        self.bytes += size
        while len(self.items) > 1 and (len(self.items) > self.max_items or self.bytes > self.max_bytes):
            _, (_, s) = self.items.popitem(last=False)
            self.bytes -= s


class Encoded:
    __slots__ = ("data", "_b64")

    def __init__(self, data: bytes):
        self.data = data
        self._b64: Optional[bytes] = None

    @property
    def b64(self) -> bytes:
        """The base64 text (ASCII bytes), made once."""
        if self._b64 is None:
            self._b64 = base64.b64encode(self.data)
        return self._b64


class ImageMaker:
    """Prompt-dependent images, made cheaply and cached."""

    def __init__(self, photo: bool, cache_bytes: int):
        self.photo = photo
        self.cache = _LRU(4096, cache_bytes)
        self.layouts = _LRU(256, 256 * 2**20)   # (w, h, layout) -> (index bytes, IHDR, IDAT)
        self.noise = _LRU(4, 128 * 2**20)       # (w, h) -> noise pool bytes

    def get(self, prompt: str, index: int, req: "ImageRequest") -> Encoded:
        """The index-th image for the request (cached by everything that changes its bytes)."""
        # An edit's picture depends on the image it edits too.
        seed = f"{index}\x00{prompt}" + (f"\x00{req.inputs[0].sha256}" if req.inputs else "")
        key: tuple[object, ...] = (seed, req.width, req.height, req.output_format, req.background,
               req.compression if req.output_format != "png" else 100, req.style, req.quality)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
        fmt = req.output_format
        if fmt != "png":
            digest = hashlib.sha256(b"%d" % (int.from_bytes(digest[:4], "big") % ENCODED_VARIANTS)).digest()
            key = (digest, req.width, req.height, fmt, req.background, key[5], req.style, req.quality)
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        if self.photo and fmt not in ("svg", "gif"):
            data = self._photo(digest, req.width, req.height, fmt, req.compression)
        else:
            data = self._drawing(digest, req.width, req.height, fmt, req.compression,
                                 req.background == "transparent", req.style, req.quality)
        enc = Encoded(data)
        # The base64 text is cached with it when asked for: count both.
        self.cache.put(key, enc, len(data) * 2 + len(data) // 3 + 200)
        return enc

    # ---- drawings: layout (index pattern) per size, palette per prompt -------------------

    def _layout(self, w: int, h: int, layout: int):
        key = (w, h, layout)
        hit = self.layouts.get(key)
        if hit is not None:
            return hit
        g, shape = layout % 4, layout // 4
        vertical = Image.linear_gradient("L").resize((w, h))
        if g == 0:
            grad = vertical
        elif g == 1:
            grad = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((w, h))
        elif g == 2:
            horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_270).resize((w, h))
            grad = ImageChops.add(vertical, horizontal, scale=2.0)
        else:
            grad = Image.radial_gradient("L").resize((w, h))
        grad = grad.point(lambda v: v * _GRADIENT_TOP // 255)
        draw = ImageDraw.Draw(grad)
        s = min(w, h)
        cx, cy = w * (0.3 + 0.4 * ((layout * 7) % 5) / 4), h * (0.3 + 0.4 * ((layout * 3) % 5) / 4)
        r = s * (0.18 + 0.02 * (layout % 3))
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == 0:
            draw.ellipse(box, fill=224)
        elif shape == 1:
            draw.rectangle(box, fill=208)
            draw.rectangle([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=250)
        elif shape == 2:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=240)
        else:
            draw.ellipse(box, outline=232, width=max(1, int(r / 4)))
            draw.ellipse([cx - r / 4, cy - r / 4, cx + r / 4, cy + r / 4], fill=200)
        index = grad.tobytes()
        ihdr, idat = _png(w, h, 3, index, 1, 6)
        value = (index, ihdr, idat)
        self.layouts.put(key, value, len(index) + len(idat))
        return value

    @staticmethod
    def _palette(digest: bytes) -> bytes:
        """256 RGB entries: a ramp for the gradient (0..191) and one for the shapes (192..255).

        Endpoint colours come from the digest, 16 levels per channel, so every ramp is a
        precomputed slice and a palette costs six slice assignments."""
        out = bytearray(768)
        segments = ((0, 0, 1, 4), (3 * (_GRADIENT_TOP + 1), 1, 7, 10))
        for start, which, lo, hi in segments:
            for ch in range(3):
                ramp = _RAMPS[which][digest[lo + ch] >> 4][digest[hi + ch] >> 4]
                out[start + ch:start + 3 * len(ramp):3] = ramp
        return bytes(out)

    def _drawing(self, digest: bytes, w: int, h: int, fmt: str, compression: int,
                 transparent: bool, style: Optional[str] = None, quality: Optional[str] = None) -> bytes:
        if fmt == "svg":
            return self._svg(digest, w, h, transparent)
        index, ihdr, idat = self._layout(w, h, digest[0] % _LAYOUTS)
        palette = self._styled(self._palette(digest), style, quality)
        if fmt == "gif":
            return self._gif(index, palette, w, h)
        if fmt == "png":
            trns = _chunk(b"tRNS", bytes(_GRADIENT_TOP + 1)) if transparent else b""
            return b"".join((_PNG_SIG, ihdr, _chunk(b"PLTE", palette), trns, idat, _IEND))
        im = Image.frombytes("P", (w, h), index)
        im.putpalette(palette)
        if transparent:
            im.info["transparency"] = bytes(_GRADIENT_TOP + 1)
            im = im.convert("RGBA")
        else:
            im = im.convert("RGB")
        return self._pillow(im, fmt, compression)

    @staticmethod
    def _svg(digest: bytes, w: int, h: int, transparent: bool) -> bytes:
        back, shape = digest[1:4].hex(), digest[4:7].hex()
        r = min(w, h) * (0.2 + digest[7] / 1275)
        cx, cy = w * (0.3 + digest[8] / 637), h * (0.3 + digest[9] / 637)
        fill = "" if transparent else f'<rect width="{w}" height="{h}" fill="#{back}"/>'
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
                f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">{fill}'
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="#{shape}"/>'
                f'<rect x="{w * 0.1:.1f}" y="{h * 0.75:.1f}" width="{w * 0.8:.1f}" height="{h * 0.1:.1f}" '
                f'fill="#{digest[10:13].hex()}"/></svg>\n').encode()

    @staticmethod
    def _gif(index: bytes, palette: bytes, w: int, h: int) -> bytes:
        """GIF_FRAMES frames: the same drawing, the shapes' colours (entries 192..255) rotating."""
        frames = []
        shapes = palette[3 * (_GRADIENT_TOP + 1):]
        for k in range(GIF_FRAMES):
            turn = 3 * (k * len(shapes) // (3 * GIF_FRAMES))
            im = Image.frombytes("P", (w, h), index)
            im.putpalette(palette[:3 * (_GRADIENT_TOP + 1)] + shapes[turn:] + shapes[:turn])
            frames.append(im)
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0,
                       optimize=False)
        return buf.getvalue()

    @staticmethod
    def _styled(palette: bytes, style: Optional[str], quality: Optional[str]) -> bytes:
        """So a sweep shows a difference: "natural" mutes the colours, higher quality deepens
        the contrast. The same prompt keeps its layout and hues across the sweep."""
        muted = style == "natural"
        rich = quality in ("hd", "high")
        if not (muted or rich):
            return palette
        out = bytearray(palette)
        for i in range(0, len(out), 3):
            r, g, b = out[i], out[i + 1], out[i + 2]
            if muted:
                grey = (r * 30 + g * 59 + b * 11) // 100
                r, g, b = ((c + 2 * grey) // 3 for c in (r, g, b))
            if rich:
                r, g, b = (max(0, min(255, (c - 128) * 3 // 2 + 128)) for c in (r, g, b))
            out[i], out[i + 1], out[i + 2] = r, g, b
        return bytes(out)

    @staticmethod
    def _pillow(im: Image.Image, fmt: str, compression: int) -> bytes:
        buf = io.BytesIO()
        if fmt == "jpeg":
            im.save(buf, "JPEG", quality=max(1, min(95, compression)))
        else:
            im.save(buf, "WEBP", quality=max(1, compression), method=0)
        return buf.getvalue()

    # ---- photo mode: incompressible noise -----------------------------------------------

    def _photo(self, digest: bytes, w: int, h: int, fmt: str, compression: int) -> bytes:
        # One pool of noise rows per size (each row already led by its PNG filter byte); a
        # prompt takes h consecutive rows from a prompt-chosen start and gets its own first row.
        stride = 3 * w + 1
        pool = self.noise.get((w, h))
        if pool is None:
            rng = random.Random(f"batchgen-sim-noise:{w}x{h}")
            pool = b"".join(b"\x00" + rng.randbytes(3 * w) for _ in range(h + _NOISE_ROWS))
            self.noise.put((w, h), pool, len(pool))
        start = 1 + int.from_bytes(digest[:4], "big") % _NOISE_ROWS
        first = b"\x00" + random.Random(digest).randbytes(3 * w)
        rows = memoryview(pool)[start * stride:(start + h - 1) * stride]
        if fmt == "png":
            idat = _chunk_parts(b"IDAT", _stored_zlib(b"".join((first, rows))))
            return b"".join([_PNG_SIG, _ihdr(w, h, 2), *idat, _IEND])
        raw = b"".join(bytes(first[1:]) if y == 0 else rows[(y - 1) * stride + 1:y * stride]
                       for y in range(h))
        return self._pillow(Image.frombytes("RGB", (w, h), raw), fmt, compression)

