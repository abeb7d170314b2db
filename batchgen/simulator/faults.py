"""Which faults a request meets, and what the spoiled answers look like.

A decision comes from a RNG seeded by (seed, hash of the request body, how many times that
body was seen), so a run is repeatable whatever the request order, and a retry of the same body
draws afresh.
"""
from __future__ import annotations

import base64
import hashlib
import random
from typing import TYPE_CHECKING, Iterator

from .validation import ApiError

if TYPE_CHECKING:
    from .config import SimConfig
    from .images import Encoded

# Fault names, in the fixed order their random numbers are drawn (never reorder: seeds would
# then mean other runs).  The first five answer instead of the API; the last five spoil a 200.
PRE_FAULTS = ("hang", "drop", "fail_503_html", "fail_500", "fail_429")
POST_FAULTS = ("truncate", "bad_json", "bad_b64", "not_image", "expired_link")
FAULTS = PRE_FAULTS + POST_FAULTS

HTML_503 = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
            b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
            b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
NOT_JSON = b"<!-- upstream sent something else -->\nOK: image job accepted, see logs\n"
NOT_IMAGE = b"This is plain text pretending to be an image. It is not a PNG, JPEG or WebP.\n"


class FaultDice:
    """Draws the faults of each request; remembers how often each body was seen."""

    def __init__(self, config: "SimConfig"):
        self.config = config  # the seed is read at each draw, the probabilities once
        self.active = any(getattr(config, f) > 0 for f in FAULTS)
        self.probs = tuple(float(getattr(config, f)) for f in FAULTS)
        self.seen: dict = {}

    def decide(self, body: bytes) -> dict:
        digest = hashlib.sha256(body).digest()
        count = self.seen.get(digest, 0)
        self.seen[digest] = count + 1
        rng = random.Random(f"{self.config.seed}:{digest.hex()}:{count}")
        return {name: rng.random() < p for name, p in zip(FAULTS, self.probs)}

    def forget(self) -> None:
        self.seen.clear()


def timeout_error() -> ApiError:
    return ApiError(504, "The upstream did not answer in time.", type="server_error",
                    code="timeout", ace_code="timeout")


def server_error() -> ApiError:
    return ApiError(500, "The server had an error while processing your request. Sorry about that!",
                    type="server_error", code="api_error", ace_code="api_error")


def spoiled_b64(enc: "Encoded", fault: dict) -> bytes:
    """The b64_json text of one image, as the fault leaves it."""
    if fault.get("bad_b64"):
        return b"%%not*base64%%" + enc.b64[:41] + b"!"
    if fault.get("not_image"):
        return base64.b64encode(NOT_IMAGE)
    return enc.b64


def spoiled_body(body: bytes, fault: dict) -> bytes:
    if fault.get("bad_json"):
        return NOT_JSON
    if fault.get("truncate"):
        return body[:max(1, len(body) // 2)]
    return body


def post_faults_shown(fault: dict, response_format: str) -> Iterator[str]:
    """The spoiling faults that showed in the answer: bad_b64 needs b64_json, expired_link a url."""
    for name in POST_FAULTS:
        if fault.get(name) and (name != "bad_b64" or response_format == "b64_json") \
                and (name != "expired_link" or response_format == "url"):
            yield name

