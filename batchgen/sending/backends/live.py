"""The live backend: one HTTP request per task, `concurrency` at a time, paced and retried.

A task's loop reads: pace, attempt, ask the policy. Three watches sit beside it: an endpoint
that gives the same wrong answer from the start (a wrong URL, nothing listening) stops the run
within a few requests instead of failing every task; so does a model refused alike on its first
requests (those refusals are held, undecided, until the model is accepted or refused); and a
server that asks to wait longer than --max-wait stops it instead of stalling for hours.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterator, Mapping, Optional

from batchgen.exceptions import ApiError, BadResponse, InvalidInput, NotJson, RequestError, Unreachable
from batchgen.planning.edits import IMAGE_KINDS, InputProblem, input_bytes, is_url, sniff
from batchgen.planning.settings import AUTO
from batchgen.rules.models import FORMAT_EXTENSIONS
from batchgen.sending.classify import (
    HELD,
    MODEL,
    MODEL_REFUSALS_TO_STOP,
    Decision,
    ModelRefusals,
    classify,
    is_rate_limited,
    model_advice,
    stop_advice,
)
from batchgen.sending.client import ImagesClient, redact
from batchgen.sending.limits import Attempt, RateFinder, RetryPolicy, Spacer, TaskRetries
from batchgen.util import gcpause
from batchgen.util.logs import log_field

log = logging.getLogger(__name__)

INLINE_SAVE_BYTES = 256 * 1024
FREEZE_EVERY = 1000
# Answers that mean the URL is wrong, when nothing has succeeded yet: stop after this many.
WRONG_ENDPOINT_STATUSES = frozenset({301, 302, 303, 307, 308, 404, 405})
WRONG_ENDPOINT_LIMIT = 4
WRONG_ENDPOINT_RETRY_S = 0.5
SAY_WAITS_FROM_S = 5.0
TICK_S = 0.25
FILES_PER_CONNECTION = 2      # its socket, and the image file being written
FILES_RESERVED = 64           # the journal, pyarrow, threads, the interpreter


def fit_concurrency(concurrency: int, auto: bool = False) -> int:
    """Raise the open-file limit to what the system allows, and keep concurrency within it:
    past it, answered (and paid) requests would fail to save their images. `auto`: the number
    is --max-concurrency's, lowered without a warning."""
    try:
        import resource
    except ImportError:        # not Unix
        return concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return concurrency
    fits = max(1, (soft - FILES_RESERVED) // FILES_PER_CONNECTION)
    if concurrency > fits:
        if auto:
            log.info("at most %d requests in flight: the open-file limit is %d", fits, soft)
        else:
            log.warning("--concurrency %d needs more open files than this process may have (%d): "
                        "using %d", concurrency, soft, fits)
        return fits
    return concurrency


async def save_images(saver, client: ImagesClient, token: str, task_id: str, generation, expected: int) -> list:
    """An answer's images saved (a link fetched, a data: URL decoded, as in every mode), as its
    journal record lists them; a RequestError when one cannot be had. Live and Batch API modes
    keep an answer alike."""
    count = max(expected, len(generation.images))
    images = []
    for index, image in enumerate(generation.images):
        data = image.data if image.data is not None else await client.download(image.url or "")
        if len(data) < INLINE_SAVE_BYTES:
            # Handing a small image to a thread costs more (GIL hand-offs) than saving it.
            saved = saver.save(task_id, index, count, data)
        else:
            saved = await asyncio.to_thread(saver.save, task_id, index, count, data)
        url = redact(image.public_url, token) if image.public_url else None
        images.append(saved.image_record(index, url, image.revised_prompt))
    return images


def pace_note(pace: dict) -> str:
    """The progress bar's words for the pace."""
    rate = pace.get("rate_per_s")
    return (f"{'unpaced' if rate is None else f'{rate:.1f}/s'}, {pace.get('in_flight', 0)} in flight")


class LiveBackend:
    def __init__(self, config, endpoint, images, recorder, budget, stop):
        self.config = config
        self.endpoint = endpoint
        self.images = images          # saves image bytes: check, hash, write (store.ImageStore)
        self.recorder = recorder
        self.budget = budget
        self.stop = stop
        self.policy = RetryPolicy(max_retries=config.max_retries, base_s=config.backoff_base)
        self.pacer = RateFinder(None)      # made again on entry, once the open-file limit is known
        self.spacer = Spacer(config.rpm) if config.rpm else None
        self.max_wait = config.max_wait
        self.requests_sent = 0
        self.finished = 0
        self.in_flight = 0
        self.succeeded = 0
        self.wrong_endpoint = 0
        self.model_refusals = ModelRefusals()
        self.concurrency = 1
        self._client: Optional[ImagesClient] = None
        self._workers: list = []
        self._alive = 0                # workers running
        self._queue: Optional[Iterator] = None    # the tasks not yet taken; None once all are
        self._said_wait_until = 0.0
        self._bills: dict = {}        # task id -> USD of each billable answer it has had
        # Read once: a run that logs nothing spends nothing on its per-attempt lines.
        self._log_attempts = log.isEnabledFor(logging.INFO)

    async def __aenter__(self):
        auto = self.config.concurrency == AUTO
        self.concurrency = fit_concurrency(self.config.max_concurrency if auto else self.config.concurrency, auto)
        self.pacer = RateFinder(None if auto else self.concurrency, max_concurrency=self.concurrency)
        self._client = await ImagesClient(self.endpoint, self.concurrency, self.config.timeout).__aenter__()
        return self

    async def __aexit__(self, *exc):
        if self._client is not None:
            await self._client.__aexit__(*exc)

    @property
    def client(self) -> ImagesClient:
        """The HTTP client, opened by `async with` the backend."""
        if self._client is None:
            raise RuntimeError("the backend is used outside `async with`")
        return self._client

    async def send(self, tasks) -> None:
        """As many workers as the pacer's window (it grows and shrinks as the run learns the
        server's rate and latency), each sending one task at a time."""
        self._queue = iter(tasks)
        self._staff()
        ticker = asyncio.ensure_future(self._tick())
        try:
            while True:
                running = [w for w in self._workers if not w.done()]
                if not running:
                    break
                await asyncio.wait(running)
        finally:
            ticker.cancel()
            self._decide_held()
        for worker in self._workers:
            failure = None if worker.cancelled() else worker.exception()
            if isinstance(failure, Exception):
                # A bug, not a task outcome: say so loudly, but still write what was done.
                log.error("a worker failed", exc_info=failure)
                self.stop("internal_error", f"internal error ({failure!r}); what finished is saved; "
                                            "please report it, then run the same command again")

    def _staff(self) -> None:
        """Start workers up to the pacer's window, while there are tasks to send."""
        while self._queue is not None and not self.stop and self._alive < self._room():
            self._alive += 1
            self._workers.append(asyncio.ensure_future(self._worker(self._queue)))

    async def _tick(self) -> None:
        """While every worker waits for a slow answer, time still settles what the pacer learns
        (the window may grow) and says how the run goes."""
        while True:
            await asyncio.sleep(TICK_S)
            self.pacer.tick()
            self._staff()
            pace = self.pacer.report()
            if pace:
                self.recorder.pace(pace)
                self.recorder.note(pace_note(pace))
                if self._log_attempts:
                    log.info("pace %s", " ".join(f"{k}={'-' if v is None else v}" for k, v in pace.items()))

    def pace(self) -> Optional[dict]:
        return self.pacer.snapshot()

    # -- what async mode (backends/tasks.py, a subclass) does otherwise: a task there holds its
    # worker until the server finishes it, long after its submission's place is given back --

    def _room(self) -> int:
        """How many tasks may be under way at once (workers): the pacer's window."""
        return self.pacer.window

    def _take_budget(self, task) -> bool:
        """The task's first answer counted against --max-cost as a worker takes it."""
        return self.budget.take(task.params, self.stop)

    def _slot_now(self, task) -> bool:
        """The usual case of _take_slot, without a coroutine: True if the slot was free now
        (and is taken); False: await _take_slot."""
        return self.pacer.try_acquire()

    async def _take_slot(self, task) -> None:
        await self.pacer.acquire()

    def _release(self, attempt: Optional[Attempt]) -> None:
        """The attempt's place in flight is given back to the pacer."""
        self.pacer.release(attempt)

    @classmethod
    async def cancel_remote(cls, endpoint, timeout: float, chunks: Mapping[str, dict]) -> list:
        """A live request leaves nothing running on the server once its connection is gone."""
        return []

    def cancel_in_flight(self) -> None:
        for w in self._workers:
            w.cancel()

    def busy(self) -> bool:
        """Whether a request is on the wire (a stop then waits for it; otherwise it need not)."""
        return self.in_flight > 0

    async def _worker(self, queue) -> None:
        try:
            while self._alive <= self._room():
                task = next(queue, None)
                if task is None:
                    self._queue = None      # every task is taken: no more workers
                    return
                if self.stop or not self._take_budget(task):
                    return
                await self._run_task(task)
                self._staff()
        finally:
            self._alive -= 1

    async def _run_task(self, task) -> None:
        body = self.client.encode_body(task.prompt, task.params) if task.edit is None else None
        retries: Optional[TaskRetries] = None     # made at the first error: most tasks have none
        attempts = 0
        started = time.monotonic()
        charged = 1           # answers the budget has counted for this task (the worker took one)
        pacer = self.pacer
        try:
            while True:
                if not self._slot_now(task):
                    await self._take_slot(task)     # a place in flight, and a slot at the pace
                attempt: Optional[Attempt] = None
                pause = own_wait = 0.0
                record: Optional[dict] = None
                error: Optional[RequestError] = None
                try:
                    if self.spacer:
                        await self.spacer.acquire(task.images_expected)
                    if self.stop:
                        return self._not_done(task, attempts)
                    if len(self._bills.get(task.task_id, ())) >= charged:
                        # The last answer was paid for but unusable: asking again is paid again.
                        if not self.budget.take(task.params, self.stop):
                            return self._not_done(task, attempts)
                        charged += 1
                    attempts += 1
                    self.requests_sent += 1
                    attempt = pacer.sent()
                    sent_at = attempt.sent_at
                    # One attempt: its record, or the RequestError it amounts to.
                    self.in_flight += 1
                    try:
                        record = await self._request(task, body, attempt)
                    except RequestError as e:
                        error = e
                    except OSError:
                        raise           # the disk: see _disk_failed
                    except Exception as e:  # noqa: BLE001 - no server value may crash a worker
                        log.debug("unexpected answer", exc_info=True)
                        error = BadResponse(f"the answer could not be used ({type(e).__name__}: "
                                            f"{redact(str(e), self.endpoint.token)[:200]})")
                    finally:
                        self.in_flight -= 1
                        if not self.in_flight and self.stop:
                            # Nothing left on the wire: those still waiting (a cool-down, a
                            # backoff) need not be waited for.
                            asyncio.get_running_loop().call_soon(self.cancel_in_flight)
                    if error is not None:
                        if isinstance(error, Unreachable):
                            self.requests_sent -= 1     # no connection: nothing left this machine
                        if is_rate_limited(error):
                            pause, own_wait = self._rate_limited(error, attempt, task.images_expected)
                finally:
                    self._release(attempt)
                if error is None:
                    assert record is not None
                    record["attempts"] = attempts
                    record["latency_s"] = round(time.monotonic() - sent_at, 4)
                    if self._log_attempts:
                        self._log_attempt(task, attempts, sent_at, record["http_status"], "ok", "done")
                    return self._finish(task, record)
                if retries is None:
                    retries = self.policy.for_task()
                wait = self._ask_policy(error, retries, pause, own_wait, task.params.get("model"))
                if wait is None:
                    then = self._refused(task, error, self._error_record(task, error, attempts, started), attempts)
                else:
                    then = self._next_step(wait, is_rate_limited(error))
                if self._log_attempts:
                    self._log_attempt(task, attempts, sent_at, error.http_status, error.code, then)
                if wait is None:
                    return
                if self.stop:
                    return self._not_done(task, attempts)
                if wait:
                    await self.stop.sleep(wait)
        except OSError as e:
            self._disk_failed(task, attempts, e)
        except asyncio.CancelledError:
            self._not_done(task, attempts)
            raise

    def _rate_limited(self, error: RequestError, attempt: Attempt, images: int = 1) -> tuple[float, float]:
        """A 429: what it teaches the pacer (before the attempt is released), its headers'
        limits too; returns (the pause it holds every worker for, the wait of this task alone).
        A wait past --max-wait holds nobody: the run stops."""
        too_long = error.retry_after is not None and error.retry_after > self.max_wait
        pause, own = self.pacer.on_rate_limited(attempt, None if too_long else error.retry_after,
                                                headers=error.ratelimit, images=images)
        if not too_long:
            self._say_wait(error)
        if (pause or own) and self._log_attempts:
            self._log_pause(error, pause or own)
        return pause, own

    def _ask_policy(self, error: RequestError, retries: TaskRetries, pause: float = 0.0,
                    own_wait: float = 0.0, model: Optional[str] = None) -> Optional[float]:
        """Seconds to wait before trying again, or None: this error is the task's outcome.
        An error that means nothing can succeed (auth, quota) stops the run."""
        decision = classify(error)
        if decision is Decision.STOP:
            self.stop(error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                  f"{stop_advice(error, self.endpoint.provider, model, self.config.models)}")
            return 0.0      # the caller sees the stop and leaves the task not done
        if self._looks_like_a_wrong_endpoint(error):
            return WRONG_ENDPOINT_RETRY_S
        if decision is Decision.FAIL:
            return None
        if error.retry_after is not None and error.retry_after > self.max_wait:
            self.stop("server_wait_too_long",
                      f"the server asked to wait {error.retry_after:,.0f} s (HTTP {error.http_status} "
                      f"{error.code}), more than --max-wait {self.max_wait:g} s; run the same command "
                      f"again later, or allow a longer wait with --max-wait")
            return 0.0
        rate_limited = is_rate_limited(error)
        wait = retries.next_wait(rate_limited, error.retry_after, decision is Decision.RETRY_ONCE)
        if wait is not None and rate_limited:
            wait = own_wait
        if wait is not None:
            self.recorder.retry(rate_limited, pause)
        return wait

    def _refused(self, task, error: RequestError, record: dict, attempts: int) -> str:
        """A task's final error: recorded, unless it may be its model that the server refuses
        (ModelRefusals): then held until the model is decided. Returns the log's next step."""
        model = task.params.get("model")
        verdict = self.model_refusals.refused(model, error, (task, record, attempts))
        if verdict == HELD:
            return "held"
        if verdict == MODEL:
            if not self.stop:
                self.stop("model_refused", f"the first {MODEL_REFUSALS_TO_STOP} requests of model {model!r} "
                                           f"were all refused alike ({error.code}, HTTP {error.http_status}: "
                                           f"{error.message}): the server refuses the model, or a setting all "
                                           f"its requests share; nothing was marked failed. If it is the model: "
                                           f"{model_advice(self.endpoint.provider, model, self.config.models)}")
            for held, _, held_attempts in self.model_refusals.released(model):
                self._not_done(held, held_attempts)
            self._not_done(task, attempts)
            return "stop"
        self._finish(task, record)
        return "recorded"

    def _decide_held(self) -> None:
        """The run ends with refusals still held (a model with too few tasks to tell, or a run
        stopped for another reason): refusals when the run went to its end, else left to send."""
        for task, record, attempts in self.model_refusals.undecided():
            if self.stop:
                self._not_done(task, attempts)
            else:
                self._finish(task, record)

    # -- the log's lines (README, "Logs"); called only when they are enabled --

    def _next_step(self, wait: float, rate_limited: bool = False) -> str:
        """After an error that is not the task's outcome (that one's is _refused's)."""
        if self.stop:
            return "stop"
        # A 429's wait is the pacer's (its own line says how long): "retry_after_pause".
        return "retry_after_pause" if rate_limited or not wait else f"retry_in_s={wait:.3f}"

    def _log_attempt(self, task, attempt: int, sent_at: float, http_status, result: str, then: str) -> None:
        log.info("attempt task=%s try=%d http=%s result=%s latency_s=%.3f next=%s", task.task_id,
                 attempt, http_status or "-", log_field(result), time.monotonic() - sent_at, then)

    def _log_pause(self, error: RequestError, pause: float) -> None:
        """A 429 began or lengthened the pause every worker waits out: how long, and from what."""
        stated = error.retry_after
        log.info("rate_limit pause_s=%.3f retry_after_s=%s coarse=%s http=%s code=%s", pause,
                 "-" if stated is None else f"{stated:g}",
                 "-" if stated is None else ("yes" if getattr(stated, "coarse", False) else "no"),
                 error.http_status, log_field(error.code))

    def _looks_like_a_wrong_endpoint(self, error: RequestError) -> bool:
        """Before any success, the answers a wrong URL gives (a redirect, 404/405, an HTML page
        or other non-JSON in a 200, nothing listening) are counted, not recorded as each task's
        failure; a few in a row stop the run with the URL and what it answered."""
        if self.succeeded:
            return False
        wrong = (isinstance(error, Unreachable)
                 or (isinstance(error, ApiError) and error.http_status in WRONG_ENDPOINT_STATUSES)
                 or isinstance(error, NotJson))
        if not wrong:
            return False
        self.wrong_endpoint += 1
        if self.wrong_endpoint >= WRONG_ENDPOINT_LIMIT:
            answered = (f"HTTP {error.http_status}: {error.message}" if error.http_status
                        else error.message)
            self.stop("endpoint_error",
                      f"{self.endpoint.public_url} gave the same wrong answer to the first "
                      f"{self.wrong_endpoint} requests ({answered}); nothing was marked failed. Check "
                      f"--base-url and --provider, then run the same command again")
        return True

    def _say_wait(self, error: RequestError) -> None:
        """A long pause is said once, so a stalled bar is explained."""
        wait = error.retry_after
        now = time.monotonic()
        if wait is not None and wait >= SAY_WAITS_FROM_S and now >= self._said_wait_until:
            self._said_wait_until = now + wait
            log.warning("the server asks to wait %.0f s (HTTP %s %s); waiting", wait,
                        error.http_status, error.code)

    async def _request(self, task, body: Optional[bytes], attempt: Attempt) -> dict:
        n = task.images_expected
        if body is None:
            generation = await self.client.edit(task.prompt, task.params, await self._edit_files(task.edit), n)
        else:
            generation = await self.client.generate(body, n)
        usage = generation.usage
        self.pacer.on_success(attempt, generation.ratelimit, n, usage.get("total_tokens") if usage else None)
        return await self._keep(task, generation)

    async def _keep(self, task, generation) -> dict:
        """A billable answer: its cost counted, its images saved; the task's ok record."""
        task_id = task.task_id
        cost = self.budget.answered(task.params, generation.usage)
        bills = self._bills.get(task_id)
        if bills is None:
            bills = self._bills[task_id] = [cost]
        else:
            bills.append(cost)
        expected = task.images_expected
        images = await save_images(self.images, self.client, self.endpoint.token, task_id, generation, expected)
        self.succeeded += 1
        for held, held_record, _ in self.model_refusals.accepted(task.params.get("model")):
            self._finish(held, held_record)       # the model is served: those were the tasks' own
        record = {"task_id": task_id, "status": "ok", "images": images,
                  "created": generation.created, "trace_id": generation.trace_id,
                  "http_status": generation.http_status, "usage": generation.usage,
                  "finished_at": round(time.time(), 3), "prompt": task.prompt, "params": task.params,
                  # what its answers cost; None: one had no price
                  "cost_usd": None if None in bills else sum(bills)}
        if generation.gateway_cost_usd is not None:
            record["gateway_cost_usd"] = generation.gateway_cost_usd
        if task.edit is not None:
            record["inputs"] = task.edit.as_record()
        if len(images) < expected:
            # Paid for, so not sent again; the results list the images that never came.
            record["images_expected"] = expected
        return record

    def _error_record(self, task, error: RequestError, attempts: int, started: float) -> dict:
        record = {"task_id": task.task_id, "status": "error", "error_code": error.code,
                  "error_message": error.message, "http_status": error.http_status,
                  "trace_id": error.trace_id, "attempts": attempts,
                  "latency_s": round(time.monotonic() - started, 4), "finished_at": round(time.time(), 3),
                  "prompt": task.prompt, "params": task.params}
        if self._bills.get(task.task_id):
            # answers paid for whose images could not be used (None: at a price not known)
            record["cost_usd"] = self._billed(task)
        if task.edit is not None:
            record["inputs"] = task.edit.as_record()
        return record

    def _billed(self, task) -> Optional[float]:
        """What the task's answers cost; None when nothing was billed, or one had no price."""
        bills = self._bills.get(task.task_id)
        return None if not bills or None in bills else sum(bills)

    async def _edit_files(self, inputs) -> list:
        """The edit's images, mask and markup as (field, file name, bytes, content type): files
        read in a thread, URLs downloaded (a failure is download_failed)."""
        parts = []
        for index, (field, ref, shown, digest) in enumerate(inputs.named()):
            if is_url(ref):
                data = await self.client.download(ref)
            else:
                try:
                    data = await asyncio.to_thread(input_bytes, ref, digest)
                except InputProblem as e:   # moved, removed or changed since planning
                    raise InvalidInput(f"{field} {shown!r} {e}") from None
            kind = sniff(data)
            if kind is None:
                raise InvalidInput(f"{field} {shown!r} is not PNG, JPEG or WebP")
            parts.append((field, f"{field}-{index}.{FORMAT_EXTENSIONS[kind]}", data, IMAGE_KINDS[kind]))
        return parts

    def _not_done(self, task, attempts: int) -> None:
        self._bills.pop(task.task_id, None)
        if attempts:
            self.recorder.not_done(task.task_id, attempts)

    def _finish(self, task, record: dict) -> None:
        self._bills.pop(task.task_id, None)
        self.recorder.finished(record)
        self.finished += 1
        if self.finished % FREEZE_EVERY == 0:
            # Finished records stay until the end: spare every later collection from rescanning
            # them (a full collection grows with the records kept; see bench/README.md).
            gcpause.freeze_survivors()

    def _disk_failed(self, task, attempts: int, error: OSError) -> None:
        """The disk, not the API: full, read-only, gone. Nothing later can be saved either."""
        try:
            self._not_done(task, attempts)
        except OSError:
            pass
        self.stop("write_failed", f"cannot write under {self.config.out}: {error.strerror or error}; "
                                  "free some space or fix the folder, then run the same command again")
