"""What one journal for every mode costs a resume: a run (of any mode) finds the tasks held by
Batch API chunks not collected, so a live run never sends them and the budget counts them.

A journal holding `--tasks` task ids in open chunks of 50,000 (as `--mode batch --no-wait`
leaves it) is written, then timed: its replay, `Replay.open_batch_keys` (the held keys,
sorted), and the membership of as many plan keys (the runner's `in_open_batches`). No server.

    .venv/bin/python bench/open_batches.py [--tasks 1000000]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import numpy as np

from batchgen.keeping.journal import Journal, replay

CHUNK = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    tasks = parser.parse_args().tasks
    rng = random.Random(1)
    keys = np.array(sorted(rng.getrandbits(64) for _ in range(tasks)), np.uint64)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "journal.jsonl")
        with Journal(path) as journal:
            for start in range(0, tasks, CHUNK):
                journal.append({"batch": {"chunk": f"{start:016x}", "event": "planned", "at": 1.0,
                                          "task_ids": ["%016x" % k for k in keys[start:start + CHUNK].tolist()]}})
        began = time.perf_counter()
        state = replay(path)
        replayed = time.perf_counter() - began
        began = time.perf_counter()
        held = state.open_batch_keys()
        found = time.perf_counter() - began
        began = time.perf_counter()
        at = np.minimum(np.searchsorted(held, keys), len(held) - 1)
        inside = int((held[at] == keys).sum())
        joined = time.perf_counter() - began
    print(f"{tasks:,} tasks in open chunks: replay {replayed:.2f} s, open_batch_keys {found * 1000:.0f} ms, "
          f"membership of {tasks:,} plan keys {joined * 1000:.0f} ms ({inside:,} held)")


if __name__ == "__main__":
    main()
