"""The Batch API backend: the pending tasks go to OpenAI's Batch API in chunks, at half the
price, and their outcomes are collected when the batches end.

Paid exactly once, through any crash. A chunk's life is written to the journal before it is
relied on: `planned` (its task ids) before the upload, the batch is created with metadata
naming the chunk, `submitted` (the batch id) once it exists, `collected` once every outcome it
gives is in the journal. A rerun adopts what exists: a submitted chunk is polled; a planned
chunk without a batch id is looked up among the account's batches by its metadata before it is
submitted again; outcomes already in the journal are skipped when an output file is read again.
A task is never in two open chunks.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from typing import Mapping, Optional

from batchgen.exceptions import ApiError, BadResponse, RequestError
from batchgen.planning.edits import IMAGE_KINDS, InputProblem, input_bytes, is_url, sniff
from batchgen.planning.identity import ChunkIds, hex_key
from batchgen.planning.tasks import ROWS_AT_A_TIME, Pending
from batchgen.sending.classify import Decision, classify, stop_advice
from batchgen.sending.client import BATCH_TERMINAL, BatchClient, BatchInfo, build_body, generation_from, redact

log = logging.getLogger("batchgen")

ENDPOINT_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
MAX_BATCH_INPUT_BYTES = 190 * 1024 * 1024      # the API allows 200 MB; room for its count
METADATA_CHUNK = "batchgen_chunk"
METADATA_JOB = "batchgen_job"
FIRST_POLL_S = 1.0
NETWORK_RETRY_S = 5.0
LINE_SAVE_INLINE_BYTES = 256 * 1024


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
        """Cancel the batches of the chunks a folder has submitted and not collected; returns
        [(batch id, its status after the request)]."""
        done = []
        async with BatchClient(endpoint, timeout) as client:
            for chunk in chunks.values():
                if "collected" in chunk.get("events", ()) or not chunk.get("batch_id"):
                    continue
                try:
                    info = await client.cancel_batch(chunk["batch_id"])
                    done.append((info.id, info.status))
                except RequestError as error:
                    done.append((chunk["batch_id"], f"not cancelled: {error.code}: {error.message}"))
        return done


    # ---- the run ------------------------------------------------------------------------

    async def _send(self, tasks) -> None:
        self._tasks = TasksById(tasks)
        open_chunks = await self._adopt_open_chunks()
        owned = HeldIds(chunk["task_ids"] for chunk in open_chunks.values())
        # A chunk at a time, as the tasks are read: only one chunk's tasks (of each model) are
        # held, not the whole job's.
        for chunk_tasks, lines in self._chunks(self._fresh(tasks, owned)):
            key, chunk = await self._submit(chunk_tasks, lines=lines)
            open_chunks[key] = chunk
        if self.config.no_wait:
            if open_chunks:
                requests = sum(len(c["task_ids"]) for c in open_chunks.values())
                self.stop("batch_in_progress",
                          f"submitted {len(open_chunks)} batch(es) of {requests} "
                          "request(s) to the Batch API; run the same command again to collect them "
                          "(batchgen cancel OUT cancels them)")
            return
        await self._wait(open_chunks)

    def _fresh(self, tasks, owned: "HeldIds"):
        """The tasks no open chunk holds, each counted by the budget before it is sent; none
        past the budget."""
        for task in tasks:
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

    async def _submit(self, tasks: list, key: Optional[str] = None, lines: Optional[list] = None) -> tuple:
        """planned -> upload -> create (metadata names the chunk) -> submitted. `lines`: the
        tasks' input lines, when made already."""
        if key is None:
            key = uuid.uuid4().hex[:16]
            self.recorder.chunk_event({"chunk": key, "event": "planned",
                                       "task_ids": [t.task_id for t in tasks]})
        data = b"".join(lines if lines is not None else map(self._line, tasks))
        file_id = await self.client.upload_batch_file(f"batchgen-{key}.jsonl", data)
        info = await self.client.create_batch(file_id, EDITS_PATH if tasks[0].edit else ENDPOINT_PATH,
                                              self._metadata(key))
        self.recorder.chunk_event({"chunk": key, "event": "submitted", "batch_id": info.id,
                                   "input_file_id": file_id})
        self.requests_sent += len(tasks)
        log.info("submitted batch %s: %d request(s)", info.id, len(tasks))
        return key, self.recorder.chunks()[key]

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
                found = await self.client.find_batch(METADATA_CHUNK, key)
                if found is not None:
                    self.recorder.chunk_event({"chunk": key, "event": "submitted", "batch_id": found.id})
                else:
                    waiting = [t for t in map(self._tasks.get, chunk.get("task_ids", ())) if t is not None]
                    if not waiting:
                        self.recorder.chunk_event({"chunk": key, "event": "collected", "status": "abandoned"})
                        continue
                    await self._submit(waiting, key)
            open_chunks[key] = self.recorder.chunks()[key]
        return open_chunks

    async def _wait(self, open_chunks: dict) -> None:
        interval = FIRST_POLL_S
        while open_chunks and not self.stop:
            progress = []
            for key in list(open_chunks):
                info = await self._poll(open_chunks[key]["batch_id"])
                if info is None:
                    continue
                progress.append(info)
                if info.status in BATCH_TERMINAL:
                    again = await self._collect(key, open_chunks.pop(key), info)
                    for chunk_tasks in self.split(again):
                        new_key, chunk = await self._submit(chunk_tasks)
                        open_chunks[new_key] = chunk
            done = sum(i.completed + i.failed for i in progress)
            total = sum(i.total for i in progress)
            self.recorder.note(f"batches: {len(open_chunks)} open, {done}/{total} done remotely")
            if open_chunks:
                await self.stop.sleep(interval)
                interval = min(interval * 2, self.config.poll_interval)

    async def _poll(self, batch_id: str) -> Optional[BatchInfo]:
        try:
            return await self.client.get_batch(batch_id)
        except RequestError as error:
            if classify(error) is Decision.STOP:
                raise
            log.warning("reading batch %s failed (%s); trying again", batch_id, error.message)
            await self.stop.sleep(NETWORK_RETRY_S)
            return None

    # ---- collecting ---------------------------------------------------------------------

    async def _collect(self, key: str, chunk: dict, info: BatchInfo) -> list:
        """Every outcome a finished batch gives, into the journal; returns the tasks to send
        again in this run (expired, or a server error on their line, once each)."""
        self._collecting = True
        try:
            again: list = []
            for file_id in (info.output_file_id, info.error_file_id):
                if file_id:
                    async for line in self.client.file_lines(file_id):
                        task_id = await self._take_line(line, info.id, again)
                        if task_id is None:
                            log.warning("batch %s: a line of its file could not be used; skipped", info.id)
            left = [t for t in chunk.get("task_ids", ()) if not self.recorder.is_final(t)]
            again_ids = {t.task_id for t in again}
            self._settle(info, [t for t in left if t not in again_ids])
            self.recorder.chunk_event({"chunk": key, "event": "collected", "status": info.status})
        finally:
            self._collecting = False
        fresh = [t for t in again if t.task_id not in self._resubmitted]
        self._resubmitted.update(t.task_id for t in fresh)
        return fresh

    def _settle(self, info: BatchInfo, left: list) -> None:
        """What the batch's end means for the tasks its files said nothing final about."""
        if not left:
            return
        if info.status == "failed":
            code, message = info.errors[0] if info.errors else ("batch_failed", "the batch failed validation")
            for task_id in left:
                self._record_error(task_id, ApiError(message, code=code, http_status=400), info.id)
        elif info.status == "cancelled":
            self.stop("batch_cancelled", f"batch {info.id} was cancelled: {len(left)} request(s) it did not "
                                         "run are not done; run the same command again to submit them")
        elif info.status == "expired":
            self.stop("batch_expired", f"batch {info.id} expired (24 h passed) twice for {len(left)} request(s); "
                                       "run the same command again to submit them")
        else:
            self.stop("batch_incomplete", f"batch {info.id} ended {info.status} without an outcome for "
                                          f"{len(left)} request(s); run the same command again to submit them")

    async def _take_line(self, line: bytes, batch_id: str, again: list) -> Optional[str]:
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        task_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(task_id, str) or len(task_id) > 64:
            return None
        if self.recorder.is_final(task_id):
            return task_id                      # collected before a crash: not again
        task = self._tasks.get(task_id)
        response = item.get("response") if isinstance(item.get("response"), dict) else None
        if response is None:
            # Never ran: expired or cancelled ("batch_expired", "batch_cancelled").
            error = item.get("error") if isinstance(item.get("error"), dict) else {}
            if error.get("code") == "batch_expired" and task is not None and task_id not in self._resubmitted:
                again.append(task)
            return task_id
        status = response.get("status_code") if isinstance(response.get("status_code"), int) else 500
        body = response.get("body")
        try:
            generation = generation_from(status, {}, body, b"", self.endpoint.token, self.endpoint.provider)
        except RequestError as error:
            # As in live mode: a refusal is the task's outcome; a server error is tried again
            # (once, in a new batch), then it is the outcome.
            if classify(error) is Decision.RETRY and task is not None and task_id not in self._resubmitted:
                again.append(task)
            else:
                self._record_error(task_id, error, batch_id)
            return task_id
        await self._save(task_id, task, generation, batch_id)
        return task_id

    async def _save(self, task_id: str, task, generation, batch_id: str) -> None:
        # Billed, whether or not its images can be used.
        self._costs[task_id] = self.budget.answered(task.params, generation.usage) if task is not None else None
        expected = task.images_expected if task is not None else 1
        count = max(expected, len(generation.images))
        images = []
        try:
            for index, image in enumerate(generation.images):
                if image.data is None:
                    raise BadResponse("a batch answer gave an image link instead of its bytes")
                if len(image.data) < LINE_SAVE_INLINE_BYTES:
                    saved = self.images.save(task_id, index, count, image.data)
                else:
                    saved = await asyncio.to_thread(self.images.save, task_id, index, count, image.data)
                images.append({"image_index": index, "image_path": saved.image_path, "image_url": None,
                               "sha256": saved.sha256, "width": saved.width, "height": saved.height,
                               "bytes": saved.bytes, "revised_prompt": image.revised_prompt})
        except BadResponse as error:
            return self._record_error(task_id, error, batch_id)
        record = {"task_id": task_id, "status": "ok", "images": images, "created": generation.created,
                  "trace_id": generation.trace_id, "http_status": generation.http_status,
                  "usage": generation.usage, "finished_at": round(time.time(), 3), "attempts": 1,
                  "batch_id": batch_id, **self._request_of(task)}
        if task is not None and len(images) < task.images_expected:
            record["images_expected"] = task.images_expected
        self.recorder.finished(record)

    def _record_error(self, task_id: str, error: RequestError, batch_id: str) -> None:
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
        cost = self._costs.pop(task.task_id, None)
        if cost is not None:
            request["cost_usd"] = cost
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
