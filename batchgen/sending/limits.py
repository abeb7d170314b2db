"""How fast and how often: requests-per-minute pacing, the shared 429 cool-down, the rate the
server allows learned on the fly, and the retry/backoff policy.

Parsing of rate-limit headers and the retry policy are pure; the pacers are small asyncio
objects shared by all workers of a run.
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Mapping, Optional, Protocol

# ---- headers ----------------------------------------------------------------------------

# A wait beyond a week is a server's mistake; below it, --max-wait (live backend) decides whether to wait.
MAX_SERVER_WAIT_S = 7 * 24 * 3600
MAX_LIMIT_PER_MINUTE = 10**9    # an x-ratelimit-* count beyond this means nothing to pace by


class ServerWait(float):
    """Seconds the server said to wait (a float), and whether it said it coarsely.

    ``coarse`` is True when the value has whole-second resolution — `Retry-After: 1` or an HTTP
    date, with no `retry-after-ms` — so the server's real wait may be up to a second shorter
    (a token bucket that frees a slot in 50 ms says "1").  The pacer treats such a value as an
    upper bound; an exact one (`retry-after-ms`, fractional seconds) as the wait itself.
    """

    coarse: bool

    def __new__(cls, seconds: float, coarse: bool = False) -> "ServerWait":
        obj = super().__new__(cls, seconds)
        obj.coarse = coarse
        return obj

    def __repr__(self) -> str:
        return f"ServerWait({float(self)!r}, coarse={self.coarse})"


def _finite(text) -> Optional[float]:
    """The number in a header's text, or None (absent, not a number, infinite, NaN)."""
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _bounded_wait(seconds: float, coarse: bool) -> ServerWait:
    return ServerWait(min(max(0.0, seconds), float(MAX_SERVER_WAIT_S)), coarse)


def parse_retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[ServerWait]:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.

    Always finite and within [0, MAX_SERVER_WAIT_S], or None when no header says anything
    usable (a NaN or an infinity is not a wait).  The result is a `ServerWait`: a float that
    also says whether the server stated it in whole seconds (`coarse`)."""
    ms = _finite(headers.get("retry-after-ms"))
    if ms is not None:
        return _bounded_wait(ms / 1000, coarse=False)
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    seconds = _finite(value)
    if seconds is not None:
        return _bounded_wait(seconds, coarse=seconds.is_integer())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:          # "-0000": UTC with no source time zone
        when = when.replace(tzinfo=timezone.utc)
    try:
        stamp = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return _bounded_wait(stamp - (time.time() if now is None else now), coarse=True)


@dataclass(frozen=True)
class RateLimitHeaders:
    limit: Optional[int]           # requests per minute the server allows (>= 1), or None
    remaining: Optional[int]       # >= 0, or None


def parse_ratelimit_headers(headers: Mapping[str, str]) -> Optional[RateLimitHeaders]:
    """The x-ratelimit-*-requests counts, each a whole number within [0, MAX_LIMIT_PER_MINUTE]
    (a limit of at least 1), or None where the server's value cannot be paced by: not a number,
    infinite, NaN, a limit of 0 or below, a count beyond the bound."""
    remaining = headers.get("x-ratelimit-remaining-requests")
    limit = headers.get("x-ratelimit-limit-requests")
    if remaining is None and limit is None:
        return None

    def as_count(v: Optional[str], least: int) -> Optional[int]:
        value = _finite(v)
        if value is None or value > MAX_LIMIT_PER_MINUTE:
            return None
        count = int(value)
        if count < least:
            return None if least > 0 else 0     # a negative "remaining" is "none left"
        return count
    return RateLimitHeaders(as_count(limit, 1), as_count(remaining, 0))


# ---- retry policy -----------------------------------------------------------------------


class Jitter(Protocol):
    """Where a backoff's jitter comes from: the `random` module, or a seeded `random.Random`."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a failed request again and how long to wait first: one object for a run.

    Two budgets per task: `max_retries` for failures (5xx, timeouts, dropped connections, bad
    responses) and `max_rate_limited` for 429s, which are the server pacing us rather than a
    fault of the task, so a storm of them does not use up the first.
    """
    max_retries: int = 8
    max_rate_limited: int = 100
    base_s: float = 1.0
    cap_s: float = 60.0

    def backoff(self, retry_number: int, rng: Jitter = random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**k)]."""
        return rng.uniform(0, min(self.cap_s, self.base_s * (2 ** max(0, retry_number - 1))))

    def delay(self, retry_number: int, retry_after: Optional[float], rng: Jitter = random) -> float:
        """What to wait before retry `retry_number` (1-based): the server's word when it gives one."""
        if retry_after is not None:
            return min(retry_after, MAX_SERVER_WAIT_S)
        return self.backoff(retry_number, rng)

    def for_task(self, rng: Jitter = random) -> "TaskRetries":
        return TaskRetries(self, rng)


class TaskRetries:
    """One task's use of the policy's budgets."""

    __slots__ = ("policy", "rng", "failures", "rate_limited")

    def __init__(self, policy: RetryPolicy, rng: Jitter):
        self.policy, self.rng = policy, rng
        self.failures = self.rate_limited = 0

    def next_wait(self, rate_limited: bool, retry_after: Optional[float]) -> Optional[float]:
        """Seconds to wait before sending again, or None when this kind's budget is spent.

        A 429 waits 0 here: the pacer's shared cool-down holds every worker, this one too."""
        if rate_limited:
            self.rate_limited += 1
            return 0.0 if self.rate_limited <= self.policy.max_rate_limited else None
        self.failures += 1
        if self.failures > self.policy.max_retries:
            return None
        return self.policy.delay(self.failures, retry_after, self.rng)


# ---- pacing -----------------------------------------------------------------------------

class Spacer:
    """At most `per_minute` units a minute, evenly spaced, so no 60-second window exceeds it.

    A request for n images takes n units (OpenAI counts images per minute as well as requests).
    """

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self._next = 0.0

    def reserve(self, units: int, now: float) -> float:
        """Book the next slot for `units`; returns how long to wait for it."""
        start = max(now, self._next)
        self._next = start + self.interval * units
        return start - now

    async def acquire(self, units: int = 1) -> None:
        wait = self.reserve(units, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


class AdaptivePacer:
    """Finds the server's rate limit without being told, and holds all workers to it.

    - A 429 opens one shared cool-down: every worker waits it out together instead of each
      sleeping on its own.  Its length is the server's Retry-After (else a second), except
      that a coarse one — whole seconds (`Retry-After: 1`) or an HTTP date, at most
      ROUNDED_MAX_S — is only an upper bound: a token bucket that frees a slot in 50 ms says
      "1".  When a pace is known, such a 429 pauses RESUME_INTERVALS of the (cut) pace's
      intervals instead (never more than the server said, never less than a second below it).
    - A cool-down voids every slot booked before it: the workers that held one book again,
      spaced at the pace from the cool-down's end, instead of all firing as it ends.
    - The first 429 sets a pace equal to the rate that was succeeding just before it. After
      that, AIMD: each success raises the pace by about INCREASE requests/s per second, and a
      429 cuts it by DECREASE, or down to the rate that was succeeding in the last second when
      that is lower (answers that take seconds let the pace overshoot by more than one cut).
      Once per burst: 429s to requests sent before the last cut are the same event, and tell
      nothing new about when the server frees a slot, so they extend the cool-down only when
      they ask for more than a rounded sub-second wait; for one round trip after a cut the
      successes, sent at the old pace, raise nothing.  The pace settles in a narrow band just
      under the server's limit.
    - Where the server states its limit (x-ratelimit-limit-requests, per minute, as OpenAI
      sends) the pace is that, before any 429 happens.

    `on_rate_limited` takes the Retry-After as `parse_retry_after` gives it (a `ServerWait`,
    which says whether it is coarse); a plain float counts as exact.
    """

    INCREASE = 1.0       # requests/s gained per second without a 429
    DECREASE = 0.9
    MIN_RATE = 0.5
    NO_RETRY_AFTER_S = 1.0
    ROUNDED_MAX_S = 1.25     # a coarse wait up to this may be a rounded-up sub-second wait
    RESUME_INTERVALS = 2.0   # pause after such a 429, in intervals of the pace
    MEASURED_MIN = 10        # successes in the last second worth trusting as the server's rate
    MAX_HOLD_S = 60.0        # the longest round trip the additive increase waits out

    def __init__(self) -> None:
        self.rate: Optional[float] = None      # requests per second; None: no limit known
        self._told = False                      # the rate comes from the server's headers
        self._next = 0.0                        # the next free slot
        self._cooldown_until = 0.0
        self._epoch = 0                         # counts 429 cool-downs: slots booked before one are void
        self._last_cut = 0.0
        self._hold_until = 0.0                  # no additive increase before this (see on_rate_limited)
        self._recent: deque[float] = deque()   # success times within the last second

    async def acquire(self) -> None:
        # No lock: the event loop runs this between awaits, so each reservation is atomic.
        while True:
            now = time.monotonic()
            if now < self._cooldown_until:
                await asyncio.sleep(self._cooldown_until - now)
                continue
            if not self.rate:
                return
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
            if start <= now:
                return
            epoch = self._epoch
            await asyncio.sleep(start - now)
            if self._epoch != epoch:
                continue    # a 429 cool-down voided our slot: book again, spaced after it
            wait = self._cooldown_until - time.monotonic()
            if wait > 0:    # the headers said nothing is left: wait for it, keep the slot
                await asyncio.sleep(wait)
            return

    def on_success(self, headers: Optional[RateLimitHeaders] = None) -> None:
        now = time.monotonic()
        if headers and headers.limit:
            told = headers.limit / 60.0
            self.rate, self._told = told, True
            if headers.remaining is not None and headers.remaining <= 0:
                self._cooldown_until = max(self._cooldown_until, now + 1.0 / told)
            return
        self._recent.append(now)
        while self._recent[0] < now - 1.0:
            self._recent.popleft()
        if self.rate and not self._told and now >= self._hold_until:
            self.rate += self.INCREASE / self.rate

    def on_rate_limited(self, retry_after: Optional[float], sent_at: float) -> float:
        """Take in a 429. Returns the seconds from now that the cool-down it opened or extended
        holds every worker (0: it changed nothing, an earlier one of its burst answered it)."""
        now = time.monotonic()
        same_burst = sent_at < self._last_cut
        if not same_burst:
            self._last_cut = now
            # The successes that arrive for one round trip after a cut were sent at the old
            # pace: they say nothing about the new one, so they raise nothing.
            self._hold_until = now + min(max(0.0, now - sent_at), self.MAX_HOLD_S)
            recent = float(sum(1 for t in self._recent if t >= now - 1.0))
            if self.rate is None:
                self.rate = max(self.MIN_RATE, recent)
            else:
                cut = self.rate * self.DECREASE
                if recent >= self.MEASURED_MIN:
                    # What the server let through in the last second is its limit, seen from
                    # here; with answers that take a while the pace can overshoot it by more
                    # than one cut.  Never more than halve at once on that evidence.
                    cut = min(cut, max(recent, self.rate / 2))
                self.rate = max(self.MIN_RATE, cut)
        pause, bound = self._pause(retry_after)
        if same_burst and bound:
            return 0.0  # sent at the old pace: this burst's cool-down has answered it already
        until = now + pause
        if until > self._cooldown_until:
            self._cooldown_until = until
            self._next = until
            self._epoch += 1
            return pause
        return 0.0

    def _pause(self, retry_after: Optional[float]) -> tuple:
        """(seconds to pause, whether the server's value was taken as an upper bound only)."""
        if retry_after is None:
            stated, coarse = self.NO_RETRY_AFTER_S, True       # our own guess, no better
        else:
            stated = min(max(0.0, float(retry_after)), float(MAX_SERVER_WAIT_S))   # NaN: 0
            coarse = bool(getattr(retry_after, "coarse", False))
        if coarse and self.rate and stated <= self.ROUNDED_MAX_S:
            # The real wait lies in (stated - 1, stated]: a few of our own intervals is enough.
            return max(stated - 1.0, min(stated, self.RESUME_INTERVALS / self.rate)), True
        return stated, False
