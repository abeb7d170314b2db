"""AceData's callback mode and Tasks API, from AceData's Tasks API guide (not from the client).

A generation request on the AceData endpoint that carries a ``callback_url`` is answered at once
with ``{"success": true, "task_id": ...}`` (after the key, the rate limits and the request's
validity are checked, as for any request); the generation then runs for the simulator's latency,
is billed (quota, ``stats.images``) and its answer becomes the task's ``response``. The callback
itself is not POSTed anywhere: the simulator reaches no address but its own, so a client learns
the outcome from the Tasks API only. A request may carry a ``trace_id`` of the client's choosing
(text, at most 128 characters); ``stats.trace_executions`` counts the generations run under each
trace id (callback or synchronous), so a test can say "executed exactly once".

    POST /openai/tasks  {"action": "retrieve", "id": ID}
                        -> the task, or {} when there is none
                        {"action": "retrieve_batch", "ids": [...]} | {"trace_ids": [...]}
                        | {"created_at_min": T, "created_at_max": T}   (seconds since 1970)
                        with "limit" (1..100, default 50) and "offset" (default 0)
                        -> {"items": [task, ...], "count": every match}, or {} when none matches

A task is ``{"id", "trace_id", "request", "response", "created_at", "finished_at"}``; ``response``
and ``finished_at`` are null until the generation ends; then ``response`` is the synchronous
answer's body (``{"success": true, "created", "data": [...]}``, or ``{"success": false, "error":
{...}}``). Retrieval is free: not counted as a generation, never rate limited.

``task_fail`` (a probability, drawn once per trace id so a retry under a new one may succeed)
makes a callback generation fail upstream: its response is a ``server_error``, not billed.

``sync_time_limit`` (seconds, None: no limit) is a gateway's limit on a synchronous answer: a
generation slower than it is answered 504 ``timeout`` after that many seconds, and still
completes upstream and is billed (as happens behind a real gateway).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from .config import bump

TASKS_PATH = "/openai/tasks"
MAX_TRACE_CHARS = 128
MAX_IDS = 100
DEFAULT_LIMIT = 50
MAX_TASKS_KEPT = 100_000


class BadTaskQuery(ValueError):
    """A Tasks API request the guide does not allow: answered 400."""


class TaskStore:
    """The account's tasks, oldest first (the oldest are let go past MAX_TASKS_KEPT)."""

    def __init__(self) -> None:
        self.tasks: "OrderedDict[str, dict]" = OrderedDict()
        self.bodies: dict = {}       # task id -> its response's bytes (the images' base64 unparsed)
        self.by_trace: dict = {}     # trace id -> task ids, oldest first
        self.running: set = set()    # asyncio tasks of generations under way

    def forget(self) -> None:
        self.tasks.clear()
        self.bodies.clear()
        self.by_trace.clear()

    def create(self, trace_id: Optional[str], request: dict) -> str:
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = {"id": task_id, "trace_id": trace_id, "request": request, "response": None,
                               "created_at": round(time.time(), 3), "finished_at": None}
        if trace_id is not None:
            self.by_trace.setdefault(trace_id, []).append(task_id)
        while len(self.tasks) > MAX_TASKS_KEPT:
            old_id, old = self.tasks.popitem(last=False)
            self.bodies.pop(old_id, None)
            same = self.by_trace.get(old.get("trace_id"))
            if same and old_id in same:
                same.remove(old_id)
        return task_id

    def finish(self, task_id: str, body: bytes) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task["finished_at"] = round(time.time(), 3)
            self.bodies[task_id] = body

    def encoded(self, task_id: str) -> bytes:
        """The task as JSON, its response spliced in as the bytes it was answered with."""
        task = self.tasks[task_id]
        head = json.dumps({k: v for k, v in task.items() if k != "response"})
        return (head[:-1] + ', "response": ').encode() + self.bodies.get(task_id, b"null") + b"}"

    def find(self, query: dict) -> list:
        """The ids a retrieve_batch query matches, oldest first."""
        if "ids" in query:
            return [i for i in _texts(query["ids"], "ids") if i in self.tasks]
        if "trace_ids" in query:
            return [i for t in _texts(query["trace_ids"], "trace_ids") for i in self.by_trace.get(t, ())]
        low, high = _number(query.get("created_at_min")), _number(query.get("created_at_max"))
        if low is None and high is None:
            raise BadTaskQuery("retrieve_batch needs ids, trace_ids or created_at_min/created_at_max")
        return [i for i, t in self.tasks.items()
                if (low is None or t["created_at"] >= low) and (high is None or t["created_at"] <= high)]


def _texts(value: Any, name: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > MAX_IDS:
        raise BadTaskQuery(f"{name} must be a list of at most {MAX_IDS} strings")
    return value


def _number(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadTaskQuery("created_at_min and created_at_max are seconds since 1970")
    return float(value)


def _whole(value: Any, default: int, low: int, high: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadTaskQuery(f"{name} must be a whole number from {low} to {high}")
    return value


def callback_fields(doc: Any) -> tuple:
    """(callback_url, trace_id) taken out of a generation body (a dict, changed in place);
    BadTaskQuery when either is not what the guide allows."""
    if not isinstance(doc, dict):
        return None, None
    callback, trace = doc.pop("callback_url", None), doc.pop("trace_id", None)
    if callback is not None and not (isinstance(callback, str) and callback.startswith(("http://", "https://"))):
        raise BadTaskQuery("callback_url must be an http(s) URL")
    if trace is not None and not (isinstance(trace, str) and 0 < len(trace) <= MAX_TRACE_CHARS):
        raise BadTaskQuery(f"trace_id must be a text of 1 to {MAX_TRACE_CHARS} characters")
    return callback, trace


def task_fails(seed: int, trace_id: Optional[str], probability: float) -> bool:
    """Whether a callback generation fails upstream: drawn once per trace id."""
    if not probability:
        return False
    key = trace_id if trace_id is not None else uuid.uuid4().hex
    return random.Random(f"task_fail:{seed}:{key}").random() < probability


class TasksApi:
    """POST /openai/tasks, and the callback generations it reports on."""

    def __init__(self, authorize: Callable[[web.Request], Optional[web.Response]]):
        self.store = TaskStore()
        self._authorize = authorize

    def start(self, trace_id: Optional[str], request: dict, work: Callable[[], Awaitable[bytes]]) -> str:
        """A callback generation: the task now, `work` (the latency, then the answer's body) later."""
        task_id = self.store.create(trace_id, request)

        async def run() -> None:
            body = await work()
            self.store.finish(task_id, body)
        running = asyncio.ensure_future(run())
        self.store.running.add(running)
        running.add_done_callback(self.store.running.discard)
        return task_id

    async def post(self, request: web.Request) -> web.Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        try:
            query = json.loads(await request.read() or b"null")
            if not isinstance(query, dict):
                raise BadTaskQuery("send a JSON object with an action")
            return self._answer(query)
        except (BadTaskQuery, ValueError) as exc:
            return _bad(str(exc) if isinstance(exc, BadTaskQuery) else "the body is not JSON")

    def _answer(self, query: dict) -> web.Response:
        store = self.store
        action = query.get("action")
        if action == "retrieve":
            task_id = query.get("id")
            if not isinstance(task_id, str):
                raise BadTaskQuery("retrieve needs an id")
            return _json(store.encoded(task_id) if task_id in store.tasks else b"{}")
        if action != "retrieve_batch":
            raise BadTaskQuery("action must be retrieve or retrieve_batch")
        limit = _whole(query.get("limit"), DEFAULT_LIMIT, 1, MAX_IDS, "limit")
        offset = _whole(query.get("offset"), 0, 0, 10 ** 9, "offset")
        found = store.find(query)
        if not found:
            return _json(b"{}")
        page = b", ".join(store.encoded(i) for i in found[offset:offset + limit])
        return _json(b'{"items": [' + page + b'], "count": ' + str(len(found)).encode() + b"}")


def _json(body: bytes) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/json")


def _bad(message: str) -> web.Response:
    doc = {"success": False, "error": {"code": "bad_request", "message": message}, "trace_id": str(uuid.uuid4())}
    return web.Response(status=400, body=json.dumps(doc).encode(), content_type="application/json")


def note_execution(executions: dict, trace_id: Optional[str]) -> None:
    if trace_id is not None:
        bump(executions, trace_id)
