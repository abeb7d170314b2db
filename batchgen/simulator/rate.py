"""The server-side rate limit: a token bucket with one second of burst, its x-ratelimit-*
headers, and the 429 answer with Retry-After.

How a 429 states its wait (``RETRY_AFTER_STYLES``), as servers differ:

    exact     Retry-After in fractional seconds plus retry-after-ms (OpenAI's style)
    seconds   Retry-After in whole seconds, rounded up ("Retry-After: 1"), nothing else
    date      Retry-After as an HTTP date (whole seconds, rounded up), nothing else

The coarse styles are what many proxies and gateways send: a wait of 50 ms reads as a whole
second.
"""
from __future__ import annotations

import email.utils
import math
import time

from .validation import ApiError


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


RETRY_AFTER_STYLES = ("exact", "seconds", "date")


class RateBucket:
    """A token bucket: ``rpm / 60`` tokens a second, refilled continuously, holding at most one
    second's worth (at least one token); a request takes one token or is refused."""

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
        if self.tokens >= 1.0 - 1e-9:   # a slot due now is free now, whatever the float rounding
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def headers(self) -> dict:
        return {
            "x-ratelimit-limit-requests": str(int(round(self.rpm))),
            "x-ratelimit-remaining-requests": str(int(self.tokens)),
            "x-ratelimit-reset-requests": go_duration((self.capacity - self.tokens) / self.rate),
        }


def retry_after_headers(wait: float, style: str = "exact") -> dict:
    """The headers that tell a client to wait ``wait`` seconds, in one of RETRY_AFTER_STYLES."""
    if style == "date":
        return {"Retry-After": email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)}
    if style == "seconds":
        return {"Retry-After": str(max(1, math.ceil(wait - 1e-9)))}
    if style != "exact":
        raise ValueError(f"unknown Retry-After style {style!r} (one of {', '.join(RETRY_AFTER_STYLES)})")
    return {"Retry-After": _fmt_seconds(wait),
            "retry-after-ms": str(max(0, math.ceil(wait * 1000 - 1e-6)))}


def rate_error(wait: float, *, style: str = "exact", date: bool = False) -> ApiError:
    """The 429 for a request that must wait ``wait`` seconds, its wait stated in ``style``
    (``date=True`` is ``style="date"``: an HTTP date and no retry-after-ms)."""
    headers = retry_after_headers(wait, "date" if date else style)
    return ApiError(429, f"Rate limit reached for image requests. Please try again in "
                    f"{go_duration(wait)}.", type="requests", code="rate_limit_exceeded",
                    ace_code="too_many_requests", headers=headers)
