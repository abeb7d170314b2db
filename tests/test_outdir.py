"""The output folder never lies: provenance on every row, simulated never mixed with real,
one folder one dataset, one run per folder (real processes for the lock and the refusals)."""
import hashlib
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROMPTS, TOKEN, batchgen_process, results, wait_until

from batchgen.rules.providers import public_url
from batchgen.simulator import SimConfig, SimulatorThread


def snapshot(folder) -> dict:
    """Every file under the folder: its size and hash (what 'nothing changed' means)."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            found[str(path.relative_to(folder))] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def image_files(out) -> set:
    return {str(p.relative_to(out)) for p in (Path(out) / "images").rglob("*") if p.is_file()}


def metadata(out) -> list:
    return [json.loads(line) for line in (Path(out) / "metadata.jsonl").read_text().splitlines()]


# ---- provenance ------------------------------------------------------------------------

def test_every_row_and_job_json_say_where_the_results_came_from(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert set(df.provider) == {"acedata"}
    assert set(df.endpoint) == {fresh_sim.acedata_url}
    assert set(df["mode"]) == {"live"} and not df.simulated.any()
    assert all(m["provider"] == "acedata" and m["simulated"] is False and m["endpoint"] == fresh_sim.acedata_url
               for m in metadata(out))
    job = json.loads((out / "job.json").read_text())
    assert job["provenance"] == {"provider": "acedata", "endpoint": fresh_sim.acedata_url, "mode": "live",
                                 "simulated": False}


def test_a_simulated_run_says_so_on_every_row(cli, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--simulate", "--provider", "openai", "--model", "gpt-image-2",
            "--no-progress")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert df.simulated.all() and set(df.provider) == {"openai"}
    assert df.endpoint.str.match(r"^http://127\.0\.0\.1:\d+/v1/images/generations$").all()
    assert all(m["simulated"] is True for m in metadata(out))


def test_rows_keep_the_origin_of_the_run_that_made_them(cli, fresh_sim, tmp_path):
    # Two runs of one job against two endpoints: each row names the one that answered it.
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS[:2]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    # gpt-image-2: a model both serve
    assert cli("run", csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--limit", "1",
               "--model", "gpt-image-2", "--quality", "low", "--no-progress").exit_code == 0
    assert cli("run", csv, "--out", out, "--base-url", fresh_sim.openai_base_url, "--provider", "openai",
               "--model", "gpt-image-2", "--quality", "low", "--no-progress",
               env={"OPENAI_API_KEY": TOKEN}).exit_code == 0
    df = results(out).set_index("prompt")
    assert df.loc[PROMPTS[0], "provider"] == "acedata" and df.loc[PROMPTS[1], "provider"] == "openai"
    assert df.loc[PROMPTS[1], "endpoint"] == fresh_sim.openai_base_url + "/images/generations"


def test_what_is_written_of_an_endpoint_has_no_credentials_or_query():
    assert public_url("https://user:s3cret@proxy.example:8443/v1/images/generations?key=abc#x") == \
        "https://proxy.example:8443/v1/images/generations"
    assert public_url("http://[::1]:9/v1") == "http://[::1]:9/v1"


# ---- simulated is never real ---------------------------------------------------------------

def test_a_real_run_on_a_simulated_folder_is_refused_and_changes_nothing(sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    first = batchgen_process("run", prompts_csv, "--out", out, "--simulate", "--no-progress")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    before = snapshot(out)
    real = batchgen_process("run", prompts_csv, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
    _, err = real.communicate(timeout=120)
    assert real.returncode == 2
    assert "simulated" in err and "another --out" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_a_simulated_run_on_a_real_folder_is_refused_and_changes_nothing(sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    real = batchgen_process("run", prompts_csv, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
    assert real.wait(timeout=120) == 0, real.stderr.read()
    before = snapshot(out)
    simulated = batchgen_process("run", prompts_csv, "--out", out, "--simulate", "--no-progress")
    _, err = simulated.communicate(timeout=120)
    assert simulated.returncode == 2
    assert "real API" in err and "Traceback" not in err
    assert snapshot(out) == before


# ---- one folder, one dataset ---------------------------------------------------------------

def test_tasks_of_an_earlier_input_stay_listed_after_the_current_inputs(cli, fresh_sim, tmp_path):
    out = tmp_path / "out"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    pd.DataFrame({"prompt": PROMPTS, "tag": ["a", "b", "c"]}).to_csv(first, index=False)
    pd.DataFrame({"prompt": [PROMPTS[2], "A new prompt: a kite over dunes"],
                  "tag": ["c", "d"]}).to_csv(second, index=False)
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert cli("run", first, *args).exit_code == 0
    r = cli("run", second, *args)
    assert r.exit_code == 0, r.output
    assert "2 task(s) finished earlier are not in this job" in r.output
    df = results(out)
    # The current input's rows first, in its order; then the earlier tasks, with what they were.
    assert list(df.in_input) == [True, True, False, False]
    assert list(df.prompt) == [PROMPTS[2], "A new prompt: a kite over dunes", PROMPTS[0], PROMPTS[1]]
    assert list(df.tag[:2]) == ["c", "d"] and df.tag[2:].isna().all()
    assert df.row_index[2:].isna().all() and (df.status == "ok").all()
    # Every image on disk is listed in both files, and nothing else is.
    assert set(df.image_path) == image_files(out)
    assert {m["file_name"] for m in metadata(out)} == image_files(out)
    assert {m["in_input"] for m in metadata(out)} == {True, False}
    # The filter the README gives.
    assert len(df[df.in_input]) == 2


def test_a_rerun_of_the_first_input_lists_every_task_as_in_the_input_again(cli, fresh_sim, tmp_path):
    out = tmp_path / "out"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(first, index=False)
    pd.DataFrame({"prompt": PROMPTS[:1]}).to_csv(second, index=False)
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert cli("run", first, *args).exit_code == 0
    assert cli("run", second, *args).exit_code == 0
    fresh_sim.reset_stats()
    assert cli("run", first, *args).exit_code == 0
    assert fresh_sim.stats["requests"] == 0
    assert results(out).in_input.all() and len(results(out)) == 3


# ---- one run per folder ----------------------------------------------------------------------

@pytest.fixture
def hanging_sim():
    with SimulatorThread(SimConfig(hang=1.0)) as server:
        yield server


def test_a_second_run_on_a_held_folder_is_refused_and_kill_9_frees_it(sim, hanging_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    holder = batchgen_process("run", prompts_csv, "--out", out, "--base-url", hanging_sim.acedata_url,
                              "--no-progress", "--timeout", "3600")
    try:
        lock = out / ".lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(holder.pid), what="the lock")
        second = batchgen_process("run", prompts_csv, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert f"process {holder.pid}" in err and "Traceback" not in err
        # Reading a folder needs no lock.
        status = batchgen_process("status", out)
        assert status.wait(timeout=60) == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The kernel released the lock with the process: the next run goes on and finishes.
    after = batchgen_process("run", prompts_csv, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
    assert after.wait(timeout=120) == 0, after.stderr.read()
    assert (results(out).status == "ok").all()


def test_a_report_can_be_written_while_a_run_holds_the_folder(cli, sim, hanging_sim, tmp_path):
    out = tmp_path / "out"
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(csv, index=False)
    assert cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--limit", "2", "--no-progress").exit_code == 0
    holder = batchgen_process("run", csv, "--out", out, "--base-url", hanging_sim.acedata_url, "--no-progress")
    try:
        wait_until(lambda: (out / ".lock").read_text().strip() == str(holder.pid), what="the lock")
        report = batchgen_process("report", out)
        assert report.wait(timeout=120) == 0, report.stderr.read()
        assert (out / "report.html").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)


# ---- temporary files -------------------------------------------------------------------------

def test_a_run_removes_what_killed_writers_left_anywhere_under_out(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert cli("run", prompts_csv, *args).exit_code == 0
    dead = 2 ** 22 + 12345           # above the kernel's default pid_max: no such process
    stray = [out / f".tmp-results.parquet.{dead}", out / f".tmp-metadata.jsonl.{dead}",
             out / "images" / "ab" / f".tmp-abcdef.png.{dead}"]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    alive = out / ".tmp-report.html.1"     # pid 1 is alive: a writer at work
    alive.write_bytes(b"in progress")
    assert cli("run", prompts_csv, *args).exit_code == 0
    assert not any(p.exists() for p in stray)
    assert alive.exists()


def test_a_base_url_with_credentials_is_refused_without_repeating_them(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    url = fresh_sim.acedata_url.replace("http://", "http://someone:hunter2@")
    r = cli("run", prompts_csv, "--out", out, "--base-url", url, "--no-progress")
    assert r.exit_code == 2
    assert "user name or password" in r.output and "hunter2" not in r.output
    assert not out.exists()


def test_images_whose_journal_line_never_came_are_removed(cli, fresh_sim, tmp_path):
    out = tmp_path / "out"
    csv, fewer = tmp_path / "p.csv", tmp_path / "fewer.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(csv, index=False)
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert cli("run", csv, *args).exit_code == 0
    # A kill between an image's rename and its journal line: the file is there, the line is not.
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    last_ok = max(i for i, line in enumerate(lines) if '"status":"ok"' in line)
    lost = json.loads(lines[last_ok])
    (out / "journal.jsonl").write_text("".join(lines[:last_ok] + lines[last_ok + 1:]))
    stranger = out / "images" / "notes.txt"          # not a name batchgen gives: left alone
    stranger.write_text("mine")
    # The next input no longer holds that task, so nothing would overwrite its file.
    pd.DataFrame({"prompt": [p for p in PROMPTS if p != lost["prompt"]]}).to_csv(fewer, index=False)
    fresh_sim.reset_stats()
    assert cli("run", fewer, *args).exit_code == 0
    assert fresh_sim.stats["requests"] == 0
    assert not (out / lost["images"][0]["image_path"]).exists()
    assert stranger.exists()
    listed = set(results(out).image_path)
    assert {p for p in image_files(out) if p != "images/notes.txt"} == listed and len(listed) == 2


# ---- the folder's owner, without a server -----------------------------------------------------

def test_one_lock_per_folder_and_it_names_its_holder(tmp_path):
    from batchgen.exceptions import FolderBusy
    from batchgen.keeping.outdir import OutputFolder
    first, second = OutputFolder(tmp_path), OutputFolder(tmp_path)
    first.lock()
    with pytest.raises(FolderBusy, match=f"process {os.getpid()}"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


def test_the_folder_check_refuses_another_prompt_column_and_the_other_kind_of_results(tmp_path):
    from batchgen.exceptions import JobMismatch
    from batchgen.keeping.outdir import OutputFolder, Provenance
    folder = OutputFolder(tmp_path)
    job = {"defaults": {}, "sweep": [], "prompt_column": "prompt"}
    simulated = Provenance("acedata", "http://127.0.0.1:1/openai/images/generations", "live", True)
    real = Provenance("acedata", "https://api.acedata.cloud/openai/images/generations", "live", False)
    assert folder.check("f1", real, job) is None
    folder.write_job("f1", job, simulated, {"tasks": 1})
    # Another sweep or defaults grows the folder; another prompt column makes other tasks.
    assert folder.check("f2", simulated, {**job, "sweep": [["size", ["1024x1024"]]]}) is not None
    with pytest.raises(JobMismatch, match="prompt column is 'prompt'; this job's is 'text'"):
        folder.check("f1", simulated, {**job, "prompt_column": "text"})
    # No outcomes yet: nothing simulated to mix with, so a real run may take the folder.
    assert folder.check("f1", real, job)["provenance"]["simulated"] is True
    (tmp_path / "journal.jsonl").write_text('{"task_id":"0123456789abcdef","status":"ok"}\n')
    with pytest.raises(JobMismatch, match="holds simulated results"):
        folder.check("f1", real, job)
    assert folder.check("f1", simulated, job) is not None


def test_an_atomic_write_that_fails_leaves_neither_file_nor_temporary(tmp_path):
    from batchgen.keeping.outdir import atomic_file, write_atomic
    target = tmp_path / "results.parquet"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half")
            raise RuntimeError("disk gone")
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_names_its_temporaries_with_its_own_pid():
    from batchgen.keeping.outdir import temporary_name
    assert temporary_name("/x/a.png") == f"/x/.tmp-a.png.{os.getpid()}"
    pid = os.fork()
    if pid == 0:       # the child: exit status says whether the name holds its own pid
        os._exit(0 if temporary_name("/x/a.png") == f"/x/.tmp-a.png.{os.getpid()}" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
