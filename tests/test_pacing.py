"""The adaptive pacer's logic, on a virtual clock (no real sleeps, no wall-clock timing).

`batchgen.sending.limits` reads `time.monotonic()` and awaits `asyncio.sleep()`; both are replaced
here by a virtual clock whose sleeps are handed to a tiny deterministic scheduler that steps
the workers' coroutines itself, so each test sees exactly when each request would be sent.
"""
from __future__ import annotations

import heapq
import itertools
import math
import types
from email.utils import formatdate

import pytest

from batchgen.sending import limits
from batchgen.sending.limits import AdaptivePacer, RateLimitHeaders, ServerWait, parse_retry_after


class _Sleep:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __await__(self):
        yield self


class VirtualTime:
    """Virtual monotonic time and a scheduler of coroutines that only await its sleeps."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self._queue: list = []           # (wake, seq, coroutine)
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> _Sleep:
        return _Sleep(seconds)

    def spawn(self, coro) -> None:
        self._step(coro)

    def _step(self, coro) -> None:
        try:
            slept = coro.send(None)
        except StopIteration:
            return
        assert isinstance(slept, _Sleep), slept
        heapq.heappush(self._queue, (self.now + max(0.0, slept.seconds), next(self._seq), coro))

    def run_until(self, t: float) -> None:
        """Run every coroutine step due up to time t (in time order), then set the clock to t."""
        while self._queue and self._queue[0][0] <= t:
            wake, _, coro = heapq.heappop(self._queue)
            self.now = max(self.now, wake)
            self._step(coro)
        self.now = max(self.now, t)

    def run(self, limit: float = 10_000.0) -> None:
        while self._queue:
            assert self._queue[0][0] <= self.now + limit, "ran away"
            self.run_until(self._queue[0][0])


@pytest.fixture
def vt(monkeypatch):
    clock = VirtualTime()
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(monotonic=clock.monotonic, time=clock.monotonic))
    monkeypatch.setattr(limits, "asyncio", types.SimpleNamespace(sleep=clock.sleep))
    return clock


def paced(pacer: AdaptivePacer, clock: VirtualTime, sends: list, name):
    async def one():
        await pacer.acquire()
        sends.append((clock.now, name))
    return one()


def gaps(times):
    times = sorted(times)
    return [b - a for a, b in zip(times, times[1:])]


def test_after_a_cool_down_the_workers_holding_slots_are_spaced_again(vt):
    pacer = AdaptivePacer()
    pacer.rate = 10.0                       # a pace learned earlier: a slot every 0.1 s
    t0 = vt.now
    sends: list = []
    for w in range(8):                       # eight workers book slots t0, t0+0.1, ..., t0+0.7
        vt.spawn(paced(pacer, vt, sends, w))
    assert sends == [(t0, 0)]
    vt.run_until(t0 + 0.05)
    # The request sent at t0 draws a 429 that asks for an exact 0.5 s: a cool-down to t0+0.55
    # that covers five booked slots (t0+0.1 ... t0+0.5).
    pacer.on_rate_limited(ServerWait(0.5), sent_at=t0)
    cut = pacer.rate
    assert cut == pytest.approx(10.0 * AdaptivePacer.DECREASE)
    vt.run()
    after = [t for t, _ in sends[1:]]
    assert len(after) == 7 and min(after) >= t0 + 0.55 - 1e-9
    # No two fire together as the cool-down ends: each waits a whole interval of the cut pace.
    assert min(gaps(after)) >= 1.0 / cut - 1e-9


def test_the_slots_booked_at_the_servers_stated_limit_are_kept(vt):
    # With x-ratelimit-* headers the pace is the server's from the first answer, and its
    # "nothing remaining" is a short wait that keeps the booked slots (no re-spacing needed).
    pacer = AdaptivePacer()
    pacer.on_success(RateLimitHeaders(limit=1200, remaining=5))
    assert pacer.rate == 20.0
    t0 = vt.now
    sends: list = []
    for w in range(5):
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run()
    assert [t - t0 for t, _ in sends] == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])
    pacer.on_success(RateLimitHeaders(limit=1200, remaining=0))
    assert vt.now < pacer._cooldown_until <= vt.now + 0.05 + 1e-9


@pytest.mark.parametrize("retry_after", [
    ServerWait(1.0, coarse=True),                                                   # "Retry-After: 1"
    "date",                                                                         # an HTTP date
    None,                                                                           # nothing said
])
def test_a_rounded_retry_after_does_not_stall_everyone_for_a_second_when_a_pace_is_known(vt, retry_after):
    pacer = AdaptivePacer()
    pacer.rate = 20.0
    now = vt.now
    if retry_after == "date":               # the next whole second, as a server rounds it
        retry_after = parse_retry_after({"retry-after": formatdate(int(now) + 1, usegmt=True)}, now=now)
        assert retry_after.coarse and retry_after == pytest.approx(1.0)
    pacer.on_rate_limited(retry_after, sent_at=now)
    cut = pacer.rate
    assert cut == pytest.approx(20.0 * AdaptivePacer.DECREASE)
    pause = pacer._cooldown_until - now
    assert 0 < pause == pytest.approx(AdaptivePacer.RESUME_INTERVALS / cut)   # ~0.11 s, not 1 s
    sends: list = []
    for w in range(4):
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run()
    first = [t - now for t, _ in sends]
    assert first[0] == pytest.approx(pause) and max(first) < 0.5            # resumed at the cut pace
    assert min(gaps(first)) >= 1.0 / cut - 1e-9


def test_a_server_wait_is_honoured_in_full_when_it_is_exact_long_or_no_pace_is_known(vt):
    now = vt.now
    exact = AdaptivePacer()
    exact.rate = 20.0
    exact.on_rate_limited(ServerWait(1.0, coarse=False), sent_at=now)       # retry-after-ms: 1000
    assert exact._cooldown_until == pytest.approx(now + 1.0)
    long = AdaptivePacer()
    long.rate = 20.0
    long.on_rate_limited(ServerWait(2.0, coarse=True), sent_at=now)         # "Retry-After: 2": over a second
    assert long._cooldown_until == pytest.approx(now + 2.0)
    plain = AdaptivePacer()
    plain.rate = 20.0
    plain.on_rate_limited(1.0, sent_at=now)                                  # a plain float counts as exact
    assert plain._cooldown_until == pytest.approx(now + 1.0)
    fresh = AdaptivePacer()                                                  # no success yet: no pace to trust
    fresh.on_rate_limited(ServerWait(1.0, coarse=True), sent_at=now)
    assert fresh.rate == AdaptivePacer.MIN_RATE
    assert fresh._cooldown_until == pytest.approx(now + 1.0)


def test_429s_of_the_same_burst_neither_cut_again_nor_stretch_a_rounded_cool_down(vt):
    pacer = AdaptivePacer()
    pacer.rate = 20.0
    t0 = vt.now
    pacer.on_rate_limited(ServerWait(1.0, coarse=True), sent_at=t0 - 0.01)
    until, cut = pacer._cooldown_until, pacer.rate
    vt.run_until(t0 + 0.08)                       # the rest of the burst's 429s come in
    for k in range(5):
        pacer.on_rate_limited(ServerWait(1.0, coarse=True), sent_at=t0 - 0.005 + k * 0.001)
    assert pacer._cooldown_until == until and pacer.rate == cut
    # ...but one that asks for more than a rounded sub-second wait still holds everyone.
    pacer.on_rate_limited(ServerWait(5.0, coarse=True), sent_at=t0 - 0.001)
    assert pacer._cooldown_until == pytest.approx(vt.now + 5.0) and pacer.rate == cut


class Bucket:
    """A server's token bucket on the virtual clock: `rate`/s, one second of burst."""

    def __init__(self, clock: VirtualTime, rate: float):
        self.clock, self.rate = clock, rate
        self.tokens, self.stamp = rate, clock.now

    def take(self) -> float:
        now = self.clock.now
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@pytest.mark.parametrize("style", ["seconds", "exact"])
def test_against_a_bucket_that_says_retry_after_1_nobody_idles_a_second(vt, style):
    # 8 workers, 200 requests, a server of 20/s that answers 10 ms after a request arrives.
    # With "Retry-After: 1" taken at its word every 429 would stop all sending for a second;
    # as an upper bound, once a pace is known, it stops it for a couple of intervals.
    pacer, bucket = AdaptivePacer(), Bucket(vt, 20.0)
    todo, sends, answers = [200], [], {"200": 0, "429": 0}

    async def worker():
        while todo[0] > 0:
            todo[0] -= 1
            while True:                      # one task: send until it succeeds
                await pacer.acquire()
                sent_at = vt.now
                sends.append(sent_at)
                wait = bucket.take()
                await vt.sleep(0.01)
                if wait == 0:
                    answers["200"] += 1
                    pacer.on_success(None)
                    break
                answers["429"] += 1
                stated = ServerWait(float(math.ceil(wait)), coarse=True) if style == "seconds" else ServerWait(wait)
                pacer.on_rate_limited(stated, sent_at)

    for _ in range(8):
        vt.spawn(worker())
    vt.run()
    assert answers["200"] == 200
    assert answers["429"] <= 0.25 * len(sends)
    first_429_pace_known = sends[20]          # after the first second's burst, a pace is known
    assert max(gaps([t for t in sends if t >= first_429_pace_known])) < 0.5
