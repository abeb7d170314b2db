"""The Batch API backend: the pending tasks go to OpenAI's Batch API in chunks, at half the
price, and their outcomes are collected when the batches end.

Paid exactly once, through any crash. A chunk's life is written to the journal before it is
relied on: `planned` (its task ids) before the upload, the batch is created with metadata
naming the chunk, `submitted` (the batch id) once it exists, `collected` once every outcome it
gives is in the journal. A rerun adopts what exists: a submitted chunk is polled; a planned
chunk without a batch id is looked up among the account's batches by its metadata before it is
submitted again; outcomes already in the journal are skipped when an output file is read again.
A task is never in two open chunks, and no run of another mode sends a task of an open chunk
(the runner leaves them out), so a mode switch never pays twice.

Nothing a server says is trusted: an output line counts only for a custom_id its chunk
submitted (once, whatever the order of its lines); ids go into URLs only when plain. No wait is
without end: a batch the server does not know, or in a status batchgen does not know, or whose
output file is gone, ends the run naming it (--resubmit-lost sends its tasks again), one past
its expiry is taken as expired, and each chunk's trouble waits until the others are collected.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from typing import Mapping, Optional

from batchgen.exceptions import ApiError, RequestError
from batchgen.planning.edits import IMAGE_KINDS, InputProblem, input_bytes, is_url, sniff
from batchgen.planning.identity import ChunkIds, hex_key
from batchgen.planning.tasks import ROWS_AT_A_TIME, Pending
from batchgen.sending.backends import BATCH_IN_PROGRESS
from batchgen.sending.backends.live import save_images
from batchgen.sending.classify import MODEL_CODES, Decision, classify, stop_advice
from batchgen.sending.client import (
    BATCH_STATUSES,
    BATCH_TERMINAL,
    BatchClient,
    BatchInfo,
    build_body,
    generation_from,
    redact,
    server_int,
)

log = logging.getLogger("batchgen")

ENDPOINT_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
MAX_BATCH_INPUT_BYTES = 190 * 1024 * 1024      # the API allows 200 MB; room for its count
METADATA_CHUNK = "batchgen_chunk"
METADATA_JOB = "batchgen_job"
FIRST_POLL_S = 1.0
SUBMIT_TRIES = 6               # an upload or a create: tried again after 5xx or no answer ...
SUBMIT_BACKOFF_S = 1.0         # ... after 1, 2, 4, 8, 16 s
EXPIRY_GRACE_S = 3600.0        # a batch still open this long past its expires_at is taken as expired
NOT_CANCELLED = "not cancelled"   # how cancel_remote says the server refused


def edit_body(prompt: str, params: dict, inputs) -> dict:
    """An edit as the Batch API's JSON body: images as data URLs (a URL input as itself).
    Raises InputProblem, naming the input as the table gave it, for a file that cannot be
    sent as planned (gone, not a regular file, changed since planning)."""
    body = build_body(prompt, params)
    urls: dict[str, list] = {}
    for field, ref, shown, digest in inputs.named():
        try:
            urls.setdefault(field, []).append(_image_url(ref, digest))
        except InputProblem as e:
            raise InputProblem(f"{field} {shown!r} {e}") from None
    body["images"] = [{"image_url": url} for url in urls["image"]]
    if "mask" in urls:
        body["mask"] = {"image_url": urls["mask"][0]}
    if "markup" in urls:
        body["markup"] = {"image_url": urls["markup"][0]}
    return body


def _image_url(ref: str, digest: Optional[str]) -> str:
    if is_url(ref):
        return ref
    data = input_bytes(ref, digest)
    kind = sniff(data) or "png"
    return f"data:{IMAGE_KINDS[kind]};base64,{base64.b64encode(data).decode()}"


class BatchBackend:
    def __init__(self, config, endpoint, images, recorder, budget, stop):
        self.config = config
        self.endpoint = endpoint
        self.images = images
        self.recorder = recorder
        self.budget = budget
        self._costs: dict = {}        # task id -> USD its answer cost, until its record is written
        self.stop = stop
        self.requests_sent = 0
        self._client: Optional[BatchClient] = None
        self._work: Optional[asyncio.Task] = None
        self._collecting = False
        self._cancelled_by_us = False
        self._tasks = TasksById(())     # task id -> Task, for the records of collected outcomes
        self._resubmitted: set = set()  # task ids sent again once in this run (expired, 5xx)
        self._ended: list = []          # (stop code, message) of batches that ended with work undone
        self._unserved_models: set = set()  # models the server said it does not serve: none sent again
        self._unserved: set = set()     # task ids whose outcome said so: not theirs, left to send

    async def __aenter__(self):
        self._client = await BatchClient(self.endpoint, self.config.timeout).__aenter__()
        return self

    async def __aexit__(self, *exc):
        if self._client is not None:
            await self._client.__aexit__(*exc)

    @property
    def client(self) -> BatchClient:
        """The HTTP client, opened by `async with` the backend."""
        if self._client is None:
            raise RuntimeError("the backend is used outside `async with`")
        return self._client

    def pace(self) -> Optional[dict]:
        return None         # a batch is paced by the server

    def busy(self) -> bool:
        """Saving a batch's outcomes is worth finishing; waiting for a batch is not."""
        return self._collecting

    def cancel_in_flight(self) -> None:
        if self._work is not None and not self._work.done():
            self._cancelled_by_us = True
            self._work.cancel()

    async def send(self, tasks) -> None:
        self._work = asyncio.ensure_future(self._send(tasks))
        try:
            await self._work
        except asyncio.CancelledError:
            if not self._cancelled_by_us:
                raise
        except RequestError as error:
            self._stop_for(error)

    @classmethod
    async def cancel_remote(cls, endpoint, timeout: float, chunks: Mapping[str, dict]) -> list:
        """Cancel the batches of the chunks a folder has planned or submitted and not collected
        (a batch created but never recorded is found by its metadata); returns [(batch id, its
        status after the request)], "not cancelled: …" where the server refused."""
        done: list = []
        async with BatchClient(endpoint, timeout) as client:
            for key, chunk in chunks.items():
                if "collected" in chunk.get("events", ()):
                    continue
                batch_id = chunk.get("batch_id")
                try:
                    if not batch_id:
                        found = await client.find_batch(METADATA_CHUNK, key, planned_at(chunk))
                        if found is None:
                            continue            # planned, never created: nothing runs
                        batch_id = found.id
                    info = await client.cancel_batch(batch_id)
                    done.append((info.id, info.status))
                except RequestError as error:
                    if isinstance(error, ApiError) and error.http_status == 409:
                        done.append((batch_id, "already ended; the next run collects it"))
                    else:
                        done.append((batch_id or f"chunk {key}", f"{NOT_CANCELLED}: {error.code}: {error.message}"))
        return done


    # ---- the run ------------------------------------------------------------------------

    async def _send(self, tasks) -> None:
        self._tasks = TasksById(tasks)
        open_chunks = await self._adopt_open_chunks()
        owned = HeldIds(chunk["task_ids"] for chunk in open_chunks.values())
        # A chunk at a time, as the tasks are read: only one chunk's tasks (of each model) are
        # held, not the whole job's.
        submitted = 0
        refused: Optional[RequestError] = None
        try:
            for chunk_tasks, lines in self._chunks(self._fresh(tasks, owned)):
                for key, chunk in await self._send_chunk(chunk_tasks, lines):
                    open_chunks[key] = chunk
                    submitted += 1
        except RequestError as error:
            if classify(error) is Decision.STOP:
                raise
            refused = error         # no more submitted; what was is still collected
        try:
            # --no-wait looks once: what finished meanwhile is collected now, the rest is left.
            await self._wait(open_chunks, once=self.config.no_wait)
        finally:
            if open_chunks and self.stop.code == "interrupted":
                # Said where the user reads it (a Ctrl-C while waiting cancels the wait itself):
                # Ctrl-C stops batchgen, not the batches.
                self.stop.message = (f"interrupted; {self._still_open(open_chunks)} keep running on the "
                                     "server (and are billed): run the same command again to collect them, "
                                     "or `batchgen cancel OUT` to stop them")
        if refused is not None:
            self._stop_for(refused)
        if open_chunks and not self.stop:
            self.stop(BATCH_IN_PROGRESS,
                       f"submitted {submitted} batch(es) this run; {self._still_open(open_chunks)} still "
                       "running on the server: run the same command again to collect them "
                       "(batchgen cancel OUT cancels them)")

    def _halted(self) -> bool:
        """Whether to submit and wait no more: the run stopped for any reason but the budget,
        which only stops taking new tasks (those taken are sent, the batches collected)."""
        return bool(self.stop) and self.stop.code != "budget_exceeded"

    async def _pause(self, seconds: float) -> None:
        if self.stop:
            await asyncio.sleep(seconds)     # the switch is set: its sleep would not wait
        else:
            await self.stop.sleep(seconds)

    @staticmethod
    def _still_open(open_chunks: dict) -> str:
        requests = sum(len(c.get("task_ids") or ()) for c in open_chunks.values())
        return f"{len(open_chunks)} batch(es) of {requests} request(s)"

    def _fresh(self, tasks, owned: "HeldIds"):
        """The tasks no open chunk holds, each counted by the budget before it is sent; none
        past the budget, none once the run stops."""
        for task in tasks:
            if self.stop:
                return
            if task.task_id in owned:
                continue
            if not self.budget.take(task.params, self.stop):
                return
            yield task

    def split(self, tasks) -> list:
        """Chunks of one model each (an input file may name one model), of at most
        --batch-size requests and the API's input size."""
        return [chunk for chunk, _ in self._chunks(tasks)]

    def _chunks(self, tasks):
        """split() as the tasks come: (tasks, their input lines) of each chunk once it is
        full, then what is left of each model's."""
        current: dict[Optional[str], tuple[list, list[bytes], int]] = {}    # model -> (tasks, lines, bytes)
        for task in tasks:
            try:
                line = self._line(task)
            except InputProblem as e:     # that row's error; the others go on
                self._input_refused(task, str(e))
                continue
            if len(line) > MAX_BATCH_INPUT_BYTES:
                self._too_large(task)       # no file could hold it: not uploaded to be refused
                continue
            model = task.params.get("model")
            chunk = current.get(model)
            if chunk is not None and (len(chunk[0]) >= self.config.batch_size
                                      or chunk[2] + len(line) > MAX_BATCH_INPUT_BYTES):
                yield chunk[0], chunk[1]
                chunk = None
            if chunk is None:
                chunk = current[model] = ([], [], 0)
            chunk[0].append(task)
            chunk[1].append(line)
            current[model] = (chunk[0], chunk[1], chunk[2] + len(line))
        for chunk_tasks, lines, _ in current.values():
            yield chunk_tasks, lines

    def _input_refused(self, task, message: str) -> None:
        self.recorder.finished({"task_id": task.task_id, "status": "error", "error_code": "invalid_params",
                                "error_message": message, "attempts": 0, "finished_at": round(time.time(), 3),
                                **self._request_of(task)})

    def _line(self, task) -> bytes:
        if task.edit is None:
            body, path = self.client.encode_body(task.prompt, task.params), ENDPOINT_PATH
        else:
            body, path = json.dumps(edit_body(task.prompt, task.params, task.edit)).encode(), EDITS_PATH
        return (b'{"custom_id":"' + task.task_id.encode() + b'","method":"POST","url":"' +
                path.encode() + b'","body":' + body + b"}\n")

    async def _send_chunk(self, tasks: list, lines: Optional[list] = None, key: Optional[str] = None) -> list:
        """Submit tasks as one chunk ([(key, chunk)]); a chunk the server refuses as too large
        (413) is split in halves, down to one request, which then fails as too large. `key`:
        a chunk planned already (adopted); `lines`: the tasks' input lines, when made."""
        todo = [(tasks, lines, key)]
        done = []
        while todo and not self._halted():
            part, part_lines, part_key = todo.pop()
            if part_key is None:
                part_key = self._plan(part)
            try:
                done.append(await self._submit(part, part_key, part_lines))
            except ApiError as error:
                if error.http_status != 413:
                    raise
                # Nothing was created: the chunk is let go, its tasks planned again in halves.
                self.recorder.chunk_event({"chunk": part_key, "event": "collected", "status": "too_large"})
                if len(part) == 1:
                    self._too_large(part[0])
                    continue
                half = len(part) // 2
                log.warning("the Batch API refused a file of %d request(s) as too large; sending it in two",
                            len(part))
                todo.append((part[half:], part_lines[half:] if part_lines else None, None))
                todo.append((part[:half], part_lines[:half] if part_lines else None, None))
        return done

    def _too_large(self, task) -> None:
        self._record_error(task.task_id, ApiError(
            "this one request is larger than the Batch API takes in a file (HTTP 413); make its input "
            "images smaller, or send it with --mode live", code="request_too_large", http_status=413), None)

    def _plan(self, tasks: list) -> str:
        key = uuid.uuid4().hex[:16]
        self.recorder.chunk_event({"chunk": key, "event": "planned", "at": round(time.time(), 3),
                                   "task_ids": [t.task_id for t in tasks]})
        return key

    async def _submit(self, tasks: list, key: str, lines: Optional[list] = None) -> tuple:
        """upload -> create (metadata names the chunk) -> submitted, each retried when the
        server fails or does not answer. `lines`: the tasks' input lines, when made already."""
        data = b"".join(lines if lines is not None else map(self._line, tasks))
        path = EDITS_PATH if tasks[0].edit else ENDPOINT_PATH
        file_id = await self._retried("uploading a batch file",
                                      lambda: self.client.upload_batch_file(f"batchgen-{key}.jsonl", data))

        async def create() -> BatchInfo:
            return await self.client.create_batch(file_id, path, self._metadata(key))

        async def created_already() -> Optional[BatchInfo]:
            # A create that got no answer may have made the batch: look before making another.
            return await self.client.find_batch(METADATA_CHUNK, key, planned_at(self.recorder.chunks().get(key, {})))
        info = await self._retried("creating a batch", create, created_already)
        self.recorder.chunk_event({"chunk": key, "event": "submitted", "batch_id": info.id,
                                   "input_file_id": file_id})
        self.requests_sent += len(tasks)
        log.info("submitted batch %s: %d request(s)", info.id, len(tasks))
        return key, self.recorder.chunks()[key]

    async def _retried(self, what: str, call, found_already=None):
        """call(), tried again after a server error or no answer, with backoff (cut short when
        the run stops); `found_already()` is asked before each new try."""
        for attempt in range(SUBMIT_TRIES):
            try:
                return await call()
            except RequestError as error:
                if classify(error) is not Decision.RETRY or attempt == SUBMIT_TRIES - 1:
                    raise
                log.warning("%s failed (%s: %s); trying again", what, error.code, error.message)
                await self._pause(SUBMIT_BACKOFF_S * 2 ** attempt)
                if self._halted():
                    raise
                if found_already is not None:
                    found = await found_already()
                    if found is not None:
                        return found
        raise AssertionError("unreachable")

    def _metadata(self, key: str) -> dict:
        return {METADATA_CHUNK: key, METADATA_JOB: self.config.fingerprint()}

    async def _adopt_open_chunks(self) -> dict:
        """Chunks of earlier runs that are not collected: submitted ones are polled; one planned
        but never recorded as submitted is looked up by its metadata, else submitted now."""
        open_chunks = {}
        for key, chunk in list(self.recorder.chunks().items()):
            if "collected" in chunk.get("events", ()):
                continue
            if not chunk.get("batch_id"):
                since = planned_at(chunk)
                found = await self._retried("looking for an unrecorded batch", lambda key=key, since=since:
                                            self.client.find_batch(METADATA_CHUNK, key, since))
                if found is not None:
                    self.recorder.chunk_event({"chunk": key, "event": "submitted", "batch_id": found.id})
                else:
                    waiting = self._waiting_in(chunk)
                    if not waiting or self._halted():
                        if not waiting:
                            self.recorder.chunk_event({"chunk": key, "event": "collected", "status": "abandoned"})
                        continue
                    for new_key, new_chunk in await self._send_chunk(waiting, key=key):
                        open_chunks[new_key] = new_chunk
                    continue
            open_chunks[key] = self.recorder.chunks()[key]
        return open_chunks

    def _waiting_in(self, chunk: dict) -> list:
        """The chunk's tasks this run may send that have no final outcome."""
        return [t for t in map(self._tasks.get, chunk.get("task_ids", ()))
                if t is not None and not self.recorder.is_final(t.task_id)]

    async def _wait(self, open_chunks: dict, once: bool = False) -> None:
        """Poll and collect until no chunk is open; each chunk's trouble is its own: the
        others are still polled and collected, and the run stops once they are."""
        interval = FIRST_POLL_S
        failing: dict = {}          # chunk key -> when its reads began to fail
        trouble: list = []          # (stop code, what happened and what to do)
        while open_chunks and not self._halted():
            progress = []
            for key in list(open_chunks):
                if self._halted():
                    break
                chunk = open_chunks[key]
                again: list = []
                try:
                    info = await self.client.get_batch(chunk["batch_id"])
                    if info.status in BATCH_TERMINAL:
                        again = await self._collect(key, chunk, info)
                except RequestError as error:
                    if classify(error) is Decision.STOP:
                        raise
                    if error.http_status == 404:
                        what = ("its output file is gone (404)" if isinstance(error, FileGone)
                                else "the server does not know it (404: another key or base URL, or a "
                                     "simulator started afresh)")
                        trouble += await self._lost(key, open_chunks, what)
                        continue
                    began = failing.setdefault(key, time.monotonic())
                    if time.monotonic() - began > self.config.max_wait:
                        open_chunks.pop(key)
                        trouble.append(("batch_api_error", f"batch {chunk['batch_id']} could not be read for "
                                        f"{self.config.max_wait:g} s ({error.code}: {error.message}); run the "
                                        "same command again to collect it"))
                    else:
                        log.warning("reading batch %s failed (%s); trying again", chunk["batch_id"], error.message)
                    continue
                failing.pop(key, None)
                progress.append(info)
                if info.status in BATCH_TERMINAL:
                    open_chunks.pop(key)
                    open_chunks.update(await self._send_again(again))
                    continue
                if info.status not in BATCH_STATUSES:
                    trouble += await self._lost(key, open_chunks, f"the server says its status is "
                                                f"{info.status}, which batchgen does not know")
                elif info.expires_at is not None and time.time() > info.expires_at + EXPIRY_GRACE_S:
                    open_chunks.update(await self._expire(key, open_chunks.pop(key), info))
            done = sum(i.completed + i.failed for i in progress)
            total = sum(i.total for i in progress)
            self.recorder.note(f"batches: {len(open_chunks)} open, {done}/{total} done remotely")
            if once:
                break
            if open_chunks:
                await self._pause(interval)
                interval = min(interval * 2, self.config.poll_interval)
        trouble += self._ended
        self._ended = []
        for _, message in trouble:
            log.warning(message)
        if trouble and not self.stop:
            codes = [code for code, _ in trouble]
            self.stop(max(set(codes), key=codes.count), "; ".join(message for _, message in trouble))

    async def _lost(self, key: str, open_chunks: dict, what: str) -> list:
        """A batch that cannot be followed (taken out of `open_chunks`): its tasks are sent
        again with --resubmit-lost (or under --simulate, where a lost batch can run nowhere
        else), as new chunks of `open_chunks`; else the run says so. Returns the trouble to report."""
        chunk = open_chunks.pop(key)
        batch_id = chunk["batch_id"]
        waiting = self._waiting_in(chunk)
        if not (self.config.resubmit_lost or self.config.simulate):
            return [("batch_lost", f"batch {batch_id}: {what}; its {len(waiting)} request(s) without an "
                     "outcome are not sent again: rerun with --resubmit-lost to send them (this can pay twice "
                     "if that batch still runs elsewhere), or `batchgen cancel OUT` if it does")]
        if not self.config.simulate:
            log.warning("batch %s: %s; sending its %d request(s) again (--resubmit-lost): they are paid "
                        "twice if that batch still runs elsewhere", batch_id, what, len(waiting))
        self.recorder.chunk_event({"chunk": key, "event": "collected", "status": "lost"})
        open_chunks.update(await self._send_again(waiting))
        return []

    async def _expire(self, key: str, chunk: dict, info: BatchInfo) -> list:
        """A batch still unfinished past its expiry (and a grace): as expired. It is asked to
        cancel (what it ran is then in its files, collected as usual when it answers)."""
        log.warning("batch %s is still %s past its expiry; treating it as expired", info.id, info.status)
        try:
            info = await self.client.cancel_batch(info.id)
        except RequestError as error:
            log.warning("cancelling batch %s failed (%s)", info.id, error.message)
        expired = BatchInfo(info.id, "expired", info.output_file_id, info.error_file_id, info.total,
                            info.completed, info.failed, info.metadata, info.errors)
        return await self._send_again(await self._collect(key, chunk, expired, expire_left=True))

    async def _send_again(self, tasks: list) -> list:
        """Tasks a batch did not settle, in new chunks ([(key, chunk)]); none once the run halts,
        none of a model the server does not serve."""
        sent: list = []
        tasks = [t for t in tasks if t.params.get("model") not in self._unserved_models]
        for chunk_tasks in self.split(tasks):
            if self._halted():
                break
            sent += await self._send_chunk(chunk_tasks)
        return sent

    # ---- collecting ---------------------------------------------------------------------

    async def _collect(self, key: str, chunk: dict, info: BatchInfo, expire_left: bool = False) -> list:
        """Every outcome a finished batch gives, into the journal; returns the tasks to send
        again in this run (expired, or a server error on their line, once each). Only a line
        naming a request of this chunk is taken; a request named twice is kept once."""
        self._collecting = True
        members = HeldIds([chunk.get("task_ids") or ()])
        again: dict = {}
        strangers = 0
        try:
            for file_id in (info.output_file_id, info.error_file_id):
                if file_id:
                    try:
                        async for line in self.client.file_lines(file_id):
                            taken = await self._take_line(line, info.id, members, again)
                            if taken is None:
                                log.warning("batch %s: a line of its file could not be used; skipped", info.id)
                            elif taken is False:
                                strangers += 1
                    except ApiError as error:
                        if error.http_status != 404:
                            raise
                        raise FileGone(error.message, code=error.code, http_status=404) from None
            if strangers:
                log.warning("batch %s: %d line(s) of its files named requests it was not given; ignored",
                            info.id, strangers)
            # A request retried on one line and answered on another is done.
            fresh = [t for t in again.values() if not self.recorder.is_final(t.task_id)
                     and t.task_id not in self._resubmitted]
            if expire_left:
                fresh += [t for t in self._waiting_in(chunk) if t.task_id not in again
                          and t.task_id not in self._resubmitted]
            fresh_ids = {t.task_id for t in fresh}
            left = [t for t in chunk.get("task_ids", ()) if not self.recorder.is_final(t) and t not in fresh_ids
                    and t not in self._unserved]
            self._settle(info, left)
            self.recorder.chunk_event({"chunk": key, "event": "collected", "status": info.status})
        finally:
            self._collecting = False
        self._resubmitted.update(fresh_ids)
        return fresh

    def _settle(self, info: BatchInfo, left: list) -> None:
        """What the batch's end means for the tasks its files said nothing final about."""
        if not left:
            return
        if info.status == "failed":
            code, message = info.errors[0] if info.errors else ("batch_failed", "the batch failed validation")
            if code in MODEL_CODES:
                # Refused at validation for its model: as a line saying so, for all of them.
                task = self._tasks.get(left[0])
                return self._unserved_model(task.params.get("model") if task else None,
                                            ApiError(message, code=code, http_status=400), left)
            for task_id in left:
                self._record_error(task_id, ApiError(message, code=code, http_status=400), info.id)
        elif info.status == "cancelled":
            self._ended.append(("batch_cancelled", f"batch {info.id} was cancelled: {len(left)} request(s) "
                                "it did not run are not done; run the same command again to submit them"))
        elif info.status == "expired":
            self._ended.append(("batch_expired", f"batch {info.id} expired (24 h passed) twice for {len(left)} "
                                "request(s); run the same command again to submit them"))
        else:
            self._ended.append(("batch_incomplete", f"batch {info.id} ended {info.status} without an outcome "
                                f"for {len(left)} request(s); run the same command again to submit them"))

    async def _take_line(self, line: bytes, batch_id: str, members: "HeldIds", again: dict):
        """The task id a line gives an outcome for; None: not a usable line; False: it names
        a request the batch was not given."""
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        task_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(task_id, str):
            return None
        if task_id not in members:
            return False
        if self.recorder.is_final(task_id):
            return task_id                      # collected before a crash, or named twice: not again
        task = self._tasks.get(task_id)
        response = item.get("response") if isinstance(item.get("response"), dict) else None
        if response is None:
            # Never ran: expired or cancelled ("batch_expired", "batch_cancelled").
            error = item.get("error") if isinstance(item.get("error"), dict) else {}
            if error.get("code") == "batch_expired" and task is not None:
                again[task_id] = task
            return task_id
        status = server_int(response.get("status_code"), 100, 599) or 500
        body = response.get("body")
        try:
            generation = generation_from(status, {}, body, b"", self.endpoint.token, self.endpoint.provider)
        except RequestError as error:
            self._retry_or_record(task_id, task, error, batch_id, again)
            return task_id
        again.pop(task_id, None)
        # Billed, whether or not its images can be used (an answer asked again adds up).
        if task is not None:
            cost = self.budget.answered(task.params, generation.usage)
            self._costs[task_id] = _add_cost(self._costs.get(task_id, 0.0), cost)
        try:
            await self._save(task_id, task, generation, batch_id)
        except RequestError as error:
            self._retry_or_record(task_id, task, error, batch_id, again)
        return task_id

    def _retry_or_record(self, task_id: str, task, error: RequestError, batch_id: str, again: dict) -> None:
        """As in live mode: a refusal is the task's outcome; a server error, or an image that
        can never be fetched, is asked again (once, in a new batch), then it is the outcome."""
        if error.code in MODEL_CODES and classify(error) is Decision.STOP:
            again.pop(task_id, None)
            self._unserved_model(task.params.get("model") if task else None, error, [task_id])
        elif classify(error) in (Decision.RETRY, Decision.RETRY_ONCE) and task is not None \
                and task_id not in self._resubmitted:
            again[task_id] = task
        else:
            self._record_error(task_id, error, batch_id)

    def _unserved_model(self, model: Optional[str], error: RequestError, task_ids: list) -> None:
        """The server does not serve the model (model_not_found): as in live mode, the run stops
        early, once the other batches are collected, naming the nearest models; the tasks are
        left to send (not their outcome), and no more of the model is submitted."""
        self._unserved.update(task_ids)
        if model in self._unserved_models:
            return
        self._unserved_models.add(model)
        self._ended.append((error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                        f"{stop_advice(error, self.endpoint.provider, model, self.config.models)}"))

    async def _save(self, task_id: str, task, generation, batch_id: str) -> None:
        """The answer's images kept, and its record; a RequestError when one cannot be had."""
        expected = task.images_expected if task is not None else 1
        # Saved as in live mode (a link fetched, a data: URL decoded): the same answer means
        # the same in both.
        images = await save_images(self.images, self.client, self.endpoint.token, task_id, generation, expected)
        record = {"task_id": task_id, "status": "ok", "images": images, "created": generation.created,
                  "trace_id": generation.trace_id, "http_status": generation.http_status,
                  "usage": generation.usage, "finished_at": round(time.time(), 3), "attempts": 1,
                  "batch_id": batch_id, **self._request_of(task)}
        if task is not None and len(images) < task.images_expected:
            record["images_expected"] = task.images_expected
        self.recorder.finished(record)

    def _record_error(self, task_id: str, error: RequestError, batch_id: Optional[str]) -> None:
        task = self._tasks.get(task_id)
        self.recorder.finished({
            "task_id": task_id, "status": "error", "error_code": error.code,
            "error_message": redact(error.message, self.endpoint.token), "http_status": error.http_status,
            "trace_id": error.trace_id, "attempts": 1, "finished_at": round(time.time(), 3),
            "batch_id": batch_id, **self._request_of(task)})

    def _request_of(self, task) -> dict:
        """What a record keeps of its request, and what its answer cost."""
        if task is None:
            return {}
        request = {"prompt": task.prompt, "params": task.params}
        if task.task_id in self._costs:
            request["cost_usd"] = self._costs.pop(task.task_id)
        if task.edit is not None:
            request["inputs"] = task.edit.as_record()
        return request

    def _stop_for(self, error: RequestError) -> None:
        if classify(error) is Decision.STOP:
            self.stop(error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                  f"{stop_advice(error, self.endpoint.provider)}")
        else:
            self.stop("batch_api_error", f"the Batch API failed: {error.code} (HTTP {error.http_status}): "
                                         f"{error.message}; run the same command again (nothing is sent twice)")


def _add_cost(so_far: Optional[float], cost: Optional[float]) -> Optional[float]:
    """Costs of a task's answers added up; None (unknown) once one has no price."""
    return None if so_far is None or cost is None else so_far + cost


def planned_at(chunk: Mapping) -> Optional[float]:
    """When the journal says a chunk was planned (its batch cannot be older), if it says."""
    at = chunk.get("at")
    return at if isinstance(at, (int, float)) and not isinstance(at, bool) else None


class FileGone(ApiError):
    """A finished batch's output or error file answers 404 (where the batch itself was found)."""


class TasksById:
    """A run's pending tasks by id, for the outcomes a batch's files give back in any order.

    Given the runner's Pending (a plan's task indices), no task is held as an object: the ids
    are a sorted array of 64-bit keys, and a task is made when asked for, with those of its
    block of rows (a batch's file lists its tasks in plan order, so the next is usually among
    them); tasks held as objects cost over ten times more (bench/batch_memory.py). Any other
    iterable of tasks
    is kept as a dict."""

    def __init__(self, tasks):
        if isinstance(tasks, Pending):
            import numpy as np
            self._pending: Optional[Pending] = tasks
            self._indices = np.asarray(tasks.indices, np.int64)
            keys = tasks.tasks.keys()[self._indices]
            self._order = np.argsort(keys, kind="stable")
            self._keys = keys[self._order]
            self._block, self._made = -1, {}
        else:
            self._pending = None
            self._made = {t.task_id: t for t in tasks}

    def _index(self, task_id: str) -> Optional[int]:
        """The plan index of a pending task's id, else None."""
        at = _position(self._keys, task_id)
        return None if at is None else int(self._indices[self._order[at]])

    def get(self, task_id: str, default=None):
        if self._pending is None:
            return self._made.get(task_id, default)
        k = self._index(task_id)
        if k is None:
            return default
        import numpy as np
        rows = ROWS_AT_A_TIME * self._pending.tasks.n_points
        block = k // rows
        if block != self._block:
            lo, hi = np.searchsorted(self._indices, (block * rows, (block + 1) * rows))
            self._made = {t.task_id: t for t in self._pending.tasks.at(self._indices[lo:hi])}
            self._block = block
        return self._made.get(task_id, default)

    def __contains__(self, task_id: str) -> bool:
        if self._pending is None:
            return task_id in self._made
        return self._index(task_id) is not None


class HeldIds:
    """The task ids some chunks hold, for `in`: their 64-bit keys sorted (a set of texts
    costs several times more; bench/batch_memory.py). Only ids of 16 hex digits can be a plan's."""

    def __init__(self, chunks_ids):
        import numpy as np
        parts = [np.frombuffer(ids.keys, np.uint64) if isinstance(ids, ChunkIds)
                 else np.array([k for k in map(hex_key, ids) if k is not None], np.uint64)
                 for ids in chunks_ids]
        self._keys = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.uint64)

    def __contains__(self, task_id: str) -> bool:
        return _position(self._keys, task_id) is not None


def _position(sorted_keys, task_id: str) -> Optional[int]:
    """Where a task id's key is in a sorted numpy uint64 array, else None. A plan's ids are 16
    lowercase hex digits (the 64-bit key); any other text is no task of it."""
    import numpy as np
    key = hex_key(task_id)
    if key is None or not len(sorted_keys):
        return None
    key = np.uint64(key)
    at = int(np.searchsorted(sorted_keys, key))
    return at if at < len(sorted_keys) and sorted_keys[at] == key else None
