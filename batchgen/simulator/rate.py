"""The server-side rate limits: token buckets with one second of burst, their x-ratelimit-*
headers, the 429 answer and how it states its wait.

One API key, one set of limits.  The simulator accepts a single bearer token, so its buckets are
that key's: two runs (two processes, or two machines through a tunnel) pointed at one
``batchgen simulate`` process share them, as two jobs sharing one OpenAI key share its limits.
A request refused for its key (401) never reaches the buckets.

Three limits, each optional and each its own bucket (``Limiter``), as OpenAI limits its image
models:

    requests  rpm_limit   a request takes 1          x-ratelimit-{limit,remaining,reset}-requests
    images    ipm_limit   a request for n images     x-ratelimit-{...}-images (not an OpenAI
                          takes n                    header: OpenAI states IPM on its limits page
                                                     only; a client should not rely on it)
    tokens    tpm_limit   a request for n images     x-ratelimit-{...}-tokens
                          takes n * tokens_per_image
                          (default 1056: gpt-image-1's published output tokens for one
                          1024x1024 image at medium quality; one flat price per image whatever
                          the model, size and quality, and no input tokens: simple on purpose)

A bucket refills continuously at ``limit / 60`` a second and holds one second's worth (at least
one request's cost); a request that costs more than the bucket holds is let through when the
bucket is full, leaving it in debt.  A request is admitted only if EVERY bucket has room; then
each is charged; otherwise none is, and the 429 names the first limit (requests, images,
tokens) that refused it, in its message ("... on images per min (IPM): Limit 600, Used 600,
Requested 2 ...") and in its error type ("requests", "images", "tokens").

A limit can change while the simulator runs: ``Limiter.set`` (``POST /_sim/limit``), and
``rpm_schedule``, a list of (seconds after the first generation request, rpm) steps applied when
their time comes (exactly then, even if no request arrives at that instant: the bucket refills at
the old rate up to the step and at the new one after it).

How a 429 states its wait (``RETRY_AFTER_STYLES``), as servers differ:

    exact     Retry-After in fractional seconds plus retry-after-ms (OpenAI's style)
    seconds   Retry-After in whole seconds, rounded up ("Retry-After: 1"), nothing else
    date      Retry-After as an HTTP date (whole seconds, rounded up), nothing else
    none      no Retry-After at all (some gateways): the client must choose its own wait

The coarse styles are what many proxies and gateways send: a wait of 50 ms reads as a whole
second.
"""
from __future__ import annotations

import email.utils
import math
import time
from typing import Optional, Sequence

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


RETRY_AFTER_STYLES = ("exact", "seconds", "date", "none")

# The limits, in the order a refusal names them, and the words of its message
LIMIT_KINDS = ("requests", "images", "tokens")
LIMIT_WORDS = {"requests": "requests per min (RPM)", "images": "images per min (IPM)",
               "tokens": "tokens per min (TPM)"}
# The short names of POST /_sim/limit's JSON and of the stats: rpm, ipm, tpm
LIMIT_KEYS = {"rpm": "requests", "ipm": "images", "tpm": "tokens"}

TOKENS_PER_IMAGE = 1056   # gpt-image-1, 1024x1024, medium: OpenAI's published output tokens


class RateBucket:
    """A token bucket: ``per_minute / 60`` units a second, refilled continuously, holding at most
    one second's worth (at least one unit).  ``take(cost)`` takes ``cost`` units or says how long
    until they are there; a cost above the capacity waits for a full bucket and leaves it in debt.

    ``kind`` names the unit in the x-ratelimit-* headers: requests, images or tokens."""

    def __init__(self, per_minute: float, kind: str = "requests"):
        self.kind = kind
        self.stamp = time.monotonic()
        self._set(per_minute)
        self.tokens = self.capacity

    def _set(self, per_minute: float) -> None:
        if not per_minute > 0:
            raise ValueError(f"a {self.kind} limit must be > 0, not {per_minute!r}")
        self.per_minute = float(per_minute)
        self.rate = self.per_minute / 60.0
        self.capacity = max(1.0, self.rate)

    @property
    def rpm(self) -> float:   # the limit, per minute, whatever the unit (the older name)
        return self.per_minute

    def _refill(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` units are there: 0.0 if now (nothing taken)."""
        self._refill()
        need = min(float(cost), self.capacity)
        if self.tokens >= need - 1e-9:   # a slot due now is free now, whatever the float rounding
            return 0.0
        return (need - self.tokens) / self.rate

    def charge(self, cost: float = 1.0) -> None:
        """Take ``cost`` units (after ``wait`` said 0): down to 0, or into debt for a cost above
        the capacity."""
        cost = float(cost)
        self.tokens = self.tokens - cost if cost > self.capacity else max(0.0, self.tokens - cost)

    def take(self, cost: float = 1.0) -> float:
        """Take ``cost`` units: 0.0 if granted, else the seconds until they are there."""
        wait = self.wait(cost)
        if wait == 0.0:
            self.charge(cost)
        return wait

    def set_limit(self, per_minute: float, at: Optional[float] = None) -> None:
        """A new limit from ``at`` (monotonic; default now): the refill up to then is at the old
        rate; what the bucket holds is kept, cut to the new capacity."""
        self._refill(at)
        self._set(per_minute)
        self.tokens = min(self.tokens, self.capacity)

    def headers(self) -> dict:
        kind = self.kind
        return {
            f"x-ratelimit-limit-{kind}": str(int(round(self.per_minute))),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.tokens))),
            f"x-ratelimit-reset-{kind}": go_duration((self.capacity - self.tokens) / self.rate),
        }


class Limiter:
    """One key's limits: a bucket per limit that is set (see the module docstring), the schedule
    of rpm steps, and whether the x-ratelimit-* headers are sent."""

    def __init__(self, rpm: Optional[float] = None, ipm: Optional[float] = None,
                 tpm: Optional[float] = None, *, tokens_per_image: float = TOKENS_PER_IMAGE,
                 schedule: Sequence[tuple] = ()):
        self.buckets: dict = {}
        self.tokens_per_image = float(tokens_per_image)
        self.schedule = sorted((float(t), float(r)) for t, r in schedule)
        self._next = 0                       # the first schedule step not yet applied
        self.origin: Optional[float] = None  # monotonic time of the first generation request
        for kind, limit in zip(LIMIT_KINDS, (rpm, ipm, tpm)):
            if limit is not None:
                self.buckets[kind] = RateBucket(limit, kind)

    @property
    def active(self) -> bool:
        return bool(self.buckets) or self._next < len(self.schedule)

    def start(self, now: float) -> None:
        """A generation request arrived at ``now``: the first one starts the schedule's clock;
        steps that are due are applied."""
        if self.origin is None:
            self.origin = now
        while self._next < len(self.schedule) and self.origin + self.schedule[self._next][0] <= now:
            seconds, rpm = self.schedule[self._next]
            self.set("requests", rpm, at=self.origin + seconds)
            self._next += 1

    def set(self, kind: str, per_minute: Optional[float], at: Optional[float] = None) -> None:
        """Change (or add, or with None remove) one limit, from ``at`` (default now)."""
        if kind not in LIMIT_KINDS:
            raise ValueError(f"unknown limit {kind!r} (one of {', '.join(LIMIT_KINDS)})")
        if per_minute is None:
            self.buckets.pop(kind, None)
        elif kind in self.buckets:
            self.buckets[kind].set_limit(per_minute, at)
        else:
            self.buckets[kind] = RateBucket(per_minute, kind)   # a new limit starts full

    def limits(self) -> dict:
        """{"rpm": .., "ipm": .., "tpm": ..} per minute, None where there is no limit."""
        return {key: (self.buckets[kind].per_minute if kind in self.buckets else None)
                for key, kind in LIMIT_KEYS.items()}

    def costs(self, images: int) -> dict:
        return {"requests": 1.0, "images": float(images),
                "tokens": float(images) * self.tokens_per_image}

    def admit(self, images: int = 1) -> Optional[tuple]:
        """Admit a request for ``images`` images: None (every bucket charged), or (kind, wait
        seconds, cost) of the first limit that refuses it (no bucket charged)."""
        costs = self.costs(images)
        for kind in LIMIT_KINDS:
            bucket = self.buckets.get(kind)
            if bucket is not None:
                wait = bucket.wait(costs[kind])
                if wait > 0:
                    return kind, wait, costs[kind]
        for kind, bucket in self.buckets.items():
            bucket.charge(costs[kind])
        return None

    def headers(self) -> dict:
        out: dict = {}
        for kind in LIMIT_KINDS:
            if kind in self.buckets:
                out.update(self.buckets[kind].headers())
        return out

    def used(self, kind: str) -> int:
        """How much of the current second's allowance a bucket has given out (for messages)."""
        bucket = self.buckets[kind]
        return int(round(bucket.capacity - max(0.0, bucket.tokens)))


def retry_after_headers(wait: float, style: str = "exact") -> dict:
    """The headers that tell a client to wait ``wait`` seconds, in one of RETRY_AFTER_STYLES
    (``none``: no header at all)."""
    if style == "none":
        return {}
    if style == "date":
        return {"Retry-After": email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)}
    if style == "seconds":
        return {"Retry-After": str(max(1, math.ceil(wait - 1e-9)))}
    if style != "exact":
        raise ValueError(f"unknown Retry-After style {style!r} (one of {', '.join(RETRY_AFTER_STYLES)})")
    return {"Retry-After": _fmt_seconds(wait),
            "retry-after-ms": str(max(0, math.ceil(wait * 1000 - 1e-6)))}


def rate_error(wait: float, *, style: str = "exact", date: bool = False, kind: str = "requests",
               limit: Optional[float] = None, used: Optional[int] = None,
               requested: Optional[float] = None) -> ApiError:
    """The 429 for a request that must wait ``wait`` seconds, its wait stated in ``style``
    (``date=True`` is ``style="date"``: an HTTP date and no retry-after-ms).  With ``limit``,
    the message says which limit refused it, as OpenAI's do: "Rate limit reached on tokens per
    min (TPM): Limit 30000, Used 29000, Requested 2112. Please try again in 2.2s."; the error
    type is the limit's kind (requests, images or tokens)."""
    headers = retry_after_headers(wait, "date" if date else style)
    if limit is None:
        what = "Rate limit reached for image requests."
    else:
        what = (f"Rate limit reached on {LIMIT_WORDS[kind]}: Limit {int(round(limit))}, "
                f"Used {used if used is not None else '?'}, Requested {int(round(requested or 1))}.")
    return ApiError(429, f"{what} Please try again in {go_duration(wait)}.", type=kind,
                    code="rate_limit_exceeded", ace_code="too_many_requests", headers=headers)
