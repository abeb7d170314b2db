"""Batch API mode's memory per pending task: what the backend and the journal's state hold.

A plan of `--rows` prompts (gpt-image-2, one sweep point) is made in this process; then, each
measured with tracemalloc (what stays held, and the peak while it is made):
- the backend's lookup of pending tasks by id, as it is (`TasksById` over the runner's
  Pending), against the yardstick of holding every pending task as an object (a list and a
  dict of `Task`s, as the backend did before);
- the journal state's task ids of the chunks (50,000 a chunk), as replay keeps them
  (`ChunkIds`, read from journal lines), against the ids as Python lists of texts.
No server is involved: the rest of a batch run holds one chunk at a time.

    .venv/bin/python bench/batch_memory.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log  # noqa: E402

CHUNK = 50_000


def measure(label: str, make) -> object:
    tracemalloc.start()
    started = time.perf_counter()
    made = make()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    log(f"{label}: held {held / 1e6:,.0f} MB, peak {peak / 1e6:,.0f} MB, "
        f"{time.perf_counter() - started:.1f} s")
    return made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchgen.commands import prepare
    from batchgen.planning.identity import ChunkIds
    from batchgen.planning.tasks import Pending
    from batchgen.sending.backends.batch import TasksById

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.parquet"
        pq.write_table(pa.table({"prompt": [f"a small watercolour of a harbour, number {i}"
                                            for i in range(args.rows)]}), path)
        _, _, plan = prepare(str(path), {"out": str(Path(tmp) / "out"), "defaults": {
            "model": "gpt-image-2", "quality": "low", "size": "1024x1024"}})
    log(f"batch memory: {len(plan.tasks):,} pending tasks, chunks of {CHUNK:,}")
    pending = Pending(plan.tasks, np.arange(len(plan.tasks), dtype=np.uint32))
    measure("pending tasks by id, as objects (yardstick)",
            lambda: (lambda tasks: (tasks, {t.task_id: t for t in tasks}))(list(pending)))
    measure("pending tasks by id, TasksById", lambda: TasksById(pending))
    keys = plan.tasks.keys()
    lines = [orjson.dumps({"task_ids": ["%016x" % k for k in keys[i:i + CHUNK].tolist()]})
             for i in range(0, len(keys), CHUNK)]
    measure("chunks' task ids read back, as lists of texts (yardstick)",
            lambda: [orjson.loads(line)["task_ids"] for line in lines])
    measure("chunks' task ids read back, ChunkIds",
            lambda: [ChunkIds.of(orjson.loads(line)["task_ids"]) for line in lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
