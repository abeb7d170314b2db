"""The cyclic garbage collector, kept out of the way of work that creates no cycles.

Planning a million rows or replaying a long journal creates objects that never form cycles;
the collector would rescan the growing heap again and again (a large share of planning).
The send loop creates no cyclic garbage either in the normal course (its collections free
nothing), yet the collector would rescan the requests in flight many times a second and every
finished record at each full collection (figures: bench/README.md).
"""
import gc
from contextlib import contextmanager

# Young-generation threshold while sending (CPython's default is 700): far fewer collections
# of the same in-flight objects; the rare cycles (an exception's traceback) still go.
SENDING_THRESHOLD = 10_000

# True inside a sending() that froze the heap itself, so that freeze_survivors() may add to
# what it will unfreeze; False when the host program had frozen objects of its own.
_freezing = False


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
    notebook runs many jobs in one process.

    Freezing is used only when the host program has frozen nothing itself. CPython keeps one
    permanent generation with no record of who froze what, and gc.unfreeze() thaws all of it:
    a pre-fork server that froze its heap (so its workers share those pages) would find it
    thawed and rescanned after a run. Undoing only our part is impossible, and the other ways
    out change the host's heap the other way: unfreezing then freezing again, or not
    unfreezing, would leave frozen for good everything the host had left unfrozen and whatever
    of the run is still alive (cycles among them never collected). So when
    gc.get_freeze_count() is not 0 on entry the permanent generation is left exactly as it is
    (no freeze, no unfreeze) and only the rarer young collections apply: full collections
    rescan the plan and the finished records, as they did before this module froze them.
    """
    global _freezing
    thresholds = gc.get_threshold()
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    outer, _freezing = _freezing, ours
    gc.set_threshold(max(thresholds[0], SENDING_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        _freezing = outer
        if ours:
            gc.unfreeze()


def freeze_survivors() -> None:
    """Move what is alive now out of sight of later collections (O(1)). For the send loop's
    finished records, which live to the end of the run (sending() unfreezes them). Does
    nothing where sending() does not own the freezing (the host had frozen objects)."""
    if _freezing:
        gc.freeze()
