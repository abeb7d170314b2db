"""The simulator's rate limits and latency model (issue #27), over real HTTP on loopback.

A real gateway answers a rate limit's 429 at once, while a success takes the generation's
latency; these tests check the order of events and the counters, never the clock: a request
held in its latency is seen in the stats' ``generating`` gauge, and a 429 is shown to come back
while an earlier request is still held there.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import sys

import aiohttp
import pytest
from simhttp import TOKEN, Answer, call, simulate_process

from batchgen.simulator import SimConfig, SimulatorThread, start_simulator
from batchgen.simulator import rate as rate_mod

# OpenAI's dialect serves the gpt-image-2.x models (its default model is shut down): the smallest answer.
BODY = {"prompt": "x", "model": "gpt-image-2", "quality": "low"}


def gen(sim, body=None, **kw) -> Answer:
    return call(sim.openai_base_url + "/images/generations", body or BODY, **kw)


def sim_url(sim, path: str) -> str:
    return f"http://127.0.0.1:{sim.port}{path}"


def error_of(ans: Answer) -> dict:
    return ans.json()["error"]


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll a condition (on the simulator's own loop) until it holds; fail after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)       # a poll of the simulated server's state until the predicate holds


async def held_while(config: SimConfig, second: dict, *, token: str = TOKEN):
    """Send one request that the simulator holds in its latency, then (once the stats show it
    held) a second request; return (the second's status, whether the first was still pending
    when the second came back, the stats at that moment)."""
    sim = await start_simulator(config)
    url = sim.openai_base_url + "/images/generations"
    try:
        async with aiohttp.ClientSession() as session:
            async def post(body, tok=TOKEN):
                async with session.post(url, json=body, headers={"Authorization": f"Bearer {tok}"}) as resp:
                    await resp.read()
                    return resp.status
            first = asyncio.ensure_future(post(BODY))
            await until(lambda: sim.stats.generating == 1, "the first request to be in its latency")
            status = await asyncio.wait_for(post(second, token), 20)
            pending = not first.done()
            stats = sim.stats.copy()
            first.cancel()
            return status, pending, stats
    finally:
        await sim.close()


# ---- latency: only upstream work takes it ------------------------------------------------------

def test_a_rate_limit_429_comes_at_once_while_a_success_is_still_generating():
    cfg = SimConfig(latency=30, rpm_limit=60, ratelimit_headers=False)   # a burst of one
    status, pending, stats = asyncio.run(held_while(cfg, BODY))
    assert status == 429 and pending
    assert stats.generating == 1 and stats.in_flight == 1          # the 429 is gone, the 200 held
    assert stats.peak_in_flight == 2 and stats.peak_generating == 1
    assert stats.rate_limited == {"rpm": 1} and stats.by_status.get("429") == 1
    assert stats.timeline["admitted"] == [1] and stats.timeline["limited"] == [1]
    assert stats.timeline["ok"] == [0]                             # nothing answered 200 yet


def test_a_bad_key_and_an_invalid_request_are_refused_at_once():
    cfg = SimConfig(latency=30)
    assert asyncio.run(held_while(cfg, BODY, token="sk-wrong"))[:2] == (401, True)
    assert asyncio.run(held_while(cfg, {**BODY, "n": 0}))[:2] == (400, True)


def test_a_content_policy_refusal_takes_the_latency():
    cfg = SimConfig(latency=30)

    async def main():
        sim = await start_simulator(cfg)
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
                url = sim.openai_base_url + "/images/generations"
                refused = asyncio.ensure_future(session.post(url, json={**BODY, "prompt": "forbidden-fruit"}))
                await until(lambda: sim.stats.generating == 1, "the refusal to be held")
                assert not refused.done() and sim.stats.in_flight == 1
                refused.cancel()
        finally:
            await sim.close()
    asyncio.run(main())


def test_latency_on_refusals_holds_the_429_too():
    cfg = SimConfig(latency=30, rpm_limit=60, latency_on_refusals=True)

    async def main():
        sim = await start_simulator(cfg)
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
                url = sim.openai_base_url + "/images/generations"
                posts = [asyncio.ensure_future(session.post(url, json=BODY)) for _ in range(2)]
                await until(lambda: sim.stats.generating == 2, "both requests to be held")
                assert sim.stats.rate_limited == {"rpm": 1} and not any(p.done() for p in posts)
                for p in posts:
                    p.cancel()
        finally:
            await sim.close()
    asyncio.run(main())


def test_latency_spread_is_relative_and_symmetric():
    from batchgen.simulator.server import _SimState
    state = _SimState(SimConfig(latency=10, latency_spread=0.2, seed=3))
    delays = [state._delay() for _ in range(400)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert min(delays) < 8.4 and max(delays) > 11.6                # both sides are reached
    jittered = _SimState(SimConfig(latency=10, latency_spread=0.2, latency_jitter=1.0))
    assert all(8.0 <= jittered._delay() <= 13.0 for _ in range(200))
    with pytest.raises(ValueError, match="latency_spread"):
        SimConfig(latency_spread=1.5)


# ---- Retry-After styles ------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["exact", "seconds", "date", "none"])
def test_each_retry_after_style(style):
    with SimulatorThread(rpm_limit=60, ratelimit_headers=False, rate_limit_retry_after=style) as sim:
        assert gen(sim).status == 200
        limited = gen(sim)
        assert limited.status == 429 and error_of(limited)["code"] == "rate_limit_exceeded"
        assert "x-ratelimit-limit-requests" not in limited.headers
        ra = limited.headers.get("Retry-After")
        if style == "exact":
            assert 0 < float(ra) <= 1 and 0 < int(limited.headers["retry-after-ms"]) <= 1000
        else:
            assert "retry-after-ms" not in limited.headers
        if style == "seconds":
            assert ra == "1"
        elif style == "date":
            when = email.utils.parsedate_to_datetime(ra)
            assert when.microsecond == 0
            assert 0 <= (when - email.utils.parsedate_to_datetime(limited.headers["Date"])).total_seconds() <= 2
        elif style == "none":
            assert ra is None
        assert "RPM" in error_of(limited)["message"]


def test_retry_after_none_sends_no_header():
    assert rate_mod.retry_after_headers(0.05, "none") == {}


# ---- images and tokens per minute ---------------------------------------------------------------

def test_ipm_limit_counts_images_and_says_so():
    with SimulatorThread(ipm_limit=120) as sim:                    # 2 images/s, a burst of 2
        ok = gen(sim, {**BODY, "n": 2})
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-images"] == "120"
        assert ok.headers["x-ratelimit-remaining-images"] == "0"
        assert "x-ratelimit-limit-requests" not in ok.headers      # no rpm limit set
        limited = gen(sim)
        assert limited.status == 429
        err = error_of(limited)
        assert err["type"] == "images" and "images per min (IPM)" in err["message"]
        assert "Limit 120" in err["message"] and "Requested 1" in err["message"]
        assert sim.stats.rate_limited == {"ipm": 1} and sim.stats.faults == {"ipm_limit": 1}
        assert sim.stats.images == 2


def test_tpm_limit_charges_tokens_per_image_and_says_so():
    tpm = 2 * 1056 * 60                                            # two default images a second
    with SimulatorThread(tpm_limit=tpm, rpm_limit=6000) as sim:
        ok = gen(sim, {**BODY, "n": 2})
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert ok.headers["x-ratelimit-remaining-tokens"] == "0"
        assert ok.headers["x-ratelimit-reset-tokens"].endswith("s")
        assert ok.headers["x-ratelimit-limit-requests"] == "6000"
        limited = gen(sim)
        err = error_of(limited)
        assert limited.status == 429 and err["type"] == "tokens"
        assert "tokens per min (TPM)" in err["message"] and "Requested 1056" in err["message"]
        assert float(limited.headers["Retry-After"]) > 0
        assert sim.stats.rate_limited == {"tpm": 1}


def test_tokens_per_image_is_configurable_and_a_refusal_charges_no_bucket(monkeypatch):
    clock = [50.0]
    monkeypatch.setattr(rate_mod.time, "monotonic", lambda: clock[0])
    lim = rate_mod.Limiter(rpm=120, tpm=600, tokens_per_image=5)  # 2 req/s; 10 tokens/s
    assert lim.admit(2) is None                                    # 1 request, 10 tokens
    kind, wait, cost = lim.admit(1)
    assert (kind, cost) == ("tokens", 5) and wait == pytest.approx(0.5)
    assert lim.buckets["requests"].tokens == pytest.approx(1.0)    # the refusal took no request
    refused = rate_mod.Limiter(rpm=60, ipm=60).admit(2)            # 2 images, capacity 1: allowed
    assert refused is None                                         # once, when the bucket is full


def test_a_cost_above_the_capacity_passes_a_full_bucket_and_leaves_it_in_debt(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(rate_mod.time, "monotonic", lambda: clock[0])
    bucket = rate_mod.RateBucket(600, "tokens")                    # 10 tokens/s, holds 10
    assert bucket.take(1056) == 0.0
    assert bucket.take(1056) == pytest.approx((10 + 1046) / 10)    # until it is full again
    assert bucket.headers()["x-ratelimit-remaining-tokens"] == "0"


# ---- limits that change mid-run ---------------------------------------------------------------

def test_post_sim_limit_sets_changes_and_removes_limits():
    with SimulatorThread() as sim:
        assert gen(sim).status == 200 and gen(sim).status == 200  # no limit
        url = sim_url(sim, "/_sim/limit")
        assert call(url, token=None).json() == {"limits": {"rpm": None, "ipm": None, "tpm": None}}
        set_ = call(url, {"rpm": 60, "tpm": 1_000_000}, token=None)
        assert set_.status == 200 and set_.json()["limits"] == {"rpm": 60, "ipm": None, "tpm": 1_000_000}
        assert gen(sim).status == 200                              # a new limit starts full
        limited = gen(sim)
        assert limited.status == 429 and "RPM" in error_of(limited)["message"]
        assert call(url, {"rpm": None}, token=None).json()["limits"]["rpm"] is None
        ok = gen(sim)
        assert ok.status == 200 and "x-ratelimit-limit-requests" not in ok.headers
        assert ok.headers["x-ratelimit-limit-tokens"] == "1000000"
        stats = call(sim_url(sim, "/_sim/stats"), token=None).json()
        assert stats["limits"] == {"rpm": None, "ipm": None, "tpm": 1_000_000}
        for bad in ({"rpm": 0}, {"rpm": "fast"}, {"rph": 5}, [1], {"tpm": True}):
            ans = call(url, bad, token=None)
            assert ans.status == 400 and ans.json()["error"]
        assert sim.set_limits(ipm=120) == {"rpm": None, "ipm": 120, "tpm": 1_000_000}
        # a full reset brings back the limits the simulator was started with (none)
        call(sim_url(sim, "/_sim/reset?all=1"), raw=b"", token=None)
        assert call(url, token=None).json()["limits"] == {"rpm": None, "ipm": None, "tpm": None}


def test_rpm_schedule_steps_follow_the_first_request(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(rate_mod.time, "monotonic", lambda: clock[0])
    lim = rate_mod.Limiter(rpm=600, schedule=[(20, 600), (10, 300)])   # halve at 10 s, restore at 20 s
    clock[0] = 104.0
    lim.start(clock[0])                                            # the first request: the clock's 0
    assert lim.limits()["rpm"] == 600
    for _ in range(10):
        assert lim.admit() is None                                 # the burst: 10 requests
    clock[0] = 113.9
    lim.start(clock[0])
    assert lim.limits()["rpm"] == 600                              # 9.9 s after the first request
    clock[0] = 114.5
    lim.start(clock[0])
    assert lim.limits()["rpm"] == 300 and lim.buckets["requests"].capacity == 5
    # refilled at 10/s until 114 (the step), cut to the new capacity, full since
    assert lim.buckets["requests"].tokens == pytest.approx(5.0)
    clock[0] = 130.0
    lim.start(clock[0])
    assert lim.limits()["rpm"] == 600


def test_a_step_takes_effect_at_its_time_not_at_the_next_request(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(rate_mod.time, "monotonic", lambda: clock[0])
    lim = rate_mod.Limiter(rpm=600, schedule=[(0.2, 300)])        # 10/s, then 5/s from 0.2 s
    lim.start(0.0)
    assert all(lim.admit() is None for _ in range(10)) and lim.admit() is not None
    clock[0] = 0.4
    lim.start(clock[0])                                            # 0.2 s at 10/s, 0.2 s at 5/s
    bucket = lim.buckets["requests"]
    bucket.wait()
    assert bucket.tokens == pytest.approx(3.0)


def test_rpm_schedule_through_the_server():
    with SimulatorThread(rpm_schedule=((0, 60),)) as sim:          # a limit from the first request
        assert gen(sim).status == 200
        assert gen(sim).status == 429
        assert sim.stats.rate_limited == {"rpm": 1}
    with pytest.raises(ValueError, match="rpm_schedule"):
        SimConfig(rpm_schedule=((5, 0),))


# ---- one key, one limit ------------------------------------------------------------------------

def test_the_buckets_are_the_keys_a_refused_key_takes_nothing():
    with SimulatorThread(rpm_limit=60) as sim:                     # a burst of one
        assert gen(sim, token="sk-someone-else").status == 401
        assert gen(sim).status == 200                              # the bucket was untouched
        other_client = call(sim.acedata_url, {"prompt": "x"})
        assert other_client.status == 429                          # same key, same bucket


# ---- stats -----------------------------------------------------------------------------------

def test_stats_count_flight_429s_and_a_timeline():
    with SimulatorThread(rpm_limit=120, ipm_limit=120) as sim:    # 2 requests, 2 images a second
        statuses = [gen(sim, {**BODY, "n": n}).status for n in (1, 2, 1, 1)]
        assert statuses == [200, 429, 200, 429]                    # ipm, then rpm refuses
        doc = call(sim_url(sim, "/_sim/stats"), token=None).json()
        for name in ("in_flight", "peak_in_flight", "generating", "peak_generating",
                     "rate_limited", "timeline", "limits"):
            assert name in doc
        assert doc["in_flight"] == 0 and doc["peak_in_flight"] == 1
        assert doc["rate_limited"] == {"ipm": 1, "rpm": 1}
        tl = doc["timeline"]
        assert set(tl) == {"requests", "admitted", "ok", "limited"}
        assert len({len(v) for v in tl.values()}) == 1              # one entry per second, all series
        assert (sum(tl["requests"]), sum(tl["admitted"]), sum(tl["ok"]), sum(tl["limited"])) == (4, 2, 2, 2)
        call(sim_url(sim, "/_sim/reset"), raw=b"", token=None)
        doc = call(sim_url(sim, "/_sim/stats"), token=None).json()
        assert doc["rate_limited"] == {} and doc["peak_in_flight"] == 0
        assert doc["timeline"] == {"requests": [], "admitted": [], "ok": [], "limited": []}
        assert sim.stats.copy().as_dict() == sim.stats.as_dict()


# ---- the command -------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_limit_flags():
    with simulate_process("--rpm-schedule", "0:60", "--tpm-limit", "6000", "--tokens-per-image", "10",
                          "--no-ratelimit-headers", "--rate-limit-retry-after", "none",
                          "--latency", "0", "--latency-spread", "0.2") as served:
        url = served.acedata_url
        assert call(url, {"prompt": "x"}).status == 200
        limited = call(url, {"prompt": "x"})
        assert limited.status == 429 and "Retry-After" not in limited.headers
        root = url.split("/openai/", 1)[0]
        limits = call(root + "/_sim/limit", token=None).json()["limits"]
        assert limits == {"rpm": 60, "ipm": None, "tpm": 6000}
        assert json.loads(call(root + "/_sim/stats", token=None).body)["rate_limited"] == {"rpm": 1}
    assert served.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_refuses_a_bad_schedule():
    with simulate_process("--rpm-schedule", "ten:300") as served:
        pass
    assert served.returncode == 2 and "--rpm-schedule" in served.err
