"""What a hostile night throws at a run: odd values, echoed tokens, bombs, wrong endpoints, long
waits, damaged journals, a full disk, too few files, a closed stderr. Each: no traceback, no
money lost, a folder that still builds."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web
from conftest import PROMPTS, TOKEN, batchgen_process, journal, results
from hostile import Hostile, generation, json_response, png

import batchgen
from batchgen.keeping.journal import replay

SECRET = "sk-hostile-Secret-1234567890"
FAST = {"concurrency": 2, "backoff_base": 0.01, "max_retries": 1, "timeout": 10}


def prompts(tmp_path, count=3) -> Path:
    path = tmp_path / "p.csv"
    pd.DataFrame({"prompt": [f"{PROMPTS[i % 3]} #{i}" for i in range(count)]}).to_csv(path, index=False)
    return path


def run(server, csv, out, token=TOKEN, **options):
    # OpenAI's default model is shut down: a run names one (its answers here are the server's own).
    if "model" not in options and "model" not in options.get("defaults", {}):
        options["model"] = "gpt-image-2"
    return batchgen.run(str(csv), out=str(out), provider="openai", base_url=server.base_url,
                        environ={"OPENAI_API_KEY": token}, **{**FAST, **options})


def every_file_text(out) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in Path(out).rglob("*") if p.is_file())


# ---- results are never unbuildable --------------------------------------------------------

ODD = [
    {"trace_id": 12345, "created": 1e20, "usage": {"total_tokens": "12", "input_tokens": 12.5, "output_tokens": True}},
    {"trace_id": {"an": "object"}, "created": True, "usage": "lots",
     "image": {"revised_prompt": "half a pair: \ud800 here"}},
    {"trace_id": "t" * 5000, "created": 1_700_000_000.0, "usage": {"total_tokens": 7}},
]


def test_odd_values_are_typed_at_the_boundary_and_the_results_build(tmp_path):
    def answer(request, body, count):
        index = PROMPTS.index(json.loads(body)["prompt"].rsplit(" #", 1)[0])
        return json_response(generation(**ODD[index]))

    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": [f"{p} #{i}" for i, p in enumerate(PROMPTS)]}).to_csv(csv, index=False)
    with Hostile(answer) as server:
        summary = run(server, csv, tmp_path / "out")
        assert summary.exit_status == 0
        df = results(tmp_path / "out").set_index(results(tmp_path / "out").prompt.str[:12])
        first, second, third = (df.loc[p[:12]] for p in PROMPTS)
        assert first.trace_id == "12345" and pd.isna(first.created) and first.total_tokens == 12
        assert pd.isna(second.trace_id) and pd.isna(second.created) and pd.isna(second.total_tokens)
        assert second.revised_prompt == "half a pair: \ufffd here"
        assert len(third.trace_id) == 256 and third.created == 1_700_000_000 and third.total_tokens == 7
        # And the folder keeps building: a rerun sends nothing and exits 0.
        assert run(server, csv, tmp_path / "out").exit_status == 0 and server.requests == 3


def test_an_error_message_with_a_lone_surrogate_still_builds(tmp_path):
    def answer(request, body, count):
        return json_response({"error": {"message": "refused: \udcff!", "type": "invalid_request_error",
                                        "code": "content_policy_violation"}}, status=400)

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 1), tmp_path / "out")
    assert summary.exit_status == 1
    assert results(tmp_path / "out").error_message[0] == "refused: \ufffd!"


# ---- secrets --------------------------------------------------------------------------------

def test_a_token_the_server_echoes_is_written_nowhere(tmp_path):
    def answer(request, body, count):
        if count == 1:
            return json_response({"error": {"message": f"bad key {SECRET}", "code": "server_error"}},
                                 status=500, headers={"x-request-id": f"req-{SECRET}"})
        return json_response({"created": 1, "trace_id": f"trace-{SECRET}", "data": [
            {"url": f"http://127.0.0.1:{server.port}/img.png?key={SECRET}", "revised_prompt": f"echo {SECRET}"}]})

    with Hostile(answer, files={"/img.png": png()}) as server:
        # url answers: dall-e-3, which AceData serves
        summary = batchgen.run(str(prompts(tmp_path, 2)), out=str(tmp_path / "out"), provider="acedata",
                               base_url=server.base_url, environ={"ACEDATA_API_TOKEN": SECRET},
                               defaults={"model": "dall-e-3", "response_format": "url"}, **{**FAST, "max_retries": 3})
    assert summary.ok == 2
    assert SECRET not in every_file_text(tmp_path / "out")
    assert results(tmp_path / "out").image_url.str.contains("[redacted]", regex=False).all()


# ---- what a server may not do to a worker -----------------------------------------------------

def test_a_compressed_answer_is_capped_as_it_inflates(tmp_path, monkeypatch):
    import batchgen.sending.client
    monkeypatch.setattr(batchgen.sending.client, "MAX_RESPONSE_BYTES_PER_IMAGE", 1 << 20)
    bomb = gzip.compress(b'{"data": [{"b64_json": "' + b"A" * (8 << 20) + b'"}]}')

    def answer(request, body, count):
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 1), tmp_path / "out")
    df = results(tmp_path / "out")
    assert summary.exit_status == 1 and df.error_code[0] == "bad_response"
    assert "more than the 1048576 bytes allowed" in df.error_message[0]


def test_an_image_header_claiming_65535_squared_is_a_bad_response_not_a_crash(tmp_path):
    giant = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b"\x00" * 32

    def answer(request, body, count):
        import base64
        return json_response(generation(image={"b64_json": base64.b64encode(giant).decode()}))

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 1), tmp_path / "out")
    assert summary.stopped is None and summary.exit_status == 1
    assert results(tmp_path / "out").error_code[0] == "bad_response"


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "0", "1e400"])
def test_a_nonsense_rate_limit_header_crashes_nothing(tmp_path, value):
    def answer(request, body, count):
        return json_response(generation(), headers={"x-ratelimit-limit-requests": value,
                                                    "x-ratelimit-remaining-requests": value})

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 3), tmp_path / "out")
    assert summary.exit_status == 0 and summary.ok == 3


# ---- a wrong setting stops early and costs nothing --------------------------------------------

@pytest.mark.parametrize("status, body, content_type", [
    (404, b"<html><body>Not Found</body></html>", "text/html"),
    (405, b'{"detail": "Method Not Allowed"}', "application/json"),
    (301, b"", "text/html"),
    (200, b"<!doctype html><html><body>Welcome to nginx!</body></html>", "text/html"),
])
def test_the_same_wrong_answer_from_the_start_stops_the_run_and_leaves_tasks_pending(tmp_path, status, body,
                                                                                     content_type):
    def answer(request, body_, count):
        headers = {"Location": "https://elsewhere.example/v1/images/generations"} if status == 301 else None
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    csv = prompts(tmp_path, 20)
    with Hostile(answer) as server:
        summary = run(server, csv, tmp_path / "out")
        assert server.requests <= 6           # a few, not one per row
    assert summary.exit_status == 3 and summary.stopped == "endpoint_error"
    assert server.base_url in summary.stop_message and str(status) in summary.stop_message
    assert summary.not_done == 20 and summary.errors == 0
    assert not [r for r in journal(tmp_path / "out") if r["status"] in ("ok", "error")]
    # With the right URL, the same folder goes on and sends every task.
    with Hostile(lambda request, body_, count: json_response(generation())) as good:
        assert run(good, csv, tmp_path / "out").ok == 20 and good.requests == 20


def test_nothing_listening_stops_the_run_within_a_few_tries(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]             # closed again: nothing listens there
    summary = batchgen.run(str(prompts(tmp_path, 20)), out=str(tmp_path / "out"), provider="openai",
                           base_url=f"http://127.0.0.1:{port}/v1", environ={"OPENAI_API_KEY": TOKEN},
                           model="gpt-image-2", **FAST)
    assert summary.exit_status == 3 and summary.stopped == "endpoint_error"
    assert "cannot connect" in summary.stop_message and summary.requests_sent <= 6


def test_a_wrong_answer_after_successes_is_that_tasks_failure(tmp_path):
    def answer(request, body, count):
        return json_response(generation()) if count <= 2 else web.Response(status=404, text="gone")

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 6), tmp_path / "out", concurrency=1)
    assert summary.ok == 2 and summary.errors == 4 and summary.stopped is None


# ---- waiting is visible, and never endless -------------------------------------------------

def test_a_wait_longer_than_max_wait_stops_the_run(tmp_path):
    def answer(request, body, count):
        return json_response({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, status=429,
                             headers={"Retry-After": "86400"})

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 5), tmp_path / "out")
        assert server.requests <= 2          # the first answer of each worker
    assert summary.exit_status == 3 and summary.stopped == "server_wait_too_long"
    assert "asked to wait 86,400 s" in summary.stop_message and "more than --max-wait 600 s" in summary.stop_message


def test_ctrl_c_with_nothing_in_flight_ends_without_waiting_for_the_grace_period(tmp_path):
    def answer(request, body, count):
        return json_response({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, status=429,
                             headers={"Retry-After": "120"})

    with Hostile(answer) as server:
        env = {**os.environ, "OPENAI_API_KEY": TOKEN, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", prompts(tmp_path, 4),
                                 "--out", tmp_path / "out", "--provider", "openai", "--base-url", server.base_url,
                                 "--model", "gpt-image-2",
                                 "--no-progress", "--concurrency", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:             # the 429 was taken in: the run now only waits
            if "asks to wait" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "waiting up to" not in err and "Traceback" not in err
    assert "interrupted" in out


# ---- damaged journals ------------------------------------------------------------------------

def finished_run(tmp_path, sim, count=4):
    csv = prompts(tmp_path, count)
    out = tmp_path / "out"
    assert batchgen.run(str(csv), out=str(out), base_url=sim.acedata_url,
                        environ={"ACEDATA_API_TOKEN": TOKEN}).exit_status == 0
    return csv, out


def rerun(csv, out, sim):
    sim.reset_stats()
    return batchgen.run(str(csv), out=str(out), base_url=sim.acedata_url, environ={"ACEDATA_API_TOKEN": TOKEN})


def test_glued_cut_and_statusless_lines_are_skipped_and_their_tasks_sent_again(tmp_path, fresh_sim):
    csv, out = finished_run(tmp_path, fresh_sim)
    path = out / "journal.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    oks = [i for i, line in enumerate(lines) if b'"status":"ok"' in line]
    lines[oks[0]] = lines[oks[0]].rstrip(b"\n")                    # glued to the next line
    lines[oks[2]] = lines[oks[2]][:60] + b"\n"                     # cut short, mid-file
    lines.append(b'{"task_id":"0123456789abcdef"}\n')              # no status
    path.write_bytes(b"".join(lines))
    summary = rerun(csv, out, fresh_sim)
    assert summary.exit_status == 0 and summary.ok == 4
    assert fresh_sim.stats["requests"] == 3                         # the glued pair and the cut one
    assert any("damaged journal line" in w for w in summary.warnings)
    status = batchgen_process("status", out)
    assert status.wait(timeout=60) == 0


def test_a_line_whole_in_shape_but_not_json_is_sent_again_by_the_next_run(tmp_path, fresh_sim):
    csv, out = finished_run(tmp_path, fresh_sim)
    path = out / "journal.jsonl"
    text = path.read_text()
    first_ok = text.index('"status":"ok"')
    broken = text[:first_ok] + text[first_ok:].replace('"images":[', '"images":[,', 1)
    path.write_text(broken)
    first = rerun(csv, out, fresh_sim)                    # finds the damage while building results
    assert first.exit_status == 3 and fresh_sim.stats["requests"] == 0
    second = rerun(csv, out, fresh_sim)
    assert second.exit_status == 0 and fresh_sim.stats["requests"] == 1


def test_a_short_journal_write_is_detected_and_undone(tmp_path):
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from batchgen.keeping.journal import Journal
j = Journal({str(tmp_path / 'journal.jsonl')!r})
j.append({{"task_id": "0123456789abcdef", "status": "ok"}})
resource.setrlimit(resource.RLIMIT_FSIZE, (120, resource.RLIM_INFINITY))
try:
    j.append({{"task_id": "fedcba9876543210", "status": "ok", "pad": "x" * 300}})
except OSError as e:
    print("raised", e.errno)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "raised 28" in out.stdout, out.stderr                 # ENOSPC
    text = (tmp_path / "journal.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1   # the part-line was cut off
    assert replay(tmp_path / "journal.jsonl").status("0123456789abcdef") == "ok"


# ---- the machine running out of something -------------------------------------------------------

def limited_run(tmp_path, sim, limits: dict, *args, stderr=subprocess.PIPE):
    """`batchgen run` in a process with these resource limits (RLIMIT_* name -> soft, hard)."""
    def preexec():
        import resource
        for name, (soft, hard) in limits.items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
    env = {**os.environ, "ACEDATA_API_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", *map(str, args), "--base-url", sim.acedata_url],
                            env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=preexec)


def test_a_disk_too_small_for_the_results_stops_with_the_message_and_loses_nothing(tmp_path, fresh_sim):
    csv, out = prompts(tmp_path, 3), tmp_path / "out"
    # nano-banana makes the small images asked for (256x256): they fit, the results do not
    proc = limited_run(tmp_path, fresh_sim, {"RLIMIT_FSIZE": (12_000, 12_000)}, csv, "--out", out, "--no-progress",
                       "--model", "nano-banana", "--size", "256x256")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "cannot write under" in stdout and "Traceback" not in err
    fresh_sim.reset_stats()
    again = batchgen.run(str(csv), out=str(out), base_url=fresh_sim.acedata_url,
                         defaults={"model": "nano-banana", "size": "256x256"}, environ={"ACEDATA_API_TOKEN": TOKEN})
    assert again.exit_status == 0 and fresh_sim.stats["requests"] == 0   # paid once


def test_too_few_open_files_for_the_concurrency_saves_every_image(tmp_path, fresh_sim):
    csv, out = prompts(tmp_path, 40), tmp_path / "out"
    proc = limited_run(tmp_path, fresh_sim, {"RLIMIT_NOFILE": (128, 128)}, csv, "--out", out, "--no-progress",
                       "--concurrency", "300", "--model", "dall-e-3", "--size", "1024x1024")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "needs more open files" in err
    assert (results(out).status == "ok").all() and fresh_sim.stats["requests"] == 40


def test_a_closed_stderr_does_not_stop_the_run(tmp_path, fresh_sim):
    csv, out = prompts(tmp_path, 12), tmp_path / "out"
    proc = limited_run(tmp_path, fresh_sim, {}, csv, "--out", out, "--model", "dall-e-3", "--size", "1024x1024")
    proc.stderr.close()                      # as `2>&1 >log | head` does once head has quit
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout
    assert (results(out).status == "ok").all()


# ---- proxies ------------------------------------------------------------------------------------

def test_proxies_come_from_the_environment_and_never_take_loopback(monkeypatch):
    from batchgen.sending.client import environment_proxies, proxy_for
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("http_proxy", "http://plain.corp:8080")
    monkeypatch.setenv("NO_PROXY", "internal.corp,.svc")
    proxies = environment_proxies()
    assert proxy_for("https://api.openai.com/v1/images/generations", proxies) == "http://proxy.corp:3128"
    assert proxy_for("http://cdn.example/img.png", proxies) == "http://plain.corp:8080"
    assert proxy_for("https://internal.corp/v1", proxies) is None
    assert proxy_for("https://api.svc/v1", proxies) is None
    assert proxy_for("http://127.0.0.1:8000/v1", proxies) is None
    assert proxy_for("http://localhost:8000/v1", proxies) is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert proxy_for("https://api.openai.com/v1", environment_proxies()) is None


def test_a_run_goes_through_the_proxy_the_environment_names(tmp_path, monkeypatch):
    # The "proxy" is the misbehaving server itself: a plain-HTTP request through a proxy is
    # sent to the proxy with the whole URL, so it arrives there whatever host the URL names.
    seen = []

    def answer(request, body, count):
        seen.append(str(request.url))
        return json_response(generation())

    with Hostile(answer) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        summary = batchgen.run(str(prompts(tmp_path, 2)), out=str(tmp_path / "out"), provider="openai",
                               base_url="http://images.invalid/v1", environ={"OPENAI_API_KEY": TOKEN},
                               model="gpt-image-2", **FAST)
    assert summary.ok == 2 and len(seen) == 2


def test_an_answer_with_fewer_images_than_asked_is_recorded_as_such(tmp_path):
    def answer(request, body, count):
        return json_response({"created": 1, "data": [{"b64_json": generation()["data"][0]["b64_json"]}]})

    with Hostile(answer) as server:
        summary = run(server, prompts(tmp_path, 2), tmp_path / "out", defaults={"model": "gpt-image-2", "n": 3})
        # ok tasks: their missing images are counted apart
        assert summary.exit_status == 1 and summary.short == 2 and summary.by_code == {}
        df = results(tmp_path / "out")
        assert len(df) == 6 and (df.status == "ok").sum() == 2
        missing = df[df.error_code == "missing_image"]
        assert sorted(missing.image_index) == [1, 1, 2, 2]
        assert (missing.error_message == "asked for 3 images, the answer had 1").all()
        # Paid for: a rerun does not ask again.
        assert run(server, prompts(tmp_path, 2), tmp_path / "out", defaults={"model": "gpt-image-2", "n": 3}).short == 2
        assert server.requests == 2


def test_max_wait_lets_a_run_wait_as_long_as_the_user_allows(tmp_path):
    def answer(request, body, count):
        if count == 1:
            return json_response({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, status=429,
                                 headers={"Retry-After": "1"})
        return json_response(generation())

    with Hostile(answer) as server:
        refused = run(server, prompts(tmp_path, 1), tmp_path / "a", max_wait=0.5)
        allowed = run(server, prompts(tmp_path, 1), tmp_path / "b", max_wait=5)
    assert refused.stopped == "server_wait_too_long" and allowed.ok == 1


def test_odd_values_in_an_earlier_versions_journal_still_build(tmp_path, fresh_sim):
    csv, out = finished_run(tmp_path, fresh_sim, count=2)
    path = out / "journal.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if record.get("status") == "ok":
            # As a version that kept server values unchecked wrote them.
            record.update({"trace_id": 12345, "created": 1e20, "usage": {"total_tokens": "12"},
                           "http_status": "200"})
            record["images"][0]["revised_prompt"] = "half \ud800 pair"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "results.parquet").unlink()
    fresh_sim.reset_stats()
    summary = batchgen.run(str(csv), out=str(out), base_url=fresh_sim.acedata_url, environ={"ACEDATA_API_TOKEN": TOKEN})
    assert summary.exit_status == 0 and fresh_sim.stats["requests"] == 0
    df = results(out)
    assert (df.trace_id == "12345").all() and df.created.isna().all() and df.http_status.isna().all()
    assert (df.revised_prompt == "half \ufffd pair").all()
    assert "half ? pair" in (out / "metadata.jsonl").read_text()
