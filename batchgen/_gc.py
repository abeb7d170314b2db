"""Pausing the cyclic garbage collector while building millions of acyclic objects.

Planning a million rows or replaying a long journal creates objects that never form cycles;
the collector would rescan the growing heap again and again (half the planning time).
"""
import gc
from contextlib import contextmanager


@contextmanager
def paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
