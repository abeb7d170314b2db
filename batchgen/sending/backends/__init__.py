"""Ways to send a job's pending tasks. A backend takes the pending tasks, sends them, and hands
each outcome to a recorder; it honours the run's stop switch and budget. The runner picks one
by the job's `mode`; a new way to send (OpenAI's Batch API) is a new module here and one entry
in BACKENDS.

The sending layer: a backend knows the client and the limits, and reaches the journal and the
image store only through the objects it is given.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Iterable, Optional, Protocol

from batchgen.exceptions import UsageError
from batchgen.rules import pricing
from batchgen.util.logs import log_field, log_text

# mode -> "module:class", imported when chosen so a run loads only the backend it uses.
BACKENDS = {"live": "batchgen.sending.backends.live:LiveBackend", "batch": "batchgen.sending.backends.batch:BatchBackend"}
MODES = tuple(BACKENDS)

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where a backend's outcomes go (the runner's journal, state and progress bar)."""

    def finished(self, record: dict) -> None: ...          # a final outcome: "ok" or "error"
    def not_done(self, task_id: str, attempts: int) -> None: ...   # sent, but the run stopped


class StopSwitch:
    """Why the run stops early (a result error code and what to do), shared by everyone."""

    def __init__(self):
        self.code: Optional[str] = None
        self.message: Optional[str] = None
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.code is not None

    def __call__(self, code: str, message: str) -> None:
        if self.code is None:
            self.code, self.message = code, message
            log.info("stop code=%s message=%s", log_field(code), log_text(message))
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the run stops meanwhile."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


class Budget:
    """--max-cost: the estimated spend, finished images of earlier runs included. Every
    billable answer counts, a 200 whose image could not be used (and is asked again) too."""

    def __init__(self, max_cost: Optional[float], spent_usd: float = 0.0, mode: str = "live", prices=None):
        self.max_cost = max_cost
        self.spent_usd = spent_usd
        self.mode = mode            # the Batch API costs less
        self.prices = prices or pricing.load()
        # Tasks of one sweep point share one params dict: priced once (holding it keeps the id unique).
        self._estimates: dict = {}

    def estimate(self, params: dict) -> float:
        cached = self._estimates.get(id(params))
        if cached is None or cached[0] is not params:
            cached = self._estimates[id(params)] = (params, self.prices.estimate(params, self.mode) or 0.0)
        return cached[1]

    def take(self, params: dict, stop: StopSwitch) -> bool:
        """Count an answer's estimated cost before asking; False (and the run stops) when it
        would pass the budget."""
        cost = self.estimate(params)
        if self.max_cost is not None and self.spent_usd + cost > self.max_cost + 1e-9:
            stop("budget_exceeded",
                 f"the budget --max-cost {self.max_cost:g} USD would be passed (estimated spend "
                 f"so far {self.spent_usd:.2f} USD); rerun with a larger --max-cost to go on")
            return False
        self.spent_usd += cost
        return True

    def answered(self, params: dict, usage) -> float:
        """A billable answer came: its cost from its usage when it has one (the estimate taken
        for it is replaced), else the estimate. Returns the cost."""
        actual = None if usage is None else self.prices.from_usage(params.get("model"), usage, self.mode)
        if actual is None:
            return self.estimate(params)
        self.spent_usd += actual - self.estimate(params)
        return actual


class SendBackend(Protocol):
    """What the runner needs of a backend. Made as
    `Backend(config, endpoint, images, recorder, budget, stop)`; `images.save(task_id, index,
    n, data)` checks, hashes and writes one image."""
    mode: str
    requests_sent: int

    async def __aenter__(self): ...
    async def __aexit__(self, *exc): ...
    async def send(self, tasks: Iterable) -> None: ...
    def cancel_in_flight(self) -> None: ...
    def busy(self) -> bool: ...                  # a request is on the wire


def backend_for(mode: str) -> type[SendBackend]:
    """The backend class for a mode."""
    try:
        module, _, name = BACKENDS[mode].partition(":")
    except KeyError:
        raise UsageError(f"mode {mode!r} is unknown; use one of {', '.join(MODES)}") from None
    return getattr(importlib.import_module(module), name)
