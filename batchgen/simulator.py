"""The built-in fake Images API: both dialects, real images, repeatable faults.

It serves, on a loopback port:

    POST /openai/images/generations   AceData dialect
    POST /v1/images/generations       OpenAI dialect (``OpenAI(base_url=".../v1")`` works)
    GET  /files/<id>.<ext>            images handed out as ``url`` (kept in memory, TTL)
    GET  /_sim/stats                  counters as JSON
    POST /_sim/reset                  zero the counters (``?all=1``: also quota, fault memory, rate bucket)

This module imports nothing from the rest of batchgen on purpose: it is written from the
APIs' own documents (OpenAI's published schema for ``POST /v1/images/generations`` and
AceData's guide and response-format page), so that a misunderstanding in the client cannot
hide by being mirrored here.

Images are cheap to make: a per-size, per-layout index pattern is built once with Pillow, and
each prompt only picks a layout and a palette (a PNG's PLTE chunk), so a cache miss costs a
hash, a 768-byte palette and a CRC.  JPEG/WebP and transparent output go through Pillow once
per (prompt, size, format) and are cached in a bounded LRU.  ``photo=True`` serves noise that
does not compress (a 1024x1024 PNG is about 3 MB), cut per prompt from one noise pool per size.

Fault decisions come from a RNG seeded by (seed, hash of the request body, how many times that
body was seen), so a run is repeatable whatever the request order, and a retry of the same body
draws afresh.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import hashlib
import io
import json
import math
import random
import re
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web
from PIL import Image, ImageChops, ImageDraw

__all__ = [
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "make_app",
    "start_simulator",
    "ACEDATA_PATH",
    "OPENAI_PATH",
]

ACEDATA_PATH = "/openai/images/generations"
OPENAI_PATH = "/v1/images/generations"
FILES_PATH = "/files/"
STATS_PATH = "/_sim/stats"
RESET_PATH = "/_sim/reset"

ACEDATA = "acedata"
OPENAI = "openai"

# Fault names, in the fixed order their random numbers are drawn (never reorder: seeds would
# then mean other runs).  The first five answer instead of the API; the last five spoil a 200.
PRE_FAULTS = ("hang", "drop", "fail_503_html", "fail_500", "fail_429")
POST_FAULTS = ("truncate", "bad_json", "bad_b64", "not_image", "expired_link")
FAULTS = PRE_FAULTS + POST_FAULTS


# --------------------------------------------------------------------------------------------
# Configuration and counters
# --------------------------------------------------------------------------------------------

@dataclass
class SimConfig:
    """Every knob of the simulator.  Probabilities are in [0, 1]; all default to 0."""

    token: str = "sim-token"
    latency: float = 0.0            # seconds from a generation request's arrival to its answer
    latency_jitter: float = 0.0     # plus uniform(0, latency_jitter)
    seed: int = 0
    fail_429: float = 0.0
    retry_after: float = 1.0        # Retry-After (seconds) sent with fail_429
    retry_after_date: bool = False  # send Retry-After as an HTTP date instead (and no retry-after-ms)
    fail_500: float = 0.0
    fail_503_html: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    hang_seconds: float = 3600.0
    truncate: float = 0.0
    bad_json: float = 0.0
    bad_b64: float = 0.0
    not_image: float = 0.0
    expired_link: float = 0.0
    policy_word: str = "forbidden-fruit"
    acedata_moderation_403: bool = False
    rpm_limit: Optional[float] = None
    ratelimit_headers: bool = True  # send x-ratelimit-* with the limit (OpenAI does; some proxies do not)
    quota_images: Optional[int] = None
    url_ttl: float = 3600.0
    photo: bool = False
    # Memory bounds (not in the brief's list; defaults are generous for tests and benchmarks).
    max_files: int = 10000              # images kept for url downloads (oldest dropped first)
    max_file_bytes: int = 512 * 2**20   # and at most this many bytes of them
    cache_bytes: int = 256 * 2**20      # encoded-image LRU budget

    def __post_init__(self) -> None:
        for name in FAULTS:
            p = getattr(self, name)
            if not (0.0 <= float(p) <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], not {p!r}")
        if self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("latency and latency_jitter must be >= 0")
        if self.rpm_limit is not None and self.rpm_limit <= 0:
            raise ValueError("rpm_limit must be > 0 (or None for no limit)")
        if self.quota_images is not None and self.quota_images < 0:
            raise ValueError("quota_images must be >= 0 (or None for no quota)")


@dataclass
class SimStats:
    """Counters.  Dict keys are strings (HTTP statuses as "200", plus "drop" and "hang")."""

    requests: int = 0                                   # generation requests received
    by_path: dict = field(default_factory=dict)         # path -> requests
    by_status: dict = field(default_factory=dict)       # "200"/"400"/.../"drop"/"hang" -> count
    by_model: dict = field(default_factory=dict)        # model of valid requests -> count
    images: int = 0                                     # images in 200 generation answers
    downloads: int = 0                                  # GET /files answered 200
    download_misses: int = 0                            # GET /files answered 404
    faults: dict = field(default_factory=dict)          # fault name -> times injected

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "by_model": dict(self.by_model),
            "images": self.images,
            "downloads": self.downloads,
            "download_misses": self.download_misses,
            "faults": dict(self.faults),
        }

    def copy(self) -> "SimStats":
        return SimStats(**self.as_dict())

    def reset(self) -> None:
        self.requests = self.images = self.downloads = self.download_misses = 0
        self.by_path.clear()
        self.by_status.clear()
        self.by_model.clear()
        self.faults.clear()

    def __getitem__(self, key: str) -> Any:  # stats["requests"] works too
        return getattr(self, key)


def _bump(d: dict, key: str, k: int = 1) -> None:
    d[key] = d.get(key, 0) + k


# --------------------------------------------------------------------------------------------
# What each model accepts (from the request schema's descriptions)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Model:
    name: str
    family: str                 # "dall-e" or "gpt-image"
    sizes: tuple
    qualities: tuple
    styles: tuple
    max_n: int
    max_prompt: int
    default_size: str
    custom_sizes: bool = False  # gpt-image-2: any WxH within limits


_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_GPT_QUALITIES = ("low", "medium", "high", "auto")


def _gpt(name: str, custom: bool = False) -> _Model:
    return _Model(name, "gpt-image", _GPT_SIZES, _GPT_QUALITIES, (), 10, 32000, "auto", custom)


MODELS = {
    # "auto" is the schema's default quality for every model and means "standard" for DALL-E.
    "dall-e-2": _Model("dall-e-2", "dall-e", ("256x256", "512x512", "1024x1024"),
                       ("standard", "auto"), (), 10, 1000, "1024x1024"),
    "dall-e-3": _Model("dall-e-3", "dall-e", ("1024x1024", "1792x1024", "1024x1792"),
                       ("standard", "hd", "auto"), ("vivid", "natural"), 1, 4000, "1024x1024"),
    "gpt-image-1": _gpt("gpt-image-1"),
    "gpt-image-1-mini": _gpt("gpt-image-1-mini"),
    "gpt-image-1.5": _gpt("gpt-image-1.5"),
    "gpt-image-2": _gpt("gpt-image-2", custom=True),
    "gpt-image-2-2026-04-21": _gpt("gpt-image-2-2026-04-21", custom=True),
}

_KNOWN_FIELDS = frozenset({
    "prompt", "model", "n", "quality", "response_format", "output_format", "output_compression",
    "stream", "partial_images", "size", "moderation", "background", "style", "user",
})
_GPT_ONLY_FIELDS = ("output_format", "output_compression", "background", "moderation",
                    "stream", "partial_images")
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,5})x([1-9][0-9]{0,5})$")
_MAX_EDGE = 3840
_MAX_PIXELS = 3840 * 2160


def _gpt2_size_problem(w: int, h: int) -> Optional[str]:
    if w % 16 or h % 16:
        return "width and height must both be multiples of 16"
    if max(w, h) > 3 * min(w, h):
        return "the aspect ratio must be between 1:3 and 3:1"
    if max(w, h) > _MAX_EDGE:
        return f"the longest edge must be at most {_MAX_EDGE} pixels"
    if w * h > _MAX_PIXELS:
        return f"the image must have at most {_MAX_PIXELS} pixels (3840x2160)"
    return None


class _ApiError(Exception):
    """One error answer, renderable in either dialect."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None,
                 ace_code: str = "bad_request", ace_status: Optional[int] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.ace_code = ace_code
        self.ace_status = ace_status or status
        self.headers = headers or {}


def _bad(message: str, *, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> _ApiError:
    return _ApiError(400, message, code=code, param=param)


def _quote_list(values) -> str:
    items = [f"'{v}'" for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


@dataclass
class _Req:
    model: _Model
    prompt: str
    n: int
    width: int
    height: int
    size: str            # "WxH" as generated (auto resolved)
    quality: str
    style: Optional[str]
    response_format: str  # "url" or "b64_json"
    output_format: str    # "png" / "jpeg" / "webp"
    compression: int
    background: str       # "transparent" or "opaque"


def _typed(body: dict, name: str, kind, kind_name: str):
    value = body.get(name)
    if value is None:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        got = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object"}.get(type(value), "another type")
        raise _bad(f"Invalid type for '{name}': expected {kind_name}, but got {got} instead.",
                   param=name, code="invalid_type")
    return value


def _choice(value: Optional[str], name: str, allowed, model: _Model) -> None:
    if value is not None and value not in allowed:
        raise _bad(f"Invalid value: '{value}'. Supported values for '{name}' with model "
                   f"'{model.name}' are: {_quote_list(allowed)}.", param=name)


def parse_request(body: Any) -> _Req:
    """Validate one decoded request body as the real API does; raise _ApiError if refused."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(k for k in body if k not in _KNOWN_FIELDS)
    if unknown:
        raise _bad(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")

    if body.get("prompt") is None:
        raise _bad("Missing required parameter: 'prompt'.", param="prompt",
                   code="missing_required_parameter")
    prompt = _typed(body, "prompt", str, "a string")
    if prompt == "":
        raise _bad("Invalid 'prompt': empty string. Expected a string with minimum length 1, "
                   "but got an empty string instead.", param="prompt", code="empty_string")

    model_name = _typed(body, "model", str, "a string")
    if model_name is None:
        # The schema: dall-e-2 unless a parameter only the GPT image models take is used.
        uses_gpt = any(body.get(k) is not None for k in _GPT_ONLY_FIELDS)
        model_name = "gpt-image-1" if uses_gpt else "dall-e-2"
    model = MODELS.get(model_name)
    if model is None:
        raise _ApiError(400, f"The model '{model_name}' does not exist or you do not have access "
                        f"to it. Supported image models: {_quote_list(MODELS)}.",
                        code="model_not_found", param="model")
    gpt = model.family == "gpt-image"

    if gpt and body.get("response_format") is not None:
        raise _bad(f"Unknown parameter: 'response_format'. Model '{model.name}' always returns "
                   "base64-encoded images (b64_json).", param="response_format",
                   code="unknown_parameter")
    if not gpt:
        for k in _GPT_ONLY_FIELDS:
            if body.get(k) is not None:
                raise _bad(f"Unknown parameter: '{k}'. It is only supported for the GPT image "
                           f"models, not '{model.name}'.", param=k, code="unknown_parameter")

    if len(prompt) > model.max_prompt:
        raise _bad(f"Invalid 'prompt': string too long. Expected a string with maximum length "
                   f"{model.max_prompt}, but got a string with length {len(prompt)} instead.",
                   param="prompt", code="string_above_max_length")

    n = _typed(body, "n", int, "an integer")
    n = 1 if n is None else n
    if n < 1:
        raise _bad(f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got "
                   f"{n} instead.", param="n", code="integer_below_min_value")
    if n > 10:
        raise _bad(f"Invalid 'n': integer above maximum value. Expected a value <= 10, but got "
                   f"{n} instead.", param="n", code="integer_above_max_value")
    if n > model.max_n:
        raise _bad(f"You must provide n=1 for model '{model.name}'.", param="n")

    size = _typed(body, "size", str, "a string") or model.default_size
    if size not in model.sizes:
        m = _SIZE_RE.match(size)
        problem = None if m else "it is not 'auto' nor of the form WIDTHxHEIGHT"
        if m and model.custom_sizes:
            problem = _gpt2_size_problem(int(m[1]), int(m[2]))
        if not model.custom_sizes or problem:
            extra = (f" Model '{model.name}' also accepts any WIDTHxHEIGHT whose sides are "
                     f"multiples of 16, with an aspect ratio between 1:3 and 3:1, at most "
                     f"3840x2160; here {problem}." if model.custom_sizes else "")
            raise _bad(f"Invalid value: '{size}'. Supported values for 'size' with model "
                       f"'{model.name}' are: {_quote_list(model.sizes)}.{extra}", param="size")
    if size == "auto":
        width = height = 1024
    else:
        w, h = size.split("x")
        width, height = int(w), int(h)

    quality = _typed(body, "quality", str, "a string")
    _choice(quality, "quality", model.qualities, model)
    if quality is None or quality == "auto":
        quality = "standard" if not gpt else "medium"

    style = _typed(body, "style", str, "a string")
    if style is not None:
        if not model.styles:
            raise _bad(f"Unknown parameter: 'style'. It is only supported for dall-e-3, not "
                       f"'{model.name}'.", param="style", code="unknown_parameter")
        _choice(style, "style", model.styles, model)
    elif model.styles:
        style = "vivid"

    response_format = _typed(body, "response_format", str, "a string")
    if not gpt:
        _choice(response_format, "response_format", ("url", "b64_json"), model)
    response_format = "b64_json" if gpt else (response_format or "url")

    output_format = _typed(body, "output_format", str, "a string") or "png"
    _choice(output_format, "output_format", ("png", "jpeg", "webp"), model)
    compression = _typed(body, "output_compression", int, "an integer")
    if compression is not None and not 0 <= compression <= 100:
        raise _bad(f"Invalid 'output_compression': expected a value between 0 and 100, but got "
                   f"{compression} instead.", param="output_compression")
    compression = 100 if compression is None else compression
    background = _typed(body, "background", str, "a string")
    _choice(background, "background", ("transparent", "opaque", "auto"), model)
    if background == "transparent" and output_format == "jpeg":
        raise _bad("Transparent background requires output_format 'png' or 'webp', not 'jpeg'.",
                   param="background")
    background = "transparent" if background == "transparent" else "opaque"
    _choice(_typed(body, "moderation", str, "a string"), "moderation", ("low", "auto"), model)
    if _typed(body, "stream", bool, "a boolean"):
        raise _bad("Streaming responses are not supported by the batchgen simulator; send "
                   "stream=false.", param="stream", code="unsupported_value")
    partial = _typed(body, "partial_images", int, "an integer")
    if partial is not None and not 0 <= partial <= 3:
        raise _bad(f"Invalid 'partial_images': expected a value between 0 and 3, but got "
                   f"{partial} instead.", param="partial_images")
    _typed(body, "user", str, "a string")

    return _Req(model, prompt, n, width, height, f"{width}x{height}", quality, style,
                response_format, output_format, compression, background)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_LAYOUTS = 16      # per size: 4 gradients x 4 shapes, one picked per prompt
_GRADIENT_TOP = 191  # gradient uses palette entries 0..191, shapes 192..255
_NOISE_ROWS = 512  # spare rows in a photo noise pool: where a prompt's image starts


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
    rows = []
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
    parts = [b"\x78\x01"]
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


class _Encoded:
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


class _ImageMaker:
    """Prompt-dependent images, made cheaply and cached."""

    def __init__(self, photo: bool, cache_bytes: int):
        self.photo = photo
        self.cache = _LRU(4096, cache_bytes)
        self.layouts = _LRU(256, 256 * 2**20)   # (w, h, layout) -> (index bytes, IHDR, IDAT)
        self.noise = _LRU(4, 128 * 2**20)       # (w, h) -> noise pool bytes

    def get(self, prompt: str, index: int, req: _Req) -> _Encoded:
        key = (prompt, index, req.width, req.height, req.output_format, req.background,
               req.compression if req.output_format != "png" else 100, req.style, req.quality)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        digest = hashlib.sha256(f"{index}\x00{prompt}".encode("utf-8", "surrogatepass")).digest()
        fmt = req.output_format
        if self.photo:
            data = self._photo(digest, req.width, req.height, fmt, req.compression)
        else:
            data = self._drawing(digest, req.width, req.height, fmt, req.compression,
                                 req.background == "transparent", req.style, req.quality)
        enc = _Encoded(data)
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
        index, ihdr, idat = self._layout(w, h, digest[0] % _LAYOUTS)
        palette = self._styled(self._palette(digest), style, quality)
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


# --------------------------------------------------------------------------------------------
# Rate limit (token bucket with one second of burst)
# --------------------------------------------------------------------------------------------

def go_duration(seconds: float) -> str:
    """OpenAI's reset-header format (Go durations): '120ms', '1s', '1.5s', '6m0s', '1h2m3s'."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{sec}"
    if m:
        return f"{m}m{sec}"
    return sec


def _fmt_seconds(seconds: float) -> str:
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".")


class _Bucket:
    def __init__(self, rpm: float):
        self.rpm = rpm
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        """Take a slot: 0.0 if granted, else the seconds until one frees."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def headers(self) -> dict:
        return {
            "x-ratelimit-limit-requests": str(int(round(self.rpm))),
            "x-ratelimit-remaining-requests": str(int(self.tokens)),
            "x-ratelimit-reset-requests": go_duration((self.capacity - self.tokens) / self.rate),
        }


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

def _revised(prompt: str, style: Optional[str]) -> str:
    base = prompt.strip().rstrip(".")
    mood = ("rendered in a natural, understated style with soft daylight and true-to-life colours"
            if style == "natural" else
            "rendered as a vivid, dramatic, highly detailed digital illustration with rich "
            "colours and cinematic lighting")
    return f"{base}, {mood}; the composition is balanced, the main subject is in sharp focus " \
           f"and the background is gently blurred."


def _usage(req: _Req) -> dict:
    per_image = {"low": 272, "medium": 1056, "high": 4160}[req.quality]
    output = int(per_image * (req.width * req.height) / (1024 * 1024)) * req.n
    text = max(1, math.ceil(len(req.prompt) / 4))
    return {
        "input_tokens": text,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": text + output,
    }


_HTML_503 = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
             b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
             b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
# Placeholder for a b64_json value in the JSON skeleton (unguessable, so no prompt contains it).
_MARK = f"@@b64-{uuid.uuid4().hex}-"
_NOT_JSON = b"<!-- upstream sent something else -->\nOK: image job accepted, see logs\n"
_NOT_IMAGE = b"This is plain text pretending to be an image. It is not a PNG, JPEG or WebP.\n"


class _SimState:
    """Everything one running simulator knows; the handlers are its methods."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.stats = SimStats()
        self.images = _ImageMaker(config.photo, config.cache_bytes)
        self.files: OrderedDict = OrderedDict()  # name -> (bytes, content type, expires)
        self.files_bytes = 0
        self.quota_used = 0
        self.seen: dict = {}
        self.bucket = _Bucket(config.rpm_limit) if config.rpm_limit else None
        self.jitter_rng = random.Random(f"jitter:{config.seed}")
        self.any_fault = any(getattr(config, f) > 0 for f in FAULTS)
        self.probs = tuple(float(getattr(config, f)) for f in FAULTS)
        self.closing = asyncio.Event()
        self.port: Optional[int] = None

    def reset(self, everything: bool = False) -> None:
        self.stats.reset()
        if everything:
            self.quota_used = 0
            self.seen.clear()
            if self.config.rpm_limit:
                self.bucket = _Bucket(self.config.rpm_limit)

    # ---- helpers ------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> bool:
        """Sleep; True if the server began closing meanwhile."""
        if self.closing.is_set():
            return True
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    def _decide(self, body: bytes) -> dict:
        digest = hashlib.sha256(body).digest()
        count = self.seen.get(digest, 0)
        self.seen[digest] = count + 1
        rng = random.Random(f"{self.config.seed}:{digest.hex()}:{count}")
        return {name: rng.random() < p for name, p in zip(FAULTS, self.probs)}

    def _respond(self, dialect: str, status: int, body: bytes, *, content_type="application/json",
                 headers: Optional[dict] = None) -> web.Response:
        _bump(self.stats.by_status, str(status))
        resp = web.Response(status=status, body=body, content_type=content_type)
        if headers:
            resp.headers.update(headers)
        if dialect == OPENAI:
            resp.headers["x-request-id"] = f"req_{uuid.uuid4().hex}"
        return resp

    def _error(self, dialect: str, err: _ApiError, headers: Optional[dict]) -> web.Response:
        if dialect == OPENAI:
            status = err.status
            doc = {"error": {"message": err.message, "type": err.type, "param": err.param,
                             "code": err.code}}
        else:
            status = err.ace_status
            doc = {"success": False, "error": {"code": err.ace_code, "message": err.message},
                   "trace_id": str(uuid.uuid4())}
        merged = dict(headers or {})
        merged.update(err.headers)
        return self._respond(dialect, status, json.dumps(doc).encode(), headers=merged)

    def _rate_error(self, wait: float, *, date: bool = False) -> _ApiError:
        if date:
            headers = {"Retry-After": email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)}
        else:
            headers = {"Retry-After": _fmt_seconds(wait),
                       "retry-after-ms": str(max(0, math.ceil(wait * 1000 - 1e-6)))}
        return _ApiError(429, f"Rate limit reached for image requests. Please try again in "
                         f"{go_duration(wait)}.", type="requests", code="rate_limit_exceeded",
                         ace_code="too_many_requests", headers=headers)

    def _store_file(self, data: bytes, ext: str) -> str:
        now = time.monotonic()
        files = self.files
        while files:  # drop expired (insertion order is expiry order: one TTL for all)
            name, (blob, _, expires) = next(iter(files.items()))
            if expires > now:
                break
            files.popitem(last=False)
            self.files_bytes -= len(blob)
        name = f"{uuid.uuid4().hex}.{ext}"
        files[name] = (data, _CONTENT_TYPES[ext], now + self.config.url_ttl)
        self.files_bytes += len(data)
        while len(files) > 1 and (len(files) > self.config.max_files
                                  or self.files_bytes > self.config.max_file_bytes):
            _, (blob, _, _) = files.popitem(last=False)
            self.files_bytes -= len(blob)
        return name

    # ---- routes -------------------------------------------------------------------------

    async def acedata(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ACEDATA)

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, OPENAI)

    async def _generate(self, request: web.Request, dialect: str) -> web.StreamResponse:
        # The latency is the server's whole time to answer, counted from the request's arrival
        # as a client sees a real API's: the work (parsing, drawing the image) happens within
        # it, so fifty requests that arrive together are answered together, latency later.
        cfg = self.config
        delay = cfg.latency
        if cfg.latency_jitter:
            delay += self.jitter_rng.uniform(0.0, cfg.latency_jitter)
        answer_at = time.monotonic() + delay
        response = await self._answer(request, dialect)
        wait = answer_at - time.monotonic()
        transport = request.transport
        if wait > 0 and transport is not None and not transport.is_closing():
            if await self._pause(wait):
                return self._hang_up(request, "closed")
        return response

    async def _answer(self, request: web.Request, dialect: str) -> web.StreamResponse:
        cfg = self.config
        stats = self.stats
        stats.requests += 1
        _bump(stats.by_path, request.path)
        body = await request.read()

        # Authentication: only "Authorization: Bearer <token>".
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != cfg.token:
            given = token.strip()
            if not given:
                msg = ("You didn't provide an API key. Provide it in an Authorization header "
                       "using Bearer auth (Authorization: Bearer YOUR_KEY).")
            else:
                shown = given[:3] + "*" * 4 + given[-4:] if len(given) > 8 else "*" * len(given)
                msg = f"Incorrect API key provided: {shown}. The token is invalid or wrong."
            return self._error(dialect, _ApiError(401, msg, code="invalid_api_key",
                                                  ace_code="invalid_token"), None)

        # Server-side rate limit.
        headers = None
        if self.bucket is not None:
            wait = self.bucket.take()
            headers = self.bucket.headers() if self.config.ratelimit_headers else None
            if wait > 0:
                _bump(stats.faults, "rpm_limit")
                return self._error(dialect, self._rate_error(wait), headers)

        # Faults that answer instead of the API.
        fault = self._decide(body) if self.any_fault else None
        if fault:
            if fault["hang"]:
                _bump(stats.faults, "hang")
                _bump(stats.by_status, "hang")
                if await self._pause(cfg.hang_seconds):
                    return self._hang_up(request, None)
                return self._error(dialect, _ApiError(
                    504, "The upstream did not answer in time.", type="server_error",
                    code="timeout", ace_code="timeout"), headers)
            if fault["drop"]:
                _bump(stats.faults, "drop")
                return self._hang_up(request, "drop")
            if fault["fail_503_html"]:
                _bump(stats.faults, "fail_503_html")
                return self._respond(dialect, 503, _HTML_503, content_type="text/html",
                                     headers=headers)
            if fault["fail_500"]:
                _bump(stats.faults, "fail_500")
                return self._error(dialect, _ApiError(
                    500, "The server had an error while processing your request. Sorry about that!",
                    type="server_error", code="api_error", ace_code="api_error"), headers)
            if fault["fail_429"]:
                _bump(stats.faults, "fail_429")
                return self._error(dialect, self._rate_error(cfg.retry_after, date=cfg.retry_after_date),
                                   headers)

        # The request itself.
        try:
            try:
                doc = json.loads(body)
            except ValueError:
                raise _bad("We could not parse the JSON body of your request. The API expects a "
                           "JSON object (Content-Type: application/json).", code=None)
            req = parse_request(doc)
            _bump(stats.by_model, req.model.name)
            word = cfg.policy_word
            if word and word.lower() in req.prompt.lower():
                ace_403 = cfg.acedata_moderation_403
                raise _ApiError(
                    400, "Your request was rejected as a result of our safety system. Your prompt "
                    "may contain text that is not allowed by our safety system.",
                    type="image_generation_user_error", code="content_policy_violation",
                    ace_code="forbidden" if ace_403 else "content_policy_violation",
                    ace_status=403 if ace_403 else 400)
            if cfg.quota_images is not None and self.quota_used + req.n > cfg.quota_images:
                raise _ApiError(
                    429, "You exceeded your current quota, please check your plan and billing "
                    "details.", type="insufficient_quota", code="insufficient_quota",
                    ace_code="used_up", ace_status=403)
        except _ApiError as err:
            return self._error(dialect, err, headers)

        return self._success(request, dialect, req, fault, headers)

    def _success(self, request: web.Request, dialect: str, req: _Req, fault: Optional[dict],
                 headers: Optional[dict]) -> web.Response:
        stats = self.stats
        self.quota_used += req.n
        stats.images += req.n
        fault = fault or {}
        dall_e_3 = req.model.name == "dall-e-3"
        revised = _revised(req.prompt, req.style) if dall_e_3 else None
        host = request.host or f"127.0.0.1:{self.port}"
        data = []
        blobs: list = []  # base64 texts, spliced into the JSON text at their markers
        for i in range(req.n):
            enc = self.images.get(req.prompt, i, req)
            item: dict = {}
            if req.response_format == "url":
                if fault.get("expired_link"):
                    name = f"{uuid.uuid4().hex}.{req.output_format}"  # never stored: 404
                else:
                    blob = _NOT_IMAGE if fault.get("not_image") else enc.data
                    name = self._store_file(blob, req.output_format)
                item["url"] = f"http://{host}{FILES_PATH}{name}"
            else:
                if fault.get("bad_b64"):
                    blobs.append(b"%%not*base64%%" + enc.b64[:41] + b"!")
                elif fault.get("not_image"):
                    blobs.append(base64.b64encode(_NOT_IMAGE))
                else:
                    blobs.append(enc.b64)
                item["b64_json"] = f"{_MARK}{i}"
            if revised is not None:
                item["revised_prompt"] = revised
            data.append(item)
        for name in POST_FAULTS:
            if fault.get(name) and (name != "bad_b64" or req.response_format == "b64_json") \
                    and (name != "expired_link" or req.response_format == "url"):
                _bump(stats.faults, name)

        doc: dict = {}
        if dialect == ACEDATA:
            doc["success"] = True
            doc["task_id"] = str(uuid.uuid4())
            doc["trace_id"] = str(uuid.uuid4())
        doc["created"] = int(time.time())
        doc["data"] = data
        if req.model.family == "gpt-image":
            doc["background"] = req.background
            doc["output_format"] = req.output_format
            doc["quality"] = req.quality
            doc["size"] = req.size
            doc["usage"] = _usage(req)
        body = json.dumps(doc).encode()
        if blobs:
            # Big base64 texts skip json.dumps: only the small skeleton is serialised, and the
            # final body is joined once.
            parts, pos = [], 0
            for i, blob in enumerate(blobs):
                marker = f"{_MARK}{i}\"".encode()
                at = body.index(marker, pos)
                parts += (body[pos:at], blob, b'"')
                pos = at + len(marker)
            parts.append(body[pos:])
            body = b"".join(parts)
        if fault.get("bad_json"):
            body = _NOT_JSON
        elif fault.get("truncate"):
            body = body[:max(1, len(body) // 2)]
        return self._respond(dialect, 200, body, headers=headers)

    def _hang_up(self, request: web.Request, label: Optional[str]) -> web.Response:
        """Close the connection without an answer (the client sees a disconnect)."""
        if label:
            _bump(self.stats.by_status, label)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never reaches the client: the connection is closed

    async def download(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        entry = self.files.get(name)
        if entry is not None and entry[2] <= time.monotonic():
            blob = self.files.pop(name)[0]
            self.files_bytes -= len(blob)
            entry = None
        if entry is None:
            self.stats.download_misses += 1
            return web.Response(status=404, text="404: this image link does not exist or has expired.\n")
        self.stats.downloads += 1
        return web.Response(body=entry[0], content_type=entry[1])

    async def get_stats(self, request: web.Request) -> web.Response:
        doc = self.stats.as_dict()
        doc["quota_used"] = self.quota_used
        return web.json_response(doc)

    async def post_reset(self, request: web.Request) -> web.Response:
        everything = request.query.get("all", "").lower() in ("1", "true", "yes")
        self.reset(everything)
        return web.json_response({"ok": True, "all": everything})


_STATE = web.AppKey("batchgen_simulator_state", _SimState)


def make_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (run it with access logs off for speed)."""
    state = _SimState(config)
    app = web.Application(client_max_size=4 * 2**20)
    app[_STATE] = state
    app.router.add_post(ACEDATA_PATH, state.acedata)
    app.router.add_post(OPENAI_PATH, state.openai)
    app.router.add_get(FILES_PATH + "{name}", state.download)
    app.router.add_get(STATS_PATH, state.get_stats)
    app.router.add_post(RESET_PATH, state.post_reset)
    return app


class Simulator:
    """A simulator listening in the caller's event loop (see start_simulator)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, host: str, port: int):
        self.app = app
        self.runner = runner
        self.host = host
        self.port = port
        self._state = app[_STATE]
        self._state.port = port
        self.config = self._state.config
        self.base_url = f"http://{host}:{port}"
        self.acedata_url = self.base_url + ACEDATA_PATH
        self.openai_base_url = self.base_url + "/v1"
        self.openai_url = self.base_url + OPENAI_PATH
        self._closed = False

    @property
    def stats(self) -> SimStats:
        return self._state.stats

    def reset_stats(self, everything: bool = False) -> None:
        self._state.reset(everything)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._state.closing.set()  # wakes sleeping (latency/hang) handlers, which hang up
        await self.runner.cleanup()

    async def __aenter__(self) -> "Simulator":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def start_simulator(config: Optional[SimConfig] = None, host: str = "127.0.0.1",
                          port: int = 0) -> Simulator:
    """Start serving in the running event loop; port 0 picks a free one."""
    app = make_app(config or SimConfig())
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return Simulator(app, runner, host, bound)


class SimulatorThread:
    """A simulator on its own event loop in a daemon thread, for synchronous code and tests.

        with SimulatorThread(SimConfig(fail_500=0.2)) as sim:
            ... sim.acedata_url, sim.openai_base_url, sim.stats ...

    Keyword arguments override fields of the config: ``SimulatorThread(drop=1.0)``.
    """

    def __init__(self, config: Optional[SimConfig] = None, host: str = "127.0.0.1", port: int = 0,
                 **overrides: Any):
        config = config or SimConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.host = host
        self._want_port = port
        self._sim: Optional[Simulator] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.port: Optional[int] = None
        self.base_url = self.acedata_url = self.openai_base_url = self.openai_url = None

    def start(self) -> "SimulatorThread":
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="batchgen-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        sim = self._sim
        self.port = sim.port
        self.base_url = sim.base_url
        self.acedata_url = sim.acedata_url
        self.openai_base_url = sim.openai_base_url
        self.openai_url = sim.openai_url
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            try:
                self._sim = loop.run_until_complete(
                    start_simulator(self.config, self.host, self._want_port))
            except BaseException as exc:  # reported to start()
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._sim.close())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _call(self, fn):
        """Run fn() on the simulator's loop and return its result."""
        loop = self._loop
        if (loop is None or self._thread is None or not loop.is_running()
                or threading.current_thread() is self._thread):
            return fn()

        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

    @property
    def stats(self) -> SimStats:
        """A consistent copy of the counters (taken on the simulator's own thread)."""
        if self._sim is None:
            return SimStats()
        return self._call(self._sim.stats.copy)

    def reset_stats(self, everything: bool = False) -> None:
        if self._sim is not None:
            self._call(lambda: self._sim.reset_stats(everything))

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._sim.close(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> "SimulatorThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
