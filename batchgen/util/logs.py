"""Where batchgen's log lines go: the one place that configures logging handlers.

Library modules only log (one logger per module, under "batchgen"); the CLI and the Python API
call this module to show those lines. By default only warnings reach stderr, as
"batchgen: <message>". Verbose (-v) shows every line from INFO up, and a log file receives
them too, in the format the README documents ("Logs"):

    2026-05-01T10:22:03.123Z INFO batchgen.sending.backends.live: attempt task=0a1b2c3d4e5f6789 try=1 ...

Times are UTC. No line holds the token: what a server said is redacted by the client before
anyone sees it, and an attempt's line carries codes and numbers, never a request or a body.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Iterator, Optional

from batchgen.exceptions import UsageError

LOGGER = "batchgen"
LINE_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
FIELD_MAX = 100


def log_field(text: object) -> str:
    """A server's word (an error code) as one field of a line: printable, no spaces, bounded,
    so it can neither forge a line nor split a field."""
    text = str(text)[:FIELD_MAX]
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "-"


def log_text(text: object) -> str:
    """A message that may hold a server's words, kept on its one line."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def _formatter() -> logging.Formatter:
    formatter = logging.Formatter(LINE_FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    return formatter


class StderrHandler(logging.Handler):
    """batchgen's lines on stderr, written around a progress bar when one is drawn. Quiet: a
    warning as "batchgen: <message>"; verbose: every line, with its time and module."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.verbose = False
        self.setFormatter(_formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.verbose:
                text = self.format(record)
            else:
                text = f"batchgen: {record.getMessage()}"
                if record.exc_info:
                    import traceback
                    text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
        except (OSError, ValueError):       # stderr closed, a broken pipe: the run goes on
            pass


def _stderr_of(logger: logging.Logger) -> Optional[StderrHandler]:
    return next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)


def install_stderr() -> StderrHandler:
    """The "batchgen" logger's stderr handler, installed once (the CLI does it at start)."""
    logger = logging.getLogger(LOGGER)
    handler = _stderr_of(logger)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
        logger.propagate = False
    return handler


@contextlib.contextmanager
def logging_to(verbose: bool = False, log_file: Optional[str] = None) -> Iterator[None]:
    """For the block: verbose lines on stderr, and/or every line from INFO up appended to
    `log_file`. Without either, nothing changes (and per-attempt lines cost nothing)."""
    if not verbose and not log_file:
        yield
        return
    logger = logging.getLogger(LOGGER)
    added: list[logging.Handler] = []
    if log_file:
        try:
            file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write the log file {log_file}: {e.strerror or e}; "
                             "give another --log-file") from None
        file_handler.setFormatter(_formatter())
        file_handler.setLevel(logging.INFO)
        added.append(file_handler)
    stderr = _stderr_of(logger)
    if stderr is None and (verbose or not logging.getLogger().handlers):
        # Called from Python without the CLI: a handler of ours would otherwise hide the
        # warnings that Python's last-resort handler prints when nobody handles them.
        stderr = StderrHandler()
        added.append(stderr)
    was = (logger.level, logger.propagate)
    stderr_was = (stderr.level, stderr.verbose) if stderr is not None else None
    for handler in added:
        logger.addHandler(handler)
    if stderr in added:
        logger.propagate = False
    if verbose:
        assert stderr is not None       # found or made above when verbose
        stderr.verbose = True
        stderr.setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(was[0])
        logger.propagate = was[1]
        if stderr is not None and stderr_was is not None:
            stderr.setLevel(stderr_was[0])
            stderr.verbose = stderr_was[1]
        for handler in added:
            logger.removeHandler(handler)
            handler.close()
