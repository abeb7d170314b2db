"""The simulator's AceData callback mode and Tasks API, over real HTTP (urllib, not batchgen's client)."""
import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import TOKEN, wait_until

from batchgen.simulator import SimulatorThread


def post(url, doc, token=TOKEN):
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def tasks_url(sim):
    return sim.base_url + "/openai/tasks"


def submit(sim, prompt, trace_id=None, **more):
    doc = {"prompt": prompt, "model": "dall-e-3", "callback_url": "https://example.com/cb", **more}
    if trace_id is not None:
        doc["trace_id"] = trace_id
    return post(sim.acedata_url, doc)


def finished(sim, task_id):
    status, task = post(tasks_url(sim), {"action": "retrieve", "id": task_id})
    assert status == 200
    return task if task.get("response") else None


def test_a_callback_request_answers_a_task_id_at_once_and_the_task_finishes_billed(tmp_path):
    with SimulatorThread(latency=0.3) as sim:
        status, answer = submit(sim, "a lighthouse", "trace-1")
        assert status == 200 and answer["success"] is True and answer["task_id"]
        billed = sim.stats.images
        _, task = post(tasks_url(sim), {"action": "retrieve", "id": answer["task_id"]})
        assert task["trace_id"] == "trace-1" and task["request"]["callback_url"] == "https://example.com/cb"
        if task["response"] is None:                  # not drawn yet: not billed yet
            assert billed == 0 and task["finished_at"] is None
        wait_until(lambda: finished(sim, answer["task_id"]), what="the task to finish")
        task = finished(sim, answer["task_id"])
        assert task["response"]["success"] is True and len(task["response"]["data"]) == 1
        assert task["request"]["prompt"] == "a lighthouse" and task["finished_at"] >= task["created_at"]
        assert sim.stats.images == 1 and sim.stats.trace_executions == {"trace-1": 1}
        assert sim.stats.tasks_created == 1


def test_retrieve_batch_finds_tasks_by_ids_trace_ids_and_time_window_a_page_at_a_time():
    with SimulatorThread() as sim:
        before = time.time() - 1
        ids = [submit(sim, f"prompt {i}", f"t{i}")[1]["task_id"] for i in range(5)]
        by_ids = post(tasks_url(sim), {"action": "retrieve_batch", "ids": ids[:3] + ["nope"]})[1]
        assert [t["id"] for t in by_ids["items"]] == ids[:3] and by_ids["count"] == 3
        by_trace = post(tasks_url(sim), {"action": "retrieve_batch", "trace_ids": ["t4", "t0"]})[1]
        assert [t["trace_id"] for t in by_trace["items"]] == ["t4", "t0"]
        window = {"action": "retrieve_batch", "created_at_min": before, "created_at_max": time.time() + 1}
        pages = [post(tasks_url(sim), {**window, "limit": 2, "offset": offset})[1] for offset in (0, 2, 4)]
        assert [len(p["items"]) for p in pages] == [2, 2, 1] and {p["count"] for p in pages} == {5}
        assert [t["id"] for p in pages for t in p["items"]] == ids


@pytest.mark.parametrize("query", [
    {"action": "retrieve", "id": "no-such-task"},
    {"action": "retrieve_batch", "ids": ["no-such-task"]},
    {"action": "retrieve_batch", "trace_ids": ["never-sent"]},
])
def test_the_tasks_api_answers_an_empty_object_for_what_it_does_not_know(sim, query):
    assert post(tasks_url(sim), query) == (200, {})


@pytest.mark.parametrize("query, says", [
    ({"action": "list"}, "action must be"),
    ({"action": "retrieve_batch"}, "needs ids, trace_ids or created_at"),
    ({"action": "retrieve_batch", "ids": ["a"], "limit": 1000}, "limit must be"),
    ({"action": "retrieve_batch", "ids": "a"}, "ids must be a list"),
])
def test_the_tasks_api_refuses_a_query_it_does_not_take(sim, query, says):
    status, answer = post(tasks_url(sim), query)
    assert status == 400 and answer["success"] is False and says in answer["error"]["message"]


def test_the_tasks_api_needs_the_key(sim):
    status, answer = post(tasks_url(sim), {"action": "retrieve", "id": "x"}, token="wrong")
    assert status == 401 and answer["success"] is False


def test_a_trace_id_that_is_not_a_short_text_is_refused_before_anything_runs(fresh):
    status, answer = submit(fresh, "a lighthouse", "x" * 129)
    assert status == 400 and "trace_id" in answer["error"]["message"]
    assert fresh.stats.trace_executions == {} and fresh.stats.tasks_created == 0


def test_past_the_synchronous_limit_the_gateway_answers_504_and_the_generation_is_still_billed():
    with SimulatorThread(latency=0.3, sync_time_limit=0.05) as sim:
        status, answer = post(sim.acedata_url, {"prompt": "a lighthouse", "model": "dall-e-3", "trace_id": "s1"})
        assert status == 504 and answer["error"]["code"] == "timeout"
        assert sim.stats.images == 1 and sim.stats.trace_executions == {"s1": 1}
        status, answer = submit(sim, "a lighthouse", "s2")        # callback mode: no time limit
        assert status == 200
        wait_until(lambda: finished(sim, answer["task_id"]), what="the task to finish")
        assert finished(sim, answer["task_id"])["response"]["success"] is True


def test_a_task_that_fails_upstream_says_so_in_its_response_and_is_not_billed():
    with SimulatorThread(task_fail=1.0) as sim:
        _, answer = submit(sim, "a lighthouse", "f1")
        wait_until(lambda: finished(sim, answer["task_id"]), what="the task to finish")
        response = finished(sim, answer["task_id"])["response"]
        assert response["success"] is False and response["error"]["code"] == "api_error"
        assert sim.stats.images == 0 and sim.stats.faults == {"task_fail": 1}
