"""Ways to send a job's pending tasks. A backend takes the pending tasks, sends them, and hands
each outcome to a recorder; it honours the run's stop switch and budget. The runner picks one by
the job's mode (`rules.modes`, which names each mode's backend); a new way to send is a module
here and one `Mode` there.

The seam is declared whole below: a backend is made with everything it uses
(`Backend(config, endpoint, images, recorder, budget, stop)`) and calls nothing on them but
what `Recorder`, `ImageSaver`, `Budget` and `StopSwitch` declare; the runner calls nothing on
it but what `SendBackend` declares. A backend knows the client and the limits, and reaches
the journal and the image store only through those objects.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any, Iterable, Mapping, Optional, Protocol

from batchgen.rules import modes, pricing
from batchgen.util.logs import log_field, log_text

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where a backend's outcomes go (the runner's journal, state and progress bar): all a
    backend may call on them."""

    def finished(self, record: dict) -> None:
        """A final outcome ("ok" or "error"), as the live backend writes it."""

    def not_done(self, task_id: str, attempts: int) -> None:
        """A task sent, but the run stopped before it finished."""

    def is_final(self, task_id: str) -> bool:
        """Whether the task has a final outcome in the journal (this run's or an earlier one's)."""

    def retry(self, rate_limited: bool, pause_s: float = 0.0) -> None:
        """A task is sent again; `pause_s`: a rate-limit pause that holds every worker began."""

    def note(self, text: str) -> None:
        """A line of state for the progress bar."""

    def chunk_event(self, event: dict) -> None:
        """A step of a chunk of requests sent together ({"chunk": key, "event": ...}), written
        before the step's effect is relied on."""

    def chunks(self) -> Mapping[str, dict]:
        """Every chunk the journal knows, by key: its task ids, batch id and events so far."""

    def pace(self, pace: Mapping[str, Any]) -> None:
        """How fast the backend sends now and how much is in flight (for `status`)."""


class ImageSaver(Protocol):
    """The image store, as a backend sees it."""

    def save(self, task_id: str, index: int, n: int, data: bytes) -> Any:
        """Check, hash and write one image; returns what the record says of it."""


# The stops of a run that submitted its tasks and left them running on the server (--no-wait):
# exit status 4, run again to collect.
BATCH_IN_PROGRESS = "batch_in_progress"     # Batch API batches still running (--no-wait)
TASKS_IN_PROGRESS = "tasks_in_progress"     # async mode's tasks still running (--no-wait)
STILL_RUNNING = frozenset({BATCH_IN_PROGRESS, TASKS_IN_PROGRESS})


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

    def __init__(self, max_cost: Optional[float], spent_usd: float = 0.0, mode: str = "live",
                 prices: Optional[pricing.PriceTable] = None):
        self.max_cost = max_cost
        self.spent_usd = spent_usd
        self.mode = mode            # the Batch API costs less
        self.prices = prices or pricing.load()
        # Tasks of one sweep point share one params dict: priced once (holding it keeps the id unique).
        self._estimates: dict = {}

    def priced(self, params: dict) -> Optional[float]:
        """The estimated cost of a request, or None when batchgen has no price for it."""
        cached = self._estimates.get(id(params))
        if cached is None or cached[0] is not params:
            cached = self._estimates[id(params)] = (params, self.prices.estimate(params, self.mode))
        return cached[1]

    def estimate(self, params: dict) -> float:
        """What the budget counts for a request: a model without a price counts nothing (a
        --max-cost run with one is refused before anything is sent)."""
        return self.priced(params) or 0.0

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

    def answered(self, params: dict, usage) -> Optional[float]:
        """A billable answer came: its cost from its usage when it has one (the estimate taken
        for it is replaced), else the estimate. Returns the cost; None: unknown (no price),
        which is not 0."""
        actual = None if usage is None else self.prices.from_usage(params.get("model"), usage, self.mode)
        if actual is None:
            return self.priced(params)
        self.spent_usd += actual - self.estimate(params)
        return actual


class SendBackend(Protocol):
    """What the runner needs of a backend, made as
    `Backend(config, endpoint, images, recorder, budget, stop)`."""
    requests_sent: int

    def __init__(self, config: Any, endpoint: Any, images: ImageSaver, recorder: Recorder, budget: Budget,
                 stop: StopSwitch) -> None: ...

    async def __aenter__(self) -> "SendBackend": ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def send(self, tasks: Iterable) -> None:
        """Send the pending tasks; every outcome goes to the recorder."""

    def cancel_in_flight(self) -> None:
        """Stop now: what is on the wire is abandoned (and sent again by the next run)."""

    def busy(self) -> bool:
        """Whether a request is on the wire (Ctrl-C then waits for it)."""

    def pace(self) -> Optional[dict]:
        """The pace it sends at and what is in flight, as the run ends (None: not paced here)."""

    @classmethod
    async def cancel_remote(cls, endpoint: Any, timeout: float, chunks: Mapping[str, dict]) -> list:
        """`batchgen cancel`: stop what this mode left running on the server for the journal's
        `chunks`; returns [(remote id, its status after the request)]."""


def backend_for(mode: str) -> type[SendBackend]:
    """The backend class for a mode, imported when chosen so a run loads only the backend it uses."""
    module, _, name = modes.get(mode).backend.partition(":")
    return getattr(importlib.import_module(module), name)
