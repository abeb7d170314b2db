"""The progress bar of a run, on stderr. A display that fails (stderr closed, a broken pipe)
is switched off; it never stops the work."""
from __future__ import annotations

import sys
import time
from typing import Any, MutableMapping

REDRAW_S = 0.2      # a retry redraws the bar at most this often (a storm of them would cost)


def _bar_class():
    from tqdm import tqdm

    class CountingBar(tqdm):
        """A tqdm bar whose counts are read when it is drawn, so they never lag the bar."""
        counts = None       # a callable giving the text beside the bar

        @property
        def format_dict(self) -> MutableMapping[str, Any]:
            d = super().format_dict
            if self.counts is not None:
                d["postfix"] = self.counts()
            return d

    return CountingBar


class Progress:
    """The tqdm bar: done/total, ok and error counts, retries and rate-limit pauses, rate; a
    resume starts at the done count."""

    def __init__(self, total: int, done: int, ok: int, errors: int, enabled: bool):
        self.ok, self.errors = ok, errors
        self.retries = self.rate_limited = 0
        self._paused_until = 0.0       # a rate-limit pause holds every worker until then
        self._pause_s = 0.0
        self._note = ""
        self._last_redraw = 0.0
        self._bar = None
        if enabled:
            try:
                self._bar = _bar_class()(total=total, initial=done, unit="task", file=sys.stderr,
                                         dynamic_ncols=True, smoothing=0.05, mininterval=0.2)
                self._bar.counts = self.counts
                self._bar.refresh()
            except (OSError, ValueError):
                self._bar = None

    def counts(self) -> str:
        """The words beside the bar, as they are now."""
        text = f"ok={self.ok} err={self.errors}"
        if self.retries:
            text += f" retries={self.retries}"
        if self.rate_limited:
            text += f" 429s={self.rate_limited}"
        if time.monotonic() < self._paused_until:
            text += f" rate-limited: paused {self._pause_s:.0f}s"
        if self._note:
            text += f" {self._note}"
        return text

    def note(self, text: str) -> None:
        """A word beside the counts (a batch's remote progress)."""
        self._note = text
        self._redraw()

    def retry(self, rate_limited: bool, pause_s: float = 0.0) -> None:
        """A task is sent again; `pause_s` > 0: a rate-limit pause of every worker began."""
        self.retries += 1
        if rate_limited:
            self.rate_limited += 1
        if pause_s > 0:
            self._paused_until, self._pause_s = time.monotonic() + pause_s, pause_s
            self._last_redraw = 0.0     # a pause is always shown at once
        if self._bar is not None and time.monotonic() - self._last_redraw >= REDRAW_S:
            self._redraw()

    def _redraw(self) -> None:
        if self._bar is not None:
            self._last_redraw = time.monotonic()
            try:
                self._bar.refresh()
            except (OSError, ValueError):
                self._give_up()

    def advance(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.errors += 1
        if self._bar is not None:
            try:
                self._bar.update(1)
            except (OSError, ValueError):     # ValueError: a closed file
                self._give_up()

    def close(self) -> None:
        if self._bar is not None:
            try:
                self._bar.close()
            except (OSError, ValueError):
                self._give_up()

    def _give_up(self):
        bar, self._bar = self._bar, None
        if bar is None:
            return
        try:
            bar.disable = True
        except AttributeError:
            pass
