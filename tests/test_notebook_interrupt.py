"""Ctrl-C reaches a run wherever it is called from: `batchgen.run()` inside a running event loop
(a notebook's kernel, or a coroutine under `asyncio.run`) stops launching, finishes what is in
flight, releases the folder and says how to resume, as the command line does; SIGHUP stops a
run as SIGTERM does. All with real processes and real signals."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import TOKEN, batchgen_process, make_prompts, results, wait_until

from batchgen.simulator import SimulatorThread

TASKS = 60

# A notebook cell: the kernel's loop runs it in the main thread, with Python's own SIGINT
# handler (raising KeyboardInterrupt); `asyncio.run` installs a handler of its own instead.
CELL = textwrap.dedent("""
    import asyncio, json, sys
    import batchgen

    csv, out, url, how = sys.argv[1:5]

    def call():
        return batchgen.run(csv, out=out, base_url=url, model="dall-e-3", concurrency=2, progress=False)

    async def cell():
        for _ in range(2):     # interrupted, then the same call again in the same process
            try:
                summary = call()
            except KeyboardInterrupt as e:
                print(json.dumps({"raised": str(e)}), flush=True)
                continue
            print(json.dumps({**summary.as_json(), "text": str(summary)}), flush=True)

    if how == "asyncio.run":
        asyncio.run(cell())
    else:
        asyncio.new_event_loop().run_until_complete(cell())
""")


@pytest.mark.parametrize("how", ["kernel loop", "asyncio.run"])
def test_ctrl_c_stops_a_run_called_inside_a_running_loop_and_frees_its_folder(tmp_path, how):
    csv = make_prompts(tmp_path / "p.csv", TASKS)
    out = tmp_path / "out"
    script = tmp_path / "cell.py"
    script.write_text(CELL)
    with SimulatorThread(latency=0.1) as sim:
        proc = subprocess.Popen([sys.executable, str(script), str(csv), str(out), sim.acedata_url, how],
                                env={**os.environ, "ACEDATA_API_TOKEN": TOKEN}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: sim.stats.requests >= 4, what="requests from the run")
            proc.send_signal(signal.SIGINT)
            first = json.loads(proc.stdout.readline())
            stopped_at = sim.stats.requests
            second = json.loads(proc.stdout.readline())
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err
    # The interrupt reached the run: it stopped well before the end, with the folder's results.
    assert first["stopped"] == "interrupted" and first["exit_status"] == 3
    assert first["ok"] < TASKS and first["ok"] + first["not_done"] == TASKS
    assert "run the same command again" in first["text"]
    assert stopped_at < TASKS
    # The folder was free for the next call, which sent only the rest.
    assert second["exit_status"] == 0 and second["ok"] == TASKS
    assert second["requests_sent"] == TASKS - first["ok"]
    assert len(results(out)) == TASKS


def test_sighup_stops_a_run_as_sigterm_does_with_results_and_summary(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", TASKS)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.1) as sim:
        proc = batchgen_process("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                                "--concurrency", "2", "--no-progress")
        wait_until(lambda: sim.stats.requests >= 4, what="requests from the run")
        proc.send_signal(signal.SIGHUP)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "Traceback" not in stderr
    assert "stopped early: interrupted" in stdout
    df = results(out)
    assert len(df) == TASKS and "interrupted" in set(df.error_code.dropna())
