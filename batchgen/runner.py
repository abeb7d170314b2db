"""Wires the stages for one run: claim the output folder, resume from its journal, send the
pending tasks through the job's backend, keep each outcome, build the results.

The only module that knows both sending (a backend) and keeping (journal, store, results,
outdir). It prints nothing; progress goes to a tqdm bar when asked, messages to logging.
Where to send is given to it (an Endpoint, or a context that serves one, such as the
simulator started by the caller).
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from batchgen.exceptions import EXIT_OK, EXIT_STILL_RUNNING, EXIT_STOPPED, EXIT_TASK_ERRORS, UsageError
from batchgen.keeping.journal import NOT_DONE, VOID, Journal, replay, task_key
from batchgen.keeping.outdir import OutputFolder, Provenance
from batchgen.planning.settings import JobConfig
from batchgen.planning.summary import statuses_to_send
from batchgen.planning.tasks import Pending, Plan
from batchgen.rules import modes, pricing
from batchgen.rules.providers import Endpoint
from batchgen.sending.backends import STILL_RUNNING, Budget, SendBackend, StopSwitch, backend_for
from batchgen.showing.progress import Progress
from batchgen.util import gcpause

log = logging.getLogger(__name__)

GRACE_S = 30.0
IMPORT_WRITERS_AFTER_S = 0.2   # by then the first requests are out (and most runs are not over)
UNFINISHED_MESSAGE = "not finished; run the same command again to finish it"


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
    not_in_input: int = 0               # tasks finished earlier that this input no longer holds
    short: int = 0                      # ok tasks whose answer had fewer images than asked
    simulated: bool = False             # made by the built-in simulator: nothing was charged
    pace: Optional[dict] = None         # the pace and what was in flight as the run ended (live mode)

    def __str__(self) -> str:
        """What `batchgen run` prints: the counts, the cost, where the results are, why it stopped."""
        # Each task is counted once: ok, error (by its code) or not done (the stop's code).
        not_done = f" ({self.stopped or 'interrupted'})" if self.not_done else ""
        lines = [f"{self.ok} ok, {self.errors} error(s), {self.not_done} not done{not_done}, of {self.total} "
                 f"task(s) ({self.images} image(s); {self.requests_sent} request(s) sent this run; "
                 f"{self.elapsed_s:.1f}s)"]
        if self.by_code:
            lines.append("errors by code: " + ", ".join(f"{code} {count}" for code, count in
                                                       sorted(self.by_code.items(), key=lambda kv: -kv[1])))
        if self.est_cost_usd is not None:
            lines.append(f"estimated cost of the images: ${self.est_cost_usd:.2f}"
                         + (" (simulated: nothing was charged)" if self.simulated else ""))
        elif self.ok or self.errors:
            # Unknown is not free: a model batchgen has no price for (--prices FILE gives one).
            lines.append("estimated cost of the images: unknown (no price for a model used; "
                         "--prices FILE gives one)")
        if self.short:
            lines.append(f"{self.short} answer(s) had fewer images than asked (n); the missing ones are rows "
                         f"with error_code missing_image, and are not requested again")
        if self.not_in_input:
            lines.append(f"{self.not_in_input} task(s) finished earlier are not in this job (rows, sweep values "
                         f"or defaults it no longer asks for); they stay listed with in_job = False")
        lines.append(f"results: {self.out}/results.parquet   images: {self.out}/images/")
        if self.stopped:
            lines.append(f"stopped early: {self.stop_message}")
        return "\n".join(lines)

    def results(self):
        """OUT/results.parquet as a pandas DataFrame (one row per image; a failed task: one row)."""
        from batchgen.keeping.results import read_results
        return read_results(self.out)

    @property
    def exit_status(self) -> int:
        if self.stopped in STILL_RUNNING:
            return EXIT_STILL_RUNNING
        if self.stopped or self.not_done:
            return EXIT_STOPPED
        return EXIT_TASK_ERRORS if self.errors or self.short else EXIT_OK

    def as_json(self) -> dict:
        """`batchgen run --json` (the README lists the keys). `by_code` counts the errors only:
        the tasks not done carry the stop's code, `stopped`."""
        return {"out": self.out, "total": self.total, "ok": self.ok, "errors": self.errors,
                "not_done": self.not_done, "by_code": self.by_code, "missing_images": self.short,
                "images": self.images, "requests_sent": self.requests_sent,
                "est_cost_usd": self.est_cost_usd, "simulated": self.simulated,
                "not_in_input": self.not_in_input, "stopped": self.stopped,
                "stop_message": self.stop_message, "exit_status": self.exit_status,
                "elapsed_s": self.elapsed_s, "pace": self.pace}


class Recorder:
    """Keeps a backend's outcomes: the journal line, the in-memory state, the progress bar.
    The first outcome of a run is preceded by the run's origin line."""

    def __init__(self, journal: Journal, state, provenance: Provenance, progress: Progress,
                 folder: OutputFolder):
        self.journal, self.state, self.progress, self.folder = journal, state, progress, folder
        self._origin: Optional[dict] = provenance.as_dict()

    def _append(self, record: dict) -> None:
        if self._origin is not None:
            self.journal.append({"origin": self._origin})
            self.state.begin_origin(self._origin)
            self._origin = None
        self.state.apply(record, self.journal.append(record))

    def finished(self, record: dict) -> None:
        self._append(record)
        self.progress.advance(record["status"] == "ok")

    def not_done(self, task_id: str, attempts: int) -> None:
        self._append({"task_id": task_id, "status": NOT_DONE, "attempts": attempts})

    def is_final(self, task_id: str) -> bool:
        return self.state.status(task_id) is not None

    def chunk_event(self, event: dict) -> None:
        """A chunk's step (Batch API mode), written before the step's effect is relied on."""
        self.journal.append({"batch": event})
        self.state.batch_event(event)

    def chunks(self) -> Mapping[str, dict]:
        return self.state.batches

    def pace(self, pace: Mapping[str, Any]) -> None:
        self.folder.record_pace(dict(pace))

    def note(self, text: str) -> None:
        self.progress.note(text)

    def retry(self, rate_limited: bool, pause_s: float = 0.0) -> None:
        """A task is sent again; `pause_s`: a rate-limit pause that holds every worker began."""
        self.progress.retry(rate_limited, pause_s)


@dataclass
class Resume:
    """What the journal says is left to do."""
    pending: Pending
    done_ok: int
    done_err: int
    spent_usd: float
    sendable: int
    in_batches: int = 0     # tasks of open batches a live run leaves to them


def in_open_batches(plan: Plan, state, outcome, kinds: tuple = ("batch", "async")):
    """Which of the plan's tasks (a numpy bool array) an open remote chunk of these kinds holds
    and no final outcome has come for: sent already, so only the mode that collects them may
    touch them."""
    import numpy as np
    held = state.open_batch_keys(kinds)
    if not len(held):
        return np.zeros(len(outcome), bool)
    keys = plan.tasks.keys()
    at = np.minimum(np.searchsorted(held, keys), len(held) - 1)
    return (held[at] == keys) & (outcome == 0)


def pending_tasks(plan: Plan, state, retry_failed: bool) -> Resume:
    """What is left to send, and the spend so far (see _spent)."""
    import numpy as np
    events = state.join(plan.tasks.keys())
    outcome = _outcomes(plan, state, events)
    waiting = np.isin(outcome, [_OUTCOME_CODES[s] for s in statuses_to_send(retry_failed)])
    spent, _ = _spent(plan, state, events, outcome, plan.config.mode)
    in_batches = in_open_batches(plan, state, outcome, ("batch",))
    # Submitted but not collected: billed once they run, so the budget counts them already
    # (at the Batch API's price), until their outcomes replace the estimate.
    prices = pricing.load(plan.config.prices, plan.config.models, plan.config.provider)
    for v, count in _per_variant(plan, in_batches):
        spent += count * (prices.estimate(plan.tasks.variants[v].params, "batch") or 0.0)
    # Only the mode that collects a kind of remote work touches its tasks; any other leaves
    # them to it, never sends them twice.
    others = tuple(kind for kind in ("batch", "async") if kind != modes.get(plan.config.mode).collects)
    left = in_open_batches(plan, state, outcome, others)
    left_to_batches = int(left.sum())
    waiting &= ~left
    indices = np.flatnonzero(waiting)
    if len(plan.tasks) < 2 ** 32:       # held the whole send: 4 bytes a pending task, not 8
        indices = indices.astype(np.uint32)
    return Resume(Pending(plan.tasks, indices), int((outcome == 1).sum()),
                  int((outcome == 2).sum()), spent, len(plan.tasks) - plan.refused, left_to_batches)


_OUTCOME_CODES = {None: 0, "ok": 1, "error": 2}     # a journal status as _outcomes codes it


def _outcomes(plan: Plan, state, events=None):
    """Each task's outcome in the journal, as a numpy array: 0 none, 1 ok, 2 error, -1 refused."""
    import numpy as np
    if events is None:
        events = state.join(plan.tasks.keys())
    outcome = (state.kinds(events) & 7).astype(np.int8)
    outcome[np.frombuffer(plan.tasks.problem, np.uint32) != 0] = -1
    return outcome


def _per_variant(plan: Plan, mask) -> list:
    """(variant index, tasks) of the tasks in `mask`, for the variants that have some."""
    import numpy as np
    counts = np.bincount(np.frombuffer(plan.tasks.variant, np.uint32)[mask], minlength=len(plan.tasks.variants))
    return [(v, int(counts[v])) for v in np.flatnonzero(counts)]


def _spent(plan: Plan, state, events, outcome, mode: str) -> tuple:
    """(USD, whether every part of it has a price): what the finished tasks' answers were
    billed, as their journal lines say; an ok line from before batchgen wrote that counts at
    the estimate of `mode`'s price. Failed tasks count what they were billed (answers whose
    images could not be used), nothing more."""
    import numpy as np
    prices = pricing.load(plan.config.prices, plan.config.models, plan.config.provider)
    costs = state.costs(events)
    known = ~np.isnan(costs)
    ok = outcome == 1
    finished = ok | (outcome == 2)
    priced = known & (costs >= 0)
    spent = float(costs[finished & priced].sum())
    every_price = not bool((finished & known & ~priced).any())     # billed at no known price
    for v, count in _per_variant(plan, ok & ~known):
        price = prices.estimate(plan.tasks.variants[v].params, mode)
        every_price = every_price and price is not None
        spent += count * (price or 0.0)
    return spent, every_price


# ---- the whole run ----------------------------------------------------------------------

def run_plan(config: JobConfig, table, plan: Plan, connect, *, progress: bool = False) -> Summary:
    """Run a planned job. `connect` is an Endpoint, or an async context manager yielding one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_run_async(config, table, plan, connect, progress))
    return _run_in_thread(lambda: _run_async(config, table, plan, connect, progress))


SIGNAL_CHECK_S = 0.2     # how often the caller's thread looks for a signal while a run goes on
# Signals the caller's thread receives while a run goes on in a thread of its own. SIGINT is
# always taken over (Ctrl-C must reach the run); the others only where nobody handles them.
_FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _run_in_thread(make_coro) -> Summary:
    """Called where an event loop is already running (a notebook, or inside `asyncio.run`): the
    run gets a loop in a thread of its own, and Ctrl-C (or SIGTERM, SIGHUP) in this thread
    reaches it as it reaches a run of the command line: once, the run stops launching and
    finishes what is in flight; twice, at once. The folder is released before this returns."""
    relay = _Relay()
    box: dict = {}

    def in_thread():
        # The kernel gives a process's signal to any thread that does not block it: blocked
        # here (and in the threads this one starts), it goes to the caller's thread.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        token = _relay.set(relay)
        try:
            box["result"] = asyncio.run(_attached(relay, make_coro()))
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e
        finally:
            _relay.reset(token)
    thread = threading.Thread(target=in_thread, name="batchgen-run")
    with _forwarding(relay):
        thread.start()
        while thread.is_alive():
            try:
                # Python runs a signal's handler in this thread only between bytecodes: a
                # signal the kernel gave another of the host's threads would wait for the end
                # of a join without a timeout.
                thread.join(SIGNAL_CHECK_S)
            except KeyboardInterrupt:   # a handler of the host's raised it: the run is told
                relay.fire()
    if isinstance(box.get("error"), asyncio.CancelledError):
        raise KeyboardInterrupt("interrupted before the sending began or after it ended; "
                                "run the same call again to finish (nothing finished is lost)")
    if "error" in box:
        raise box["error"]
    return box["result"]


async def _attached(relay: "_Relay", coro):
    relay.attach(asyncio.get_running_loop(), asyncio.current_task())
    return await coro


class _Relay:
    """Interrupts from the caller's thread to a run's loop in another: to the sending's
    handler (`_signals`) while it is installed, else they cancel the run (whose cleanup
    releases the folder)."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.task: Optional[asyncio.Task] = None
        self.handler: Optional["_signals"] = None
        self.early = 0          # interrupts before the run's loop started
        # attach (the run's thread) and fire (the caller's); re-entrant, since fire is a signal
        # handler, which a second signal can interrupt
        self._lock = threading.RLock()

    def attach(self, loop, task) -> None:
        with self._lock:
            self.loop, self.task = loop, task
            early = self.early
        if early:
            self._deliver()

    def fire(self, *_signal_args) -> None:
        with self._lock:
            loop = self.loop
            if loop is None:
                self.early += 1
                return
        with contextlib.suppress(RuntimeError):     # the loop has closed: the run is over
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        if self.handler is not None:
            self.handler.on_signal()
        elif self.task is not None:
            self.task.cancel()


_relay: "contextvars.ContextVar[Optional[_Relay]]" = contextvars.ContextVar("batchgen_relay", default=None)


@contextlib.contextmanager
def _forwarding(relay: _Relay):
    """This thread's signals go to `relay` for the block (the main thread only: elsewhere a
    KeyboardInterrupt is caught instead), and the handlers before are put back after."""
    saved = []
    if threading.current_thread() is threading.main_thread():
        for sig in _FORWARDED:
            before = signal.getsignal(sig)
            if sig != signal.SIGINT and before not in (signal.SIG_DFL, None):
                continue
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, relay.fire)
                saved.append((sig, before))
    try:
        yield
    finally:
        for sig, before in saved:
            signal.signal(sig, before)


async def _run_async(config: JobConfig, table, plan: Plan, connect, show_progress: bool) -> Summary:
    started = time.monotonic()
    async with _connected(connect) as endpoint:
        if plan.edit:
            endpoint = endpoint.for_edits()
        provenance = Provenance(endpoint.provider, endpoint.public_url, config.mode, config.simulate)
        if config.out is None:
            raise UsageError("the job names no output folder; give one with --out")
        folder = OutputFolder(config.out)
        earlier = folder.claim(config.fingerprint(), config.public_dict(), provenance, _plan_info(plan))
        try:
            summary = await _send_and_keep(config, table, plan, folder, endpoint, provenance,
                                           earlier, show_progress)
            folder.record_end(summary.stopped, summary.stop_message, summary.exit_status)
        finally:
            folder.unlock()
    summary.elapsed_s = round(time.monotonic() - started, 2)
    return summary


@contextlib.asynccontextmanager
async def _connected(connect):
    if isinstance(connect, Endpoint):
        yield connect
    else:
        async with connect as endpoint:
            yield endpoint


async def _send_and_keep(config, table, plan, folder, endpoint, provenance, earlier, show_progress) -> Summary:
    from batchgen.keeping.store import ImageStore

    store = ImageStore(folder.path)
    state = replay(folder.journal_path, out_dir=folder.path)
    if folder.legacy_ids:
        state = _carry_over_legacy_ids(folder, config, table, plan, state, earlier or provenance)
    folder.remove_unrecorded_images(_finished_among(state))
    warnings = _plan_warnings(plan)
    if state.damaged:
        warnings.append(f"{state.damaged} damaged journal line(s) skipped; their tasks are sent again")
        log.warning(warnings[-1])
    todo = pending_tasks(plan, state, config.retry_failed)
    folder.record_not_in_job(_not_in_job(plan, state))
    stop = StopSwitch()
    bar = Progress(todo.sendable, todo.sendable - len(todo.pending), todo.done_ok, todo.done_err,
                   show_progress and bool(todo.pending))
    budget = Budget(config.max_cost, todo.spent_usd, config.mode,
                    pricing.load(config.prices, config.models, config.provider))
    backend: Optional[SendBackend] = None
    images = orphans = 0
    try:
        with gcpause.sending(), Journal(folder.journal_path) as journal:
            recorder = Recorder(journal, state, provenance, bar, folder)
            backend = backend_for(config.mode)(config, endpoint, store, recorder, budget, stop)
            built = await _send_then_build(folder, journal, state, plan, table, todo, stop, backend,
                                           provenance, earlier)
        images, orphans = await _write_results(folder, plan, table, state, stop, provenance, earlier,
                                               built, appended=journal.appended)
    except OSError as e:
        # The disk, after the sending: full, read-only, gone. What finished is in the journal.
        stop("write_failed", f"cannot write under {folder.path}: {e.strerror or e}; free some space "
                             "or fix the folder, then run the same command again (nothing finished is lost)")
    finally:
        bar.close()
    requests_sent = backend.requests_sent if backend is not None else 0
    summary = summarise(config, plan, state, images, stop, requests_sent, warnings)
    summary.pace = backend.pace() if backend is not None else None
    summary.not_in_input = orphans
    return summary


async def _send_then_build(folder, journal, state, plan, table, todo, stop, backend, provenance,
                           earlier):
    """Send the pending tasks, then build the results while the filesystem is flushed."""
    from batchgen.keeping.results import import_writers
    async with backend:
        with _signals(stop, backend):
            early = asyncio.get_running_loop().call_later(IMPORT_WRITERS_AFTER_S, import_writers)
            try:
                await backend.send(todo.pending)
            finally:
                early.cancel()
    if todo.in_batches:
        stop("in_batches", f"{todo.in_batches} task(s) were submitted by another mode (Batch API batches, or "
                           "async mode's AceData tasks) and are not collected yet, so they were not sent again; "
                           "run the same command with the mode that submitted them (--mode batch or --mode async) "
                           "to collect them (Batch API: or `batchgen cancel OUT`, then run again, to send them so)")
    return await _build_while_syncing(folder, journal, state, plan, table, stop, provenance, earlier)


def _carry_over_legacy_ids(folder, config, table, plan, state, origin: Provenance):
    """A folder of the previous id scheme: its finished tasks are recorded again under their
    current ids (nothing is sent again), then job.json says the journal uses the current ids.
    Synced before the mark, so a crash between the two only repeats this (harmlessly)."""
    from batchgen.planning.identity import alias_records, legacy_ids
    lines = alias_records(plan, legacy_ids(table, config, plan), state, origin.as_dict())
    if lines:
        with Journal(folder.journal_path) as journal:
            for line in lines:
                journal.append(line)
        state = replay(folder.journal_path, out_dir=folder.path)
    folder.mark_current_ids()
    return state


def _not_in_job(plan: Plan, state) -> dict:
    """What the journal holds finished that this job does not ask for (an earlier job's
    tasks), counted for `status`, which has no plan to tell them apart: ok, errors, error codes."""
    import numpy as np
    keys = state.finished_elsewhere(np.sort(plan.tasks.keys()))
    counts: dict = {"ok": 0, "errors": 0, "by_code": {}}
    for key in keys:
        record = state.record(state.final_event(key), key)
        if not isinstance(record, dict):
            continue
        if record.get("status") == "ok":
            counts["ok"] += 1
        else:
            counts["errors"] += 1
            code = record.get("error_code")
            code = code if code is None or isinstance(code, str) else str(code)
            counts["by_code"][code] = counts["by_code"].get(code, 0) + 1
    return counts


def _finished_among(state):
    """Which of some task ids have an ok outcome in the journal, as a numpy bool array. Images
    of a legacy folder keep their old names: the id that replaced theirs decides."""
    import numpy as np
    replaced = state.replaced

    def among(task_ids: list):
        keys = np.fromiter((task_key(replaced.get(t, t)) for t in task_ids), np.uint64, len(task_ids))
        return (state.kinds(state.join(keys)) & 7) == _OUTCOME_CODES["ok"]
    return among


def _plan_info(plan: Plan) -> dict:
    """What job.json records of the plan; a sweep across models keeps its left-out points in
    sweep order, with why, so the report can show them as not offered."""
    info = {"tasks": len(plan.tasks), "refused": plan.refused, "sweep_points": plan.points}
    if plan.left_out:
        from batchgen.planning.settings import point_label, sweep_points
        info["sweep_points"] = sweep_points(plan.config.sweep)
        info["not_offered"] = {point_label(point): why for point, why in plan.left_out}
    return info


def _plan_warnings(plan: Plan) -> list:
    """What the plan warns of (--param, misspelt columns, models batchgen does not know), logged."""
    warnings = list(plan.warnings) + [f"model {model!r} is not one batchgen knows; its parameters are sent "
                                      "unchecked" for model in plan.unknown_models]
    for warning in warnings:
        log.warning(warning)
    return warnings


def _labels(stop: StopSwitch) -> tuple[str, str]:
    return stop.code or "interrupted", stop.message or UNFINISHED_MESSAGE


async def _build_while_syncing(folder, journal, state, plan, table, stop, provenance, earlier):
    """Flushing the filesystem waits on the disk (seconds after a big run): the results are
    built meanwhile. Returns them, or None when nothing was appended (they may be current)."""
    from batchgen.keeping.results import build_results
    syncing = None
    if journal.appended or state.unsynced:
        # Submitted now, so the thread starts at once.
        syncing = asyncio.get_running_loop().run_in_executor(None, journal.mark_synced)
    try:
        if journal.appended:
            return build_results(plan, state, *_labels(stop), table, provenance, earlier, folder.path)
        return None
    finally:
        if syncing is not None:
            await syncing


async def _write_results(folder, plan, table, state, stop, provenance, earlier, built, appended) -> tuple:
    """results.parquet and metadata.jsonl, unless those on disk were built from the same plan,
    journal and labels. Returns (images, tasks listed that the input no longer holds)."""
    from batchgen.keeping.results import build_results, results_key, results_up_to_date, write_results
    # After the synced marker: the key includes the journal's length.
    key = results_key(plan, *_labels(stop), folder.journal_path, provenance)
    found = None if appended else results_up_to_date(folder.path, key)
    if found is not None:
        return found
    if built is None:
        built = build_results(plan, state, *_labels(stop), table, provenance, earlier, folder.path)
    _void_damaged(folder, state)
    # Written in a thread (the write fsyncs) so a signal is still handled.
    images = await asyncio.to_thread(write_results, folder.path, built, key)
    return images, built.not_in_input


def _void_damaged(folder, state) -> None:
    """Final lines found damaged while the results were built: say in the journal that those
    tasks are not done, so the next run sends them again."""
    damaged = state.damaged_tasks()
    if damaged:
        with Journal(folder.journal_path) as journal:
            for task_id in damaged:
                journal.append({"task_id": task_id, "status": VOID})
        log.warning("%d journal line(s) were damaged; their tasks are sent again by the next run", len(damaged))


def summarise(config, plan, state, images, stop: StopSwitch, requests_sent: int, warnings) -> Summary:
    import numpy as np
    events = state.join(plan.tasks.keys())
    outcome = _outcomes(plan, state, events)
    ok = outcome == 1
    short = ok & ((state.kinds(events) & 8) != 0)
    # Error codes in the order of their first task; tasks not done carry the stop's code, in
    # one place (Summary.stopped), and answers short of images are counted apart (`short`).
    first: dict = {}           # error code -> (first task with it, tasks)
    refused = outcome == -1
    if refused.any():
        first["invalid_params"] = (int(refused.argmax()), int(refused.sum()))
    for k in np.flatnonzero(outcome == 2).tolist():
        code = (state.record(int(events[k])) or {}).get("error_code")
        at, count = first.get(code, (k, 0))
        first[code] = (min(at, k), count + 1)
    by_code = {code: count for code, (_, count) in sorted(first.items(), key=lambda item: item[1][0])}
    cost, cost_known = _spent(plan, state, events, outcome, config.mode)
    errors = int((outcome == 2).sum()) + plan.refused
    return Summary(out=str(config.out), total=len(plan.tasks), ok=int(ok.sum()), errors=errors,
                   not_done=int((outcome == 0).sum()), by_code=by_code, images=images, requests_sent=requests_sent,
                   elapsed_s=0.0, est_cost_usd=round(cost, 4) if cost_known else None,
                   stopped=stop.code, stop_message=stop.message, warnings=warnings, short=int(short.sum()),
                   simulated=bool(config.simulate))


class _signals:
    """Ctrl-C (or SIGTERM, SIGHUP) once: stop launching, let requests in flight finish (up to
    GRACE_S). Twice: stop now. In the main thread the loop's own handlers; in a run's thread
    of its own (see _run_in_thread), what the caller's thread relays."""

    def __init__(self, stop: StopSwitch, backend):
        self.stop = stop
        self.backend = backend
        self.installed: list[signal.Signals] = []
        self.count = 0
        self.relay: Optional[_Relay] = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            self.relay = _relay.get()
            if self.relay is not None:
                self.relay.handler = self
            return self
        loop = asyncio.get_running_loop()
        for sig in _FORWARDED:
            try:
                loop.add_signal_handler(sig, self.on_signal)
                self.installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return self

    def on_signal(self):
        loop = asyncio.get_running_loop()
        self.count += 1
        if self.count == 1:
            self.stop("interrupted", "interrupted; run the same command again to finish")
            if not self.backend.busy():
                self.backend.cancel_in_flight()     # nothing on the wire: only waits to cut short
                return
            log.warning("stopping: no new requests; waiting up to %ds for those in flight "
                        "(Ctrl-C again to stop at once)", GRACE_S)
            loop.call_later(GRACE_S, self.backend.cancel_in_flight)
        else:
            self.backend.cancel_in_flight()

    def __exit__(self, *exc):
        if self.relay is not None:
            self.relay.handler = None
        loop = asyncio.get_running_loop()
        for sig in self.installed:
            loop.remove_signal_handler(sig)
