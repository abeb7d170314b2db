"""The pace and the number in flight, end to end: `batchgen run` against the built-in simulator
with a rate limit and a latency, the user giving no --concurrency. Counts, not times: how many
requests were in flight, how many drew a 429, what `status` says while the run goes."""
import threading

import pytest
from conftest import make_prompts, wait_until

import batchgen
from batchgen.showing.status import format_status, read_status
from batchgen.simulator import SimulatorThread


def test_the_default_concurrency_follows_the_latency_to_the_servers_limit(tmp_path):
    # 20 requests/s allowed, answers after ~1 s: holding the limit needs ~20 in flight, more than
    # the old fixed default (8) allowed, and the user says nothing about concurrency.
    csv = make_prompts(tmp_path / "p.csv", 160)
    with SimulatorThread(rpm_limit=1200, latency=1.0, ratelimit_headers=False) as sim:
        summary = batchgen.run(str(csv), out=str(tmp_path / "out"), base_url=sim.acedata_url,
                               environ={"ACEDATA_API_TOKEN": "sim-token"}, model="dall-e-3",
                               size="1024x1024", progress=False)
        stats = sim.stats.copy()
    assert summary.exit_status == 0 and summary.ok == 160
    assert summary.pace is not None and summary.pace["concurrency"] == "auto"
    assert summary.pace["peak_in_flight"] > 8
    refused = stats.by_status.get("429", 0)
    assert refused <= 0.25 * stats.requests


def test_a_fixed_concurrency_is_the_ceiling(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 40)
    with SimulatorThread(latency=0.2) as sim:
        summary = batchgen.run(str(csv), out=str(tmp_path / "out"), base_url=sim.acedata_url,
                               environ={"ACEDATA_API_TOKEN": "sim-token"}, model="dall-e-3",
                               size="1024x1024", concurrency=5, progress=False)
    assert summary.exit_status == 0
    assert summary.pace["concurrency"] == 5 and summary.pace["peak_in_flight"] <= 5


def test_status_shows_the_pace_and_what_is_in_flight_while_a_run_goes(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 60)
    out = tmp_path / "out"
    seen = {}
    with SimulatorThread(rpm_limit=600, latency=2.0, ratelimit_headers=False) as sim:
        box: dict = {}

        def run():
            box["summary"] = batchgen.run(str(csv), out=str(out), base_url=sim.acedata_url,
                                          environ={"ACEDATA_API_TOKEN": "sim-token"}, model="dall-e-3",
                                          size="1024x1024", progress=False)
        thread = threading.Thread(target=run)
        thread.start()
        try:
            def paced():
                if not (out / "job.json").exists():
                    return False
                status = read_status(out)
                if status.running and status.pace and status.pace.get("in_flight"):
                    seen["status"] = status
                    return True
                return False
            wait_until(paced, timeout=60, what="status to show the run's pace")
        finally:
            thread.join()
    status = seen["status"]
    assert status.as_json()["pace"]["in_flight"] >= 1
    assert "in flight" in format_status(status)
    assert box["summary"].exit_status == 0


@pytest.mark.parametrize("style", ["exact", "seconds", "date", "none"])
@pytest.mark.parametrize("headers", [True, False])
def test_every_way_a_server_states_its_limit_is_held(tmp_path, style, headers):
    # A scaled-down cell of bench/ratelimit.py: 40/s allowed, answers after 0.3 s ±20%, 429s at once.
    csv = make_prompts(tmp_path / "p.csv", 120)
    with SimulatorThread(rpm_limit=2400, latency=0.3, latency_spread=0.2, ratelimit_headers=headers,
                         rate_limit_retry_after=style) as sim:
        summary = batchgen.run(str(csv), out=str(tmp_path / "out"), base_url=sim.acedata_url,
                               environ={"ACEDATA_API_TOKEN": "sim-token"}, model="dall-e-3",
                               size="1024x1024", progress=False)
        stats = sim.stats.copy()
    assert summary.exit_status == 0 and summary.ok == 120
    assert stats.by_status.get("429", 0) <= 0.25 * stats.requests


def test_a_tokens_limit_stated_in_headers_draws_fewer_429s_than_one_found_alone(tmp_path):
    # Tokens bind: 10 requests/s of gpt-image-2 medium 1024x1024 (the simulator charges 1,056
    # tokens an image) under a requests limit far above it. With the headers the pace is the
    # tokens limit over the tokens an answer's usage counts; without them it is found from the
    # 429s, which a pace found that way asks for. The same run both ways, the server's counts compared.
    csv = make_prompts(tmp_path / "p.csv", 100)
    seen = {}
    for headers in (True, False):
        with SimulatorThread(tpm_limit=10 * 60 * 1056, rpm_limit=60_000, latency=0.3, latency_spread=0.2,
                             ratelimit_headers=headers) as sim:
            summary = batchgen.run(str(csv), out=str(tmp_path / f"out-{headers}"), base_url=sim.acedata_url,
                                   environ={"ACEDATA_API_TOKEN": "sim-token"}, model="gpt-image-2",
                                   size="1024x1024", quality="medium", progress=False)
            stats = sim.stats.copy()
        assert summary.exit_status == 0 and summary.ok == 100
        assert stats.rate_limited.get("rpm", 0) == 0          # the tokens limit is the one that binds
        seen[headers] = stats.by_status.get("429", 0) / stats.requests
    assert seen[False] > 0                                    # without headers the limit was reached
    assert seen[True] < seen[False]
    assert seen[True] <= 0.25
