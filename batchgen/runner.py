"""Wires the stages: plan -> send (bounded, paced, retried) -> store -> journal -> results.

The only module that knows both HTTP (through the client) and files (through journal, store
and results). It prints nothing; progress goes to a tqdm bar when asked, messages to logging.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import __version__, _gc, models
from .errors import (EXIT_OK, EXIT_STOPPED, EXIT_TASK_ERRORS, Decision, JobMismatch, RequestError,
                     UsageError, classify, is_rate_limited, stop_advice)
from .job import JobConfig, Plan, Task, make_plan, resolve_config
from .journal import NOT_DONE, Journal, replay
from .limits import AdaptivePacer, RetryPolicy, Spacer
from .reader import read_table

log = logging.getLogger("batchgen")

GRACE_S = 30.0
MAX_RATE_LIMITED_RETRIES = 100
INLINE_SAVE_BYTES = 256 * 1024
FREEZE_EVERY = 1000
IMPORT_WRITERS_AFTER_S = 0.2   # by then the first requests are out (and most runs are not over)


@dataclass
class Summary:
    out: str
    total: int
    ok: int
    errors: int
    not_done: int
    by_code: dict
    images: int
    requests_sent: int
    elapsed_s: float
    est_cost_usd: Optional[float]
    stopped: Optional[str] = None       # why the run stopped early (a result error code)
    stop_message: Optional[str] = None  # what to do about it
    warnings: list = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        if self.stopped or self.not_done:
            return EXIT_STOPPED
        return EXIT_TASK_ERRORS if self.errors else EXIT_OK


# ---- the output folder ------------------------------------------------------------------

def check_out_dir(config: JobConfig) -> Optional[dict]:
    """The existing job.json, if any; raises JobMismatch if it belongs to another job."""
    path = Path(config.out) / "job.json"
    if not path.exists():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UsageError(f"{path} is unreadable ({e}); use another --out, or remove it to start afresh") from None
    if existing.get("fingerprint") != config.fingerprint():
        old = existing.get("job", {})
        raise JobMismatch(
            f"{config.out} holds another job's run (its defaults {old.get('defaults')}, sweep "
            f"{old.get('sweep')}, prompt column {old.get('prompt_column')!r}; this job: defaults "
            f"{config.defaults}, sweep {[[a, v] for a, v in config.sweep]}, prompt column "
            f"{config.prompt_column!r}). Nothing was changed. Use another --out for this job.")
    return existing


def write_job_json(config: JobConfig, plan: Plan) -> None:
    from .results import write_atomic
    refused = sum(1 for t in plan.tasks if t.problem)
    doc = {"fingerprint": config.fingerprint(), "batchgen_version": __version__,
           "job": config.public_dict(), "tasks": len(plan.tasks), "refused": refused,
           "sweep_points": plan.points, "updated_at": time.time()}
    write_atomic(Path(config.out) / "job.json", json.dumps(doc, indent=2, default=str).encode())


# ---- sending ----------------------------------------------------------------------------

class Sender:
    """Sends the pending tasks with `concurrency` workers and records each outcome."""

    def __init__(self, config: JobConfig, client, store, journal, state, progress=None,
                 spent_usd: float = 0.0):
        self.config = config
        self.client = client
        self.store = store
        self.journal = journal
        self.state = state          # the journal's state, kept current as records are appended
        self.progress = progress
        self.policy = RetryPolicy(max_retries=config.max_retries, base_s=config.backoff_base)
        self.pacer = AdaptivePacer()
        self.spacer = Spacer(config.rpm) if config.rpm else None
        self.rng = random.Random()
        self.spent_usd = spent_usd
        self.stopped: Optional[str] = None
        self.stop_message: Optional[str] = None
        self.requests_sent = 0
        self.finished = 0
        self._wake = asyncio.Event()        # set when the run must stop: cuts retry sleeps short

    def stop(self, code: str, message: str) -> None:
        if self.stopped is None:
            self.stopped = code
            self.stop_message = message
        self._wake.set()

    async def run(self, tasks) -> None:
        queue = iter(tasks)
        workers = [asyncio.ensure_future(self._worker(queue)) for _ in range(self.config.concurrency)]
        self._workers = workers
        outcomes = await asyncio.gather(*workers, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                # A bug, not a task outcome: say so loudly, but still write what was done.
                log.error("a worker failed", exc_info=outcome)
                self.stop("internal_error", f"internal error ({outcome!r}); what finished is saved; "
                                            "please report it, then run the same command again")

    def cancel_in_flight(self) -> None:
        for w in getattr(self, "_workers", ()):
            w.cancel()

    async def _worker(self, queue) -> None:
        for task in queue:
            if self.stopped:
                return
            if not self._within_budget(task):
                return
            await self._run_task(task)

    def _within_budget(self, task: Task) -> bool:
        if self.config.max_cost is None:
            return True
        cost = models.estimate_cost(task.params) or 0.0
        if self.spent_usd + cost > self.config.max_cost + 1e-9:
            self.stop("budget_exceeded",
                      f"the budget --max-cost {self.config.max_cost:g} USD would be passed "
                      f"(estimated spend so far {self.spent_usd:.2f} USD); rerun with a larger --max-cost to go on")
            return False
        self.spent_usd += cost
        return True

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _run_task(self, task: Task) -> None:
        body = self.client.encode_body(task.prompt, task.params)
        attempts = failures = rate_limited = 0
        started = time.monotonic()
        try:
            while True:
                await self.pacer.acquire()
                if self.spacer:
                    await self.spacer.acquire(task.images_expected)
                if self.stopped:
                    self._record_not_done(task, attempts)
                    return
                attempts += 1
                self.requests_sent += 1
                sent_at = time.monotonic()
                try:
                    record = await self._attempt(task, body)
                except RequestError as error:
                    decision = classify(error)
                    if decision is Decision.STOP:
                        self.stop(error.code, f"{error.code} (HTTP {error.http_status}): {error.message} — "
                                              f"{stop_advice(error)}")
                        self._record_not_done(task, attempts)
                        return
                    if decision is Decision.RETRY:
                        # 429s are the server pacing us, not a fault of this task: they have a
                        # budget of their own so a storm does not use up --max-retries.
                        if is_rate_limited(error):
                            self.pacer.on_rate_limited(error.retry_after, sent_at)
                            rate_limited += 1
                            retry = rate_limited <= MAX_RATE_LIMITED_RETRIES
                        else:
                            failures += 1
                            retry = failures <= self.policy.max_retries
                        if retry and self.stopped:
                            self._record_not_done(task, attempts)
                            return
                        if retry:
                            if not is_rate_limited(error):  # the pacer's cool-down covers 429s
                                await self._sleep_unless_stopped(
                                    self.policy.delay(failures, error.retry_after, self.rng))
                            continue
                    self._finish(task, self._error_record(task, error, attempts, started))
                    return
                record["attempts"] = attempts
                record["latency_s"] = round(time.monotonic() - sent_at, 4)
                self._finish(task, record)
                return
        except OSError as e:
            # The disk, not the API: full, read-only, gone. Nothing later can be saved either.
            try:
                self._record_not_done(task, attempts)
            except OSError:
                pass
            self.stop("write_failed", f"cannot write under {self.config.out}: {e.strerror or e}; "
                                      "free some space or fix the folder, then run the same command again")
        except asyncio.CancelledError:
            if attempts:
                self._record_not_done(task, attempts)
            raise

    async def _attempt(self, task: Task, body: bytes) -> dict:
        generation = await self.client.generate(body)
        self.pacer.on_success(generation.ratelimit)
        count = max(task.images_expected, len(generation.images))
        images = []
        for index, image in enumerate(generation.images):
            data = image.data if image.data is not None else await self.client.download(image.url)
            if len(data) < INLINE_SAVE_BYTES:
                # Handing a small image to a thread costs more (GIL hand-offs) than saving it.
                saved = self.store.save(task.task_id, index, count, data)
            else:
                saved = await asyncio.to_thread(self.store.save, task.task_id, index, count, data)
            images.append({"image_index": index, "image_path": saved.image_path, "image_url": image.url,
                           "sha256": saved.sha256, "width": saved.width, "height": saved.height,
                           "bytes": saved.bytes, "revised_prompt": image.revised_prompt})
        return {"task_id": task.task_id, "status": "ok", "images": images,
                "created": generation.created, "trace_id": generation.trace_id,
                "http_status": generation.http_status, "usage": generation.usage,
                "finished_at": round(time.time(), 3)}

    def _error_record(self, task: Task, error: RequestError, attempts: int, started: float) -> dict:
        return {"task_id": task.task_id, "status": "error", "error_code": error.code,
                "error_message": error.message, "http_status": error.http_status,
                "trace_id": error.trace_id, "attempts": attempts,
                "latency_s": round(time.monotonic() - started, 4), "finished_at": round(time.time(), 3)}

    def _append(self, record: dict) -> None:
        self.journal.append(record)
        self.state.apply(record)

    def _record_not_done(self, task: Task, attempts: int) -> None:
        if attempts:
            self._append({"task_id": task.task_id, "status": NOT_DONE, "attempts": attempts})

    def _finish(self, task: Task, record: dict) -> None:
        self._append(record)
        self.finished += 1
        if self.finished % FREEZE_EVERY == 0:
            # Finished records stay until the end: spare every later collection from rescanning
            # them (a full one cost ~60 ms at 20,000 tasks).
            _gc.freeze_survivors()
        if self.progress is not None:
            self.progress.advance(record["status"] == "ok")


class Progress:
    """The tqdm bar: done/total, ok and error counts, rate; a resume starts at the done count."""

    def __init__(self, total: int, done: int, ok: int, errors: int, enabled: bool):
        self.ok, self.errors = ok, errors
        self._bar = None
        self._last_postfix = 0.0
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=done, unit="task", file=sys.stderr,
                             dynamic_ncols=True, smoothing=0.05, mininterval=0.2)
            self._postfix()

    def _postfix(self):
        self._bar.set_postfix_str(f"ok={self.ok} err={self.errors}", refresh=False)

    def advance(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.errors += 1
        if self._bar is not None:
            now = time.monotonic()
            if now - self._last_postfix > 0.2:
                self._last_postfix = now
                self._postfix()
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._postfix()
            self._bar.close()


# ---- the whole run ----------------------------------------------------------------------

def prepare(source, options: dict):
    """Everything that can fail on bad input, before anything is sent or written."""
    config = resolve_config(source, options)
    table = read_table(config.source, config.encoding)
    plan = make_plan(table, config)
    return config, table, plan


def run(source, *, progress: bool = False, environ=None, **options) -> Summary:
    """Run a job (a job file or a data file); the Python API behind `batchgen run`.

    Options are those of the command line, by their Python names (`out`, `prompt_column`,
    `defaults={...}`, `sweep=[('quality', ['standard', 'hd'])]`, `concurrency`, `rpm`, ...).
    Returns a Summary; raises UsageError for bad usage or input (nothing sent).
    """
    import os
    environ = os.environ if environ is None else environ
    config, table, plan = prepare(source, options)
    endpoint = None
    if not config.simulate:
        from .client import resolve_endpoint
        endpoint = resolve_endpoint(config.provider, config.base_url, environ)
    check_out_dir(config)

    coro = _run_async(config, table, plan, endpoint, progress)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a running loop (a notebook): run in a thread of its own.
    box: dict = {}

    def in_thread():
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e
    thread = threading.Thread(target=in_thread, name="batchgen-run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


async def _run_async(config: JobConfig, table, plan: Plan, endpoint, show_progress: bool) -> Summary:
    from .client import Endpoint, ImagesClient, endpoint_url
    from .results import build_results, import_writers, results_key, results_up_to_date, write_results
    from .store import ImageStore

    started = time.monotonic()
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_job_json(config, plan)
        store = ImageStore(out)
    except OSError as e:
        raise UsageError(f"cannot write the output folder {out}: {e.strerror or e}; choose another --out") from None
    store.remove_temporaries()
    state = replay(out / "journal.jsonl", out_dir=out)

    warnings = []
    for model in plan.unknown_models:
        warnings.append(f"model {model!r} is not one batchgen knows; its parameters are sent unchecked")
        log.warning(warnings[-1])

    pending, done_ok, done_err, spent = [], 0, 0, 0.0
    for task in plan.tasks:
        if task.problem:
            continue
        status = state.status(task.task_id)
        if status is None or (config.retry_failed and status == "error"):
            pending.append(task)
        elif status == "ok":
            done_ok += 1
            spent += models.estimate_cost(task.params) or 0.0
        else:
            done_err += 1
    refused = sum(1 for t in plan.tasks if t.problem)
    sendable = len(plan.tasks) - refused

    simulator = None
    if config.simulate:
        from .simulator import SimConfig, start_simulator
        simulator = await start_simulator(SimConfig())
        base = simulator.acedata_url if config.provider == "acedata" else simulator.openai_base_url
        endpoint = Endpoint(url=endpoint_url(base), token=SimConfig().token, provider=config.provider)

    bar = Progress(sendable, sendable - len(pending), done_ok, done_err, show_progress and bool(pending))
    sender = built = None
    try:
        with _gc.sending(), Journal(out / "journal.jsonl") as journal:
            async with ImagesClient(endpoint, config.concurrency, config.timeout) as client:
                sender = Sender(config, client, store, journal, state, bar, spent_usd=spent)
                with _signals(sender):
                    early = asyncio.get_running_loop().call_later(IMPORT_WRITERS_AFTER_S, import_writers)
                    try:
                        await sender.run(pending)
                    finally:
                        early.cancel()
            unfinished_code = sender.stopped or "interrupted"
            unfinished_message = sender.stop_message or "not finished; run the same command again to finish it"
            syncing = None
            if journal.appended or state.unsynced:
                # Flushing the filesystem waits on the disk (seconds after a big run): the
                # results are built meanwhile. Submitted now, so the thread starts at once.
                syncing = asyncio.get_running_loop().run_in_executor(None, journal.mark_synced)
            try:
                if journal.appended:
                    built = build_results(plan, state, unfinished_code, unfinished_message, table)
            finally:
                if syncing is not None:
                    await syncing
    finally:
        bar.close()
        if simulator is not None:
            await simulator.close()

    # After the synced marker: the key includes the journal's length.
    key = results_key(plan, unfinished_code, unfinished_message, out / "journal.jsonl")
    images = None if journal.appended else results_up_to_date(out, key)
    if images is None:
        if built is None:
            built = build_results(plan, state, unfinished_code, unfinished_message, table)
        # Written in a thread (the write fsyncs) so a signal is still handled.
        images = await asyncio.to_thread(write_results, out, built, key)
    return _summarise(config, plan, state, images, sender, time.monotonic() - started, warnings)


def _summarise(config, plan, state, images, sender, elapsed, warnings) -> Summary:
    ok_tasks = errors = not_done = 0
    by_code: dict = {}
    cost = 0.0
    cost_known = True
    for task in plan.tasks:
        if task.problem:
            errors += 1
            by_code["invalid_params"] = by_code.get("invalid_params", 0) + 1
            continue
        status = state.status(task.task_id)
        if status is None:
            not_done += 1
            code = sender.stopped or "interrupted"
            by_code[code] = by_code.get(code, 0) + 1
        elif status == "ok":
            ok_tasks += 1
            price = models.estimate_cost(task.params)
            if price is None:
                cost_known = False
            else:
                cost += price
        else:
            errors += 1
            code = state.final(task.task_id).get("error_code")
            by_code[code] = by_code.get(code, 0) + 1
    return Summary(out=str(config.out), total=len(plan.tasks), ok=ok_tasks, errors=errors,
                   not_done=not_done, by_code=by_code, images=images,
                   requests_sent=sender.requests_sent, elapsed_s=round(elapsed, 2),
                   est_cost_usd=round(cost, 4) if cost_known else None,
                   stopped=sender.stopped, stop_message=sender.stop_message, warnings=warnings)


class _signals:
    """Ctrl-C once: stop launching, let requests in flight finish (up to GRACE_S). Twice: stop now."""

    def __init__(self, sender: Sender):
        self.sender = sender
        self.installed = []
        self.count = 0

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal)
                self.installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        return self

    def _on_signal(self):
        loop = asyncio.get_running_loop()
        self.count += 1
        if self.count == 1:
            self.sender.stop("interrupted", "interrupted; run the same command again to finish")
            log.warning("stopping: no new requests; waiting up to %ds for those in flight "
                        "(Ctrl-C again to stop at once)", GRACE_S)
            loop.call_later(GRACE_S, self.sender.cancel_in_flight)
        else:
            self.sender.cancel_in_flight()

    def __exit__(self, *exc):
        loop = asyncio.get_running_loop()
        for sig in self.installed:
            loop.remove_signal_handler(sig)
