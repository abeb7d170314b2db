"""The simulator's Batch API (/v1/files, /v1/batches), over real HTTP on loopback.

The official openai package drives it where it can; urllib where the exact status, error body or
a malformed request matters.  Progress is awaited by polling with a deadline (conftest.wait_until),
never by sleeping.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import wait_until
from openai import OpenAI
from simhttp import TOKEN, Answer, assert_openai_error, call, data_url, decode, multipart, png, simulate_process

from batchgen.simulator import SimConfig, SimulatorThread
from batchgen.simulator import batches as sim_batches
from batchgen.simulator import uploads as sim_uploads

GEN = "/v1/images/generations"
EDITS = "/v1/images/edits"
TERMINAL = ("completed", "failed", "expired", "cancelled")


# --- helpers ---

def request_line(custom_id: str, prompt: str = None, *, model="gpt-image-2", url=GEN, method="POST",
                 **params) -> dict:
    body = {"prompt": prompt or f"a small watercolour of harbour number {custom_id}",
            "quality": "low", "size": "1024x1024", **params}
    if model is not None:
        body["model"] = model
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def jsonl(lines) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                   for line in lines).encode()


def many(count: int, prefix: str = "req") -> list:
    return [request_line(f"{prefix}-{i}") for i in range(count)]


def client(sim) -> OpenAI:
    return OpenAI(base_url=sim.openai_base_url, api_key=TOKEN, max_retries=0)


def submit(sim, lines, *, endpoint=GEN, metadata=None):
    c = client(sim)
    f = c.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return c, c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h",
                               metadata=metadata)


def finish(c: OpenAI, batch_id: str, timeout: float = 60.0):
    """The batch once it has reached a terminal status."""
    box = {}

    def done():
        box["b"] = c.batches.retrieve(batch_id)
        return box["b"].status in TERMINAL
    wait_until(done, timeout, f"batch {batch_id} to finish")
    return box["b"]


def read_file(c: OpenAI, file_id) -> list:
    if file_id is None:
        return []
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines()]


def ids(lines) -> list:
    return [line["custom_id"] for line in lines]


def upload(sim, data: bytes, *, purpose="batch", filename="in.jsonl", token=TOKEN) -> Answer:
    fields = {"purpose": purpose} if purpose is not None else {}
    files = {"file": (filename, data)} if data is not None else {}
    raw, ctype = multipart(fields, files)
    return call(sim.openai_base_url + "/files", raw=raw, content_type=ctype, token=token)


@pytest.fixture
def instant():
    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        yield sim


# --- the official openai package, start to end ---

def test_openai_sdk_files_batches_list_cancel_and_content():
    lines = many(6, "otter") + [request_line("wide", size="1536x1024")]
    with SimulatorThread(SimConfig(batch_seconds=0.5)) as sim:
        c = client(sim)
        data = jsonl(lines)
        f = c.files.create(file=("requests.jsonl", data), purpose="batch")
        assert f.id.startswith("file-") and f.object == "file" and f.purpose == "batch"
        assert f.bytes == len(data) and f.filename == "requests.jsonl" and f.created_at > 0
        assert c.files.retrieve(f.id).id == f.id
        assert c.files.content(f.id).content == data

        b = c.batches.create(input_file_id=f.id, endpoint=GEN, completion_window="24h",
                             metadata={"job": "otters"})
        assert b.id.startswith("batch_") and b.object == "batch" and b.status == "validating"
        assert b.endpoint == GEN and b.input_file_id == f.id and b.completion_window == "24h"
        assert b.metadata == {"job": "otters"} and b.output_file_id is None and b.errors is None
        assert b.expires_at == b.created_at + 24 * 3600
        assert b.id in [x.id for x in c.batches.list()]

        b = finish(c, b.id)
        assert b.status == "completed" and b.model == "gpt-image-2"
        assert b.request_counts.total == 7 and b.request_counts.completed == 7
        assert b.request_counts.failed == 0 and b.error_file_id is None
        assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at
        assert b.usage.output_tokens > 0 and b.usage.total_tokens > b.usage.output_tokens
        out_file = c.files.retrieve(b.output_file_id)
        assert out_file.purpose == "batch_output" and out_file.filename.endswith(".jsonl")

        out = read_file(c, b.output_file_id)
        assert sorted(ids(out)) == sorted(line["custom_id"] for line in lines)
        for entry in out:
            assert entry["id"].startswith("batch_req_") and entry["error"] is None
            resp = entry["response"]
            assert resp["status_code"] == 200 and resp["request_id"]
            body = resp["body"]
            assert set(body) >= {"created", "data", "usage", "size", "quality", "output_format"}
            assert body["usage"]["total_tokens"] > 0
            image = decode(body["data"][0]["b64_json"])
            assert image.size == ((1536, 1024) if entry["custom_id"] == "wide" else (1024, 1024))

        stats = sim.stats
        assert stats.files_uploaded == 1 and stats.batches_created == 1
        assert stats.batch_executions == {line["custom_id"]: 1 for line in lines}
        assert stats["batch_executions"] == stats.batch_executions

    # cancel through the SDK: a long batch cancelled while validating has nothing run
    with SimulatorThread(SimConfig(batch_seconds=600)) as sim:
        c, slow = submit(sim, lines)
        assert c.batches.cancel(slow.id).status == "cancelling"
        cancelled = c.batches.retrieve(slow.id)
        assert cancelled.status == "cancelled" and cancelled.output_file_id is None
        assert [e["error"]["code"] for e in read_file(c, cancelled.error_file_id)] == ["batch_cancelled"] * 7
        assert sim.stats.batch_executions == {}

    with SimulatorThread(SimConfig(batch_seconds=0)) as sim:
        c, b = submit(sim, lines)
        assert b.status == "completed"         # batch_seconds=0: done when created
        stats = sim.stats
        assert stats.batch_executions == {line["custom_id"]: 1 for line in lines}


def test_a_line_gets_the_live_endpoints_answer(instant):
    bad_size = request_line("bad-size", size="999x999")
    policy = request_line("policy", prompt="a forbidden-fruit still life")
    lines = [request_line("fine"), bad_size, policy]
    c, b = submit(instant, lines)
    assert b.status == "completed"
    assert b.request_counts.completed == 1 and b.request_counts.failed == 2
    fine = read_file(c, b.output_file_id)
    assert ids(fine) == ["fine"]
    live = call(instant.openai_url, lines[0]["body"]).json()
    got = fine[0]["response"]["body"]
    assert set(got) == set(live) and got["usage"] == live["usage"] and got["size"] == live["size"]
    assert got["data"] == live["data"]               # the very image the live endpoint makes
    errors = {e["custom_id"]: e for e in read_file(c, b.error_file_id)}
    for line in (bad_size, policy):
        live = call(instant.openai_url, line["body"])
        entry = errors[line["custom_id"]]
        assert entry["error"] is None
        assert entry["response"]["status_code"] == live.status == 400
        assert entry["response"]["body"] == live.json()
    assert errors["policy"]["response"]["body"]["error"]["code"] == "content_policy_violation"
    # a 400 line ran (it was refused by the generation code), once
    assert instant.stats.batch_executions == {"fine": 1, "bad-size": 1, "policy": 1}


# --- time ---

def test_statuses_progress_with_time_and_lines_run_as_they_are_counted():
    total = 40
    with SimulatorThread(SimConfig(batch_seconds=2.0)) as sim:
        c, b = submit(sim, many(total))
        seen = [(b.status, b.request_counts.completed)]
        assert b.status == "validating" and b.request_counts.total == 0

        def step():
            got = c.batches.retrieve(b.id)
            ran = sum(sim.stats.batch_executions.values())
            # what has run is exactly what is counted; nothing is revealed before the end
            assert ran == got.request_counts.completed + got.request_counts.failed
            if got.status != "completed":
                assert got.output_file_id is None and got.error_file_id is None
            seen.append((got.status, got.request_counts.completed))
            return got.status == "completed"
        wait_until(step, 60, "the batch to complete")
        final = c.batches.retrieve(b.id)

    order = ["validating", "in_progress", "finalizing", "completed"]
    statuses = [s for s, _ in seen]
    assert statuses == sorted(statuses, key=order.index)           # never goes back
    assert "in_progress" in statuses
    counts = [n for _, n in seen]
    assert counts == sorted(counts) and counts[-1] == total
    assert any(0 < n < total for s, n in seen if s == "in_progress")  # grew while in progress
    assert all(n == total for s, n in seen if s in ("finalizing", "completed"))
    assert final.created_at <= final.in_progress_at <= final.finalizing_at <= final.completed_at


def test_nothing_runs_twice_under_concurrent_reads():
    lines = many(60, "c")
    with SimulatorThread(SimConfig(batch_seconds=0.8)) as sim:
        c, b = submit(sim, lines)
        url = f"{sim.openai_base_url}/batches/{b.id}"

        def poll(_):
            statuses = []
            while True:
                doc = call(url).json()
                statuses.append(doc["status"])
                if doc["status"] == "completed":
                    return statuses
                call(sim.openai_base_url + "/batches?limit=5")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(poll, range(8)))
        for _ in range(3):
            c.batches.retrieve(b.id)
        assert sim.stats.batch_executions == {line["custom_id"]: 1 for line in lines}
        assert len(read_file(c, c.batches.retrieve(b.id).output_file_id)) == 60


def test_output_order_is_shuffled_and_seeded():
    lines = many(30, "s")
    order = {}
    for seed, run in ((7, "a"), (7, "b"), (8, "c")):
        with SimulatorThread(SimConfig(batch_seconds=0, seed=seed)) as sim:
            c, b = submit(sim, lines)
            order[run] = ids(read_file(c, b.output_file_id))
    assert sorted(order["a"]) == sorted(line["custom_id"] for line in lines)
    assert order["a"] != [line["custom_id"] for line in lines]
    assert order["a"] == order["b"]              # same seed, same file: same order
    assert order["a"] != order["c"]


# --- validation ---

def _line(**changes):
    line = request_line("x")
    for key, value in changes.items():
        if value is ...:
            line.pop(key)
        else:
            line[key] = value
    return line


@pytest.mark.parametrize("lines,code,line_no,param", [
    ([request_line("a"), request_line("b", model="dall-e-3", quality="hd")],
     "model_not_supported", 2, "body.model"),
    ([request_line("a", model="dall-e-3", size="1024x1024", quality=None)], "model_not_supported", 1, "body.model"),
    ([request_line("a", model=None)], "missing_required_parameter", 1, "body.model"),
    ([request_line("a", model="gpt-image-9")], "model_not_found", 1, "body.model"),
    ([request_line("a"), request_line("a")], "duplicate_custom_id", 2, "custom_id"),
    ([_line(method="GET")], "invalid_method", 1, "method"),
    ([_line(url="/v1/chat/completions")], "invalid_url", 1, "url"),
    ([_line(body=...)], "missing_required_parameter", 1, "body"),
    ([_line(custom_id=...)], "missing_required_parameter", 1, "custom_id"),
    ([_line(custom_id=5)], "invalid_type", 1, "custom_id"),
    ([request_line("a"), "{not json"], "invalid_json_line", 2, None),
    ([request_line("a"), "[1, 2]"], "invalid_json_line", 2, None),
    ([request_line("a"), request_line("b", model="gpt-image-2.5-flare")], "mismatched_model", 2, "body.model"),
    ([], "empty_file", None, None),
])
def test_validation_failures(instant, lines, code, line_no, param):
    c, b = submit(instant, lines)
    assert b.status == "failed" and b.failed_at is not None and b.in_progress_at is None
    assert b.output_file_id is None and b.error_file_id is None
    assert b.request_counts.total == 0
    first = b.errors.data[0]
    assert (first.code, first.line, first.param) == (code, line_no, param) and first.message
    assert b.errors.object == "list"
    assert instant.stats.batch_executions == {}


def test_every_bad_line_is_listed(instant):
    lines = [request_line("a"), request_line("b", model="dall-e-3", quality="hd"), request_line("c"),
             request_line("d", model="dall-e-3", quality=None)]
    c, b = submit(instant, lines)
    assert [(e.code, e.line) for e in b.errors.data] == [("model_not_supported", 2),
                                                       ("model_not_supported", 4)]


def test_blank_lines_are_skipped_and_line_numbers_count_them(instant):
    data = jsonl([request_line("a")]) + b"\n  \n" + jsonl([request_line("b", model="dall-e-3")])
    c = client(instant)
    f = c.files.create(file=("r.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint=GEN, completion_window="24h")
    assert b.status == "failed" and b.errors.data[0].line == 4


def test_more_than_50000_lines_fail(instant):
    data = jsonl(request_line(f"r{i}", prompt="a cat") for i in range(50_001))
    c = client(instant)
    f = c.files.create(file=("big.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint=GEN, completion_window="24h")
    assert b.status == "failed" and b.errors.data[0].code == "too_many_requests_in_file"
    assert instant.stats.batch_executions == {}


def test_input_file_must_exist_and_have_purpose_batch(instant):
    c, done = submit(instant, many(2))
    for file_id, code in (("file-doesnotexist", "invalid_file"),
                          (done.output_file_id, "invalid_file_purpose")):
        b = c.batches.create(input_file_id=file_id, endpoint=GEN, completion_window="24h")
        assert b.status == "failed" and b.errors.data[0].code == code
        assert b.errors.data[0].param == "input_file_id"


def test_validation_takes_the_first_tenth_of_the_time():
    with SimulatorThread(SimConfig(batch_seconds=1.0)) as sim:
        c, b = submit(sim, [request_line("a", model="dall-e-3")])
        assert b.status == "validating" and b.errors is None
        b = finish(c, b.id)
        assert b.status == "failed" and b.errors.data[0].code == "model_not_supported"
        assert b.failed_at >= b.created_at and sim.stats.batch_executions == {}


@pytest.mark.parametrize("body,status,param,code", [
    ({"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
     400, "endpoint", "invalid_value"),
    ({"input_file_id": "file-x", "endpoint": GEN, "completion_window": "48h"},
     400, "completion_window", "invalid_value"),
    ({"endpoint": GEN, "completion_window": "24h"}, 400, "input_file_id", "missing_required_parameter"),
    ({"input_file_id": "file-x", "completion_window": "24h"}, 400, "endpoint", "missing_required_parameter"),
    ({"input_file_id": "file-x", "endpoint": GEN, "completion_window": "24h",
      "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", "object_above_max_properties"),
    ({"input_file_id": "file-x", "endpoint": GEN, "completion_window": "24h", "metadata": {"k": 1}},
     400, "metadata", "invalid_type"),
    ({"input_file_id": "file-x", "endpoint": GEN, "completion_window": "24h", "metadata": {"k": "v" * 513}},
     400, "metadata", "string_above_max_length"),
    ({"input_file_id": "file-x", "endpoint": GEN, "completion_window": "24h", "priority": 1},
     400, "priority", "unknown_parameter"),
])
def test_create_refusals(instant, body, status, param, code):
    assert_openai_error(call(instant.openai_base_url + "/batches", body), status, param=param, code=code)
    assert instant.stats.batches_created == 0


def test_sixteen_metadata_pairs_are_fine(instant):
    c, b = submit(instant, many(1), metadata={f"k{i}": "v" * 512 for i in range(16)})
    assert b.status == "completed" and len(b.metadata) == 16


def test_create_with_a_bad_json_body(instant):
    assert_openai_error(call(instant.openai_base_url + "/batches", raw=b"{nope"), 400)


# --- uploads ---

def test_upload_refusals(instant, monkeypatch):
    data = jsonl(many(2))
    assert_openai_error(upload(instant, data, purpose="fine-tune"), 400, param="purpose", code="invalid_value")
    assert_openai_error(upload(instant, data, purpose=None), 400, param="purpose",
                        code="missing_required_parameter")
    assert_openai_error(upload(instant, None), 400, param="file", code="missing_required_parameter")
    assert_openai_error(upload(instant, data, filename="in.csv"), 400, param="file", code="invalid_file_format")
    assert_openai_error(call(instant.openai_base_url + "/files", {"purpose": "batch"}), 400)
    monkeypatch.setattr(sim_uploads, "MAX_UPLOAD_BYTES", len(data) - 1)
    assert_openai_error(upload(instant, data), 400, param="file", code="file_too_large")
    monkeypatch.setattr(sim_uploads, "MAX_UPLOAD_BYTES", len(data))
    assert upload(instant, data).status == 200
    assert instant.stats.files_uploaded == 1


def test_the_limit_is_openais_200_mb_and_uploads_beyond_the_apps_body_limit_work(instant):
    assert sim_uploads.MAX_UPLOAD_BYTES == 209_715_200
    data = jsonl(request_line(f"big-{i}", prompt="x" * 30_000) for i in range(200))
    assert len(data) > 5 * 2**20     # more than the application's 4 MB client_max_size
    ans = upload(instant, data)
    assert ans.status == 200, ans.body
    doc = ans.json()
    assert doc["bytes"] == len(data)
    assert call(f"{instant.openai_base_url}/files/{doc['id']}/content").body == data


def test_unknown_ids_are_404(instant):
    base = instant.openai_base_url
    assert_openai_error(call(base + "/files/file-nope"), 404, param="id")
    assert_openai_error(call(base + "/files/file-nope/content"), 404, param="id")
    assert_openai_error(call(base + "/batches/batch_nope"), 404, param="batch_id")
    assert_openai_error(call(base + "/batches/batch_nope/cancel", method="POST"), 404, param="batch_id")


# --- auth ---

@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_route_wants_the_token(instant, token):
    c, b = submit(instant, many(1))
    base = instant.openai_base_url
    raw, ctype = multipart({"purpose": "batch"}, {"file": ("a.jsonl", jsonl(many(1)))})
    answers = [
        call(base + "/files", raw=raw, content_type=ctype, token=token),
        call(f"{base}/files/{b.input_file_id}", token=token),
        call(f"{base}/files/{b.output_file_id}/content", token=token),
        call(base + "/batches", {"input_file_id": b.input_file_id, "endpoint": GEN,
                                 "completion_window": "24h"}, token=token),
        call(base + "/batches", token=token),
        call(f"{base}/batches/{b.id}", token=token),
        call(f"{base}/batches/{b.id}/cancel", method="POST", token=token),
    ]
    for ans in answers:
        assert_openai_error(ans, 401, code="invalid_api_key")
    assert instant.stats.files_uploaded == 1 and instant.stats.batches_created == 1
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=base, api_key="wrong-token", max_retries=0).batches.retrieve(b.id)


# --- faults ---

def test_expire_leaves_half_run_and_half_batch_expired():
    lines = many(10, "e")
    with SimulatorThread(SimConfig(batch_seconds=0, batch_expire=1.0)) as sim:
        c, b = submit(sim, lines)
        assert b.status == "expired" and b.expired_at is not None and b.completed_at is None
        assert b.request_counts.total == 10
        assert b.request_counts.completed == 5 and b.request_counts.failed == 5
        out, err = read_file(c, b.output_file_id), read_file(c, b.error_file_id)
        assert len(out) == 5 and all(e["response"]["status_code"] == 200 for e in out)
        assert len(err) == 5
        for entry in err:
            assert entry["response"] is None
            assert entry["error"]["code"] == "batch_expired" and entry["error"]["message"]
        assert sorted(ids(out) + ids(err)) == sorted(ids(lines))
        assert sim.stats.batch_executions == dict.fromkeys(ids(out), 1)
        assert sim.stats.faults["batch_expire"] == 1


def test_expiring_batch_stays_in_progress_until_its_time():
    with SimulatorThread(SimConfig(batch_seconds=1.0, batch_expire=1.0)) as sim:
        c, b = submit(sim, many(20, "e"))
        seen = set()

        def step():
            got = c.batches.retrieve(b.id)
            seen.add(got.status)
            assert got.request_counts.completed <= 10
            return got.status == "expired"
        wait_until(step, 60, "the batch to expire")
        assert "finalizing" not in seen and "completed" not in seen


def test_fail_validation_fault():
    with SimulatorThread(SimConfig(batch_seconds=0, batch_fail_validation=1.0)) as sim:
        c, b = submit(sim, many(3))
        assert b.status == "failed" and b.errors.data[0].code == "token_limit_exceeded"
        assert b.output_file_id is None and b.error_file_id is None
        assert sim.stats.batch_executions == {} and sim.stats.faults["batch_fail_validation"] == 1


def test_line_errors_answer_500_instead_of_running():
    lines = many(40, "l")
    with SimulatorThread(SimConfig(batch_seconds=0, batch_line_errors=0.5, seed=3)) as sim:
        c, b = submit(sim, lines)
        assert b.status == "completed"
        out, err = read_file(c, b.output_file_id), read_file(c, b.error_file_id)
        assert 0 < len(err) < 40 and len(out) + len(err) == 40
        assert sorted(ids(out) + ids(err)) == sorted(ids(lines))
        for entry in err:
            assert entry["error"] is None and entry["response"]["status_code"] == 500
            error = entry["response"]["body"]["error"]
            assert error["type"] == "server_error" and error["message"]
        assert (b.request_counts.completed, b.request_counts.failed) == (len(out), len(err))
        assert sim.stats.batch_executions == dict.fromkeys(ids(out), 1)   # the 500s never ran
        assert sim.stats.faults["batch_line_errors"] == len(err)
    with SimulatorThread(SimConfig(batch_seconds=0, batch_line_errors=1.0)) as sim:
        c, b = submit(sim, many(3))
        assert b.status == "completed" and b.output_file_id is None
        assert b.request_counts.failed == 3 and len(read_file(c, b.error_file_id)) == 3


def test_cancel_keeps_what_ran_and_cancels_the_rest():
    lines = many(100, "k")
    with SimulatorThread(SimConfig(batch_seconds=10.0)) as sim:
        c, b = submit(sim, lines)
        wait_until(lambda: c.batches.retrieve(b.id).request_counts.completed >= 1, 60,
                   "a first line to run")
        cancelling = c.batches.cancel(b.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        ran = cancelling.request_counts.completed
        assert 1 <= ran < 100
        cancelled = c.batches.retrieve(b.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert cancelled.request_counts.completed == ran
        assert cancelled.request_counts.failed == 100 - ran
        out, err = read_file(c, cancelled.output_file_id), read_file(c, cancelled.error_file_id)
        assert len(out) == ran and len(err) == 100 - ran
        assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in err)
        assert sorted(ids(out) + ids(err)) == sorted(ids(lines))
        assert sim.stats.batch_executions == dict.fromkeys(ids(out), 1)
        assert c.batches.cancel(b.id).status == "cancelled"    # cancelling again is harmless


@pytest.mark.parametrize("config,status", [({"batch_seconds": 0}, "completed"),
                                           ({"batch_seconds": 0, "batch_expire": 1.0}, "expired"),
                                           ({"batch_seconds": 0, "batch_fail_validation": 1.0}, "failed")])
def test_a_finished_batch_cannot_be_cancelled(config, status):
    with SimulatorThread(SimConfig(**config)) as sim:
        c, b = submit(sim, many(2))
        assert b.status == status
        ans = call(f"{sim.openai_base_url}/batches/{b.id}/cancel", method="POST")
        assert_openai_error(ans, 409)
        assert c.batches.retrieve(b.id).status == status


# --- listing, reset, edits, config, the command line ---

def test_list_is_newest_first_and_paginates(instant):
    c = client(instant)
    made = [submit(instant, many(1, f"p{i}"))[1].id for i in range(5)]
    page = call(instant.openai_base_url + "/batches?limit=2").json()
    assert page["object"] == "list" and [d["id"] for d in page["data"]] == made[::-1][:2]
    assert page["first_id"] == made[4] and page["last_id"] == made[3] and page["has_more"] is True
    page = call(f"{instant.openai_base_url}/batches?limit=2&after={made[3]}").json()
    assert [d["id"] for d in page["data"]] == [made[2], made[1]] and page["has_more"] is True
    page = call(f"{instant.openai_base_url}/batches?limit=2&after={made[1]}").json()
    assert [d["id"] for d in page["data"]] == [made[0]] and page["has_more"] is False
    assert [b.id for b in c.batches.list(limit=2)] == made[::-1]     # the SDK follows the pages
    assert_openai_error(call(instant.openai_base_url + "/batches?limit=0"), 400, param="limit",
                        code="invalid_value")
    assert_openai_error(call(instant.openai_base_url + "/batches?after=batch_nope"), 400,
                        param="after", code="invalid_value")


def test_reset_all_forgets_files_and_batches(instant):
    c, b = submit(instant, many(2))
    base = instant.openai_base_url
    call(instant.base_url + "/_sim/reset", {}, method="POST")
    assert instant.stats.batch_executions == {} and instant.stats.batches_created == 0
    assert call(f"{base}/batches/{b.id}").status == 200               # kept without all=1
    call(instant.base_url + "/_sim/reset?all=1", {}, method="POST")
    assert call(f"{base}/batches/{b.id}").status == 404
    assert call(f"{base}/files/{b.input_file_id}").status == 404
    assert call(f"{base}/files/{b.output_file_id}/content").status == 404
    assert call(base + "/batches").json()["data"] == []


def test_a_batch_of_edits_answers_each_line_for_its_own_input(instant):
    inputs = [png(color=(40 * i, 90, 10)) for i in range(3)]
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": EDITS,
              "body": {"model": "gpt-image-2", "prompt": "add a hat", "quality": "low",
                       "images": [{"image_url": data_url(data)}]}} for i, data in enumerate(inputs)]
    lines.append({"custom_id": "no-image", "method": "POST", "url": EDITS,
                  "body": {"model": "gpt-image-2", "prompt": "add a hat"}})
    c, b = submit(instant, lines, endpoint=EDITS)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (3, 1)
    answers = {e["custom_id"]: e["response"]["body"] for e in read_file(c, b.output_file_id)}
    for i, data in enumerate(inputs):
        doc = answers[f"e{i}"]
        assert doc["data"][0]["revised_prompt"] == f"edit of {hashlib.sha256(data).hexdigest()[:16]}: add a hat"
        assert decode(doc["data"][0]["b64_json"]).size == (1024, 1024)
        assert doc["usage"]["input_tokens_details"]["image_tokens"] > 0
    assert b.usage.input_tokens == sum(d["usage"]["input_tokens"] for d in answers.values())
    [refused] = read_file(c, b.error_file_id)
    error = refused["response"]["body"]["error"]
    assert refused["custom_id"] == "no-image" and refused["response"]["status_code"] == 400
    assert (error["code"], error["param"]) == ("missing_required_parameter", "images")
    assert instant.stats.by_path == {}   # ran through the batch, not the live endpoint


def test_an_edits_batch_takes_edits_of_a_gpt_image_model_only(instant):
    c, b = submit(instant, [request_line("d", url=EDITS, model="dall-e-3", quality=None)], endpoint=EDITS)
    assert b.status == "failed" and b.errors.data[0].code == "model_not_supported"
    c, b = submit(instant, [request_line("g")], endpoint=EDITS)
    assert b.status == "failed" and b.errors.data[0].code == "invalid_url"


def test_quota_counts_batch_images():
    with SimulatorThread(SimConfig(batch_seconds=0, quota_images=2)) as sim:
        c, b = submit(sim, many(3))
        assert (b.request_counts.completed, b.request_counts.failed) == (2, 1)
        err = read_file(c, b.error_file_id)[0]["response"]
        assert err["status_code"] == 429 and err["body"]["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize("field,value", [("batch_expire", 1.5), ("batch_fail_validation", -0.1),
                                         ("batch_line_errors", 2), ("batch_seconds", -1),
                                         ("batch_seconds", float("nan"))])
def test_config_refuses_bad_batch_values(field, value):
    with pytest.raises(ValueError, match=field):
        SimConfig(**{field: value})


def test_defaults():
    cfg = SimConfig()
    assert cfg.batch_seconds == 2.0
    assert cfg.batch_expire == cfg.batch_fail_validation == cfg.batch_line_errors == 0.0
    assert sim_batches.MAX_LINES == 50_000


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_batch_flags():
    with simulate_process("--batch-seconds", "0", "--batch-line-errors", "1") as served:
        c = OpenAI(base_url=served.base_url, api_key=TOKEN, max_retries=0)
        f = c.files.create(file=("r.jsonl", jsonl(many(2))), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint=GEN, completion_window="24h")
        assert b.status == "completed" and b.request_counts.failed == 2
    # the token to use, and nothing else
    assert served.returncode == 0 and served.err.startswith("token: ") and served.err.count("\n") == 1
    code = "from batchgen.cli.simulate import simulate; simulate(prog_name='batchgen simulate')"
    help_text = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[1]).stdout
    for flag in ("--batch-seconds", "--batch-expire", "--batch-fail-validation", "--batch-line-errors"):
        assert flag in help_text
