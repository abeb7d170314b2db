"""The live backend: one HTTP request per task, `concurrency` at a time, paced and retried.

A task's loop reads: pace, attempt, ask the policy.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from .. import _gc
from ..client import ImagesClient
from ..errors import Decision, classify, is_rate_limited, stop_advice
from ..exceptions import RequestError
from ..limits import AdaptivePacer, RetryPolicy, Spacer, TaskRetries

log = logging.getLogger("batchgen")

INLINE_SAVE_BYTES = 256 * 1024
FREEZE_EVERY = 1000


class LiveBackend:
    mode = "live"

    def __init__(self, config, endpoint, images, recorder, budget, stop):
        self.config = config
        self.endpoint = endpoint
        self.images = images          # saves image bytes: check, hash, write (store.ImageStore)
        self.recorder = recorder
        self.budget = budget
        self.stop = stop
        self.policy = RetryPolicy(max_retries=config.max_retries, base_s=config.backoff_base)
        self.pacer = AdaptivePacer()
        self.spacer = Spacer(config.rpm) if config.rpm else None
        self.requests_sent = 0
        self.finished = 0
        self.client: Optional[ImagesClient] = None
        self._workers: list = []

    async def __aenter__(self):
        self.client = await ImagesClient(self.endpoint, self.config.concurrency, self.config.timeout).__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.client.__aexit__(*exc)

    async def send(self, tasks) -> None:
        queue = iter(tasks)
        self._workers = [asyncio.ensure_future(self._worker(queue)) for _ in range(self.config.concurrency)]
        outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                # A bug, not a task outcome: say so loudly, but still write what was done.
                log.error("a worker failed", exc_info=outcome)
                self.stop("internal_error", f"internal error ({outcome!r}); what finished is saved; "
                                            "please report it, then run the same command again")

    def cancel_in_flight(self) -> None:
        for w in self._workers:
            w.cancel()

    async def _worker(self, queue) -> None:
        for task in queue:
            if self.stop or not self.budget.take(task.params, self.stop):
                return
            await self._run_task(task)

    async def _run_task(self, task) -> None:
        body = self.client.encode_body(task.prompt, task.params)
        retries = self.policy.for_task()
        attempts = 0
        started = time.monotonic()
        try:
            while True:
                await self._pace(task)
                if self.stop:
                    return self._not_done(task, attempts)
                attempts += 1
                self.requests_sent += 1
                sent_at = time.monotonic()
                try:
                    record = await self._attempt(task, body)
                except RequestError as error:
                    wait = self._ask_policy(error, retries, sent_at)
                    if wait is None:
                        return self._finish(task, self._error_record(task, error, attempts, started))
                    if self.stop:
                        return self._not_done(task, attempts)
                    if wait:
                        await self.stop.sleep(wait)
                    continue
                record["attempts"] = attempts
                record["latency_s"] = round(time.monotonic() - sent_at, 4)
                return self._finish(task, record)
        except OSError as e:
            self._disk_failed(task, attempts, e)
        except asyncio.CancelledError:
            self._not_done(task, attempts)
            raise

    async def _pace(self, task) -> None:
        await self.pacer.acquire()
        if self.spacer:
            await self.spacer.acquire(task.images_expected)

    def _ask_policy(self, error: RequestError, retries: TaskRetries, sent_at: float) -> Optional[float]:
        """Seconds to wait before trying again, or None: this error is the task's outcome.
        An error that means nothing can succeed (auth, quota) stops the run."""
        decision = classify(error)
        if decision is Decision.STOP:
            self.stop(error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                  f"{stop_advice(error, self.endpoint.provider)}")
            return 0.0      # the caller sees the stop and leaves the task not done
        if decision is Decision.FAIL:
            return None
        rate_limited = is_rate_limited(error)
        if rate_limited:
            self.pacer.on_rate_limited(error.retry_after, sent_at)
        return retries.next_wait(rate_limited, error.retry_after)

    async def _attempt(self, task, body: bytes) -> dict:
        generation = await self.client.generate(body)
        self.pacer.on_success(generation.ratelimit)
        count = max(task.images_expected, len(generation.images))
        images = []
        for index, image in enumerate(generation.images):
            data = image.data if image.data is not None else await self.client.download(image.url)
            if len(data) < INLINE_SAVE_BYTES:
                # Handing a small image to a thread costs more (GIL hand-offs) than saving it.
                saved = self.images.save(task.task_id, index, count, data)
            else:
                saved = await asyncio.to_thread(self.images.save, task.task_id, index, count, data)
            images.append({"image_index": index, "image_path": saved.image_path, "image_url": image.url,
                           "sha256": saved.sha256, "width": saved.width, "height": saved.height,
                           "bytes": saved.bytes, "revised_prompt": image.revised_prompt})
        return {"task_id": task.task_id, "status": "ok", "images": images,
                "created": generation.created, "trace_id": generation.trace_id,
                "http_status": generation.http_status, "usage": generation.usage,
                "finished_at": round(time.time(), 3), "prompt": task.prompt, "params": task.params}

    def _error_record(self, task, error: RequestError, attempts: int, started: float) -> dict:
        return {"task_id": task.task_id, "status": "error", "error_code": error.code,
                "error_message": error.message, "http_status": error.http_status,
                "trace_id": error.trace_id, "attempts": attempts,
                "latency_s": round(time.monotonic() - started, 4), "finished_at": round(time.time(), 3),
                "prompt": task.prompt, "params": task.params}

    def _not_done(self, task, attempts: int) -> None:
        if attempts:
            self.recorder.not_done(task.task_id, attempts)

    def _finish(self, task, record: dict) -> None:
        self.recorder.finished(record)
        self.finished += 1
        if self.finished % FREEZE_EVERY == 0:
            # Finished records stay until the end: spare every later collection from rescanning
            # them (a full one cost ~60 ms at 20,000 tasks).
            _gc.freeze_survivors()

    def _disk_failed(self, task, attempts: int, error: OSError) -> None:
        """The disk, not the API: full, read-only, gone. Nothing later can be saved either."""
        try:
            self._not_done(task, attempts)
        except OSError:
            pass
        self.stop("write_failed", f"cannot write under {self.config.out}: {error.strerror or error}; "
                                  "free some space or fix the folder, then run the same command again")
