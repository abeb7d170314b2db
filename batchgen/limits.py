"""How fast and how often: requests-per-minute pacing, the shared 429 cool-down, the rate the
server allows learned on the fly, and the retry/backoff policy.

Parsing of rate-limit headers and the retry policy are pure; the pacers are small asyncio
objects shared by all workers of a run.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Optional

# ---- headers ----------------------------------------------------------------------------


def parse_retry_after(headers, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RateLimitHeaders:
    limit: Optional[int]           # requests per minute the server allows
    remaining: Optional[int]


def parse_ratelimit_headers(headers) -> Optional[RateLimitHeaders]:
    remaining = headers.get("x-ratelimit-remaining-requests")
    limit = headers.get("x-ratelimit-limit-requests")
    if remaining is None and limit is None:
        return None

    def as_int(v):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None
    return RateLimitHeaders(as_int(limit), as_int(remaining))


# ---- retry policy -----------------------------------------------------------------------

MAX_SERVER_WAIT_S = 15 * 60     # a Retry-After beyond this is a server's mistake, not a plan


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

    def backoff(self, retry_number: int, rng: random.Random = random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**k)]."""
        return rng.uniform(0, min(self.cap_s, self.base_s * (2 ** max(0, retry_number - 1))))

    def delay(self, retry_number: int, retry_after: Optional[float], rng: random.Random = random) -> float:
        """What to wait before retry `retry_number` (1-based): the server's word when it gives one."""
        if retry_after is not None:
            return min(retry_after, MAX_SERVER_WAIT_S)
        return self.backoff(retry_number, rng)

    def for_task(self, rng: random.Random = random) -> "TaskRetries":
        return TaskRetries(self, rng)


class TaskRetries:
    """One task's use of the policy's budgets."""

    __slots__ = ("policy", "rng", "failures", "rate_limited")

    def __init__(self, policy: RetryPolicy, rng: random.Random):
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

    - A 429 opens one shared cool-down (its Retry-After, else a second): every worker waits it
      out together instead of each sleeping on its own.
    - The first 429 sets a pace equal to the rate that was succeeding just before it. After
      that, AIMD: each success raises the pace by about INCREASE requests/s per second, and a
      429 cuts it by DECREASE (once per burst: 429s to requests sent before the last cut are
      the same event). The pace settles in a narrow band just under the server's limit.
    - Where the server states its limit (x-ratelimit-limit-requests, per minute, as OpenAI
      sends) the pace is that, before any 429 happens.
    """

    INCREASE = 1.0       # requests/s gained per second without a 429
    DECREASE = 0.9
    MIN_RATE = 0.5
    NO_RETRY_AFTER_S = 1.0

    def __init__(self):
        self.rate: Optional[float] = None      # requests per second; None: no limit known
        self._told = False                      # the rate comes from the server's headers
        self._next = 0.0
        self._cooldown_until = 0.0
        self._last_cut = 0.0
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
            if start > now:
                await asyncio.sleep(start - now)
            if time.monotonic() >= self._cooldown_until:
                return
            # A cool-down began while we waited for our slot: wait it out, keep the slot.
            await asyncio.sleep(self._cooldown_until - time.monotonic())
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
        if self.rate and not self._told:
            self.rate += self.INCREASE / self.rate

    def on_rate_limited(self, retry_after: Optional[float], sent_at: float) -> None:
        now = time.monotonic()
        pause = self.NO_RETRY_AFTER_S if retry_after is None else retry_after
        self._cooldown_until = max(self._cooldown_until, now + min(pause, MAX_SERVER_WAIT_S))
        self._next = max(self._next, self._cooldown_until)
        if sent_at < self._last_cut:
            return  # a 429 to a request sent before we slowed down: the same burst
        self._last_cut = now
        if self.rate is None:
            recent = sum(1 for t in self._recent if t >= now - 1.0)
            self.rate = max(self.MIN_RATE, float(recent))
        else:
            self.rate = max(self.MIN_RATE, self.rate * self.DECREASE)
