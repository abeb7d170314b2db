"""Overnight-proof: retries, stops, interruptions, crashes — against the simulator over real HTTP."""
import hashlib
import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TOKEN, batchgen_process, journal, make_prompts, results, wait_until

import batchgen
from batchgen.simulator import SimulatorThread

FAST = {"backoff_base": 0.01, "environ": {"ACEDATA_API_TOKEN": TOKEN}}
DALLE3 = {"model": "dall-e-3", "response_format": "b64_json"}


def run_against(sim, csv, out, **kw):
    options = {**FAST, "defaults": DALLE3, "base_url": sim.acedata_url, "out": str(out), **kw}
    return batchgen.run(str(csv), **options)


@pytest.mark.parametrize("fault, extra", [
    ("fail_500", {}), ("fail_503_html", {}), ("drop", {}), ("truncate", {}), ("bad_json", {}),
    ("bad_b64", {}), ("not_image", {}), ("fail_429", {"retry_after": 0.01}),
    ("hang", {"hang_seconds": 30}), ("expired_link", {}),
])
def test_transient_failures_are_retried_until_every_task_is_done(tmp_path, fault, extra):
    csv = make_prompts(tmp_path / "p.csv", 12)
    defaults = {**DALLE3, "response_format": "url"} if fault == "expired_link" else DALLE3
    with SimulatorThread(**{fault: 0.3, "seed": 7, **extra}) as sim:
        summary = run_against(sim, csv, tmp_path / "out", defaults=defaults, timeout=0.5, max_retries=20)
        stats = sim.stats
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and set(df.status) == {"ok"}
    assert stats.faults.get(fault, 0) > 0
    # attempts counts what was really sent: every request the server saw, no more, no less
    assert df.attempts.sum() == stats.requests
    assert (df.attempts > 1).any()


@pytest.mark.parametrize("fault, code", [
    ("fail_500", "api_error"), ("fail_503_html", "api_error"), ("drop", "connection_error"),
    ("bad_b64", "bad_response"), ("not_image", "bad_response"),
    ("hang", "timeout"),
])
def test_a_failure_that_never_clears_ends_with_its_precise_code(tmp_path, fault, code):
    csv = make_prompts(tmp_path / "p.csv", 2)
    with SimulatorThread(**{fault: 1.0, "hang_seconds": 30}) as sim:
        summary = run_against(sim, csv, tmp_path / "out", max_retries=2, timeout=0.3)
        assert sim.stats.requests == 6
    df = results(tmp_path / "out")
    assert summary.exit_status == 1
    assert df.error_code.tolist() == [code, code] and df.attempts.tolist() == [3, 3]


def test_expired_links_end_as_download_failed(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 1)
    with SimulatorThread(expired_link=1.0) as sim:
        run_against(sim, csv, tmp_path / "out", max_retries=1, defaults={**DALLE3, "response_format": "url"})
    assert results(tmp_path / "out").error_code.tolist() == ["download_failed"]


@pytest.mark.parametrize("moderation_403, status", [(False, 400), (True, 403)])
def test_refusals_are_never_retried(tmp_path, moderation_403, status):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a forbidden-fruit still life", "a bowl of pears"]}).to_csv(csv, index=False)
    with SimulatorThread(acedata_moderation_403=moderation_403) as sim:
        summary = run_against(sim, csv, tmp_path / "out", max_retries=5)
        assert sim.stats.requests == 2
    df = results(tmp_path / "out").set_index("row_index")
    assert summary.exit_status == 1
    assert df.loc[0, "error_code"] == ("forbidden" if moderation_403 else "content_policy_violation")
    assert (df.loc[0, "http_status"], df.loc[0, "attempts"]) == (status, 1)
    assert df.loc[0, "trace_id"]
    assert df.loc[1, "status"] == "ok"


def sent_at(record) -> float:
    """When (time.time()) the request that ended a task was sent: the journal records its end
    and the latency of that last request."""
    return record["finished_at"] - record["latency_s"]


# The journal rounds finished_at to 1 ms and latency_s to 0.1 ms, and reads the two clocks a
# few statements apart: sent_at() is that close to the truth.
SENT_AT_SLACK_S = 0.01


def test_retry_after_as_an_http_date_is_honoured(tmp_path):
    # Each 429 says "Retry-After: <HTTP date>" (whole seconds, rounded up: at least `wait`
    # after the server answered) and nothing else — no retry-after-ms. A client that ignored
    # the date would wait its own 1 s cool-down, well short of `wait`.
    wait = 2
    csv = make_prompts(tmp_path / "p.csv", 4)
    out = tmp_path / "out"
    began = time.time()
    with SimulatorThread(fail_429=0.5, retry_after=wait, retry_after_date=True, seed=5) as sim:
        summary = run_against(sim, csv, out)
        stats = sim.stats
    assert summary.exit_status == 0
    records = journal(out)
    retried = [r for r in records if r["attempts"] > 1]
    assert stats.faults.get("fail_429", 0) == stats.requests - 4 == sum(r["attempts"] - 1 for r in records)
    assert retried
    # Every 429 was answered after `began`, and a task's k-th 429 answered its (k-1)-th
    # retry, so it was answered no sooner than k - 1 dates after `began`: the request that
    # finally succeeded cannot have been sent before began + (attempts - 1) * wait.
    for r in retried:
        assert sent_at(r) >= began + (r["attempts"] - 1) * wait - SENT_AT_SLACK_S, r


def test_a_wrong_token_stops_at_once_and_a_good_one_finishes(cli, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 60)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.02) as sim:
        args = ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", "8", "--no-progress")
        r = cli(*args, env={"ACEDATA_API_TOKEN": "wrong-token"})
        assert r.exit_code == 3
        assert "invalid_token" in r.output and "ACEDATA_API_TOKEN" in r.output
        assert "wrong-token" not in r.output
        assert sim.stats.requests <= 16
        df = results(out)
        assert len(df) == 60 and set(df.error_code) == {"invalid_token"}
        assert not [line for line in journal(out) if line["status"] != "not_done"]
        r = cli(*args)
        assert r.exit_code == 0, r.output
        assert set(results(out).status) == {"ok"}
        assert not any(b"wrong-token" in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_exhausted_quota_stops_the_run_and_a_rerun_goes_on(cli, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 10)
    out = tmp_path / "out"
    with SimulatorThread(quota_images=4) as sim:
        r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", "1", "--no-progress")
    assert r.exit_code == 3 and "quota" in r.output
    df = results(out)
    assert (df.status == "ok").sum() == 4
    assert set(df[df.status != "ok"].error_code) == {"used_up"}
    with SimulatorThread() as sim:
        r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3", "--no-progress")
        assert r.exit_code == 0 and sim.stats.requests == 6


def test_retry_failed_sends_errors_again_but_not_invalid_params(cli, tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["one", "two", ""]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    with SimulatorThread(fail_500=1.0) as sim:
        r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--max-retries", "0", "--no-progress")
    assert r.exit_code == 1
    assert results(out).error_code.tolist() == ["api_error", "api_error", "invalid_params"]
    with SimulatorThread() as sim:
        r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3", "--no-progress")
        assert sim.stats.requests == 0  # errors are final without --retry-failed
        r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--retry-failed", "--no-progress")
        assert sim.stats.requests == 2
    assert r.exit_code == 1  # the invalid row stays invalid
    assert results(out).status.tolist() == ["ok", "ok", "error"]


def test_rpm_keeps_under_the_server_limit(tmp_path):
    # The server sends no x-ratelimit-* headers, so the adaptive pacer knows nothing of its
    # limit before a 429: only --rpm can keep the run clear of them.
    tasks, rpm = 30, 900
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(rpm_limit=1200, ratelimit_headers=False) as sim:  # 20/s with a 1 s burst
        summary = run_against(sim, csv, out, rpm=rpm, concurrency=8)
        stats = sim.stats
    assert summary.exit_status == 0
    assert stats.by_status.get("429", 0) == 0 and stats.requests == tasks
    # --rpm books one slot every 60/rpm s and sends no request before its slot: the first
    # request goes at once, the last no sooner than (tasks - 1) slots later.
    records = journal(out)
    assert len(records) == tasks and {r["attempts"] for r in records} == {1}
    sent = sorted(sent_at(r) for r in records)
    assert sent[-1] - sent[0] >= (tasks - 1) * 60 / rpm - SENT_AT_SLACK_S


@pytest.mark.parametrize("headers", [True, False])
def test_without_rpm_it_finds_the_server_limit_itself(tmp_path, headers):
    csv = make_prompts(tmp_path / "p.csv", 60)
    with SimulatorThread(rpm_limit=1200, ratelimit_headers=headers) as sim:
        summary = run_against(sim, csv, tmp_path / "out", concurrency=8)
        stats = sim.stats
    assert summary.exit_status == 0
    assert stats.requests - 60 == stats.by_status.get("429", 0)  # every extra request was a 429, retried


def test_a_torn_journal_line_is_tolerated(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 5)
    out = tmp_path / "out"
    with SimulatorThread() as sim:
        run_against(sim, csv, out, limit=3)
        with open(out / "journal.jsonl", "ab") as f:
            f.write(b'{"task_id": "abc", "status": "o')
        summary = run_against(sim, csv, out)
        assert sim.stats.requests == 5
    assert summary.exit_status == 0 and len(results(out)) == 5
    assert all(json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines())


def check_exactly_once(out, tasks):
    df = results(out)
    assert len(df) == tasks and df.task_id.is_unique and set(df.status) == {"ok"}
    for row in df.itertuples():
        assert hashlib.sha256((out / row.image_path).read_bytes()).hexdigest() == row.sha256
    assert not list(Path(out).rglob(".tmp-*"))


def test_kill_9_mid_run_several_times_loses_nothing_and_pays_once(tmp_path):
    tasks, concurrency, kills = 40, 4, 3
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.05) as sim:
        args = ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", concurrency, "--no-progress")
        for _ in range(kills):
            proc = batchgen_process(*args)
            seen = sim.stats.requests
            wait_until(lambda seen=seen: sim.stats.requests >= seen + 6, what="requests from the run")
            proc.kill()
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        proc = batchgen_process(*args)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        sent = sim.stats.requests
    check_exactly_once(out, tasks)
    # Only what was in flight at each kill may have been sent twice.
    assert tasks <= sent <= tasks + kills * concurrency


def test_ctrl_c_finishes_what_is_in_flight_writes_results_and_exits_3(tmp_path):
    tasks = 40
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.1) as sim:
        args = ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", "4", "--no-progress")
        proc = batchgen_process(*args)
        wait_until(lambda: sim.stats.requests >= 6, what="requests from the run")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 3, stderr
        assert "Traceback" not in stderr
        sent = sim.stats.requests
        df = results(out)
        done = (df.status == "ok").sum()
        assert len(df) == tasks and done == sent  # what was in flight finished, nothing was cut
        assert set(df[df.status != "ok"].error_code) == {"interrupted"}
        status = batchgen_process("status", out)
        text, _ = status.communicate(timeout=60)
        assert f"{done}/{tasks} tasks done" in text
        assert "stopped: interrupted" in text and "ETA" not in text
        proc = batchgen_process(*args)
        proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert sim.stats.requests == tasks
    check_exactly_once(out, tasks)


def test_ctrl_c_twice_stops_at_once_and_stays_resumable(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 8)
    out = tmp_path / "out"
    with SimulatorThread(hang=1.0, hang_seconds=600) as sim:
        args = ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", "2", "--no-progress")
        proc = batchgen_process(*args)
        wait_until(lambda: sim.stats.requests >= 2, what="requests in flight")
        proc.send_signal(signal.SIGINT)
        first_words = proc.stderr.readline()  # the run says it is waiting for what is in flight
        assert "Ctrl-C again" in first_words
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 3 and "Traceback" not in stderr
    df = results(out)
    assert set(df.error_code) == {"interrupted"} and df.attempts.tolist().count(1) == 2
    with SimulatorThread() as sim:
        proc = batchgen_process(*args[:5], sim.acedata_url, *args[6:])
        proc.communicate(timeout=60)
        assert proc.returncode == 0 and sim.stats.requests == 8


def test_status_reports_progress_errors_and_rate(cli, tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a", "b", "a forbidden-fruit", ""]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    with SimulatorThread() as sim:
        cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3", "--no-progress")
    r = cli("status", out)
    assert r.exit_code == 0
    assert "4/4 tasks done (100.0%): 2 ok, 2 error(s)" in r.output
    assert "content_policy_violation 1" in r.output and "invalid_params 1" in r.output
    assert r.output.splitlines()[-1] == "finished" and "rate" not in r.output   # no rate once it is over
    r = cli("status", tmp_path / "nothing")
    assert r.exit_code == 2 and "no batchgen run" in r.output


def test_a_write_failure_stops_the_run_and_a_rerun_finishes(cli, tmp_path):
    from batchgen.planning.reader import read_table
    from batchgen.planning.settings import JobConfig
    from batchgen.planning.tasks import make_plan
    csv = make_prompts(tmp_path / "p.csv", 6)
    out = tmp_path / "out"
    plan = make_plan(read_table(csv), JobConfig(defaults={"model": "dall-e-3"}))
    blocked = out / "images" / plan.tasks[3].task_id[:2]
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a folder of images should go")
    with SimulatorThread() as sim:
        args = ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--concurrency", "1", "--no-progress")
        r = cli(*args)
        assert r.exit_code == 3 and "cannot write under" in r.output and "Traceback" not in r.output
        assert set(results(out).error_code.dropna()) == {"write_failed"}
        blocked.unlink()
        r = cli(*args)
        assert r.exit_code == 0
    check_exactly_once(out, 6)
