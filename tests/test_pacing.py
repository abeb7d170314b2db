"""The rate finder's logic, on a virtual clock (no real sleeps, no wall-clock timing).

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
from batchgen.sending.limits import Attempt, RateFinder, RateLimitHeaders, ServerWait, parse_retry_after


class _Sleep:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __await__(self):
        yield self


class VirtualFuture:
    """What the pacer's waiting workers await, on the virtual scheduler."""

    def __init__(self, clock: "VirtualTime"):
        self.clock, self._done, self._waiting = clock, False, []

    def done(self) -> bool:
        return self._done

    def set_result(self, _value) -> None:
        self._done = True
        for coro in self._waiting:
            heapq.heappush(self.clock._queue, (self.clock.now, next(self.clock._seq), coro))
        self._waiting.clear()

    def __await__(self):
        if not self._done:
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
        if isinstance(slept, VirtualFuture):
            slept._waiting.append(coro)
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
    monkeypatch.setattr(limits, "_new_future", lambda: VirtualFuture(clock))
    monkeypatch.setattr(limits, "_spawn", clock.spawn)
    return clock


def paced(pacer: RateFinder, clock: VirtualTime, sends: list, name):
    async def one():
        await pacer.acquire()
        sends.append((clock.now, name))
    return one()


def gaps(times):
    times = sorted(times)
    return [b - a for a, b in zip(times, times[1:])]


def test_the_slots_booked_at_the_servers_stated_limit_are_kept(vt):
    # With x-ratelimit-* headers the pace is the server's from the first answer, and its
    # "nothing remaining" is a short wait that keeps the booked slots (no re-spacing needed).
    pacer = RateFinder(8)
    pacer.on_success(None, RateLimitHeaders(limit=1200, remaining=5))
    assert pacer.rate == 20.0
    t0 = vt.now
    sends: list = []
    for w in range(5):
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run()
    assert [t - t0 for t, _ in sends] == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])
    pacer.on_success(None, RateLimitHeaders(limit=1200, remaining=0))
    assert vt.now < pacer._cooldown_until <= vt.now + 0.05 + 1e-9


def test_the_binding_stated_limit_is_the_pace_and_tokens_wait_for_a_known_count(vt):
    # Requests 6000/min, images 1200/min, tokens 900,000/min: a request for one image that takes
    # ~1500 tokens may go 10 times a second (tokens bind), but until an answer's usage says what
    # a request takes, only the requests and images limits are known.
    stated = RateLimitHeaders(limit=6000, remaining=50, images_limit=1200, images_remaining=50,
                              tokens_limit=900_000, tokens_remaining=500_000)
    pacer = RateFinder(8)
    pacer.on_success(None, stated, images=1, tokens=None)
    assert pacer.told == pytest.approx(20.0) and pacer.rate == pytest.approx(20.0)     # images bind
    pacer.on_success(None, stated, images=1, tokens=1500)
    assert pacer.tokens_per_request == 1500
    assert pacer.told == pytest.approx(10.0) and pacer.rate == pytest.approx(10.0)     # tokens bind
    # The tokens a request takes are a running average, so one large answer moves it a little.
    pacer.on_success(None, stated, images=1, tokens=3000)
    assert 1500 < pacer.tokens_per_request < 3000
    assert pacer.rate == pytest.approx(900_000 / 60 / pacer.tokens_per_request)
    # Values no answer can hold are not learned from.
    before = pacer.tokens_per_request
    pacer.on_success(None, stated, images=1, tokens=0)
    assert pacer.tokens_per_request == before
    # A measured pace above the stated limit is held to it, as with the requests limit.
    pacer._take_window(100, 100, 0, 3.0)
    assert pacer.rate == pytest.approx(pacer.told)


def test_a_request_for_several_images_counts_them_against_the_images_limit(vt):
    pacer = RateFinder(8)
    pacer.on_success(None, RateLimitHeaders(limit=None, remaining=None, images_limit=1200), images=4)
    assert pacer.rate == pytest.approx(5.0)


@pytest.mark.parametrize("stated", [
    RateLimitHeaders(limit=1200, remaining=0),
    RateLimitHeaders(limit=1200, remaining=5, images_limit=1200, images_remaining=0),
    RateLimitHeaders(limit=None, remaining=None, images_limit=1200, tokens_limit=1_200_000, tokens_remaining=400),
])
def test_nothing_remaining_of_any_kind_holds_the_next_slot(vt, stated):
    pacer = RateFinder(8)
    pacer.on_success(None, stated, images=1, tokens=1000)
    assert pacer.rate == pytest.approx(20.0)
    assert vt.now < pacer._cooldown_until <= vt.now + 0.05 + 1e-9


def test_only_a_tokens_limit_and_no_known_tokens_sets_no_pace(vt):
    pacer = RateFinder(8)
    pacer.on_success(None, RateLimitHeaders(None, None, tokens_limit=60_000, tokens_remaining=0), images=1)
    assert pacer.rate is None and pacer.told is None and pacer._cooldown_until == 0.0


@pytest.mark.parametrize("retry_after", [
    ServerWait(1.0, coarse=True),                                                   # "Retry-After: 1"
    "date",                                                                         # an HTTP date
    None,                                                                           # nothing said
    ServerWait(0.05),                                                               # retry-after-ms: 50
])
def test_a_token_buckets_429_holds_nobody_once_a_pace_is_known(vt, retry_after):
    pacer = RateFinder(8)
    pacer.rate = 20.0
    now = vt.now
    if retry_after == "date":               # the next whole second, as a server rounds it
        retry_after = parse_retry_after({"retry-after": formatdate(int(now) + 1, usegmt=True)}, now=now)
        assert retry_after.coarse and retry_after == pytest.approx(1.0)
    assert pacer.on_rate_limited(Attempt(now), retry_after) == (0.0, 0.0)   # sent again at the pace
    sends: list = []
    for w in range(4):
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run()
    first = [t - now for t, _ in sends]
    assert first[0] == 0.0 and min(gaps(first)) >= 1.0 / 20.0 - 1e-9


def test_a_long_server_wait_holds_every_worker_then_they_go_at_the_pace(vt):
    pacer = RateFinder(8)
    pacer.rate = 10.0
    t0 = vt.now
    sends: list = []
    for w in range(8):                       # eight workers book slots t0, t0+0.1, ..., t0+0.7
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run_until(t0 + 0.05)
    # An exact wait of 5 s (a quota window, not a bucket's next slot): everyone waits it out.
    held, own = pacer.on_rate_limited(Attempt(t0), ServerWait(5.0))
    assert (held, own) == (pytest.approx(5.0), 0.0)
    vt.run()
    after = [t for t, _ in sends[1:]]
    assert len(after) == 7 and min(after) >= t0 + 5.05 - 1e-9
    assert min(gaps(after)) >= 0.1 - 1e-9      # spaced again at the pace, not all at once
    coarse = RateFinder(8)
    assert coarse.on_rate_limited(Attempt(vt.now), ServerWait(3.0, coarse=True))[0] == pytest.approx(3.0)


def test_before_any_pace_a_lone_429_waits_for_itself_only(vt):
    pacer = RateFinder(1)
    held, own = pacer.on_rate_limited(Attempt(vt.now), ServerWait(0.05))    # retry-after-ms: 50
    assert (held, own) == (0.0, pytest.approx(0.05)) and pacer.rate is None
    held, own = pacer.on_rate_limited(Attempt(vt.now), ServerWait(1.0, coarse=True))
    assert held == 0.0 and 0.5 <= own <= 1.0 and pacer.rate is None


class Server:
    """An image API on the virtual clock: a token bucket of `rate`/s with one second of burst
    (shared by every client given the same Server), successes answered `latency` ± `spread`
    after the request, 429s at once, stating their wait in `style`."""

    def __init__(self, clock: VirtualTime, rate: float, latency: float, spread: float = 0.2,
                 style: str = "seconds", seed: int = 1):
        self.clock, self.rate, self.latency, self.spread, self.style = clock, rate, latency, spread, style
        self.tokens, self.stamp = max(1.0, rate), clock.now
        self.rng = __import__("random").Random(seed)
        self.ok = self.refused = 0

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate

    def _refill(self) -> None:
        now = self.clock.now
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def retry_after(self, wait: float):
        if self.style == "exact":
            return ServerWait(wait)
        if self.style == "none":
            return None
        return ServerWait(float(max(1, math.ceil(wait))), coarse=True)     # "seconds" or a date

    def answer_time(self) -> float:
        return self.latency * self.rng.uniform(1 - self.spread, 1 + self.spread)


def client(server: Server, finder: RateFinder, tasks: int, finished: list):
    """Workers as the live backend runs them: as many as the finder's window (more are started
    as it grows, one leaves when it shrinks); each acquires, sends, learns, releases, and sends a
    refused task again at the pace. Returns the first workers; start them with `vt.spawn`."""
    todo = [tasks]
    alive = [0]
    clock = server.clock

    def staff():
        while todo[0] > 0 and alive[0] < finder.window:
            alive[0] += 1
            clock.spawn(worker())

    async def worker():
        while todo[0] > 0 and alive[0] <= finder.window:
            todo[0] -= 1
            while True:
                await finder.acquire()
                attempt = finder.sent()
                wait = server.take()
                if wait == 0:
                    server.ok += 1
                    await clock.sleep(server.answer_time())
                    finder.on_success(attempt)
                    finder.release(attempt)
                    finished.append(clock.now)
                    staff()
                    break
                server.refused += 1
                await clock.sleep(0.005)          # a 429 comes back at once
                _, own = finder.on_rate_limited(attempt, server.retry_after(wait))
                finder.release(attempt)
                staff()
                if own:
                    await clock.sleep(own)
        alive[0] -= 1

    async def ticker():                           # the backend's timer: the window grows meanwhile
        while todo[0] > 0 or alive[0]:
            finder.tick()
            staff()
            await clock.sleep(0.25)

    return [ticker()]


@pytest.mark.parametrize("latency", [0.2, 8.0, 30.0])
@pytest.mark.parametrize("style", ["exact", "seconds", "none"])
@pytest.mark.parametrize("auto", [False, True])
def test_the_allowed_rate_is_found_and_held_at_any_latency(vt, latency, style, auto):
    """A scaled-down matrix of bench/ratelimit.py: 10 requests/s allowed, 429s at once, a fixed
    concurrency large enough or the automatic one."""
    server = Server(vt, rate=10.0, latency=latency, style=style)
    tasks, workers = 400, math.ceil(10 * latency * 1.5) + 20
    finished: list = []
    start = vt.now
    for w in client(server, RateFinder(None if auto else workers), tasks, finished):
        vt.spawn(w)
    vt.run()
    ideal = tasks / 10.0 + latency
    assert len(finished) == tasks
    assert ideal / (max(finished) - start) >= 0.85
    assert server.refused <= 0.25 * (server.ok + server.refused)


def test_the_first_bursts_refusals_leave_no_slot_booked_seconds_ahead(vt):
    # 20/s, fast answers: the slow start's first refusals come while dozens of workers hold
    # slots booked at no pace; every refusal voids them, and none may push the next slot on.
    server = Server(vt, rate=20.0, latency=0.2, style="seconds")
    finished: list = []
    for w in client(server, RateFinder(None), 200, finished):
        vt.spawn(w)
    vt.run()
    assert len(finished) == 200
    assert (200 / 20.0 + 0.2) / (max(finished) - 1000.0) >= 0.85
    assert max(gaps(finished)) < 1.0                     # never a second without an answer


def test_the_issues_case_800_prompts_at_concurrency_200_against_10_per_second_and_8_s(vt):
    server = Server(vt, rate=10.0, latency=8.0, spread=0.2, style="seconds")
    finished: list = []
    for w in client(server, RateFinder(200), 800, finished):
        vt.spawn(w)
    vt.run()
    assert len(finished) == 800
    assert (800 / 10.0 + 8.0) / (max(finished) - 1000.0) >= 0.85     # was 5% of the allowed rate
    assert server.refused <= 0.25 * (server.ok + server.refused)


def test_a_limit_halved_then_restored_mid_run_is_followed_both_ways(vt):
    server = Server(vt, rate=20.0, latency=2.0, style="seconds")
    finished: list = []
    for w in client(server, RateFinder(100), 1200, finished):
        vt.spawn(w)
    vt.run_until(1020.0)
    server.set_rate(10.0)
    vt.run_until(1040.0)
    server.set_rate(20.0)
    vt.run()
    assert len(finished) == 1200
    halved = sum(1020.0 + 8 <= t < 1040.0 for t in finished) / 12.0          # settled at the half
    restored = sum(1040.0 + 15 <= t < 1040.0 + 25 for t in finished) / 10.0  # found the full rate again
    assert 0.8 * 10.0 <= halved <= 10.5
    assert restored >= 0.8 * 20.0
    assert server.refused <= 0.25 * (server.ok + server.refused)


@pytest.mark.parametrize("latency", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_runs_sharing_one_key_hold_the_limit_together_and_neither_starves(vt, latency, seed):
    server = Server(vt, rate=20.0, latency=latency, style="none", seed=seed)
    a: list = []
    b: list = []
    for w in client(server, RateFinder(None), 600, a) + client(server, RateFinder(None), 600, b):
        vt.spawn(w)
    vt.run()
    assert len(a) == len(b) == 600
    both = min(max(a), max(b))                   # until the first run is done
    span = both - 1000.0
    shares = [sum(t < both for t in mine) / span for mine in (a, b)]
    assert sum(shares) >= 0.75 * 20.0            # together they hold the limit
    assert min(shares) >= 0.05 * 20.0            # and neither starves (the shares need not be equal)
    assert (1200 / 20.0 + latency) / (max(a + b) - 1000.0) >= 0.6
    assert server.refused <= 0.25 * (server.ok + server.refused)


def test_the_servers_stated_limit_caps_the_pace_found(vt):
    pacer = RateFinder(8)
    pacer.on_success(None, RateLimitHeaders(limit=600, remaining=100))       # 10 a second
    pacer.rate = 30.0                                                          # a probe run ahead
    pacer._take_window(60, 60, 0, 3.0)                                          # a clean window
    assert pacer.rate == 10.0


# ---- in flight: automatic concurrency ------------------------------------------------------

def test_the_window_slow_starts_until_a_pace_is_known(vt):
    pacer = RateFinder(None, max_concurrency=1000)
    assert pacer.window == RateFinder.START_WINDOW
    for _ in range(pacer.window):               # a full window, all accepted (no 429 within the horizon)
        pacer.in_flight += 1
        pacer.sent()
    vt.run_until(vt.now + RateFinder.FIRST_HORIZON_S + 0.01)
    pacer.tick()
    assert pacer.window == 3 * RateFinder.START_WINDOW     # two more for each: slow start
    fixed = RateFinder(6)
    for _ in range(fixed.window):
        fixed.in_flight += 1
        fixed.sent()
    vt.run_until(vt.now + RateFinder.FIRST_HORIZON_S + 0.01)
    fixed.tick()
    assert fixed.window == 6                               # a fixed concurrency is the ceiling
    rising = RateFinder(None)
    rising.window, rising.least_latency, rising.latency = 64, 1.0, 2.5     # answers slower and slower
    rising.tick()
    assert rising.window < 64                              # a server queueing: fewer in flight


def test_once_a_pace_is_known_the_window_holds_what_the_pace_puts_in_flight(vt):
    pacer = RateFinder(None, max_concurrency=1000)
    start = vt.now
    for _ in range(40):                                    # a burst: 10 got through, 30 refused
        pacer.in_flight += 1
        pacer.sent()
    for attempt in list(pacer._sent)[10:]:
        pacer.on_rate_limited(attempt, ServerWait(1.0, coarse=True))
    assert pacer.rate == 10.0
    vt.run_until(start + 0.5)                              # no answer yet: each has waited 0.5 s at least
    pacer.tick()
    assert pacer.window >= 10.0 * 0.5 * RateFinder.HEADROOM
    vt.run_until(start + 8.0)                              # ...and now 8 s
    pacer.tick()
    assert pacer.window >= pacer.rate * 8.0 * RateFinder.HEADROOM
    pacer.latency = 3.0                                     # answers came: 3 s each
    pacer.tick()
    assert pacer.rate * 3.0 * RateFinder.HEADROOM <= pacer.window < pacer.rate * 8.0 * RateFinder.HEADROOM
    fixed = RateFinder(200)
    fixed.rate = 10.0
    fixed.tick()
    assert fixed.window == 200                              # the pace bounds the sending now


def test_automatic_concurrency_covers_the_rate_times_the_latency(vt):
    pacer = RateFinder(None, max_concurrency=1000)
    pacer.latency = 8.0
    pacer._take_window(100, 30, 70, 3.0)           # saturated: 10 a second got through
    pacer.tick()
    assert pacer.limit == pytest.approx(10.0)
    assert pacer.window >= pacer.rate * 8.0 * RateFinder.HEADROOM
    capped = RateFinder(None, max_concurrency=50)
    capped.latency = 8.0
    capped._take_window(100, 30, 70, 3.0)
    capped.tick()
    assert capped.window == 50                      # never past --max-concurrency


def test_a_429s_headers_set_the_pace_before_any_success(vt):
    # A server that refuses the opening burst states its limit on the refusals: the pace is the
    # stated one at once, and "none remaining" holds the next slot, as a success's headers do.
    pacer = RateFinder(8)
    told = RateLimitHeaders(limit=600, remaining=0)          # 10 requests/s, none left now
    held, own = pacer.on_rate_limited(Attempt(vt.now), ServerWait(1.0, coarse=True), headers=told)
    assert pacer.rate == pytest.approx(10.0) and pacer.told == pytest.approx(10.0)
    assert (held, own) == (0.0, 0.0)                         # sent again at the pace
    sends: list = []
    for w in range(3):
        vt.spawn(paced(pacer, vt, sends, w))
    vt.run()
    first = sorted(t - 1000.0 for t, _ in sends)
    assert first[0] >= 0.1 - 1e-9                            # not before the slot "none left" holds
    assert min(gaps(first)) >= 0.1 - 1e-9


def test_a_429_without_headers_leaves_the_pace_unknown(vt):
    pacer = RateFinder(8)
    pacer.on_rate_limited(Attempt(vt.now), ServerWait(1.0, coarse=True), headers=None)
    assert pacer.rate is None and pacer.told is None


def test_a_fixed_concurrency_opens_wider_than_the_automatic_one():
    assert RateFinder(50).window == RateFinder.START_FIXED > RateFinder(None).window == RateFinder.START_WINDOW
    assert RateFinder(8).window == 8                          # never more than the user's number


def test_a_fixed_concurrency_hides_the_latency_of_a_server_without_a_limit(vt):
    # The latency bench's case: 1,000 tasks answered 0.5 s after they are sent, 50 in flight,
    # no limit the client could meet (the bucket holds more than every request at once). The
    # ideal is 10 s; slow start may cost a round trip or two, not more.
    server = Server(vt, rate=1e6, latency=0.5, spread=0.0)
    finished: list = []
    for w in client(server, RateFinder(50), 1000, finished):
        vt.spawn(w)
    vt.run()
    assert len(finished) == 1000 and server.refused == 0
    assert 10.0 / (max(finished) - 1000.0) >= 0.95
