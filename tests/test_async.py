"""Async mode (AceData's callback mode and Tasks API): tasks submitted with a trace id of ours,
outcomes collected from the Tasks API, and no task executed twice through any crash.
Real HTTP against the simulator; real processes for kill -9 and Ctrl-C."""
import json
import signal
from pathlib import Path

import pandas as pd
import pytest
from conftest import TOKEN, batchgen_process, make_prompts, results, wait_until

import batchgen
from batchgen.keeping.journal import replay
from batchgen.simulator import SimulatorThread

ROOT = Path(__file__).resolve().parent.parent
DALL_E_3 = {"model": "dall-e-3"}


def async_run(sim, csv, out, **options):
    settings = {"mode": "async", "base_url": sim.acedata_url, "defaults": DALL_E_3, "poll_interval": 0.1,
                "environ": {"ACEDATA_API_TOKEN": TOKEN}, "progress": False, **options}
    return batchgen.run(str(csv), out=str(out), **settings)


def async_argv(sim, csv, out, *more) -> tuple:
    """`batchgen run` of the test's prompts in async mode against `sim`, as a process takes it."""
    return ("run", csv, "--out", out, "--mode", "async", "--base-url", sim.acedata_url, "--model", "dall-e-3",
            "--poll-interval", "0.1", "--no-progress", *more)


def executions_per_task(sim, task_ids) -> dict:
    """Generations the server ran for each task, under any of its trace ids."""
    runs = dict.fromkeys(task_ids, 0)
    for trace_id, count in sim.stats.trace_executions.items():
        task_id = trace_id.split("-")[0]
        runs[task_id] = runs.get(task_id, 0) + count
    return runs


def attempt_events(out) -> list:
    lines = [json.loads(line) for line in (Path(out) / "journal.jsonl").read_text().splitlines()]
    return [line["batch"] for line in lines if "batch" in line]


def test_the_readme_acedata_example_runs_end_to_end_in_async_mode(cli, tmp_path):
    out = tmp_path / "otter"
    with SimulatorThread(latency=0.05) as sim:
        result = cli("run", ROOT / "jobs" / "otter_sweep.toml", "--mode", "async", "--base-url", sim.acedata_url,
                     "--out", out, "--poll-interval", "0.1", "--no-progress", "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["ok"] == 48 and summary["pace"]["collected"] == 48
        df = results(out)
        assert executions_per_task(sim, df.task_id) == dict.fromkeys(df.task_id, 1)
        assert sim.stats.tasks_created == 48 and sim.stats.task_lookups >= 1
    assert len(df) == 48 and set(df.status) == {"ok"} and set(df["mode"]) == {"async"}
    assert df.remote_task_id.notna().all() and df.remote_task_id.is_unique
    assert all(trace.startswith(task + "-") for trace, task in zip(df.trace_id, df.task_id))
    assert all((out / path).stat().st_size > 0 for path in df.image_path)


def test_results_name_the_remote_task_and_match_a_live_runs_images(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 5)
    with SimulatorThread() as sim:
        async_summary = async_run(sim, csv, tmp_path / "async")
        batchgen.run(str(csv), out=str(tmp_path / "live"), base_url=sim.acedata_url, defaults=DALL_E_3,
                     environ={"ACEDATA_API_TOKEN": TOKEN}, progress=False)
    assert async_summary.exit_status == 0
    df, ref = results(tmp_path / "async"), results(tmp_path / "live")
    assert list(df.columns) == list(ref.columns) and "remote_task_id" in df.columns
    assert df.remote_task_id.notna().all() and ref.remote_task_id.isna().all()
    assert dict(zip(df.prompt, df.sha256)) == dict(zip(ref.prompt, ref.sha256))
    assert df.est_cost_usd.sum() == pytest.approx(ref.est_cost_usd.sum())


def test_a_server_slower_than_its_synchronous_limit_fails_live_and_finishes_async(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 4)
    with SimulatorThread(latency=0.4, sync_time_limit=0.1) as sim:
        live = batchgen.run(str(csv), out=str(tmp_path / "live"), base_url=sim.acedata_url, defaults=DALL_E_3,
                            max_retries=0, environ={"ACEDATA_API_TOKEN": TOKEN}, progress=False)
        billed_by_live = sim.stats.images
        done = async_run(sim, csv, tmp_path / "async")
    assert live.ok == 0 and live.by_code == {"timeout": 4}
    assert billed_by_live == 4                  # the gateway's 504s were paid for all the same
    assert done.exit_status == 0 and done.ok == 4


def test_a_failed_task_is_sent_again_under_a_new_trace_id(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 12)
    with SimulatorThread(task_fail=0.5, seed=3) as sim:
        summary = async_run(sim, csv, tmp_path / "out", backoff_base=0.01)
        traces = dict(sim.stats.trace_executions)
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and set(df.status) == {"ok"}
    assert set(traces.values()) == {1}              # each trace id ran once, retries under new ones
    retried = df[df.attempts > 1]
    assert len(retried) > 0 and len(traces) == df.attempts.sum()
    for row in retried.itertuples():
        mine = sorted(t for t in traces if t.startswith(row.task_id + "-"))
        assert len(mine) == row.attempts and row.trace_id == max(mine, key=lambda t: int(t.rsplit("-", 1)[1]))
    failed = [e for e in attempt_events(tmp_path / "out") if e["event"] == "collected" and e["status"] == "error"]
    assert len(failed) == df.attempts.sum() - len(df) and {e["error_code"] for e in failed} == {"api_error"}


def test_every_attempt_is_journaled_before_it_is_sent_and_its_task_id_after(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 3)
    with SimulatorThread() as sim:
        async_run(sim, csv, tmp_path / "out")
    events = attempt_events(tmp_path / "out")
    planned = [e for e in events if e["event"] == "planned"]
    assert len(planned) == 3
    for e in planned:
        after = [x for x in events if x["chunk"] == e["chunk"]]
        assert [x["event"] for x in after] == ["planned", "submitted", "collected"]
        assert after[1]["remote_task_id"] and e["trace_id"] == e["chunk"]
    # Replay keeps only the attempts still open, not one entry per attempt ever sent.
    state = replay(tmp_path / "out" / "journal.jsonl")
    assert state.batches == {} and state.attempts_settled == {"ok": 3}


def _journal_line(out, event: dict) -> None:
    with open(Path(out) / "journal.jsonl", "a") as f:
        f.write(json.dumps({"batch": event}) + "\n")


def _submit_by_hand(sim, prompt: str, trace_id: str) -> str:
    """The request a killed run had on the wire: it reached the server, its answer was lost."""
    import urllib.request
    body = json.dumps({"prompt": prompt, "model": "dall-e-3", "callback_url": "https://example.com/cb",
                       "trace_id": trace_id}).encode()
    request = urllib.request.Request(sim.acedata_url, data=body, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["task_id"]


def test_a_rerun_adopts_what_reached_the_server_and_sends_only_what_never_did(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 4)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.05) as sim:
        async_run(sim, csv, tmp_path / "ids")          # the task id of each prompt
        task_of = dict(zip(results(tmp_path / "ids").prompt, results(tmp_path / "ids").task_id))
        async_run(sim, csv, out, limit=1)              # the folder: one task done
        sim.reset_stats()
        # Killed with two attempts journaled as about to be sent: the first reached the server
        # (its answer was lost with the process), the second never left.
        first, second = pd.read_csv(csv).prompt[1:3]
        reached, lost = f"{task_of[first]}-deadbeef-1", f"{task_of[second]}-deadbeef-1"
        remote = _submit_by_hand(sim, first, reached)
        for trace, prompt in ((reached, first), (lost, second)):
            _journal_line(out, {"chunk": trace, "event": "planned", "trace_id": trace,
                                "task_ids": [task_of[prompt]]})
        summary = async_run(sim, csv, out)
        stats = sim.stats
    assert summary.exit_status == 0 and summary.ok == 4 and summary.pace["adopted"] == 1
    df = results(out).set_index("prompt")
    assert df.loc[first, "remote_task_id"] == remote and df.loc[first, "trace_id"] == reached
    assert stats.trace_executions[reached] == 1 and lost not in stats.trace_executions
    assert stats.tasks_created == 1 + 2           # the one sent by hand, then the two never sent
    assert sum(stats.trace_executions.values()) == 3


def test_kill_9_at_any_moment_executes_each_task_once(tmp_path):
    tasks = 30
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    # Submissions paced by the server's limit (20 a second) and a second's generation: the
    # kills land while tasks are being submitted, waited for and collected.
    with SimulatorThread(latency=1.0, rpm_limit=1200) as sim:
        args = async_argv(sim, csv, out)
        for created in (3, 12, 22):
            proc = batchgen_process(*args)
            wait_until(lambda created=created: sim.stats.tasks_created >= created, what="tasks submitted")
            proc.kill()
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        proc = batchgen_process(*args)
        wait_until(lambda: results_ready(out, 1), what="a collected image")
        proc.kill()
        proc.wait(timeout=30)
        proc = batchgen_process(*args)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        df = results(out)
        assert executions_per_task(sim, df.task_id) == dict.fromkeys(df.task_id, 1)
        assert sim.stats.tasks_created == tasks
    assert len(df) == tasks and set(df.status) == {"ok"} and df.remote_task_id.is_unique


def results_ready(out, count: int) -> bool:
    """Whether `count` ok lines are in the journal."""
    path = Path(out) / "journal.jsonl"
    return path.exists() and path.read_bytes().count(b'"status":"ok"') >= count


def test_ctrl_c_stops_submitting_and_the_next_run_collects_what_was_submitted(tmp_path):
    tasks = 10
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(latency=2.0) as sim:
        args = async_argv(sim, csv, out)
        proc = batchgen_process(*args)
        wait_until(lambda: sim.stats.tasks_created == tasks, what="every task submitted")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 3, stderr
        assert "Traceback" not in stderr
        assert "go on running on the server; the next run collects them without paying again" in stderr
        assert set(results(out).error_code) == {"interrupted"}
        status = json.loads(batchgen_process("status", out, "--json").communicate(timeout=60)[0])
        assert status["remote"] == {"submitted": tasks, "finished": None, "collected": 0, "waiting": tasks}
        proc = batchgen_process(*args)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert sim.stats.tasks_created == tasks
        df = results(out)
        assert executions_per_task(sim, df.task_id) == dict.fromkeys(df.task_id, 1)
    assert set(df.status) == {"ok"}
    text = batchgen_process("status", out).communicate(timeout=60)[0]
    assert f"async tasks: {tasks} submitted, {tasks} collected, 0 waiting on the server" in text


@pytest.mark.parametrize("argv, says", [
    (("--provider", "openai"), "--mode async is AceData's callback mode"),
    (("--callback-url", "ftp://example.org/x"), "--callback-url must be an http(s) URL"),
])
def test_async_mode_refuses_what_it_cannot_send_with_exit_2(cli, prompts_csv, tmp_path, argv, says):
    result = cli("run", prompts_csv, "--mode", "async", "--out", tmp_path / "out", *argv,
                 env={"OPENAI_API_KEY": TOKEN})
    assert result.exit_code == 2
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "journal.jsonl").exists()


def test_the_callback_url_is_sent_and_job_json_keeps_it_without_its_query(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 2)
    with SimulatorThread() as sim:
        async_run(sim, csv, tmp_path / "out", callback_url="https://hooks.example.org/in?key=secret")
        assert sim.stats.params.get("callback_url") == 2 and sim.stats.params.get("trace_id") == 2
    job = (tmp_path / "out" / "job.json").read_text()
    assert "https://hooks.example.org/in" in job and "secret" not in job


def test_an_edits_table_is_submitted_as_tasks_and_adopted_like_generations(tmp_path):
    import io

    from PIL import Image
    for name, colour in (("red", "red"), ("blue", "blue")):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
        (tmp_path / f"{name}.png").write_bytes(buffer.getvalue())
    source = tmp_path / "edits.csv"
    pd.DataFrame({"prompt": ["make it a watercolour", "add a hat", "a third"],
                  "image": ["red.png", "blue.png", "red.png|blue.png"]}).to_csv(source, index=False)
    out = tmp_path / "out"
    gpt = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}
    with SimulatorThread(latency=0.05) as sim:
        first = async_run(sim, source, out, defaults=gpt, limit=1)
        task_id = results(out).task_id[0]
        # Killed with the second edit's attempt journaled and on its way (it reached the server).
        second = pd.read_csv(source).prompt[1]
        summary = async_run(sim, source, tmp_path / "ids", defaults=gpt)
        second_id = results(tmp_path / "ids").set_index("prompt").task_id[second]
        sim.reset_stats()
        trace = f"{second_id}-cafebabe-1"
        _journal_line(out, {"chunk": trace, "event": "planned", "trace_id": trace, "task_ids": [second_id]})
        request = urllib_edit(sim, second, tmp_path / "blue.png", trace)
        done = async_run(sim, source, out, defaults=gpt)
        stats = sim.stats
    assert first.ok == 1 and summary.ok == 3 and done.exit_status == 0 and done.pace["adopted"] == 1
    df = results(out).set_index("prompt")
    assert df.task_id["make it a watercolour"] == task_id and df.trace_id[second] == trace
    assert df.remote_task_id[second] == request and df.remote_task_id.notna().all()
    assert stats.by_path == {"/openai/images/edits": 2, "/openai/tasks": stats.task_lookups}
    assert stats.trace_executions[trace] == 1 and sum(stats.trace_executions.values()) == 2


def urllib_edit(sim, prompt: str, image, trace_id: str) -> str:
    """An edit in callback mode as multipart, sent by hand: its task id."""
    import urllib.request
    import uuid
    boundary = uuid.uuid4().hex
    parts = [(name, None, value.encode()) for name, value in (
        ("prompt", prompt), ("model", "gpt-image-2"), ("quality", "low"), ("size", "1024x1024"),
        ("callback_url", "https://example.com/cb"), ("trace_id", trace_id))]
    parts.append(("image", "image.png", Path(image).read_bytes()))
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(sim.base_url + "/openai/images/edits", data=body, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["task_id"]


def test_a_submitted_body_is_the_live_body_plus_callback_url_and_trace_id_and_conforms_to_the_schema():
    import jsonschema

    from batchgen.sending.backends.tasks import DEFAULT_CALLBACK_URL, trace_id_for
    from batchgen.sending.client import BodyEncoder, with_task_fields
    schema = json.loads((ROOT / "spec" / "openai-images-generations.schema.json").read_text())
    validator = jsonschema.Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                                 "$ref": "#/$defs/CreateImageRequest"})
    params = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}
    live = BodyEncoder()('an otter "quoted" \u00e9', params)
    trace = trace_id_for("0123456789abcdef", "cafebabe", 2)
    sent = json.loads(with_task_fields(live, DEFAULT_CALLBACK_URL, trace))
    assert sent == {**json.loads(live), "callback_url": DEFAULT_CALLBACK_URL, "trace_id": "0123456789abcdef-cafebabe-2"}
    validator.validate(sent)


class Gateway:
    """A small real server in front of the simulator, as an unreliable gateway: it forwards
    every request, and loses the answers its rules say (the connection closed instead)."""

    def __init__(self, sim, lose_submission=lambda body: False, fail_lookups: bool = False):
        import asyncio
        import threading
        self.sim, self.lose_submission, self.fail_lookups = sim, lose_submission, fail_lookups
        self.lost = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def _serve(self):
        import asyncio

        import aiohttp
        from aiohttp import web

        async def forward(request):
            body = await request.read()
            if request.path.endswith("/tasks") and self.fail_lookups:
                return web.json_response({"success": False, "error": {"code": "api_error", "message": "down"}},
                                         status=502)
            async with aiohttp.ClientSession() as session:
                async with session.post(self.sim.base_url + request.path, data=body, headers={
                        "Authorization": request.headers.get("Authorization", ""),
                        "Content-Type": request.headers.get("Content-Type", "")}) as answer:
                    status, raw = answer.status, await answer.read()
            if request.path.endswith("/generations") and self.lose_submission(json.loads(body)):
                self.lost += 1
                request.transport.close()       # the task was made; its answer never arrives
                return web.Response(status=500)
            return web.Response(status=status, body=raw, content_type="application/json")

        async def start():
            app = web.Application()
            app.router.add_post("/{path:.*}", forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/openai/images/generations"
            return runner

        asyncio.set_event_loop(self._loop)
        runner = self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())


def test_a_submission_whose_answer_was_lost_is_found_by_its_trace_id_not_sent_again(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 4)
    first_tries = lambda body: body["trace_id"].endswith("-1")     # noqa: E731 - every task's first answer
    with SimulatorThread(latency=0.05) as sim, Gateway(sim, lose_submission=first_tries) as gateway:
        summary = async_run(sim, csv, tmp_path / "out", base_url=gateway.url)
        assert gateway.lost == 4
        stats = sim.stats
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and set(df.status) == {"ok"} and set(df.attempts) == {1}
    assert stats.tasks_created == 4 and set(stats.trace_executions.values()) == {1}
    assert all(trace.endswith("-1") for trace in df.trace_id)


def test_a_tasks_api_that_keeps_failing_stops_the_run_and_the_next_run_collects(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 3)
    out = tmp_path / "out"
    with SimulatorThread(latency=0.05) as sim:
        with Gateway(sim, fail_lookups=True) as gateway:
            stopped = async_run(sim, csv, out, base_url=gateway.url)
        assert stopped.exit_status == 3 and stopped.stopped == "tasks_api_error"
        assert "run the same command again later to collect them" in stopped.stop_message
        done = async_run(sim, csv, out)
        stats = sim.stats
    assert done.exit_status == 0 and done.pace["adopted"] == 3 and done.pace["submitted"] == 0
    assert stats.tasks_created == 3 and set(stats.trace_executions.values()) == {1}


def test_a_job_file_may_choose_async_mode_and_a_callback_url(cli, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 2)
    with SimulatorThread() as sim:
        job = tmp_path / "job.toml"
        job.write_text(f'input = "p.csv"\nout = "out"\nmode = "async"\ncallback_url = "https://hooks.example.org/b"\n'
                       f'base_url = "{sim.acedata_url}"\npoll_interval = 0.1\n[defaults]\nmodel = "dall-e-3"\n')
        result = cli("run", job, "--no-progress")
        assert result.exit_code == 0, result.output
        assert sim.stats.tasks_created == 2 and sim.stats.params["callback_url"] == 2
    assert set(results(tmp_path / "out")["mode"]) == {"async"} and csv.exists()
    job.write_text(job.read_text().replace("https://hooks.example.org/b", "hooks.example.org"))
    refused = cli("run", job, "--no-progress")
    assert refused.exit_code == 2 and "callback_url must be an http(s) URL" in refused.output


def test_the_budget_stops_submitting_and_what_was_submitted_is_still_collected(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 10)
    with SimulatorThread(latency=0.2) as sim:
        summary = async_run(sim, csv, tmp_path / "out", max_cost=0.2)     # dall-e-3 standard: $0.04 an image
        created = sim.stats.tasks_created
    assert summary.stopped == "budget_exceeded" and summary.exit_status == 3
    assert created == 5 and summary.ok == 5 and summary.est_cost_usd == pytest.approx(0.2)


def test_no_wait_submits_everything_exits_4_and_the_same_command_collects_later(tmp_path):
    tasks = 6
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(latency=4.0) as sim:
        args = async_argv(sim, csv, out, "--no-wait", "--json")
        first = batchgen_process(*args)
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 4, stderr
        summary = json.loads(stdout)
        assert summary["stopped"] == "tasks_in_progress" and summary["exit_status"] == 4
        assert "run the same command again later to collect them" in summary["stop_message"]
        assert sim.stats.tasks_created == tasks and summary["ok"] < tasks
        assert set(results(out).error_code.dropna()) == {"tasks_in_progress"}
        wait_until(lambda: sim.stats.images == tasks, what="the server to finish every task")
        again = batchgen_process(*args)
        stdout, stderr = again.communicate(timeout=60)
        assert again.returncode == 0, stderr
        assert json.loads(stdout)["pace"]["adopted"] == tasks - summary["ok"]
        assert sim.stats.tasks_created == tasks
    assert set(results(out).status) == {"ok"}


def test_a_live_run_leaves_the_tasks_async_mode_submitted_to_it_and_sends_none_twice(tmp_path):
    tasks = 4
    csv = make_prompts(tmp_path / "p.csv", tasks)
    out = tmp_path / "out"
    with SimulatorThread(latency=3.0) as sim:
        first = async_run(sim, csv, out, no_wait=True)
        assert first.exit_status == 4 and sim.stats.tasks_created == tasks
        from batchgen.showing.status import read_status
        waiting = read_status(out)
        # Counted as async mode's tasks on the server, not as Batch API batches.
        assert waiting.remote["waiting"] == tasks - first.ok and waiting.in_batches == 0
        live = async_run(sim, csv, out, mode="live")
        # The tasks under way are async mode's to collect: the live run sends none of them again.
        assert live.exit_status == 3 and live.stopped == "in_batches" and live.requests_sent == 0
        assert "--mode async" in live.stop_message
        collected = async_run(sim, csv, out)
        assert collected.exit_status == 0 and collected.ok == tasks
        assert sim.stats.tasks_created == tasks and sim.stats.images == tasks
