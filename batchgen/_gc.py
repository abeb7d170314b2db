"""The cyclic garbage collector, kept out of the way of work that creates no cycles.

Planning a million rows or replaying a long journal creates objects that never form cycles;
the collector would rescan the growing heap again and again (half the planning time).
The send loop creates no cyclic garbage either in the normal course (its collections free
nothing), yet the collector would rescan the requests in flight ~10 times a second and every
finished record at each full collection.
"""
import gc
from contextlib import contextmanager

# Young-generation threshold while sending (CPython's default is 700): ~15x fewer collections
# of the same ~3,000 in-flight objects; the rare cycles (an exception's traceback) still go.
SENDING_THRESHOLD = 10_000


@contextmanager
def paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def sending():
    """For the send loop: what exists now (the plan, the journal's state) is frozen out of
    the collector's sight, and young collections are rarer. Undone at the end, because a
    notebook runs many jobs in one process."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], SENDING_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def freeze_survivors() -> None:
    """Move what is alive now out of sight of later collections (O(1)). For the send loop's
    finished records, which live to the end of the run (sending() unfreezes them)."""
    gc.freeze()
