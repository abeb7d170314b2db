"""AceData's callback mode (`--mode async`): each attempt is submitted with a `callback_url` and
a `trace_id` of ours, the server answers a task id at once, and the outcomes are collected by
polling the Tasks API (`retrieve_batch` by ids, many a call, free). A generation slower than
the gateway's time limit is then no longer a 504 paid again on every retry.

Paid once through any crash: an attempt's trace id is written to the journal before it is sent
(a chunk of one task, keyed by the trace id: `planned`), the server's task id once it answers
(`submitted`), `collected` once it is settled (its outcome kept, or given up for another). A
rerun adopts what the journal holds open: a submitted attempt is polled; an attempt planned
without a task id is looked up by its trace id, adopted when the server has it, and sent again
only when it never arrived.

The rest is the live backend's (subclassed, not copied): the pacing of submissions by the
RateFinder, retries and their budgets (a retry is a new attempt, with a new trace id), the
budget, the images kept and the records written. What differs: a worker holds a task from its
submission to its outcome, so the workers are the tasks under way (`--concurrency N`, or
`--max-concurrency` with auto), while the submissions on the wire follow the pacer's window.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Iterable, Iterator, Mapping, Optional

from batchgen.exceptions import BadResponse, RequestError, RequestTimeout
from batchgen.planning.settings import AUTO
from batchgen.rules.providers import QUOTA_CODES, public_url
from batchgen.sending.backends import TASKS_IN_PROGRESS
from batchgen.sending.backends.live import TICK_S, LiveBackend, fit_concurrency
from batchgen.sending.classify import Decision, classify, stop_advice
from batchgen.sending.client import TASKS_PATH, ImagesClient, RemoteTask, with_task_fields
from batchgen.sending.limits import Attempt, RateFinder

log = logging.getLogger(__name__)

# AceData requires a callback URL to answer with a task id; without --callback-url this address
# is given, which receives nothing (example.com is reserved for documentation, RFC 2606).
DEFAULT_CALLBACK_URL = "https://example.com/batchgen-callback"
CONNECTIONS = 32              # submissions and polls on the wire at once, at most
SUBMITTING_MAX = 64           # the pacer's window for submissions never passes this
POLL_FIRST_S = 0.25
POLL_MAX_S = 5.0              # a look at the tasks at least this often (lookups are free)
POLL_FAILURES_LIMIT = 10      # lookups failing in a row (each later than the last) stop the run
MISSING_POLLS = 3             # a submitted task the server does not know this many times is lost
TASK_MAX_WAIT_S = 3600.0      # a task unfinished this long is a timeout (and is tried again)
STOP_CHECK_S = 0.05
# Stops that end the submitting only: what was submitted (and paid) is still collected in this
# run. Any other stop (Ctrl-C, the disk, the key) leaves it to the next run.
STOPS_THAT_STILL_COLLECT = frozenset({"budget_exceeded", "server_wait_too_long"}) | QUOTA_CODES
UNSAVED_MAX = 25              # finished tasks (their images in memory) handed over and not yet saved
REPORT_EVERY_S = 2.0          # job.json's note of the run's progress (for `status`), at most this often


def trace_id_for(task_id: str, run_mark: str, attempt: int) -> str:
    """The trace id of a task's attempt: the task id, the run (so two folders running the same
    job never adopt each other's tasks) and the attempt's number in it."""
    return f"{task_id}-{run_mark}-{attempt}"


class AsyncBackend(LiveBackend):
    def __init__(self, config, endpoint, images, recorder, budget, stop):
        super().__init__(config, endpoint, images, recorder, budget, stop)
        self.callback_url = config.callback_url or DEFAULT_CALLBACK_URL
        self.poll_max = min(POLL_MAX_S, float(config.poll_interval))
        self.room = 1
        self.submitted = self.finished_remotely = self.collected = self.adopted = 0
        self._run_mark = secrets.token_hex(4)
        self._tries: dict = {}        # task id -> attempts sent by this run (numbers its trace ids)
        self._charged: set = set()    # task ids whose first answer the budget has counted
        self._unsent: set = set()     # task ids taken by a worker, not yet submitted (--no-wait)
        self._adopt: dict = {}        # task id -> (trace id, remote task id) to collect, not send
        self._waiting: dict = {}      # remote task id -> the future of its RemoteTask
        self._misses: dict = {}       # remote task id -> polls in a row that did not find it
        self._early: set = set()      # id() of attempts whose pacer place was given back at submission
        self._submitting = 0          # submissions given a place by the pacer, not yet answered
        self._on_wire = 0             # submissions (and lookups before a retry) on the wire
        self._poll_failures = 0       # lookups of the waiting tasks that failed in a row
        self._lookups_dead = False    # they failed for good: nothing more can be collected
        self._room_freed = asyncio.Event()
        self._unsaved = 0             # finished tasks handed over whose images are not saved yet
        self._saved = asyncio.Event()
        self._said_stop = False
        self._next_report = 0.0

    async def __aenter__(self):
        auto = self.config.concurrency == AUTO
        # A task waiting on the server holds no connection and no file: the open-file limit
        # bounds only the connections.
        self.room = self.config.max_concurrency if auto else int(self.config.concurrency)
        connections = fit_concurrency(min(self.room, CONNECTIONS), True)
        self.pacer = RateFinder(None, max_concurrency=min(SUBMITTING_MAX, self.room))
        self._client = await ImagesClient(self.endpoint, connections, self.config.timeout).__aenter__()
        return self

    def _room(self) -> int:
        return self.room

    def busy(self) -> bool:
        """A submission on the wire (a stop waits for it, so its task id reaches the journal)."""
        return self._on_wire > 0

    def pace(self) -> Optional[dict]:
        return {**self.pacer.snapshot(), **self._counts()}

    def _counts(self) -> dict:
        return {"submitted": self.submitted, "finished_remotely": self.finished_remotely,
                "collected": self.collected, "waiting": len(self._waiting), "adopted": self.adopted}

    @classmethod
    async def cancel_remote(cls, endpoint, timeout: float, chunks: Mapping[str, dict]) -> list:
        """AceData's tasks cannot be cancelled: the next run collects them."""
        return []

    # -- the run --

    async def send(self, tasks: Iterable) -> None:
        await self._adopt_open_attempts()
        poller = asyncio.ensure_future(self._poll())
        try:
            await super().send(self._with_adopted_apart(iter(tasks)))
        finally:
            poller.cancel()

    def cancel_in_flight(self) -> None:
        if self.stop:
            self._say_left_running()
        super().cancel_in_flight()

    async def _tick(self) -> None:
        """The pacer settles with time, its window may grow: more submissions may go."""
        while True:
            await asyncio.sleep(TICK_S)
            self.pacer.tick()
            self._staff()
            self._room_freed.set()

    def _with_adopted_apart(self, tasks: Iterator) -> Iterator:
        """The tasks to send; an adopted one is collected beside them (not sent, not paced)."""
        for task in tasks:
            adopted = self._adopt.pop(task.task_id, None)
            if adopted is None:
                yield task
            else:
                self._workers.append(asyncio.ensure_future(self._collect_adopted(task, *adopted)))

    async def _collect_adopted(self, task, trace_id: str, remote_id: str) -> None:
        """An attempt an earlier run submitted: its outcome, or (when it failed) the task sent anew."""
        estimate = self.budget.estimate(task.params)
        self.budget.spent_usd += estimate         # already paid for: never refused by the budget
        started = time.monotonic()
        try:
            record = await self._outcome(task, trace_id, remote_id)
            record["attempts"] = 1
            record["latency_s"] = round(time.monotonic() - started, 4)
            return self._finish(task, record)
        except OSError as e:
            return self._disk_failed(task, 0, e)
        except asyncio.CancelledError:
            self._not_done(task, 0)
            raise
        except RequestError as error:       # failed or lost on the server, or its images could not be had
            self._give_up(trace_id, error)
            self.budget.spent_usd -= estimate
            if classify(error) is Decision.FAIL:
                return self._finish(task, self._error_record(task, error, 1, started))
            log.info("adopted task %s: %s; sending it again", remote_id, error.message)
        if not self.stop:
            await self._run_task(task)

    def _take_budget(self, task) -> bool:
        self._unsent.add(task.task_id)
        return True         # when its submission's turn comes (_take_slot), not while it queues

    def _slot_now(self, task) -> bool:
        return False        # a submission's place is _take_slot's to give: the window, the budget

    async def _take_slot(self, task) -> None:
        """A submission's place: within the pacer's window, then at its pace; the task's first
        answer is counted against --max-cost then (a refusal stops the run, and the caller sees it)."""
        while self._submitting >= self.pacer.window:
            self._room_freed.clear()
            await self._room_freed.wait()
        self._submitting += 1
        try:
            await self.pacer.acquire()
        except BaseException:
            self._submission_over()
            raise
        if task.task_id not in self._charged and not self.stop and self.budget.take(task.params, self.stop):
            self._charged.add(task.task_id)

    def _submission_over(self) -> None:
        self._submitting -= 1
        self._room_freed.set()

    def _release(self, attempt: Optional[Attempt]) -> None:
        if attempt is not None and id(attempt) in self._early:
            self._early.discard(id(attempt))
            return
        self._submission_over()
        self.pacer.release(attempt)

    def _release_early(self, attempt: Attempt) -> None:
        """Submitted: the place among submissions is free; the task waits without one."""
        self._early.add(id(attempt))
        self._submission_over()
        self.pacer.release(attempt)

    async def _request(self, task, body: Optional[bytes], attempt: Attempt) -> dict:
        # The edit's files first: an input that cannot be read fails before anything is journaled.
        files = await self._edit_files(task.edit) if body is None else None
        tries = self._tries[task.task_id] = self._tries.get(task.task_id, 0) + 1
        trace_id = trace_id_for(task.task_id, self._run_mark, tries)
        # Before the request leaves: a crash from here on is resolved by the trace id.
        self.recorder.chunk_event({"chunk": trace_id, "event": "planned", "task_ids": [task.task_id],
                                   "trace_id": trace_id})
        self._on_wire += 1
        try:
            if body is not None:
                submitted = await self.client.submit_task(with_task_fields(body, self.callback_url, trace_id))
            else:
                submitted = await self.client.submit_edit_task(task.prompt, task.params, files or [],
                                                               self.callback_url, trace_id)
            remote_id, ratelimit = submitted.task_id, submitted.ratelimit
        except RequestError as error:
            # An answer lost on the way (a timeout, a dropped connection, a gateway's 5xx) may
            # still have made the task: ask before sending another, which would be paid again.
            found = await self._look_up_after(error, trace_id)
            if found is None:
                self._give_up(trace_id, error)
                raise
            remote_id, ratelimit = found, None
        finally:
            self._on_wire -= 1
        self.recorder.chunk_event({"chunk": trace_id, "event": "submitted", "remote_task_id": remote_id})
        self._unsent.discard(task.task_id)
        self.submitted += 1
        # A submission answers with no usage: the tokens limit is not paced by here.
        self.pacer.on_success(attempt, ratelimit, task.images_expected)
        self._release_early(attempt)
        try:
            return await self._outcome(task, trace_id, remote_id)
        except RequestError as error:
            self._give_up(trace_id, error)      # the next attempt, if any, is a new one
            raise

    async def _outcome(self, task, trace_id: str, remote_id: str) -> dict:
        """The task's ok record once the server has finished it, or the RequestError it failed with."""
        remote = await self._wait_for(remote_id)
        try:
            if remote.error is not None:
                raise remote.error
            return await self._collected(task, remote, trace_id, remote_id)
        finally:
            self._saved_one()

    async def _look_up_after(self, error: RequestError, trace_id: str) -> Optional[str]:
        """The task id of an attempt whose answer was lost, if the server made the task."""
        if error.http_status is not None and error.http_status < 500:
            return None           # refused: nothing was made
        try:
            async for page in self.client.find_tasks("trace_ids", [trace_id]):
                for remote in page:
                    if remote.trace_id == trace_id:
                        return remote.id
        except RequestError:
            pass                  # as good as unknown: the next run's lookup settles it
        return None

    async def _collected(self, task, remote: RemoteTask, trace_id: str, remote_id: str) -> dict:
        assert remote.generation is not None
        record = await self._keep(task, remote.generation)
        record["trace_id"], record["remote_task_id"] = trace_id, remote_id
        self.collected += 1
        return record

    def _give_up(self, trace_id: str, error: RequestError) -> None:
        """An attempt that gave no images: never adopted by a later run."""
        self.recorder.chunk_event({"chunk": trace_id, "event": "collected", "status": "error",
                                   "error_code": error.code})

    def _refused(self, task, error: RequestError, record: dict, attempts: int) -> str:
        # Refused, so never to be submitted, even while held undecided: --no-wait need not wait for it.
        self._unsent.discard(task.task_id)
        return super()._refused(task, error, record, attempts)

    def _finish(self, task, record: dict) -> None:
        self._unsent.discard(task.task_id)
        self._tries.pop(task.task_id, None)
        self._charged.discard(task.task_id)
        super()._finish(task, record)
        if record.get("remote_task_id"):
            # After the outcome's line: a crash between the two leaves an attempt whose task is done.
            self.recorder.chunk_event({"chunk": record["trace_id"], "event": "collected", "status": "ok"})

    def _not_done(self, task, attempts: int) -> None:
        self._unsent.discard(task.task_id)
        self._tries.pop(task.task_id, None)
        self._charged.discard(task.task_id)
        super()._not_done(task, attempts)

    # -- the Tasks API: adoption and polling --

    async def _adopt_open_attempts(self) -> None:
        """The journal's attempts without an outcome: those submitted are polled, those planned
        are looked up by trace id (adopted when the server has them, else sent again)."""
        unknown: dict = {}        # trace id -> task id
        for trace_id, chunk in list(self.recorder.chunks().items()):
            if "trace_id" not in chunk or "collected" in chunk.get("events", ()):
                continue
            task_id = next(iter(chunk.get("task_ids") or ()), None)
            if task_id is None or self.recorder.is_final(task_id):
                continue
            if chunk.get("remote_task_id"):
                self._adopt[task_id] = (trace_id, chunk["remote_task_id"])
                unknown.pop(trace_id, None)
            else:
                unknown[trace_id] = task_id
        if unknown:
            try:
                async for page in self.client.find_tasks("trace_ids", list(unknown)):
                    for remote in page:
                        task_id = unknown.pop(remote.trace_id or "", None)
                        if task_id is not None:
                            self.recorder.chunk_event({"chunk": remote.trace_id, "event": "submitted",
                                                       "remote_task_id": remote.id})
                            self._adopt[task_id] = (remote.trace_id, remote.id)
            except RequestError as error:
                self.stop(error.code, f"the Tasks API could not be asked which tasks an earlier run "
                                      f"sent ({error.message}); run the same command again")
                return
            for trace_id in unknown:
                # Never reached the server: sent again (under a new trace id).
                self.recorder.chunk_event({"chunk": trace_id, "event": "collected", "status": "never_arrived"})
        self.adopted = len(self._adopt)
        if self._adopt:
            log.info("adopting %d task(s) an earlier run submitted: collected, not sent again", self.adopted)

    async def _wait_for(self, remote_id: str) -> RemoteTask:
        """The task once finished. The caller then saves its images and calls _saved_one."""
        future = self._waiting.get(remote_id)
        if future is None or future.done():
            future = self._waiting[remote_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(future), TASK_MAX_WAIT_S)
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._saved_one()       # finished meanwhile, but nobody will save it now
            if isinstance(exc, asyncio.TimeoutError):
                raise RequestTimeout(f"task {remote_id} did not finish within {TASK_MAX_WAIT_S:.0f} s") from None
            raise
        finally:
            self._waiting.pop(remote_id, None)
            self._misses.pop(remote_id, None)

    def _saved_one(self) -> None:
        self._unsaved -= 1
        self._saved.set()

    async def _poll(self) -> None:
        """Look the waiting tasks up, a page of ids a call: sooner while they finish, less
        often (up to POLL_MAX_S) while none does. With --no-wait, once every task is submitted:
        one look (what finished is collected), then the run stops, leaving the rest running."""
        interval = POLL_FIRST_S
        looked_once_all_sent = False
        while True:
            leaving = self.config.no_wait and self._queue is None and not self._unsent and bool(self._waiting)
            if leaving and looked_once_all_sent and not self.stop:
                self.stop(TASKS_IN_PROGRESS,
                          f"{len(self._waiting)} task(s) submitted and still running on the server (--no-wait); "
                          "run the same command again later to collect them")
            if self.stop and (self._lookups_dead or not self._waiting
                              or self.stop.code not in STOPS_THAT_STILL_COLLECT):
                if not self._on_wire and not self._unsaved:
                    self.cancel_in_flight()     # nothing on the wire or being saved: the waits are cut short
                    return
                await asyncio.sleep(STOP_CHECK_S)   # a submission's task id, or an image, is still to come
                continue
            if leaving:
                pass                            # the one look, at once
            elif self.stop:
                await asyncio.sleep(interval)   # stop.sleep would return at once
            else:
                await self.stop.sleep(interval)
            if not self._waiting:
                continue
            finished = await self._poll_once()
            looked_once_all_sent = looked_once_all_sent or leaving
            interval = POLL_FIRST_S if finished else min(interval * 1.5, self.poll_max)
            if time.monotonic() >= self._next_report:
                self._next_report = time.monotonic() + REPORT_EVERY_S
                self.recorder.pace({**self.pacer.snapshot(), **self._counts()})
            self.recorder.note(f"{self.submitted} submitted, {len(self._waiting)} on the server, "
                               f"{self.collected} collected")

    async def _poll_once(self) -> int:
        asked = list(self._waiting)
        seen: set = set()
        finished = 0
        try:
            async for page in self.client.find_tasks("ids", asked):
                for remote in page:
                    future = self._waiting.get(remote.id)
                    seen.add(remote.id)
                    if future is None or future.done() or not remote.finished:
                        continue
                    self.finished_remotely += 1
                    finished += 1
                    self._unsaved += 1
                    future.set_result(remote)
                # A finished task holds its images until they are saved: let those of this
                # page be saved before the next page adds more.
                while self._unsaved >= UNSAVED_MAX:
                    self._saved.clear()
                    await self._saved.wait()
        except RequestError as error:
            self._poll_failed(error, len(asked))
            return finished
        self._poll_failures = 0
        for remote_id in asked:
            future = self._waiting.get(remote_id)
            if remote_id in seen or future is None or future.done():
                self._misses.pop(remote_id, None)
                continue
            self._misses[remote_id] = self._misses.get(remote_id, 0) + 1
            if self._misses[remote_id] >= MISSING_POLLS:
                future.set_exception(BadResponse(f"the server no longer knows task {remote_id}"))
        return finished

    def _poll_failed(self, error: RequestError, asked: int) -> None:
        """A lookup failed: tried again, unless it cannot succeed (the key) or keeps failing."""
        self._poll_failures += 1
        if classify(error) is Decision.STOP:
            self._lookups_dead = True
            self.stop(error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                  f"{stop_advice(error, self.endpoint.provider)}")
        elif self._poll_failures >= POLL_FAILURES_LIMIT:
            self._lookups_dead = True
            where = public_url(self.endpoint.root + TASKS_PATH)
            self.stop("tasks_api_error",
                      f"the Tasks API ({where}) failed {self._poll_failures} times in a row "
                      f"({error.code}: {error.message}); the tasks submitted go on on the server: run the "
                      f"same command again later to collect them")
        else:
            log.warning("looking up %d task(s) failed (%s); trying again", asked, error.message)

    def _say_left_running(self) -> None:
        if self._said_stop or not self._waiting:
            return
        self._said_stop = True
        log.warning("%d submitted task(s) go on running on the server; the next run collects them "
                    "without paying again (run the same command again)", len(self._waiting))
