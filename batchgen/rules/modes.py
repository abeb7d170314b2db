"""The ways to send, as facts every layer may read: a mode's name, the backend that sends it
(imported only when a run chooses it), its price factor, the checks a job passes before
anything is sent, and what `batchgen plan` notes about it. What differs by mode lives here or
on the backend, never in an `if mode == ...` elsewhere.

A new way to send is a `Mode` here (added to MODES) and its backend in `sending/backends/`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from batchgen.exceptions import UsageError
from batchgen.rules import models

# OpenAI's Batch API: at most this many requests in one input file.
MAX_BATCH_REQUESTS = 50_000

Namer = Callable[[str], str]


class Mode:
    """A way to send. Subclasses override what differs; the defaults are the live mode's."""
    name: str = ""
    backend: str = ""                    # "module:Class", imported when chosen
    plan_note: Optional[str] = None      # a line `batchgen plan` adds under its table
    # The kind of remote chunk in the journal this mode collects itself ("batch": Batch API
    # batches, "async": AceData tasks); another mode leaves such tasks to it, never sends them twice.
    collects: Optional[str] = None

    def price_factor(self, batch_discount: float) -> float:
        """What this mode's price is of the live one (the price table's Batch discount given)."""
        return 1.0

    def check_settings(self, config: Any, name: Namer) -> None:
        """Raises UsageError for settings this mode cannot send with (`name` spells an option
        as the user gave it: --no-wait, or a job file's key)."""

    def check_models(self, variants: list) -> None:
        """Raises UsageError for models this mode cannot send to (each variant's `params`)."""


class LiveMode(Mode):
    name = "live"
    backend = "batchgen.sending.backends.live:LiveBackend"

    def check_settings(self, config: Any, name: Namer) -> None:
        if config.no_wait:
            raise UsageError("--no-wait needs --mode batch or --mode async (a live run sends and waits for each "
                             "request)")


class BatchMode(Mode):
    name = "batch"
    backend = "batchgen.sending.backends.batch:BatchBackend"
    plan_note = "costs at the Batch API's price: half the live one"
    collects = "batch"

    def price_factor(self, batch_discount: float) -> float:
        return batch_discount

    def check_settings(self, config: Any, name: Namer) -> None:
        if config.provider != "openai":
            raise UsageError(f"--mode batch is OpenAI's Batch API: use --provider openai (with OPENAI_API_KEY), "
                             f"not {config.provider!r}")

    def check_models(self, variants: list) -> None:
        default = models.load().default_model("openai")
        refused = sorted({v.params.get("model") or f"{default} (no model set)"
                          for v in variants if not models.batch_allowed(v.params.get("model"))})
        if refused:
            raise UsageError(f"the Batch API makes images with the GPT image models only, not {', '.join(refused)}; "
                             "set --model gpt-image-2 (or another GPT image model), or use --mode live")


class AsyncMode(Mode):
    """AceData's callback mode: a task id at once, the outcome from the Tasks API."""
    name = "async"
    backend = "batchgen.sending.backends.tasks:AsyncBackend"
    plan_note = "AceData callback mode: tasks submitted, outcomes collected from the Tasks API (free)"
    collects = "async"

    def check_settings(self, config: Any, name: Namer) -> None:
        if config.provider != "acedata":
            raise UsageError(f"--mode async is AceData's callback mode and Tasks API: use --provider acedata "
                             f"(with ACEDATA_API_TOKEN), not {config.provider!r}")
        url = config.callback_url
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))
                                    and len(url) > len("https://")):
            raise UsageError(f"{name('callback_url')} must be an http(s) URL (e.g. "
                             f"https://example.org/hooks/batchgen), not {url!r}")


MODES: dict[str, Mode] = {mode.name: mode for mode in (LiveMode(), BatchMode(), AsyncMode())}
NAMES = tuple(MODES)


def get(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"mode {name!r} is unknown; use one of {', '.join(MODES)}") from None
