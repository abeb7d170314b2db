"""The aiohttp application: the routes, one running simulator's state, and the ways to run it
(in the caller's event loop with start_simulator, or in a thread with SimulatorThread)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
import time
import urllib.parse
import uuid
from typing import Any, Awaitable, Callable, Optional, TypeVar

from aiohttp import web

from .answers import ACEDATA, MARK, OPENAI, edit_note, error_answer, revised_prompt, success_body
from .batches import BatchApi
from .config import SimConfig, SimStats, bump
from .edits import EditForm, parse_edit, read_edit
from .faults import (
    HTML_503,
    NOT_IMAGE,
    FaultDice,
    post_faults_shown,
    server_error,
    spoiled_b64,
    spoiled_body,
    timeout_error,
)
from .files import FileStore
from .gateway import litellm_middleware
from .images import Encoded, ImageMaker
from .rate import LIMIT_KEYS, Limiter, rate_error
from .tasks import TASKS_PATH, BadTaskQuery, TasksApi, callback_fields, note_execution, task_fails
from .validation import (
    ApiError,
    ImageRequest,
    auth_error,
    bad,
    check_policy,
    check_quota,
    decode_json,
    parse_request,
)

ACEDATA_PATH = "/openai/images/generations"
OPENAI_PATH = "/v1/images/generations"
ACEDATA_EDITS_PATH = "/openai/images/edits"
OPENAI_EDITS_PATH = "/v1/images/edits"
GENERATION_PATHS = (ACEDATA_PATH, OPENAI_PATH, ACEDATA_EDITS_PATH, OPENAI_EDITS_PATH)
FILES_PATH = "/files/"
STATS_PATH = "/_sim/stats"
RESET_PATH = "/_sim/reset"
LIMIT_PATH = "/_sim/limit"

_KEY_OF = {kind: key for key, kind in LIMIT_KEYS.items()}   # "requests" -> "rpm", ...


class _SimState:
    """Everything one running simulator knows; the handlers are its methods."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.stats = SimStats()
        self.images = ImageMaker(config.photo, config.cache_bytes)
        self.files = FileStore(config)
        self.quota_used = 0
        self.dice = FaultDice(config)
        self.limiter = self._limiter()
        self.jitter_rng = random.Random(f"jitter:{config.seed}")
        self.closing = asyncio.Event()
        self.port: Optional[int] = None
        self.batch_api = BatchApi(self)  # /v1/files and /v1/batches
        self.tasks_api = TasksApi(self._authorize)  # /openai/tasks and callback generations

    def reset(self, everything: bool = False) -> None:
        self.stats.reset()
        if everything:
            self.quota_used = 0
            self.dice.forget()
            self.batch_api.forget()
            self.tasks_api.store.forget()
            self.limiter = self._limiter()   # the configured limits, full, the schedule anew

    def _limiter(self) -> Limiter:
        cfg = self.config
        return Limiter(cfg.rpm_limit, cfg.ipm_limit, cfg.tpm_limit,
                       tokens_per_image=cfg.tokens_per_image, schedule=cfg.rpm_schedule)

    def _delay(self) -> float:
        """One answer's latency: latency times uniform(1 - spread, 1 + spread), plus
        uniform(0, latency_jitter)."""
        cfg = self.config
        delay = cfg.latency
        if cfg.latency_spread:
            delay *= self.jitter_rng.uniform(1.0 - cfg.latency_spread, 1.0 + cfg.latency_spread)
        if cfg.latency_jitter:
            delay += self.jitter_rng.uniform(0.0, cfg.latency_jitter)
        return delay

    async def _pause(self, seconds: float) -> bool:
        """Sleep; True if the server began closing meanwhile."""
        if self.closing.is_set():
            return True
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    def _respond(self, dialect: str, status: int, body: bytes, *, content_type="application/json",
                 headers: Optional[dict] = None) -> web.Response:
        bump(self.stats.by_status, str(status))
        resp = web.Response(status=status, body=body, content_type=content_type)
        if headers:
            resp.headers.update(headers)
        if dialect == OPENAI:
            resp.headers["x-request-id"] = f"req_{uuid.uuid4().hex}"
        return resp

    def _error(self, dialect: str, err: ApiError, headers: Optional[dict]) -> web.Response:
        status, body = error_answer(dialect, err)
        merged = dict(headers or {})
        merged.update(err.headers)
        return self._respond(dialect, status, body, headers=merged)

    def _hang_up(self, request: web.Request, label: Optional[str]) -> web.Response:
        """Close the connection without an answer (the client sees a disconnect)."""
        if label:
            bump(self.stats.by_status, label)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never reaches the client: the connection is closed

    async def acedata(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ACEDATA, self._read_body, self._accept_acedata)

    def _authorize(self, request: web.Request) -> Optional[web.Response]:
        """The AceData 401 for a request without the key, else None (the Tasks API's check)."""
        refused = auth_error(request.headers.get("Authorization", ""), self.config.token)
        return None if refused is None else self._error(ACEDATA, refused, None)

    async def tasks(self, request: web.Request) -> web.Response:
        self.stats.task_lookups += 1
        bump(self.stats.by_path, request.path)
        return await self.tasks_api.post(request)

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, OPENAI, self._read_body, self._accept)

    async def acedata_edit(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ACEDATA, self._read_edit, self._accept_edit_acedata)

    async def openai_edit(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, OPENAI, self._read_edit, self._accept_edit)

    async def _generate(self, request: web.Request, dialect: str, read: "_Read",
                        accept: Callable[[Any], ImageRequest]) -> web.StreamResponse:
        # The latency is the server's whole time to answer, counted from the request's arrival
        # as a client sees a real API's: the work (parsing, drawing the image) happens within
        # it, so fifty requests that arrive together are answered together, latency later.
        # Only answers that stand for upstream work take it (see SimConfig.latency); a 429 of
        # the limits, like every refusal at the door, is answered at once.
        arrived = time.monotonic()
        stats = self.stats
        stats.enter()
        try:
            stats.mark("requests", arrived)
            self.limiter.start(arrived)   # the rpm schedule's clock, and its steps now due
            response, slow = await self._answer(request, dialect, read, accept, arrived)
            timed_out = False
            if slow or self.config.latency_on_refusals:
                delay = self._delay()
                limit = self.config.sync_time_limit
                # A gateway's limit: the answer is a 504, the work upstream goes on (and was billed).
                timed_out = slow and limit is not None and delay > limit
                wait = arrived + (limit if timed_out and limit is not None else delay) - time.monotonic()
                transport = request.transport
                if wait > 0 and transport is not None and not transport.is_closing():
                    stats.enter(generating=True)
                    try:
                        closing = await self._pause(wait)
                    finally:
                        self.stats.leave(generating=True)
                    if closing:
                        return self._hang_up(request, "closed")
            if timed_out:
                bump(self.stats.faults, "sync_time_limit")
                response = self._error(dialect, timeout_error(), None)
            if response.status == 200:
                self.stats.mark("ok", time.monotonic())
            return response
        finally:
            self.stats.leave()

    async def _answer(self, request: web.Request, dialect: str, read: "_Read",
                      accept: Callable[[Any], ImageRequest],
                      arrived: float) -> tuple[web.StreamResponse, bool]:
        """The answer, and whether it takes the latency.  Refusals in the order a real gateway
        makes them: key, rate, upstream faults, then the request itself (a body that cannot be
        read is refused with the request)."""
        stats = self.stats
        stats.requests += 1
        bump(stats.by_path, request.path)
        try:
            key, payload = await read(request)
        except ApiError as err:
            key, payload = f"{err.status} {err}".encode(), err
        refused = auth_error(request.headers.get("Authorization", ""), self.config.token)
        if refused is not None:
            return self._error(dialect, refused, None), False
        headers = None
        limiter = self.limiter
        if limiter.buckets:
            outcome = limiter.admit(_images_asked(payload))
            headers = limiter.headers() if self.config.ratelimit_headers else None
            if outcome is not None:
                return self._limited(dialect, outcome, headers, arrived), False
        stats.mark("admitted", arrived)
        fault = self.dice.decide(key) if self.dice.active else None
        if fault:
            early = await self._early_fault(request, dialect, fault, headers)
            if early is not None:
                return early
        try:
            if isinstance(payload, ApiError):
                raise payload
            req = accept(payload)
        except ApiError as err:
            # a content-policy refusal comes from the upstream's look at the prompt: it takes
            # the latency; an invalid request or an exhausted quota is refused at the door
            return self._error(dialect, err, headers), err.code == "content_policy_violation"
        note_execution(self.stats.trace_executions, req.trace_id)
        if req.callback_url is not None:
            return self._start_task(request, dialect, req, fault, headers), False
        return self._success(request, dialect, req, fault, headers), True

    def _start_task(self, request: web.Request, dialect: str, req: ImageRequest, fault: Optional[dict],
                    headers: Optional[dict]) -> web.Response:
        """Callback mode: the task's id at once; the generation runs (and is billed) after the latency."""
        async def work() -> bytes:
            self.stats.enter(generating=True)
            try:
                if await self._pause(self._delay()):
                    return error_answer(dialect, server_error())[1]
            finally:
                self.stats.leave(generating=True)
            if task_fails(self.config.seed, req.trace_id, self.config.task_fail):
                bump(self.stats.faults, "task_fail")
                return error_answer(dialect, server_error())[1]
            self.stats.mark("ok", time.monotonic())
            return self._success_body(request, dialect, req, fault)
        shown = {"model": req.model.name, "prompt": req.prompt, "callback_url": req.callback_url}
        task_id = self.tasks_api.start(req.trace_id, shown, work)
        self.stats.tasks_created += 1
        body = json.dumps({"success": True, "task_id": task_id, "trace_id": req.trace_id}).encode()
        return self._respond(dialect, 200, body, headers=headers)

    def _limited(self, dialect: str, outcome: tuple, headers: Optional[dict],
                 arrived: float) -> web.Response:
        """The 429 of the limit that refused a request ((kind, wait, cost) from Limiter.admit)."""
        kind, wait, cost = outcome
        name = _KEY_OF[kind]
        bump(self.stats.faults, f"{name}_limit")
        bump(self.stats.rate_limited, name)
        self.stats.mark("limited", arrived)
        err = rate_error(wait, style=self.config.rate_limit_retry_after, kind=kind,
                         limit=self.limiter.buckets[kind].per_minute,
                         used=self.limiter.used(kind), requested=cost)
        return self._error(dialect, err, headers)

    async def _early_fault(self, request: web.Request, dialect: str, fault: dict,
                           headers: Optional[dict]) -> Optional[tuple[web.StreamResponse, bool]]:
        """The answer of a fault that answers instead of the API and whether it takes the
        latency (only fail_500, an upstream error after its work), or None."""
        cfg = self.config
        if fault["hang"]:
            return await self._hang(request, dialect, headers), False
        if fault["drop"]:
            bump(self.stats.faults, "drop")
            return self._hang_up(request, "drop"), False
        if fault["fail_503_html"]:
            bump(self.stats.faults, "fail_503_html")
            return self._respond(dialect, 503, HTML_503, content_type="text/html",
                                 headers=headers), False
        if fault["fail_500"]:
            bump(self.stats.faults, "fail_500")
            return self._error(dialect, server_error(), headers), True
        if fault["fail_429"]:
            bump(self.stats.faults, "fail_429")
            return self._error(dialect, rate_error(cfg.retry_after, date=cfg.retry_after_date),
                               headers), False
        return None

    async def _hang(self, request: web.Request, dialect: str,
                    headers: Optional[dict]) -> web.StreamResponse:
        """Say nothing for hang_seconds, then time out as a gateway would."""
        bump(self.stats.faults, "hang")
        bump(self.stats.by_status, "hang")
        if await self._pause(self.config.hang_seconds):
            return self._hang_up(request, None)
        return self._error(dialect, timeout_error(), headers)

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[bytes, bytes]:
        body = await request.read()
        return body, body

    async def _read_edit(self, request: web.Request) -> tuple[bytes, EditForm]:
        form = await read_edit(request, self.fetch)
        return form.key(), form

    def fetch(self, url: str) -> Optional[bytes]:
        """An http(s) image reference's bytes: only this simulator's own files are reachable."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port != self.port \
                or not parts.path.startswith(FILES_PATH):
            return None
        found = self.files.get(parts.path[len(FILES_PATH):])
        return None if found is None else found[0]

    def _accept(self, body: bytes, dialect: str = OPENAI) -> ImageRequest:
        """The valid generation in the body, or ApiError (invalid, moderated or over quota)."""
        doc = decode_json(body)
        if isinstance(doc, dict):
            self._count_params(doc)
        return self._admit(parse_request(doc, dialect=dialect))

    def _accept_acedata(self, body: bytes) -> ImageRequest:
        """_accept, with AceData's callback_url and trace_id taken out of the body first."""
        doc = decode_json(body)
        try:
            callback, trace = callback_fields(doc)
        except BadTaskQuery as exc:
            raise bad(str(exc), param="callback_url" if "callback" in str(exc) else "trace_id") from None
        if isinstance(doc, dict):
            self._count_params(doc, "callback_url" if callback else None, "trace_id" if trace else None)
        return dataclasses.replace(self._admit(parse_request(doc, dialect=ACEDATA)),
                                   callback_url=callback, trace_id=trace)

    def _accept_edit_acedata(self, form: EditForm) -> ImageRequest:
        """_accept_edit, with AceData's callback_url and trace_id taken out of the fields first."""
        try:
            callback, trace = callback_fields(form.fields)
        except BadTaskQuery as exc:
            raise bad(str(exc), param="callback_url" if "callback" in str(exc) else "trace_id") from None
        self._count_params({}, "callback_url" if callback else None, "trace_id" if trace else None)
        return dataclasses.replace(self._accept_edit(form, ACEDATA), callback_url=callback, trace_id=trace)

    def _accept_edit(self, form: EditForm, dialect: str = OPENAI) -> ImageRequest:
        """The valid edit in the form, or ApiError; a batch line's too."""
        self._count_params(form.fields, "images" if form.json else "image",
                           "mask" if form.mask is not None else None)
        self.stats.input_images += len(form.images)
        return self._admit(parse_edit(form, dialect))

    def _count_params(self, fields: dict, *more: Optional[str]) -> None:
        """Which parameters reached the server (stats.params), valid or not."""
        for name in (*fields, *more):
            if name is not None:
                bump(self.stats.params, str(name))

    def _admit(self, req: ImageRequest) -> ImageRequest:
        """A valid request past moderation and quota, or ApiError."""
        cfg = self.config
        bump(self.stats.by_model, req.model.name)
        check_policy(req.prompt, cfg.policy_word, cfg.acedata_moderation_403)
        check_quota(self.quota_used, req.n, cfg.quota_images)
        return req

    def _success(self, request: web.Request, dialect: str, req: ImageRequest,
                 fault: Optional[dict], headers: Optional[dict]) -> web.Response:
        body = self._success_body(request, dialect, req, fault)
        return self._respond(dialect, 200, body, headers=headers)

    def _success_body(self, request: web.Request, dialect: str, req: ImageRequest,
                      fault: Optional[dict]) -> bytes:
        """The 200 body for a valid request (quota and counters taken); a batch line's too."""
        self.quota_used += req.n
        self.stats.images += req.n
        fault = fault or {}
        data, blobs = self._items(request, req, fault)
        for name in post_faults_shown(fault, req.response_format):
            bump(self.stats.faults, name)
        return spoiled_body(success_body(dialect, req, data, blobs), fault)

    def _items(self, request: web.Request, req: ImageRequest, fault: dict) -> tuple[list, list[bytes]]:
        """The ``data`` entries and, for b64_json, the base64 texts their placeholders stand for."""
        revised = (edit_note(req) if req.inputs else
                   revised_prompt(req.prompt, req.style) if req.model.name == "dall-e-3" else None)
        host = request.host or f"127.0.0.1:{self.port}"
        data: list = []
        blobs: list[bytes] = []
        for i in range(req.n):
            enc = self.images.get(req.prompt, i, req)
            item: dict = {}
            if req.response_format == "url" and self.config.data_urls:
                blobs.append(spoiled_b64(enc, fault))
                item["url"] = f"data:image/{req.output_format};base64,{MARK}{i}"
            elif req.response_format == "url":
                item["url"] = f"http://{host}{FILES_PATH}{self._file_name(enc, req, fault)}"
            else:
                blobs.append(spoiled_b64(enc, fault))
                item["b64_json"] = f"{MARK}{i}"
            if revised is not None:
                item["revised_prompt"] = revised
            data.append(item)
        return data, blobs

    def _file_name(self, enc: Encoded, req: ImageRequest, fault: dict) -> str:
        if fault.get("expired_link"):
            return f"{uuid.uuid4().hex}.{req.output_format}"  # never stored, so the link 404s
        blob = NOT_IMAGE if fault.get("not_image") else enc.data
        return self.files.put(blob, req.output_format)

    async def download(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["name"])
        if found is None:
            self.stats.download_misses += 1
            return web.Response(status=404, text="404: this image link does not exist or has expired.\n")
        self.stats.downloads += 1
        return web.Response(body=found[0], content_type=found[1])

    async def get_stats(self, request: web.Request) -> web.Response:
        doc = self.stats.as_dict()
        doc["quota_used"] = self.quota_used
        doc["limits"] = self.limiter.limits()
        return web.json_response(doc)

    async def get_limit(self, request: web.Request) -> web.Response:
        return web.json_response({"limits": self.limiter.limits()})

    async def post_limit(self, request: web.Request) -> web.Response:
        """Change the key's limits now: a JSON object of "rpm", "ipm", "tpm" (per minute; null
        removes the limit), each optional.  Answers the limits as they now are."""
        try:
            doc = json.loads(await request.read() or b"{}")
            if not isinstance(doc, dict):
                raise ValueError('send a JSON object such as {"rpm": 300}')
            limits = _set_limits(self.limiter, doc)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "limits": limits})

    async def post_reset(self, request: web.Request) -> web.Response:
        everything = request.query.get("all", "").lower() in ("1", "true", "yes")
        self.reset(everything)
        return web.json_response({"ok": True, "all": everything})


def _set_limits(limiter: Limiter, doc: dict) -> dict:
    """Apply {"rpm": .., "ipm": .., "tpm": ..} (each optional; None removes the limit) after
    checking all of them; the limits as they now are.  ValueError for a wrong key or value."""
    unknown = sorted(set(doc) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"unknown limit(s) {', '.join(unknown)} (of {', '.join(LIMIT_KEYS)})")
    for key, value in doc.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ValueError(f"{key} must be a number > 0 or null, not {value!r}")
    for key, value in doc.items():
        limiter.set(LIMIT_KEYS[key], value)
    return limiter.limits()


# Reads a request's body: (what the fault dice hash, what accept takes), or ApiError.
_Read = Callable[[web.Request], Awaitable[tuple]]


def _images_asked(payload: Any) -> int:
    """The images a request asks for (its "n", 1 to 10; 1 when absent or not understood), read
    before the request is validated: the limits come first, as at a real gateway."""
    n: Any = None
    if isinstance(payload, (bytes, bytearray)):
        try:
            doc = json.loads(payload)
        except ValueError:
            return 1
        n = doc.get("n") if isinstance(doc, dict) else None
    elif isinstance(payload, EditForm):
        n = payload.fields.get("n")
    try:
        n = int(n) if n is not None and not isinstance(n, bool) else 1
    except (TypeError, ValueError):
        return 1
    return min(10, max(1, n))

_STATE = web.AppKey("batchgen_simulator_state", _SimState)


def make_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (run it with access logs off for speed)."""
    state = _SimState(config)
    middlewares = [litellm_middleware(GENERATION_PATHS, config.gateway_cost_per_image)] \
        if config.gateway == "litellm" else []
    app = web.Application(client_max_size=4 * 2**20, middlewares=middlewares)
    app[_STATE] = state
    app.router.add_post(ACEDATA_PATH, state.acedata)
    app.router.add_post(OPENAI_PATH, state.openai)
    app.router.add_post(ACEDATA_EDITS_PATH, state.acedata_edit)
    app.router.add_post(TASKS_PATH, state.tasks)
    app.router.add_post(OPENAI_EDITS_PATH, state.openai_edit)
    app.router.add_get(FILES_PATH + "{name}", state.download)
    app.router.add_get(STATS_PATH, state.get_stats)
    app.router.add_post(RESET_PATH, state.post_reset)
    app.router.add_get(LIMIT_PATH, state.get_limit)
    app.router.add_post(LIMIT_PATH, state.post_limit)
    state.batch_api.add_routes(app.router)
    return app


class Simulator:
    """A simulator listening in the caller's event loop (see start_simulator)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, host: str, port: int):
        self.app = app
        self.runner = runner
        self.host = host
        self.port = port
        self._state = app[_STATE]
        self._state.port = port
        self.config = self._state.config
        self.base_url = f"http://{host}:{port}"
        self.acedata_url = self.base_url + ACEDATA_PATH
        self.openai_base_url = self.base_url + "/v1"
        self.openai_url = self.base_url + OPENAI_PATH
        self._closed = False

    @property
    def stats(self) -> SimStats:
        return self._state.stats

    def reset_stats(self, everything: bool = False) -> None:
        self._state.reset(everything)

    def set_limits(self, **limits: Optional[float]) -> dict:
        """As POST /_sim/limit: ``set_limits(rpm=300)``, ``tpm=None`` removes that limit."""
        return _set_limits(self._state.limiter, limits)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._state.closing.set()  # wakes sleeping (latency/hang) handlers, which hang up
        await self.runner.cleanup()

    async def __aenter__(self) -> "Simulator":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_simulator(config: Optional[SimConfig] = None, host: str = "127.0.0.1",
                          port: int = 0) -> Simulator:
    """Start serving in the running event loop; port 0 picks a free one."""
    app = make_app(config or SimConfig())
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return Simulator(app, runner, host, bound)


T = TypeVar("T")


class SimulatorThread:
    """A simulator on its own event loop in a daemon thread, for synchronous code and tests.

        with SimulatorThread(SimConfig(fail_500=0.2)) as sim:
            ... sim.acedata_url, sim.openai_base_url, sim.stats ...

    Keyword arguments override fields of the config: ``SimulatorThread(drop=1.0)``.
    """

    def __init__(self, config: Optional[SimConfig] = None, host: str = "127.0.0.1", port: int = 0,
                 **overrides: Any):
        config = config or SimConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.host = host
        self._want_port = port
        self._sim: Optional[Simulator] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.port: Optional[int] = None
        self.base_url: Optional[str] = None
        self.acedata_url: Optional[str] = None
        self.openai_base_url: Optional[str] = None
        self.openai_url: Optional[str] = None

    def start(self) -> "SimulatorThread":
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="batchgen-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        sim = self._sim
        assert sim is not None      # _run set it before _ready, having no error
        self.port = sim.port
        self.base_url = sim.base_url
        self.acedata_url = sim.acedata_url
        self.openai_base_url = sim.openai_base_url
        self.openai_url = sim.openai_url
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            try:
                self._sim = sim = loop.run_until_complete(
                    start_simulator(self.config, self.host, self._want_port))
            except BaseException as exc:  # reported to start()
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(sim.close())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn() on the simulator's loop and return its result."""
        loop = self._loop
        if (loop is None or self._thread is None or not loop.is_running()
                or threading.current_thread() is self._thread):
            return fn()

        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

    @property
    def stats(self) -> SimStats:
        """A consistent copy of the counters (taken on the simulator's own thread)."""
        if self._sim is None:
            return SimStats()
        return self._call(self._sim.stats.copy)

    def reset_stats(self, everything: bool = False) -> None:
        sim = self._sim
        if sim is not None:
            self._call(lambda: sim.reset_stats(everything))

    def set_limits(self, **limits: Optional[float]) -> dict:
        """As POST /_sim/limit (on the simulator's thread): ``set_limits(rpm=300)``."""
        sim = self._sim
        if sim is None:
            raise RuntimeError("the simulator is not running")
        return self._call(lambda: sim.set_limits(**limits))

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            sim = self._sim
            assert sim is not None      # the loop runs on once start_simulator gave it
            asyncio.run_coroutine_threadsafe(sim.close(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> "SimulatorThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
