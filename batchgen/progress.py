"""The progress bar of a run, on stderr. A display that fails (stderr closed, a broken pipe)
is switched off; it never stops the work."""
from __future__ import annotations

import sys
import time


class Progress:
    """The tqdm bar: done/total, ok and error counts, rate; a resume starts at the done count."""

    def __init__(self, total: int, done: int, ok: int, errors: int, enabled: bool):
        self.ok, self.errors = ok, errors
        self._bar = None
        self._last_postfix = 0.0
        if enabled:
            from tqdm import tqdm
            try:
                self._bar = tqdm(total=total, initial=done, unit="task", file=sys.stderr,
                                 dynamic_ncols=True, smoothing=0.05, mininterval=0.2)
                self._postfix()
            except (OSError, ValueError):
                self._bar = None

    def _postfix(self):
        extra = f" {self._note}" if getattr(self, "_note", "") else ""
        self._bar.set_postfix_str(f"ok={self.ok} err={self.errors}{extra}", refresh=False)

    def note(self, text: str) -> None:
        """A word beside the counts (a batch's remote progress, a wait)."""
        self._note = text
        if self._bar is not None:
            try:
                self._postfix()
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
                now = time.monotonic()
                if now - self._last_postfix > 0.2:
                    self._last_postfix = now
                    self._postfix()
                self._bar.update(1)
            except (OSError, ValueError):     # ValueError: a closed file
                self._give_up()

    def close(self):
        if self._bar is not None:
            try:
                self._postfix()
                self._bar.close()
            except (OSError, ValueError):
                self._give_up()

    def _give_up(self):
        bar, self._bar = self._bar, None
        try:
            bar.disable = True
        except AttributeError:
            pass
