"""Batch mode you can leave alone: nothing paid twice across modes or runs, no server value
trusted, no wait without end, no ending that says what is not so. Against a small Batch API
server that misbehaves as each test asks (batchserver.py), and the built-in simulator."""
import json
import logging
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest
from batchserver import TOKEN, BatchServer, output_line
from click.testing import CliRunner
from conftest import journal, results

import batchgen
from batchgen.cli.main import main
from batchgen.rules import pricing

GPT = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}
ENV = {"OPENAI_API_KEY": TOKEN}


def prompts(n, start=0):
    return [f"a small watercolour of a harbour, number {i}" for i in range(start, start + n)]


def write_csv(path, rows):
    pd.DataFrame({"prompt": rows}).to_csv(path, index=False)
    return path


@pytest.fixture
def csv(tmp_path):
    return write_csv(tmp_path / "p.csv", prompts(7))


@pytest.fixture
def server():
    with BatchServer() as served:
        yield served


def run(server, csv, out, mode="batch", **options):
    settings = {"mode": mode, "provider": "openai", "base_url": server.base_url, "defaults": GPT,
                "batch_size": 3, "poll_interval": 0.05, "environ": ENV, "progress": False, **options}
    return batchgen.run(str(csv), out=str(out), **settings)


def cli(*args, token=TOKEN):
    return CliRunner().invoke(main, [str(a) for a in args], env={"OPENAI_API_KEY": token, "OPENAI_BASE_URL": None},
                              catch_exceptions=False)


def ran_twice(server) -> dict:
    return {prompt: count for prompt, count in server.executions.items() if count > 1}


# ---- one journal, both modes --------------------------------------------------------------------

def test_a_live_run_never_sends_the_tasks_of_open_batches_and_batch_mode_then_collects_them(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    first = run(server, csv, out, no_wait=True)
    assert first.exit_status == 4 and len(server.batches) == 3
    planned = batchgen.plan(str(csv), out=str(out), mode="live", provider="openai", defaults=GPT)
    assert (planned.done, planned.in_batches, planned.to_send) == (0, 7, 0)
    assert "7 in batches" in str(planned)
    assert json.loads(cli("status", out, "--json").output)["in_batches"] == 7
    live = run(server, csv, out, mode="live")
    assert live.exit_status == 3 and live.stopped == "in_batches" and live.requests_sent == 0
    assert "--mode batch" in live.stop_message and sum(server.executions.values()) == 0
    server.hold = False
    collected = run(server, csv, out)
    assert collected.exit_status == 0 and collected.ok == 7 and collected.requests_sent == 0
    assert len(server.executions) == 7 and ran_twice(server) == {}
    assert json.loads(cli("status", out, "--json").output)["in_batches"] == 0


def test_a_live_run_sends_what_no_batch_holds_and_a_batch_run_then_sends_only_the_rest(tmp_path, server):
    out = tmp_path / "out"
    write_csv(tmp_path / "a.csv", prompts(3))
    assert run(server, tmp_path / "a.csv", out, mode="live").ok == 3
    write_csv(tmp_path / "b.csv", prompts(7))
    assert run(server, tmp_path / "b.csv", out).ok == 7
    assert len(server.executions) == 7 and ran_twice(server) == {}
    assert set(results(out)["mode"]) == {"live", "batch"}


def test_the_budget_counts_open_batches_across_runs(tmp_path, server):
    out = tmp_path / "out"
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"gpt-image-2": {"per_image": {"low": {"1024x1024": 0.02}}}}}))
    each = pricing.load(str(prices)).estimate(GPT, "batch")
    server.hold = True
    first = run(server, write_csv(tmp_path / "a.csv", prompts(4)), out, no_wait=True, max_cost=each * 5.5,
                prices=str(prices))
    assert first.exit_status == 4
    second = run(server, write_csv(tmp_path / "b.csv", prompts(8)), out, no_wait=True, max_cost=each * 5.5,
                 prices=str(prices))
    assert second.stopped == "budget_exceeded"
    submitted = sum(len(server.files[b["input_file_id"]].splitlines()) for b in server.batches.values())
    assert submitted == 5            # 4, then the one more the budget allowed


# ---- every server value checked against what was asked -------------------------------------------

def test_invented_and_path_like_custom_ids_make_no_file_and_no_row(tmp_path, csv, server):
    out = tmp_path / "out"
    strangers = ["../../../escaped", "/tmp/absolute", "0123456789abcdef", "ffffffffffffffff", "x" * 5000]

    def lines(batch, asked):
        return [output_line(cid) for cid, _ in asked] + [output_line(s) for s in strangers]
    server.lines = lines
    summary = run(server, csv, out, batch_size=10)
    assert summary.exit_status == 0 and summary.ok == 7 and summary.not_in_input == 0
    df = results(out)
    assert len(df) == 7 and df.in_input.all()
    assert not (tmp_path / "escaped").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.csv"]
    images = [p for p in (out / "images").rglob("*") if p.is_file()]
    assert len(images) == 7 and all(p.resolve().is_relative_to((out / "images").resolve()) for p in images)
    status = cli("status", out, "--json")
    assert json.loads(status.output)["ok"] == 7


def test_a_custom_id_answered_twice_is_kept_once_whatever_the_order(tmp_path, csv, server):
    def lines(batch, asked):
        first, *rest = asked
        return ([output_line(first[0], 500, {"error": {"message": "boom", "type": "server_error",
                                                        "code": "server_error"}})]
                + [output_line(cid) for cid, _ in asked])
    server.lines = lines
    summary = run(server, csv, tmp_path / "out", batch_size=10)
    assert summary.ok == 7 and len(server.batches) == 1 and ran_twice(server) == {}


def test_an_image_is_never_named_after_a_text_that_is_not_a_task_id(tmp_path):
    from batchgen.exceptions import BadResponse
    from batchgen.keeping.store import relative_image_path
    assert relative_image_path("0123456789abcdef", 0, 1, "png") == "images/01/0123456789abcdef.png"
    for bad in ("../../etc/passwd", "/abs/olute", "ab/../../cd", ""):
        with pytest.raises(BadResponse):
            relative_image_path(bad, 0, 1, "png")


# ---- never stuck, always told ------------------------------------------------------------------

def test_a_batch_the_server_does_not_know_ends_the_run_with_the_way_forward(tmp_path, csv, server, caplog):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True, batch_size=10)
    lost = next(iter(server.batches))
    server.forget.add(lost)
    server.hold = False
    stopped = run(server, csv, out, batch_size=10)
    assert stopped.exit_status == 3 and stopped.stopped == "batch_lost"
    assert lost in stopped.stop_message and "--resubmit-lost" in stopped.stop_message
    assert len(server.batches) == 1                     # nothing sent again without asking
    caplog.set_level(logging.WARNING, logger="batchgen")
    again = run(server, csv, out, batch_size=10, resubmit_lost=True)
    assert again.exit_status == 0 and again.ok == 7 and len(server.batches) == 2
    assert any(lost in r.getMessage() and "paid twice" in r.getMessage() for r in caplog.records)


def test_an_unknown_status_ends_the_run_naming_the_batch(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True, batch_size=10)
    paused = next(iter(server.batches))
    server.status[paused] = "paused"
    stopped = run(server, csv, out, batch_size=10)
    assert stopped.exit_status == 3 and paused in stopped.stop_message and "paused" in stopped.stop_message


@pytest.mark.parametrize("stuck", ["validating", "finalizing"])
def test_a_batch_stuck_past_its_expiry_is_taken_as_expired_and_its_tasks_sent_once_more(tmp_path, csv, server, stuck):
    out = tmp_path / "out"
    server.expires_in = -7200             # expired two hours ago, still saying it works
    server.hold = True
    run(server, csv, out, no_wait=True, batch_size=10)
    old = next(iter(server.batches))
    server.status[old] = stuck
    server.expires_in = 24 * 3600
    server.hold = False
    summary = run(server, csv, out, batch_size=10)
    assert summary.exit_status == 0 and summary.ok == 7
    assert server.cancels == [old] and len(server.batches) == 2 and ran_twice(server) == {}


def test_an_output_file_gone_does_not_keep_the_other_batches_from_being_collected(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True)
    gone = next(iter(server.batches))
    server.lose_output.add(gone)
    server.hold = False
    summary = run(server, csv, out)
    assert summary.exit_status == 3 and summary.ok == 4 and gone in summary.stop_message
    assert "output file" in summary.stop_message


def test_a_chunk_refused_as_too_large_is_split_and_a_single_request_too_large_is_its_rows_error(tmp_path, server):
    rows = prompts(6) + ["a harbour " * 400]           # one line far larger than the others
    csv = write_csv(tmp_path / "p.csv", rows)
    server.max_upload = 1500
    summary = run(server, csv, tmp_path / "out", batch_size=10)
    assert summary.ok == 6 and summary.by_code == {"request_too_large": 1} and summary.exit_status == 1
    df = results(tmp_path / "out")
    assert df[df.prompt == rows[-1]].error_code.tolist() == ["request_too_large"]
    assert ran_twice(server) == {} and len(server.executions) == 6


def test_a_request_larger_than_any_file_is_its_rows_error_without_an_upload(tmp_path, server, monkeypatch):
    from batchgen.sending.backends import batch
    monkeypatch.setattr(batch, "MAX_BATCH_INPUT_BYTES", 3000)     # the API's 200 MB, scaled down
    rows = prompts(3) + ["a harbour " * 400]
    summary = run(server, write_csv(tmp_path / "p.csv", rows), tmp_path / "out", batch_size=10)
    assert summary.ok == 3 and summary.by_code == {"request_too_large": 1}
    assert server.uploads == 1 and b"a harbour a harbour" not in b"".join(server.files.values())


def test_a_5xx_on_upload_and_on_create_is_tried_again_and_pays_once(tmp_path, csv, server):
    server.fail = {"upload": [500], "create": [503], "create_after": [502]}
    summary = run(server, csv, tmp_path / "out", batch_size=10)
    assert summary.exit_status == 0 and summary.ok == 7
    # The create that made its batch and then failed is found, not made again.
    assert len(server.batches) == 1 and ran_twice(server) == {}


def test_a_chunk_the_server_refuses_stops_submitting_but_the_batches_submitted_are_collected(tmp_path, csv, server):
    server.fail = {"create": [0, 400]}          # the first create works, the second is refused
    summary = run(server, csv, tmp_path / "out")
    assert summary.exit_status == 3 and summary.stopped == "batch_api_error" and "HTTP 400" in summary.stop_message
    assert summary.ok == 3 and len(server.batches) == 1 and len(server.executions) == 3


def test_an_upload_gets_longer_than_timeout_by_its_size(tmp_path, server):
    # 60 prompts of 20,000 characters: a 1.2 MB file, 2.3 s more at the slowest link allowed.
    csv = write_csv(tmp_path / "p.csv", [f"{i} " + "a harbour at dawn " * 1100 for i in range(60)])
    server.upload_latency = 1.0                  # longer than --timeout, shorter than its stretch
    summary = run(server, csv, tmp_path / "out", batch_size=100, timeout=0.3)
    assert summary.exit_status == 0 and summary.ok == 60 and server.uploads == 1


def test_adoption_finds_an_unrecorded_batch_behind_thousands_of_newer_ones(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True, batch_size=10)
    orphan = next(iter(server.batches))
    path = out / "journal.jsonl"      # killed between the batch's creation and its journal line
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if '"event":"submitted"' not in line))
    for _ in range(2500):
        server.add_batch("file-other", {"someone": "else"}, created_at=server.batches[orphan]["created_at"] + 60)
    server.hold = False
    summary = run(server, csv, out, batch_size=10)
    assert summary.ok == 7 and ran_twice(server) == {}
    assert sum(1 for b in server.batches.values() if b["metadata"].get("batchgen_chunk")) == 1


def test_a_model_the_batch_api_does_not_serve_stops_the_run_with_its_tasks_pending(tmp_path, csv, server):
    # A catalog that lists a model the server has never heard of; its lines say model_not_found
    # (one says a server error: asked again in a live batch, but not for a model refused).
    overlay = tmp_path / "models.json"
    overlay.write_text(json.dumps({"providers": {"openai": {"models": {
        "gpt-image-2.7-flare": {"status": "live", "spec": "gpt-image-2.6"}}}}}))
    unserved = {"gpt-image-2.7-flare"}
    not_found = {"error": {"message": "The model 'gpt-image-2.7-flare' does not exist or you do not have access "
                                      "to it.", "type": "invalid_request_error", "code": "model_not_found"}}
    server_error = {"error": {"message": "boom", "type": "server_error", "code": "server_error"}}

    def lines(batch, asked):
        model = json.loads(server.files[batch["input_file_id"]].splitlines()[0])["body"]["model"]
        if model not in unserved:
            return [output_line(cid) for cid, _ in asked]
        return [output_line(cid, 500, server_error) if i == 0 else output_line(cid, 404, not_found)
                for i, (cid, _) in enumerate(asked)]
    server.lines = lines
    out = tmp_path / "out"
    sweep = {"model": ["gpt-image-2", "gpt-image-2.7-flare"]}
    summary = run(server, csv, out, sweep=sweep, models=str(overlay))
    assert summary.exit_status == 3 and summary.stopped == "model_not_found"
    assert "does not serve model 'gpt-image-2.7-flare'" in summary.stop_message
    assert "gpt-image-2.6-flare" in summary.stop_message         # the nearest batchgen knows
    # the other model's chunks are collected; the refused model's tasks are left to send
    assert (summary.ok, summary.errors, summary.not_done) == (7, 0, 7)
    assert len(server.batches) == 6          # 3 of each model; none of the refused one sent again
    assert [r for r in journal(out) if r.get("status") == "error"] == []     # none recorded as failed
    # the server serves the model now: a rerun sends just its tasks, and finishes
    unserved.clear()
    again = run(server, csv, out, sweep=sweep, models=str(overlay))
    assert again.exit_status == 0 and again.ok == 14 and len(server.batches) == 9


# ---- honest endings ----------------------------------------------------------------------------

def test_no_wait_exits_4_while_batches_run_and_0_once_a_second_no_wait_collects_them(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    first = run(server, csv, out, no_wait=True)
    assert first.exit_status == 4 and "submitted 3 batch(es)" in first.stop_message
    still = run(server, csv, out, no_wait=True)
    assert still.exit_status == 4 and "submitted 0 batch(es)" in still.stop_message
    server.hold = False
    done = run(server, csv, out, no_wait=True)
    assert done.exit_status == 0 and done.ok == 7 and done.requests_sent == 0 and len(server.batches) == 3


def test_a_lost_batch_under_simulate_is_sent_again_without_asking(tmp_path, csv):
    out = tmp_path / "out"
    options = {"mode": "batch", "provider": "openai", "simulate": True, "defaults": GPT, "poll_interval": 0.05,
               "progress": False}
    first = batchgen.run(str(csv), out=str(out), no_wait=True, **options)
    assert first.exit_status == 4
    second = batchgen.run(str(csv), out=str(out), **options)       # a new simulator: the batch is gone
    assert second.exit_status == 0 and second.ok == 7


def test_cancel_with_a_rejected_token_exits_non_zero(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True)
    refused = cli("cancel", out, token="wrong")
    assert refused.exit_code == 3 and "not cancelled" in refused.output and server.cancels == []


def test_cancel_finds_a_batch_created_but_never_recorded_and_status_says_cancelled(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True, batch_size=10)
    orphan = next(iter(server.batches))
    path = out / "journal.jsonl"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if '"event":"submitted"' not in line))
    done = cli("cancel", out)
    assert done.exit_code == 0 and server.cancels == [orphan] and orphan in done.output
    status = json.loads(cli("status", out, "--json").output)
    assert status["stopped"] == "batch_cancelled" and orphan in status["stop_message"]


def test_a_rerun_names_every_cancelled_batch(tmp_path, csv, server):
    out = tmp_path / "out"
    server.hold = True
    run(server, csv, out, no_wait=True)
    assert cli("cancel", out).exit_code == 0
    summary = run(server, csv, out)
    assert summary.stopped == "batch_cancelled"
    assert all(batch_id in summary.stop_message for batch_id in server.batches)


def test_ctrl_c_during_collection_submits_nothing_new_and_says_the_batches_run_on(tmp_path, csv, server):
    import signal

    def lines(batch, asked):             # the first asks to be sent again (a 500)
        first, *rest = asked
        return [output_line(first[0], 500, {"error": {"message": "boom", "type": "server_error",
                                                       "code": "server_error"}})] + [output_line(c) for c, _ in rest]
    server.lines = lines
    server.hold = True
    run(server, csv, tmp_path / "out", no_wait=True, batch_size=4)
    first, second = server.batches
    server.status[second] = "in_progress"            # still running when Ctrl-C comes
    server.hold = False
    stopping = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "stopping: no new requests" in record.getMessage():
                stopping.set()

    def ctrl_c():         # the file is served once the run has taken the Ctrl-C mid-collection
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.wait(30)
    server.on_content = ctrl_c
    watch = Watch()
    logging.getLogger("batchgen").addHandler(watch)
    try:
        summary = run(server, csv, tmp_path / "out", batch_size=4)
    finally:
        logging.getLogger("batchgen").removeHandler(watch)
    assert summary.stopped == "interrupted" and summary.exit_status == 3
    assert summary.ok == 3 and len(server.batches) == 2 and server.uploads == 2     # nothing new
    assert "keep running on the server (and are billed)" in summary.stop_message
    assert "batchgen cancel" in summary.stop_message


def test_ctrl_c_while_waiting_says_the_batches_run_on(tmp_path, csv, server):
    import signal
    server.hold = True
    server.on_poll = lambda: os.kill(os.getpid(), signal.SIGINT)
    summary = run(server, csv, tmp_path / "out")
    assert summary.stopped == "interrupted" and summary.exit_status == 3 and len(server.batches) == 3
    assert "3 batch(es) of 7 request(s) keep running on the server (and are billed)" in summary.stop_message


def test_the_cli_says_exit_4_for_no_wait(tmp_path, csv, server):
    server.hold = True
    done = subprocess.run([sys.executable, "-m", "batchgen", "run", csv, "--out", tmp_path / "out", "--mode", "batch",
                           "--provider", "openai", "--base-url", server.base_url, "--model", "gpt-image-2",
                           "--quality", "low", "--no-wait", "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=120)
    assert done.returncode == 4, done.stderr
    assert "run the same command again to collect" in done.stdout



def test_resubmit_lost_is_an_option_of_the_cli_the_job_file_and_python(tmp_path, csv):
    from batchgen.exceptions import UsageError
    from batchgen.planning.settings import load_job_file
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{csv.name}"\nmode = "batch"\nprovider = "openai"\nresubmit_lost = true\n'
                   '[defaults]\nmodel = "gpt-image-2"\n')
    assert load_job_file(job)["resubmit_lost"] is True
    job.write_text(job.read_text().replace("resubmit_lost = true", 'resubmit_lost = "yes"'))
    with pytest.raises(UsageError, match="resubmit_lost must be true or false"):
        load_job_file(job)
    assert "--resubmit-lost" in cli("run", "--help").output
    with pytest.raises(UsageError, match="resubmit_lost.* must be true or false, not 'yes'"):
        batchgen.run(str(csv), out=str(tmp_path / "out"), mode="batch", provider="openai", simulate=True,
                     defaults=GPT, resubmit_lost="yes")


def test_a_batch_object_is_typed_and_bounded_before_it_is_used():
    from batchgen.exceptions import BadResponse
    from batchgen.sending.client import parse_batch
    info = parse_batch({"id": "batch_1", "status": "paused", "output_file_id": "../../v1/batches/x/cancel",
                        "error_file_id": "file-2?x=1", "expires_at": "soon", "created_at": 1_700_000_000,
                        "metadata": {"batchgen_chunk": "k" * 600, "ok": "yes"}})
    assert info.status == "unknown ('paused')" and info.output_file_id is None and info.error_file_id is None
    assert info.expires_at is None and info.created_at == 1_700_000_000 and info.metadata == {"ok": "yes"}
    for bad_id in ("../batches", "batch 1", "", None, 7):
        with pytest.raises(BadResponse):
            parse_batch({"id": bad_id, "status": "completed"})
