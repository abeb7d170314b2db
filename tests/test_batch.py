"""Batch API mode: the same job at half the price, paid exactly once through any crash.
Real HTTP against the simulator's Batch API; real processes for kill -9 and the CLI."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from conftest import TOKEN, journal, results, wait_until

import batchgen
from batchgen.simulator import SimConfig, SimulatorThread

GPT = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}
PROMPTS = [f"a small watercolour of a harbour, number {i}" for i in range(7)]


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS, "tag": range(len(PROMPTS))}).to_csv(path, index=False)
    return path


def batch_run(sim, csv, out, **options):
    settings = {"mode": "batch", "provider": "openai", "base_url": sim.openai_base_url, "defaults": GPT,
                "batch_size": 3, "poll_interval": 0.1, "environ": {"OPENAI_API_KEY": TOKEN}, **options}
    return batchgen.run(str(csv), out=str(out), **settings)


def executions(sim) -> dict:
    return dict(sim.stats["batch_executions"])


def batch_events(out) -> list:
    lines = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    return [line["batch"] for line in lines if "batch" in line]


def test_a_batch_run_gives_a_live_runs_results_at_half_the_price(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0.3)) as sim:
        summary = batch_run(sim, csv, tmp_path / "batch")
        assert summary.exit_status == 0 and summary.ok == 7
        assert sim.stats["batches_created"] == 3                       # batches of at most 3
        assert executions(sim) == dict.fromkeys(executions(sim), 1) and len(executions(sim)) == 7
        batchgen.run(str(csv), out=str(tmp_path / "live"), provider="openai", base_url=sim.openai_base_url,
                     defaults=GPT, environ={"OPENAI_API_KEY": TOKEN})
    df, ref = results(tmp_path / "batch"), results(tmp_path / "live")
    assert list(df.columns) == list(ref.columns)
    assert set(df["mode"]) == {"batch"} and df.batch_id.notna().all() and ref.batch_id.isna().all()
    assert df.est_cost_usd.sum() == pytest.approx(ref.est_cost_usd.sum() / 2)
    # The output file comes back shuffled: each image is still its own task's (the simulator
    # draws an image from its prompt, so the live run's image for that prompt is the same).
    assert dict(zip(df.prompt, df.sha256)) == dict(zip(ref.prompt, ref.sha256))
    assert list(df.prompt) == PROMPTS and list(df.tag) == list(range(7))


def test_a_rerun_of_a_finished_batch_job_uploads_nothing(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        assert batch_run(sim, csv, tmp_path / "out").ok == 7
        again = batch_run(sim, csv, tmp_path / "out")
        assert again.ok == 7 and again.requests_sent == 0
        assert sim.stats["files_uploaded"] == 3 and sim.stats["batches_created"] == 3


def test_no_wait_submits_and_exits_4_then_the_same_command_collects(tmp_path, csv):
    # --no-wait looks once at its batches: long enough that none has finished by then.
    with SimulatorThread(SimConfig(batch_seconds=5)) as sim:
        first = batch_run(sim, csv, tmp_path / "out", no_wait=True)
        assert first.exit_status == 4 and first.stopped == "batch_in_progress"
        assert "run the same command again" in first.stop_message and first.not_done == 7
        assert (results(tmp_path / "out").error_code == "batch_in_progress").all()
        second = batch_run(sim, csv, tmp_path / "out")
        assert second.exit_status == 0 and second.ok == 7 and second.requests_sent == 0
        assert sim.stats["batches_created"] == 3 and set(executions(sim).values()) == {1}


# ---- paid exactly once, through any crash -----------------------------------------------------

def cut_after_planned(out):
    """The journal as a kill right after the chunk's "planned" line leaves it."""
    path = out / "journal.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    planned = next(i for i, line in enumerate(lines) if '"event":"planned"' in line)
    path.write_text("".join(lines[:planned + 1]))


def test_a_crash_after_the_batch_was_created_but_not_recorded_adopts_it(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        batch_run(sim, csv, tmp_path / "out", no_wait=True, batch_size=10)
        # As if killed between the batch's creation and the journal line that records it.
        cut_after_planned(tmp_path / "out")
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=10)
        assert summary.ok == 7 and sim.stats["batches_created"] == 1      # found by its metadata
        assert set(executions(sim).values()) == {1}


def test_a_crash_after_planning_before_the_batch_existed_submits_it_once(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        batch_run(sim, csv, tmp_path / "out", no_wait=True, batch_size=10)
        ids = next(e["task_ids"] for e in batch_events(tmp_path / "out") if e["event"] == "planned")
    # A new account (a fresh simulator): no batch carries the chunk's metadata, as after a kill
    # between the journal's "planned" and the upload.
    cut_after_planned(tmp_path / "out")
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=10)
        assert summary.ok == 7 and sim.stats["batches_created"] == 1
        assert sorted(executions(sim)) == sorted(ids)


def test_a_crash_in_the_middle_of_saving_the_output_saves_the_rest_once(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        assert batch_run(sim, csv, tmp_path / "out", batch_size=10).ok == 7
        path = tmp_path / "out" / "journal.jsonl"
        lines = path.read_text().splitlines()
        oks = [i for i, line in enumerate(lines) if '"status":"ok"' in line]
        # Killed after three outcomes were saved: the rest, and "collected", never written.
        kept = [line for i, line in enumerate(lines) if not (i in oks[3:] or '"event":"collected"' in line)]
        path.write_text("".join(line + "\n" for line in kept))
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=10)
        assert summary.ok == 7 and summary.requests_sent == 0 and sim.stats["batches_created"] == 1
        assert len([r for r in journal(tmp_path / "out") if r["status"] == "ok"]) == 7
        assert set(executions(sim).values()) == {1}


def test_kill_9_while_waiting_then_the_rerun_collects_without_a_second_batch(tmp_path, csv):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=4)) as sim:
        proc = _batch_process(sim, csv, out)
        wait_until(lambda: (out / "journal.jsonl").exists()
                   and '"event":"submitted"' in (out / "journal.jsonl").read_text(),
                   what="the batch to be recorded")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        summary = batch_run(sim, csv, out, batch_size=10)
        assert summary.ok == 7 and sim.stats["batches_created"] == 1 and set(executions(sim).values()) == {1}


def _batch_process(sim, csv, out, stderr=subprocess.DEVNULL):
    env = {**os.environ, "OPENAI_API_KEY": TOKEN, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(csv), "--out", str(out), "--mode", "batch",
                             "--provider", "openai", "--base-url", sim.openai_base_url, "--model", "gpt-image-2",
                             "--quality", "low", "--size", "1024x1024", "--batch-size", "10", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


# ---- batches that end badly ----------------------------------------------------------------

def test_an_expired_batch_keeps_what_it_finished_and_sends_the_rest_again_once(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0, batch_expire=1.0)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=10)
        # Every batch expires half done: the first's half, then the resubmitted half's half.
        assert summary.exit_status == 3 and summary.stopped == "batch_expired"
        assert sim.stats["batches_created"] == 2
        assert 0 < summary.ok < 7 and summary.ok + summary.not_done == 7
        assert set(executions(sim).values()) == {1}
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        assert batch_run(sim, csv, tmp_path / "out", batch_size=10).ok == 7
        assert len(executions(sim)) == summary.not_done


def test_a_cancelled_batch_keeps_what_it_finished_and_a_rerun_submits_the_rest(tmp_path, csv):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=30)) as sim:
        batch_run(sim, csv, out, no_wait=True, batch_size=10)
        done = subprocess.run([sys.executable, "-m", "batchgen", "cancel", str(out)], capture_output=True, text=True,
                              env={**os.environ, "OPENAI_API_KEY": TOKEN}, timeout=60)
        assert done.returncode == 0 and "batch_" in done.stdout, done.stderr
        summary = batch_run(sim, csv, out, batch_size=10)
        assert summary.exit_status == 3 and summary.stopped == "batch_cancelled"
        again = batch_run(sim, csv, out, batch_size=10, poll_interval=0.1)
        assert sim.stats["batches_created"] == 2
    assert again.ok + again.not_done == 7


def test_a_batch_that_fails_validation_gives_its_tasks_the_apis_error(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0, batch_fail_validation=1.0)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=10)
    df = results(tmp_path / "out")
    assert summary.exit_status == 1 and summary.errors == 7
    assert df.error_code.notna().all() and df.error_message.notna().all() and df.batch_id.notna().all()


def test_a_server_error_on_a_line_is_sent_again_once_and_a_refusal_is_an_outcome(tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS + ["a forbidden-fruit still life"]}).to_csv(csv, index=False)
    with SimulatorThread(SimConfig(batch_seconds=0, batch_line_errors=0.5, seed=3)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=20)
        df = results(tmp_path / "out")
        refused = df[df.prompt.str.contains("forbidden")]
        assert refused.error_code.tolist() == ["content_policy_violation"]
        assert sim.stats["batches_created"] == 2                   # the first, and one for the 500s
        assert max(executions(sim).values()) <= 2
        assert summary.ok + summary.errors == 8


# ---- bad input: exit 2, nothing uploaded -------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--mode", "batch", "--provider", "acedata", "--model", "gpt-image-2"], "--provider openai"),
    (["--mode", "batch", "--provider", "openai", "--model", "nano-banana"], "GPT image models only"),
    (["--mode", "batch", "--provider", "openai"], "would use 'dall-e-2', which was shut down"),
    (["--mode", "batch", "--provider", "openai", "--model", "gpt-image-2", "--batch-size", "50001"], "1 to 50,000"),
    (["--provider", "openai", "--model", "gpt-image-2", "--no-wait"], "--no-wait needs --mode batch"),
])
def test_bad_batch_settings_are_refused_before_anything_is_uploaded(cli, csv, tmp_path, args, words):
    r = cli("run", csv, "--out", tmp_path / "out", *args, env={"OPENAI_API_KEY": TOKEN})
    assert r.exit_code == 2 and words in r.output
    assert not (tmp_path / "out").exists()


def test_a_sweep_over_models_sends_one_model_per_batch(tmp_path, csv):
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=100,
                            sweep=[("model", ["gpt-image-2", "gpt-image-2.5-flare"])])
        assert summary.ok == 14 and sim.stats["batches_created"] == 2


def test_a_batch_the_simulator_refuses_for_its_model_leaves_its_tasks_pending(tmp_path, csv):
    # The simulator fails the whole batch at validation (model_not_found), as OpenAI does for a
    # model it does not know: the same stop as a line saying so.
    overlay = tmp_path / "models.json"
    overlay.write_text(json.dumps({"providers": {"openai": {"models": {
        "gpt-image-2.7-flare": {"status": "live", "spec": "gpt-image-2.6"}}}}}))
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        summary = batch_run(sim, csv, tmp_path / "out", batch_size=100, models=str(overlay),
                            sweep=[("model", ["gpt-image-2", "gpt-image-2.7-flare"])])
    assert summary.exit_status == 3 and summary.stopped == "model_not_found"
    assert "does not serve model 'gpt-image-2.7-flare'" in summary.stop_message
    assert "gpt-image-2.6-flare" in summary.stop_message
    assert (summary.ok, summary.errors, summary.not_done) == (7, 0, 7)


def test_ctrl_c_while_waiting_leaves_the_batches_running_and_the_next_run_collects(tmp_path, csv):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=3)) as sim:
        proc = _batch_process(sim, csv, out, stderr=subprocess.PIPE)
        wait_until(lambda: (out / "journal.jsonl").exists()
                   and '"event":"submitted"' in (out / "journal.jsonl").read_text(),
                   what="the batch to be recorded")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "Traceback" not in err
        assert (results(out).error_code == "interrupted").all()
        summary = batch_run(sim, csv, out, batch_size=10)
        assert summary.ok == 7 and sim.stats["batches_created"] == 1 and set(executions(sim).values()) == {1}


def test_pending_tasks_are_found_by_id_across_blocks_of_rows_without_being_held(tmp_path, monkeypatch):
    import random

    import numpy as np

    from batchgen.commands import prepare
    from batchgen.planning.tasks import Pending
    from batchgen.sending.backends import batch
    monkeypatch.setattr(batch, "ROWS_AT_A_TIME", 3)       # many blocks of rows in a small plan
    path = tmp_path / "p.csv"
    pd.DataFrame({"prompt": [f"prompt {i}" for i in range(20)]}).to_csv(path, index=False)
    _, _, plan = prepare(str(path), {"out": str(tmp_path / "out"), "defaults": GPT,
                                     "sweep": [("quality", ["low", "high"])]})
    pending = Pending(plan.tasks, np.array([k for k in range(len(plan.tasks)) if k % 3], np.uint32))
    expected = {t.task_id: t for t in pending}
    found = batch.TasksById(pending)
    ids = list(expected)
    random.Random(7).shuffle(ids)
    assert all(found.get(i) == expected[i] and i in found for i in ids)
    others = [t.task_id for k, t in enumerate(plan.tasks) if not k % 3]
    assert others and not any(i in found or found.get(i) is not None for i in others)
    assert found.get("not-a-task-id") is None and "ABCDEF0123456789" not in found
    assert len(found._made) <= 3 * 2          # one block of rows at a time, not the job
    listed = batch.TasksById(list(pending))
    assert all(listed.get(i) == expected[i] for i in ids) and listed.get(others[0]) is None


def test_a_chunks_task_ids_are_kept_as_keys_and_read_back_as_the_ids(tmp_path):
    from batchgen.keeping.journal import Journal, replay
    from batchgen.planning.identity import ChunkIds
    from batchgen.sending.backends.batch import HeldIds
    ids = ["%016x" % (7 * k + 3) for k in range(1000)]
    with Journal(tmp_path / "journal.jsonl") as j:
        j.append({"batch": {"chunk": "c1", "event": "planned", "task_ids": ids}})
        j.append({"batch": {"chunk": "c2", "event": "planned", "task_ids": ["hand-made", ids[0]]}})
    state = replay(tmp_path / "journal.jsonl")
    kept = state.batches["c1"]["task_ids"]
    assert isinstance(kept, ChunkIds) and list(kept) == ids and len(kept) == 1000
    assert kept.keys.itemsize * len(kept) == 8000             # 8 bytes an id
    assert state.batches["c2"]["task_ids"] == ["hand-made", ids[0]]      # not batchgen's: as it was
    held = HeldIds(chunk["task_ids"] for chunk in state.batches.values())
    assert all(i in held for i in ids) and "%016x" % 1 not in held and "hand-made" not in held
