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
from typing import Any, Coroutine, Mapping, Optional, Protocol

# ---- headers ----------------------------------------------------------------------------

# A wait beyond a week is a server's mistake; below it, --max-wait (live backend) decides whether to wait.
MAX_SERVER_WAIT_S = 7 * 24 * 3600
MAX_LIMIT_PER_MINUTE = 10**9    # an x-ratelimit-* count of requests or images beyond this means nothing to pace by
# Tokens run to millions a minute (OpenAI's image models: up to 8,000,000 TPM at tier 5), so
# their bound is wider; beyond it a count means nothing to pace by either.
MAX_TOKENS_PER_MINUTE = 10**13


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
    """The x-ratelimit-* counts a server sent, per minute: requests, images (OpenAI limits its
    image models in images a minute; a request for n takes n) and tokens (a request takes what
    its answer's usage counts). A limit is >= 1, a remaining >= 0; None where not said usably."""
    limit: Optional[int]           # requests per minute the server allows (>= 1), or None
    remaining: Optional[int]       # >= 0, or None
    images_limit: Optional[int] = None
    images_remaining: Optional[int] = None
    tokens_limit: Optional[int] = None
    tokens_remaining: Optional[int] = None


# Each kind the headers name: its limit's and its remaining's header, and the bound of its counts
_RATELIMIT_KINDS = tuple((f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", most)
                         for kind, most in (("requests", MAX_LIMIT_PER_MINUTE), ("images", MAX_LIMIT_PER_MINUTE),
                                            ("tokens", MAX_TOKENS_PER_MINUTE)))


def _as_count(text: Optional[str], least: int, most: int) -> Optional[int]:
    """A header's whole count within [least, most], or None; a negative "remaining" (least 0)
    is "none left"."""
    value = _finite(text)
    if value is None or value > most:
        return None
    count = int(value)
    if count < least:
        return None if least > 0 else 0
    return count


def parse_ratelimit_headers(headers: Mapping[str, str]) -> Optional[RateLimitHeaders]:
    """The x-ratelimit-{limit,remaining}-{requests,images,tokens} counts, each a whole number
    within [0, its bound] (MAX_LIMIT_PER_MINUTE; MAX_TOKENS_PER_MINUTE for tokens; a limit of at
    least 1), or None where the server's value cannot be paced by: not a number, infinite, NaN,
    a limit of 0 or below, a count beyond the bound. None when no such header came at all."""
    counts: list = []
    said = False
    get = headers.get
    # On every answer: a kind the server does not send costs two lookups, nothing more.
    for limit_name, remaining_name, most in _RATELIMIT_KINDS:
        limit, remaining = get(limit_name), get(remaining_name)
        if limit is None and remaining is None:
            counts += (None, None)
            continue
        said = True
        counts += (_as_count(limit, 1, most), _as_count(remaining, 0, most))
    return RateLimitHeaders(*counts) if said else None


def stated_rate(headers: RateLimitHeaders, images: int = 1,
                tokens: Optional[float] = None) -> Optional[float]:
    """Requests per second the headers allow a request for `images` images that takes `tokens`
    tokens: the smallest of the requests limit, the images limit / images and the tokens limit /
    tokens (left out while `tokens` is unknown), each a minute's count over 60; None if none."""
    rates = []
    if headers.limit:
        rates.append(headers.limit / 60.0)
    if headers.images_limit:
        rates.append(headers.images_limit / 60.0 / max(1, images))
    if headers.tokens_limit and tokens:
        rates.append(headers.tokens_limit / 60.0 / tokens)
    return min(rates) if rates else None


def nothing_remains(headers: RateLimitHeaders, images: int = 1, tokens: Optional[float] = None) -> bool:
    """Does any kind say the next request would be refused: none left (a remaining of 0), or
    fewer images or tokens left than the request takes (what "0 requests left" means in their
    units; the tokens only once a request's tokens are known)?"""
    if headers.remaining is not None and headers.remaining <= 0:
        return True
    if headers.images_remaining is not None and headers.images_remaining < max(1, images):
        return True
    if headers.tokens_remaining is not None:
        return headers.tokens_remaining <= 0 or bool(tokens and headers.tokens_remaining < tokens)
    return False


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

    __slots__ = ("policy", "rng", "failures", "rate_limited", "once")

    def __init__(self, policy: RetryPolicy, rng: Jitter):
        self.policy, self.rng = policy, rng
        self.failures = self.rate_limited = self.once = 0

    def next_wait(self, rate_limited: bool, retry_after: Optional[float], once: bool = False) -> Optional[float]:
        """Seconds to wait before sending again, or None when this kind's budget is spent.

        A 429 waits 0 here: the pacer says how long (a cool-down that holds every worker, or
        before any pace is known, a wait of the request's own). `once`: a failure worth one
        more try at most (classify's RETRY_ONCE), within the failures' budget too."""
        if rate_limited:
            self.rate_limited += 1
            return 0.0 if self.rate_limited <= self.policy.max_rate_limited else None
        if once:
            self.once += 1
            if self.once > 1:
                return None
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


class Attempt:
    """One request as the pacer sees it: when it left, and what became of it."""

    __slots__ = ("sent_at", "state")
    PENDING, ACCEPTED, REFUSED = 0, 1, 2

    def __init__(self, sent_at: float):
        self.sent_at = sent_at
        self.state = Attempt.PENDING


class RateFinder:
    """Finds the rate the server lets through, holds every worker to it, and says how many
    requests should be in flight (`window`: the backend keeps that many workers).

    The rate is measured, not probed down. Requests are grouped by when they were sent, in
    windows of WINDOW_S (and WINDOW_SENDS sends at least). A window is settled once each of its
    requests has been refused (a 429) or gone unrefused for the horizon: twice the time 429s
    take to come back, learned from them (a second until one has come). A settled window that
    held refusals shows what the server lets through per second, whatever the latency of a
    success; the pace then asks TARGET_REFUSED more than that, so runs that share a limit hold
    all of it between them and one notices at once when the others leave (under SMALL_LIMIT it
    keeps just under instead: a second of burst absorbs no jitter there). A burst of 429s is one
    window's count, not one cut each. A settled window without refusals in which the workers
    used the pace raises it by PROBE_GAINS, more with each such window in a row. Until a window
    is settled, a burst of BURST_SENDS or more within a second sets a first pace: what got
    through in that second.

    Waiting workers queue in order, and one dispatcher hands the slots out at the pace it reads
    each time, so a pace raised or cut applies to everyone waiting at once. A 429 holds every
    worker (a shared cool-down) only when the server asks for a long wait — an exact wait of
    LONG_WAIT_S or more, or a whole-second one beyond ROUNDED_MAX_S. The usual token-bucket
    answer (`Retry-After: 1`, an HTTP date a second ahead, retry-after-ms of a few ms, or
    nothing) delays nobody: the refused task is sent again at the pace (before any pace is
    known, after its own short wait). Where the server states its limits (x-ratelimit-limit-
    requests, -images, -tokens, per minute; a 429's as a success's), the pace never exceeds the
    binding one in requests (`stated_rate`: images over the request's n, tokens over the tokens
    a request takes, learned from the answers' usage; the tokens limit waits until one is
    known).

    In flight: START_WINDOW at first (START_FIXED with a fixed concurrency, at most it), so a
    run does not open with a burst the server refuses; a fixed concurrency is the user's word
    for what the server takes, so it opens wider (16 is within the second of burst of a bucket
    of 16 requests/s, and 50 in flight are reached after one round trip, not three); until a
    pace is known, two more for each request that goes unrefused past the horizon and was out
    while the window was full, no 429 came lately and the latency is not rising (a slow start at
    the pace of acceptance rather than of answers: a request accepted is still in flight, so two
    more doubles the growth each horizon). Once a pace is known it bounds the sending, and the
    window is what it puts in flight: all of a fixed concurrency; with the automatic one, pace ×
    latency × HEADROOM (Little's law), never more than `max_concurrency`.
    """

    TARGET_REFUSED = 0.05      # at the limit, the share of requests the pace lets be refused
    SMALL_LIMIT = 2.0           # requests/s: below it the pace keeps under the limit instead
    UNDER_SMALL = 0.95
    MIN_RATE = 0.01             # requests/s: under a request a minute and a half is no pace to hold
    WINDOW_S = 3.0
    WINDOW_SENDS = 10
    PROBE_GAINS = (0.5, 1.0)
    FIRST_HORIZON_S = 1.0
    MIN_HORIZON_S = 0.25
    MAX_HORIZON_S = 120.0
    LONG_WAIT_S = 2.0
    ROUNDED_MAX_S = 1.25
    START_WINDOW = 4
    START_FIXED = 16
    DEMAND_SHARE = 0.7         # a window whose sends fell below this share of the pace was not paced
    MILD_CUT = 0.9
    HEAVY = 0.3                 # a share of refusals that cuts even a window the workers did not fill
    BURST_SENDS = 3             # sends within a second that make a burst worth learning from
    HEADROOM = 1.3
    LATENCY_RISE = 2.0
    REPORT_EVERY_S = 10.0
    MAX_UNCONFIRMED = 65_536

    def __init__(self, concurrency: Optional[int] = None, max_concurrency: int = 1000):
        self.auto = concurrency is None
        self.max_concurrency = max(1, max_concurrency if self.auto else int(concurrency or 1))
        self.window = min(self.START_WINDOW if self.auto else self.START_FIXED, self.max_concurrency)
        self.rate: Optional[float] = None       # the pace, requests per second; None: none known
        self.limit: Optional[float] = None      # the server's limit as last measured
        self.told: Optional[float] = None       # the limit its headers state (the binding one), requests/s
        self.tokens_per_request: Optional[float] = None   # from the answers' usage, smoothed
        self.in_flight = 0
        self.peak_in_flight = 0
        self.refusals = 0
        self.latency: Optional[float] = None    # of successes, smoothed
        self.least_latency: Optional[float] = None
        self._horizon = self.FIRST_HORIZON_S
        self._seen_refusal = False
        self._first_sent: Optional[float] = None
        self._sent: deque[Attempt] = deque()    # in send order, not yet in a settled window
        self._unconfirmed: deque[Attempt] = deque()   # for the window's growth
        self._last_full = -math.inf             # when a request last left with the window full
        self._window_start: Optional[float] = None
        self._clean = 0                         # settled windows without refusals, in a row
        self._last_refusal = -math.inf          # when a settled window last held a refusal
        self._next = 0.0
        self._cooldown_until = 0.0
        self._waiters: deque = deque()          # workers waiting for a slot, in order
        self._dispatching = False
        self._dispatcher: Any = None            # held: a task nobody refers to may be collected
        self._reported = -math.inf

    # -- the workers' side --

    def try_acquire(self) -> bool:
        """`acquire` when the slot is free now (then True, and it is taken), without a
        coroutine; False: nothing is taken, `await acquire()` waits for it."""
        if not self._free_slot():
            return False
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        return True

    async def acquire(self) -> None:
        """The next slot at the pace. The caller then sends (`sent`) or gives its place back
        (`release(None)`)."""
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if self._free_slot():
            return      # the usual case, without a coroutine more for every request
        try:
            await self._slot()
        except BaseException:       # cancelled while waiting: the place was never used
            self.in_flight -= 1
            raise

    def _free_slot(self) -> bool:
        """Take the slot now if it is free: no pace and no cool-down, or nobody waiting and
        the pace's next slot already due."""
        now = time.monotonic()
        if not self.rate and now >= self._cooldown_until:
            return True
        if not self._waiters and now >= max(self._next, self._cooldown_until):
            self._next = now + 1.0 / self.rate if self.rate else now
            return True
        return False

    async def _slot(self) -> None:
        """The next slot at the pace, once it is not free at once. Waiting workers queue in
        order and one dispatcher hands the slots out, reading the pace at each: a pace raised
        or cut applies at once to every worker waiting (none holds a slot booked at an old
        pace), and a cool-down holds them all."""
        waiter = _new_future()
        self._waiters.append(waiter)
        if not self._dispatching:
            self._dispatching = True
            self._dispatcher = _spawn(self._dispatch())
        await waiter

    async def _dispatch(self) -> None:
        try:
            while self._waiters:
                now = time.monotonic()
                wait = max(self._next, self._cooldown_until) - now
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue            # the pace or a cool-down may have changed meanwhile
                waiter = self._waiters.popleft()
                if waiter.done():       # its worker was cancelled
                    continue
                self._next = now + 1.0 / self.rate if self.rate else now
                waiter.set_result(None)
        finally:
            self._dispatching = False

    def sent(self) -> Attempt:
        """The request leaves now."""
        attempt = Attempt(time.monotonic())
        if self._first_sent is None:
            self._first_sent = attempt.sent_at
        self._sent.append(attempt)
        if self.rate is None and self.window < self.max_concurrency:
            self._unconfirmed.append(attempt)     # only while the window may still grow
            if self.in_flight >= self.window - 1:
                self._last_full = attempt.sent_at
        return attempt

    def release(self, attempt: Optional[Attempt]) -> None:
        """The request is over (answered, failed, abandoned), or was never sent (None)."""
        self.in_flight -= 1
        if attempt is not None and attempt.state == Attempt.PENDING:
            attempt.state = Attempt.ACCEPTED
        self.tick()

    def tick(self) -> None:
        """Take in what time has settled (the backend also calls this while every worker waits
        for a slow answer, so the window can grow meanwhile)."""
        self._settle(time.monotonic())

    def on_success(self, attempt: Optional[Attempt], headers: Optional[RateLimitHeaders] = None,
                   images: int = 1, tokens: Optional[int] = None) -> None:
        """A generation answered: its latency, the tokens it took (its usage's total), and the
        limit the headers state for a request of `images` images and of the tokens a request
        takes on average: the binding one of requests, images and tokens a minute."""
        now = time.monotonic()
        if attempt is not None:
            attempt.state = Attempt.ACCEPTED
            took = now - attempt.sent_at
            self.latency = took if self.latency is None else 0.8 * self.latency + 0.2 * took
            self.least_latency = took if self.least_latency is None else min(self.least_latency, took)
        if tokens is not None and 0 < tokens <= MAX_TOKENS_PER_MINUTE:
            # Smoothed, as the latency: prompts and qualities vary, a run's mix drifts slowly.
            self.tokens_per_request = (float(tokens) if self.tokens_per_request is None
                                       else 0.8 * self.tokens_per_request + 0.2 * tokens)
        if headers:
            self._take_headers(headers, images, now)

    def _take_headers(self, headers: RateLimitHeaders, images: int, now: float) -> None:
        """The limits an answer's headers state: the binding one caps the pace; none remaining
        of a kind holds the next slot."""
        told = stated_rate(headers, images, self.tokens_per_request)
        if told:
            # A tokens limit over a request's tokens can fall far below a request a minute; a
            # slot of more than MIN_RATE's 100 s would stall the run on one header's word.
            self.told = max(self.MIN_RATE, told)
            self.rate = min(self.rate, self.told) if self.rate else self.told
        if self.told and nothing_remains(headers, images, self.tokens_per_request):
            self._cooldown_until = max(self._cooldown_until, now + 1.0 / self.told)

    def on_rate_limited(self, attempt: Optional[Attempt], retry_after: Optional[float],
                        rng: Jitter = random, headers: Optional[RateLimitHeaders] = None,
                        images: int = 1) -> tuple[float, float]:
        """Take in a 429, and the limits its headers state (as a success's: a server that
        refuses the first burst says its limit then, before any success). Returns (seconds
        from now that every worker is held, seconds this request waits before it is sent
        again); either may be 0."""
        now = time.monotonic()
        self.refusals += 1
        if headers:
            self._take_headers(headers, images, now)
        if attempt is not None:
            attempt.state = Attempt.REFUSED
            took = now - attempt.sent_at
            # How long a refusal may take to come back: twice the slowest lately (it decays, so
            # one slow 429 does not slow the measuring for good).
            earlier = self._horizon * 0.95 if self._seen_refusal else 0.0
            self._horizon = min(self.MAX_HORIZON_S, max(earlier, self.MIN_HORIZON_S, 2.0 * took + 0.05))
            self._seen_refusal = True
        if self.limit is None:
            # Until a window is settled, a burst tells the most: no more than what got through
            # in its last second.
            recent = [a for a in self._sent if a.sent_at > now - 1.0]
            if len(recent) >= self.BURST_SENDS:
                through = max(self.MIN_RATE, float(sum(a.state != Attempt.REFUSED for a in recent)))
                if self.rate is None or through < self.rate:
                    self.rate = through
                    # The rest of the burst's 429s are on their way: let them in before the
                    # dispatcher hands out the next slot.
                    took = now - attempt.sent_at if attempt is not None else 0.0
                    self._next = now + min(0.25, 2.0 * took + 0.01)
        pause = self._pause(retry_after)
        if pause:
            until = now + pause
            if until > self._cooldown_until:
                self._cooldown_until = until
                return pause, 0.0
            return 0.0, 0.0
        if self.rate is not None:
            return 0.0, 0.0         # sent again at the pace
        # No pace yet: the server's exact word for this request, else a short jittered wait.
        if retry_after is not None and not getattr(retry_after, "coarse", False):
            return 0.0, min(float(retry_after), self.LONG_WAIT_S)
        return 0.0, rng.uniform(0.5, 1.0) * min(float(retry_after or 1.0), 1.0)

    def _pause(self, retry_after: Optional[float]) -> float:
        if retry_after is None:
            return 0.0
        stated = min(max(0.0, float(retry_after)), float(MAX_SERVER_WAIT_S))   # NaN: 0
        coarse = bool(getattr(retry_after, "coarse", False))
        if (coarse and stated > self.ROUNDED_MAX_S) or (not coarse and stated >= self.LONG_WAIT_S):
            return stated
        return 0.0

    def snapshot(self) -> dict:
        """The pace and what is in flight, for `status`, `--json` and the log."""
        def rounded(value: Optional[float]) -> Optional[float]:
            return None if value is None else round(value, 3)
        return {"rate_per_s": rounded(self.rate), "limit_per_s": rounded(self.limit),
                "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight,
                "window": self.window, "concurrency": "auto" if self.auto else self.max_concurrency,
                "latency_s": rounded(self.latency), "rate_limited": self.refusals}

    def report(self) -> Optional[dict]:
        """The snapshot, every REPORT_EVERY_S at most."""
        now = time.monotonic()
        if now - self._reported < self.REPORT_EVERY_S:
            return None
        self._reported = now
        return self.snapshot()

    # -- what it learns --

    def _settle(self, now: float) -> None:
        """Take in every window of sends that is settled by now, and size the in-flight window."""
        if self.rate is None:
            self._grow(now)
        else:
            self._unconfirmed.clear()       # slow start is over: what it held no longer counts
            self._fit_window(now)
        sent = self._sent
        while sent:
            if self._window_start is None or sent[0].sent_at >= self._window_start + self.WINDOW_S * 10:
                self._window_start = sent[0].sent_at      # after a quiet spell: measure from here
            width = self.WINDOW_S if not self.rate else max(self.WINDOW_S, self.WINDOW_SENDS / self.rate)
            end = self._window_start + width
            if now - self._horizon < end:
                return
            count = refused = 0
            while sent and sent[0].sent_at < end:
                count += 1
                refused += sent.popleft().state == Attempt.REFUSED
            self._window_start = end
            if count:
                self._take_window(count, count - refused, refused, width)

    def _take_window(self, count: int, accepted: int, refused: int, width: float) -> None:
        through = accepted / width
        if refused:
            self._last_refusal = time.monotonic()
        demand_limited = self.rate is not None and count / width < self.DEMAND_SHARE * self.rate
        if not refused:
            if self.rate is not None and not demand_limited:
                gain = self.PROBE_GAINS[min(self._clean, len(self.PROBE_GAINS) - 1)]
                self.rate *= 1.0 + gain
                self._clean += 1
        elif demand_limited:
            # The workers did not use the pace (all waiting for answers): what got through says
            # how much was asked, not what the server allows. Many refusals still cut, a little.
            if refused >= self.HEAVY * count:
                self.rate = max(self.MIN_RATE, (self.rate or through) * self.MILD_CUT)
                self._clean = 0
        else:
            # What got through is the limit (or this run's share of a limit other runs use too);
            # the pace asks a little more, so that TARGET_REFUSED of the requests are refused:
            # runs that share a key then hold the whole limit between them, and a run finds out
            # at once when the others leave.
            # Under SMALL_LIMIT a second of burst holds a request or two, too few to absorb the
            # pace's jitter: asking more would only waste slots, so the pace stays just under.
            self.limit = through
            share = 1.0 / (1.0 - self.TARGET_REFUSED) if through >= self.SMALL_LIMIT else self.UNDER_SMALL
            self.rate = max(self.MIN_RATE, through * share)
            self._clean = 0
        if self.told is not None and self.rate is not None:
            self.rate = min(self.rate, self.told)

    def _fit_window(self, now: float) -> None:
        """Once a pace is known it bounds the sending, and the window need only hold what the
        pace puts in flight: all of a fixed concurrency; with the automatic one, pace × latency
        × HEADROOM (Little's law), the latency being at least how long the first request has
        waited while no answer has come."""
        assert self.rate is not None
        if not self.auto:
            self.window = self.max_concurrency
            return
        latency = self.latency
        if latency is None:
            latency = now - self._first_sent if self._first_sent is not None else 0.0
        needed = math.ceil(self.rate * latency * self.HEADROOM) + 4
        self.window = min(self.max_concurrency, max(self.START_WINDOW, needed))

    def _grow(self, now: float) -> None:
        """Slow start, until a pace is known: two more in flight for each request that went
        unrefused past the horizon and was out while the window was full; a latency risen past
        LATENCY_RISE of its least shrinks it."""
        rising = False
        if self.latency is not None and self.least_latency is not None:
            rising = self.latency > self.LATENCY_RISE * max(self.least_latency, 0.05)
            if rising and self.window > self.START_WINDOW:
                self.window = max(self.START_WINDOW, int(self.window * 0.9))
                self.least_latency = self.latency / self.LATENCY_RISE   # shrink once per doubling
        if rising or now - self._last_refusal < self.WINDOW_S:
            return          # held until then: the requests accepted meanwhile still count
        queue = self._unconfirmed
        if self.window >= self.max_concurrency:
            queue.clear()       # no room to grow: what they would confirm changes nothing
            return
        while len(queue) > self.MAX_UNCONFIRMED:       # held a long while: the oldest no longer matter
            queue.popleft()
        # A request counts if the window filled while it was out (it was sent in a full window,
        # or one filled after it), whenever its answer comes: answers that arrive together
        # each count, though the window is no longer full as the later of them are released.
        while queue and (queue[0].state != Attempt.PENDING or queue[0].sent_at < now - self._horizon):
            done = queue.popleft()
            if done.state != Attempt.REFUSED and done.sent_at <= self._last_full:
                # Two more for each: a request accepted is still in flight (its answer may take a
                # minute), so one more would only replace nothing; two doubles the window's growth
                # every horizon, as a slow start doubles every round trip.
                self.window = min(self.max_concurrency, self.window + 2)


def _new_future() -> "asyncio.Future[None]":
    return asyncio.get_running_loop().create_future()


def _spawn(coroutine: Coroutine[Any, Any, None]) -> Any:
    return asyncio.ensure_future(coroutine)
