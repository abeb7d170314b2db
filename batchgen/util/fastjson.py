"""JSON for the paths every task takes: each answer parsed, each journal line written, each
record read back for the results.

orjson does these several times faster than the standard library (figures: bench/README.md,
"Internals"). Where orjson refuses what the standard library
accepts (NaN and Infinity, lone surrogates, nesting past 1,024), the standard library reads
it, so an answer is judged as before. One difference: orjson reads an integer past 64 bits as
a float; every bound the client checks (client.server_int and the rest) refuses both.
"""
from __future__ import annotations

import json

import orjson

_NEWLINE = orjson.OPT_APPEND_NEWLINE
_stdlib_line = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode


def loads(data):
    """A JSON text (bytes or str) as Python values; ValueError (or UnicodeDecodeError,
    RecursionError) as json.loads raises them."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps_line(value) -> bytes:
    """One compact JSON line (UTF-8, "\\n" at the end). A float that is not finite is written
    as null; what orjson cannot write (an integer past 64 bits, a lone surrogate) is written
    by the standard library, escaped to ASCII."""
    try:
        return orjson.dumps(value, option=_NEWLINE)
    except orjson.JSONEncodeError:
        return (_stdlib_line(value) + "\n").encode("ascii")
