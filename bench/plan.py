"""Plan: `batchgen plan` must stay quick on a million rows.

Input: a Parquet file of 1,000,000 rows (distinct prompts plus pass-through columns `item_id`,
`category`, `seed`), planned with `--model dall-e-3 --sweep quality=standard,hd --sweep
style=vivid,natural` (4 sweep points, 4,000,000 tasks).  Each round runs `batchgen plan` as a whole
process; reported: its wall time and peak RSS (ru_maxrss of the plan process alone).

Targets: median wall <= 30 s and peak RSS <= 3 GB.

    .venv/bin/python bench/plan.py [--rows 1000000] [--rounds 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

MAX_WALL = 30.0
MAX_RSS_MB = 3000.0
SWEEP = ["--sweep", "quality=standard,hd", "--sweep", "style=vivid,natural"]


def make_parquet(path: Path, rows: int, repeat: int = 1) -> Path:
    """`repeat` > 1: the prompts repeat, each on about `repeat` rows spread over the input
    (row i asks for item i mod rows/repeat), as an input joined from several copies would."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.array(range(rows), type=pa.int64())
    items = ids if repeat <= 1 else pa.array(np.arange(rows) % max(1, -(-rows // repeat)))
    prompts = pc.binary_join_element_wise("a watercolour of item", pc.cast(items, pa.string()), " ")
    cats = ["animal", "city", "landscape", "portrait", "still life"]
    category = pa.DictionaryArray.from_arrays(
        pa.array([i % len(cats) for i in range(rows)], type=pa.int32()), pa.array(cats))
    seed = pc.multiply(ids, pa.scalar(7919, pa.int64()))
    table = pa.table({"prompt": prompts, "item_id": ids, "category": category, "seed": seed})
    pq.write_table(table, path)
    return path


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=None, rounds=3)
    p.add_argument("--rows", type=int, default=1_000_000, help="input rows (default 1000000)")
    args = p.parse_args(argv)
    walls, peaks = [], []
    with common.workdir(args.keep) as tmp:
        t0 = common.now()
        data = make_parquet(tmp / "prompts.parquet", args.rows)
        log(f"plan: {args.rows} rows x 4 sweep points, dall-e-3 "
            f"(input written in {common.now() - t0:.1f} s, {data.stat().st_size / 1e6:.0f} MB)")
        cmd = [common.PYTHON, "-m", "batchgen", "plan", str(data), "--out", str(tmp / "out"),
               "--model", "dall-e-3", *SWEEP]
        for r in range(1, args.rounds + 1):
            m = common.measure(cmd, log_dir=tmp, name=f"plan-{r}", cwd=tmp)
            walls.append(m.wall)
            peaks.append(m.maxrss_mb)
            log(f"round {r}: wall {m.wall:.2f} s, cpu {m.cpu:.1f} s, peak RSS {m.maxrss_mb:.0f} MB")
            if r == 1:
                log("  plan said: " + "\n  plan said: ".join(m.stdout.strip().splitlines()[:12]))
    wall, peak = common.median(walls), common.median(peaks)
    verdict = "ok" if wall <= MAX_WALL and peak <= MAX_RSS_MB else "MISSED"
    log(f"RESULT plan: wall {wall:.2f} s, peak RSS {peak:.0f} MB for {args.rows} rows x 4 sweep "
        f"points (target <= {MAX_WALL:.0f} s, <= {MAX_RSS_MB / 1000:.0f} GB) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
