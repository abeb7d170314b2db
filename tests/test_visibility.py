"""A run you can see into: --json on run, plan and status; -v and --log-file lines; summaries
whose counts agree; status that knows a going run from a finished, stopped or killed one."""
import fcntl
import io
import json
import os
import re
import signal
import sys

import pandas as pd
import pytest
from conftest import batchgen_process, journal, make_prompts, wait_until
from hostile import Hostile, generation, json_response

import batchgen
from batchgen.cli.main import main
from batchgen.exceptions import FolderBusy
from batchgen.keeping.outdir import LOCK_FILE, OutputFolder
from batchgen.showing.progress import Progress
from batchgen.simulator import SimulatorThread

SECRET = "sk-visible-Secret-0987654321"
RUN_KEYS = {"ok", "errors", "not_done", "by_code", "images", "requests_sent", "est_cost_usd",
            "stopped", "exit_status"}
STATUS_KEYS = {"total", "done", "ok", "errors", "by_code", "running", "stopped", "rate_per_min", "eta_s"}
PLAN_KEYS = {"tasks", "refused", "done", "to_send", "est_cost_usd", "est_cost_to_send_usd", "points"}
# README, "Logs": time (UTC), level, logger, then the event's fields.
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) batchgen(\.\w+)*: (\w+) (.*)$")
ATTEMPT = re.compile(r"^task=[0-9a-f]{16} try=\d+ http=(\d+|-) result=(\S+) latency_s=\d+\.\d{3} "
                     r"next=(done|recorded|stop|retry_after_pause|retry_in_s=\d+\.\d{3})$")


def run_args(csv, out, sim, *extra):
    return ("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3", *extra)


def events(log_text: str) -> list:
    """(event, its fields) of each line; every line must be in the documented format."""
    found = []
    for line in log_text.splitlines():
        m = LINE.match(line)
        assert m, line
        found.append((m[3], m[4]))
    return found


# ---- --json -----------------------------------------------------------------------------------

def test_run_json_is_one_object_on_stdout_and_the_bar_stays_on_stderr(cli, fresh_sim, prompts_csv, tmp_path):
    r = cli(*run_args(prompts_csv, tmp_path / "out", fresh_sim, "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert RUN_KEYS <= set(doc)
    assert (doc["ok"], doc["errors"], doc["not_done"], doc["images"]) == (3, 0, 0, 3)
    assert doc["requests_sent"] == fresh_sim.stats.requests == 3
    assert doc["exit_status"] == r.exit_code and doc["stopped"] is None and doc["by_code"] == {}
    assert doc["est_cost_usd"] == pytest.approx(0.12)
    assert "ok=3" in r.stderr          # the progress bar, with its counts, on stderr


def test_a_stopped_run_counts_each_unfinished_task_once_with_the_stops_code(cli, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 6)
    out = tmp_path / "out"
    with SimulatorThread() as sim:
        args = run_args(csv, out, sim, "--no-progress", "--concurrency", "1")
        as_json = cli(*args, "--json", env={"ACEDATA_API_TOKEN": "wrong-token"})
        text = cli(*args, env={"ACEDATA_API_TOKEN": "wrong-token"})
    assert as_json.exit_code == text.exit_code == 3
    doc = json.loads(as_json.stdout)
    assert (doc["ok"], doc["errors"], doc["not_done"]) == (0, 0, 6)
    assert doc["by_code"] == {} and doc["stopped"] == "invalid_token" and doc["exit_status"] == 3
    assert "0 ok, 0 error(s), 6 not done (invalid_token), of 6 task(s)" in text.stdout
    assert "errors by code" not in text.stdout
    status = json.loads(cli("status", out, "--json").stdout)
    assert STATUS_KEYS <= set(status)
    assert (status["running"], status["stopped"], status["rate_per_min"], status["eta_s"]) == \
        (False, "invalid_token", None, None)
    assert "ACEDATA_API_TOKEN" in status["stop_message"] and "wrong-token" not in json.dumps(status)
    assert "stopped: invalid_token" in cli("status", out).stdout


def test_errors_by_code_add_up_to_the_errors(cli, fresh_sim, tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a", "a forbidden-fruit", "", "b"]}).to_csv(csv, index=False)
    r = cli(*run_args(csv, tmp_path / "out", fresh_sim, "--no-progress", "--json"))
    doc = json.loads(r.stdout)
    assert r.exit_code == doc["exit_status"] == 1
    assert doc["by_code"] == {"content_policy_violation": 1, "invalid_params": 1}
    assert sum(doc["by_code"].values()) == doc["errors"] == 2 and doc["ok"] == 2


# ---- status -----------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_status_knows_a_going_run_a_killed_one_and_a_finished_one(cli, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 30)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.2) as sim:
        args = run_args(csv, out, sim, "--concurrency", "1", "--no-progress")
        proc = batchgen_process(*args)
        try:
            wait_until(lambda: (out / "journal.jsonl").exists() and len(journal(out)) >= 2,
                       what="two outcomes in the journal")
            going = json.loads(cli("status", out, "--json").stdout)
            text = cli("status", out).stdout
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert going["running"] is True and going["state"] == "running" and going["stopped"] is None
        assert going["rate_per_min"] > 0 and going["eta_s"] > 0 and "ETA" in text
        killed = json.loads(cli("status", out, "--json").stdout)
        assert (killed["running"], killed["state"], killed["stopped"]) == (False, "stopped", "no_longer_running")
        assert killed["rate_per_min"] is None and killed["eta_s"] is None
        text = cli("status", out).stdout
        assert "stopped (no longer running)" in text and "ETA" not in text and "rate" not in text
        assert cli(*args).exit_code == 0
    finished = json.loads(cli("status", out, "--json").stdout)
    assert (finished["state"], finished["done"], finished["total"], finished["ok"]) == ("finished", 30, 30, 30)
    assert cli("status", out).stdout.splitlines()[-1] == "finished"


def test_the_lock_probe_neither_creates_nor_keeps_a_lock(tmp_path):
    folder = OutputFolder(tmp_path)
    assert not folder.is_locked() and not (tmp_path / LOCK_FILE).exists()
    holder = OutputFolder(tmp_path)
    holder.lock()
    try:
        assert folder.is_locked()
        with pytest.raises(FolderBusy):
            OutputFolder(tmp_path).lock()
    finally:
        holder.unlock()
    assert not folder.is_locked()
    folder.lock()      # the probes took nothing with them
    folder.unlock()


def test_a_shared_lock_with_no_run_behind_it_is_waited_for_briefly_then_refused(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)       # what a `status` holds for an instant, held for good
        with pytest.raises(FolderBusy, match="another process"):
            OutputFolder(tmp_path).lock()
    finally:
        os.close(fd)
    OutputFolder(tmp_path).lock()


# ---- plan reads the folder ------------------------------------------------------------------

def test_plan_given_a_folder_with_a_run_says_what_is_left_to_send_and_spend(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    fresh = json.loads(cli("plan", prompts_csv, "--model", "dall-e-3", "--out", out, "--json").stdout)
    assert PLAN_KEYS <= set(fresh) and (fresh["done"], fresh["to_send"]) == (0, 3)
    assert fresh["est_cost_to_send_usd"] == fresh["est_cost_usd"] == pytest.approx(0.12)
    assert cli(*run_args(prompts_csv, out, fresh_sim, "--limit", "2", "--no-progress")).exit_code == 0
    r = cli("plan", prompts_csv, "--model", "dall-e-3", "--out", out, "--prompt-column", "tag", "--json")
    assert r.exit_code == 2 and "prompt column" in r.stderr        # run would refuse it too
    doc = json.loads(cli("plan", prompts_csv, "--model", "dall-e-3", "--out", out, "--json").stdout)
    assert (doc["tasks"], doc["done"], doc["to_send"]) == (3, 2, 1)
    assert doc["est_cost_usd"] == pytest.approx(0.12) and doc["est_cost_to_send_usd"] == pytest.approx(0.04)
    assert doc["points"] == {"all": {"tasks": 3, "refused": 0, "done": 2, "to_send": 1, "images": 3,
                                     "est_cost_usd": 0.12, "est_cost_to_send_usd": 0.04}}
    text = cli("plan", prompts_csv, "--model", "dall-e-3", "--out", out, "--rpm", "1").stdout
    assert "2 task(s) of this job done, 1 to send, $0.04 still to spend" in text
    assert "1 tasks (1 images) at 1/min: 1 min" in text


# ---- logs ---------------------------------------------------------------------------------------

def test_the_log_file_has_a_line_per_attempt_and_per_rate_limit_pause(tmp_path):
    def answer(request, body, count):
        if count % 2:
            return json_response({"error": {"message": f"slow down {SECRET}", "code": "rate_limit_exceeded"}},
                                 status=429, headers={"retry-after-ms": "50"})
        return json_response(generation())

    log = tmp_path / "run.log"
    csv = make_prompts(tmp_path / "p.csv", 3)
    with Hostile(answer) as server:
        summary = batchgen.run(str(csv), out=str(tmp_path / "out"), provider="openai", model="gpt-image-2",
                               base_url=server.base_url,
                               environ={"OPENAI_API_KEY": SECRET}, concurrency=1, log_file=str(log))
        assert summary.exit_status == 0 and server.requests == 6
    text = log.read_text()
    assert SECRET not in text
    lines = events(text)
    attempts = [ATTEMPT.match(fields) for event, fields in lines if event == "attempt"]
    assert all(attempts) and len(attempts) == server.requests
    assert [(a[1], a[2], a[3]) for a in attempts] == [("429", "rate_limit_exceeded", "retry_after_pause"),
                                                    ("200", "ok", "done")] * 3
    # Until a pace is known a 429's own wait is a pause with its line; after, the task goes
    # again at the pace, which holds nobody.
    pauses = [fields for event, fields in lines if event == "rate_limit"]
    assert 1 <= len(pauses) <= 3
    assert all(re.fullmatch(r"pause_s=0\.0[0-9]{2} retry_after_s=0\.05 coarse=no http=429 code=rate_limit_exceeded", p)
               for p in pauses), pauses


def test_a_stop_is_logged_and_the_token_never_is(tmp_path):
    def answer(request, body, count):
        return json_response({"error": {"message": f"Incorrect API key provided: {SECRET}",
                                        "code": "invalid_api_key"}}, status=401)

    log = tmp_path / "run.log"
    with Hostile(answer) as server:
        summary = batchgen.run(str(make_prompts(tmp_path / "p.csv", 3)), out=str(tmp_path / "out"),
                               provider="openai", model="gpt-image-2", base_url=server.base_url,
                               environ={"OPENAI_API_KEY": SECRET},
                               concurrency=1, log_file=str(log))
    assert summary.stopped == "invalid_api_key"
    text = log.read_text()
    assert SECRET not in text and "[redacted]" in text
    lines = events(text)
    found = dict(lines)
    assert sorted(found) == ["attempt", "stop"] and len(lines) == 2   # nothing sent after the stop
    assert ATTEMPT.match(found["attempt"])[3] == "stop"
    assert found["stop"].startswith("code=invalid_api_key message=invalid_api_key (HTTP 401)")


def test_the_run_is_quiet_by_default_and_verbose_with_v(cli, fresh_sim, prompts_csv, tmp_path):
    quiet = cli(*run_args(prompts_csv, tmp_path / "a", fresh_sim, "--no-progress"))
    assert quiet.exit_code == 0 and "attempt" not in quiet.output
    loud = cli(*run_args(prompts_csv, tmp_path / "b", fresh_sim, "--no-progress", "-v"))
    assert loud.exit_code == 0
    attempts = [fields for event, fields in events(loud.stderr) if event == "attempt"]
    assert len(attempts) == 3 and all(ATTEMPT.match(a) for a in attempts)
    assert "attempt" not in loud.stdout


def test_a_log_file_that_cannot_be_written_is_a_usage_error(cli, fresh_sim, prompts_csv, tmp_path):
    r = cli(*run_args(prompts_csv, tmp_path / "out", fresh_sim, "--log-file", tmp_path / "no" / "such" / "x.log"))
    assert r.exit_code == 2 and "cannot write the log file" in r.stderr and "Traceback" not in r.output
    assert fresh_sim.stats.requests == 0


# ---- the progress bar -------------------------------------------------------------------------

def test_the_bars_counts_never_lag_and_it_shows_retries_and_pauses(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress = Progress(total=5, done=0, ok=0, errors=0, enabled=True)
    bar = progress._bar
    for i, ok in enumerate([True, False, True, True], start=1):
        progress.advance(ok)
        drawn = str(bar)         # what the bar shows when it is drawn now
        assert f"{i}/5" in drawn and f"ok={progress.ok} err={progress.errors}" in drawn
    progress.retry(rate_limited=False)
    progress.retry(rate_limited=True, pause_s=30)
    drawn = str(bar)
    assert "retries=2" in drawn and "429s=1" in drawn and "rate-limited: paused 30s" in drawn
    progress.close()
    assert "4/5" in sys.stderr.getvalue() and "ok=3 err=1 retries=2 429s=1" in sys.stderr.getvalue()


# ---- words --------------------------------------------------------------------------------------

def test_a_simulated_runs_cost_line_says_nothing_was_charged(cli, prompts_csv, tmp_path):
    r = cli("run", prompts_csv, "--out", tmp_path / "out", "--simulate", "--model", "dall-e-3", "--no-progress")
    assert r.exit_code == 0
    assert "estimated cost of the images: $0.12 (simulated: nothing was charged)" in r.stdout
    assert json.loads(cli("run", prompts_csv, "--out", tmp_path / "out", "--simulate", "--model", "dall-e-3",
                          "--json").stdout)["simulated"] is True


def test_report_names_both_files_it_writes(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli(*run_args(prompts_csv, out, fresh_sim, "--no-progress"))
    r = cli("report", out)
    assert r.exit_code == 0
    assert str(out / "report.html") in r.stdout and str(out / "contact_sheet.png") in r.stdout


def test_the_command_list_shows_each_commands_whole_first_sentence(cli):
    r = cli("--help")
    commands = r.stdout[r.stdout.index("Commands:"):]
    assert "..." not in commands
    listed = " ".join(commands.split())
    for name, command in main.commands.items():
        # Each command's first paragraph is one sentence.
        first = " ".join(command.help.split("\n\n")[0].split())
        assert f"{name} {first}" in listed, (name, first)


def test_a_servers_words_cannot_forge_or_split_a_log_line():
    from batchgen.util.logs import log_field, log_text
    assert log_field("rate_limit\n2026-01-01T00:00:00.000Z INFO batchgen: stop") == \
        "rate_limit?2026-01-01T00:00:00.000Z?INFO?batchgen:?stop"
    assert log_field("") == "-" and len(log_field("x" * 500)) == 100
    assert log_text("refused:\r\nfake line") == "refused:  fake line"
