"""Report memory: `batchgen report`'s peak RSS and wall time as the results grow.

Input, per size N (default 100,000 and 300,000 tasks): an output folder whose results.parquet is
synthesised with pyarrow in batchgen's own schema (results.SCHEMA, with the pandas metadata a
run writes, a row group of 10,000 rows as a run writes them), not made by a run: making 300,000
images through the simulator takes minutes and the report reads the table, not the run. N/2
prompts x 2 sweep points (dall-e-3, quality=standard,hd), one image per task, one task in 20 an
error (content_policy_violation or api_error), a revised prompt of about 200 characters per
image; job.json names the sweep points. Every image_path points into a pool of --pool small
PNGs (64x64) under images/pool/: the report makes each page's thumbnails, and a pool keeps that
(and the disk) a small part of the figure, which is about reading the table and writing pages.

Each round runs `batchgen report OUT` (default --per-page 50: N/100 pages) as a whole process;
printed: wall time, cpu, peak RSS (ru_maxrss of the report process alone) and the pages written.
No target: the peak should not grow with N (compare the two sizes).

    .venv/bin/python bench/report_memory.py [--sizes 100000,300000] [--rounds 1] [--per-page 50]
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

sys.path.insert(0, str(common.REPO))
ROWS_PER_GROUP = 10_000      # as results.py writes them (_CHUNK)
POINTS = ({"quality": "standard"}, {"quality": "hd"})
ENDPOINT = "http://127.0.0.1:9/openai/images/generations"


def make_pool(out: Path, count: int) -> list:
    """`count` distinct 64x64 PNGs under OUT/images/pool/; their paths relative to OUT."""
    from PIL import Image
    pool = out / "images" / "pool"
    pool.mkdir(parents=True)
    paths = []
    for i in range(count):
        im = Image.new("RGB", (64, 64), ((i * 53) % 256, (i * 97) % 256, (i * 191) % 256))
        for x in range(0, 64, 8):     # some detail, so the thumbnails are not one flat colour
            im.paste(((x * 4 + i * 7) % 256, 40, 200), (x, (x + i) % 56, x + 4, (x + i) % 56 + 8))
        im.save(pool / f"{i}.png")
        paths.append(f"images/pool/{i}.png")
    return paths


def make_results(out: Path, tasks: int, pool: list) -> None:
    """OUT/results.parquet of `tasks` tasks (see the module docstring) and OUT/job.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchgen.keeping.results import SCHEMA, with_pandas_types
    schema = with_pandas_types(SCHEMA)
    labels = [f"quality={p['quality']}" for p in POINTS]
    words = ("harbour lantern otter cliff meadow fog copper violet marble river orchard glass "
             "tram comet willow").split()
    with pq.ParquetWriter(out / "results.parquet", schema, compression="zstd") as writer:
        for start in range(0, tasks, ROWS_PER_GROUP):
            cols: dict = {name: [] for name in SCHEMA.names}
            for t in range(start, min(start + ROWS_PER_GROUP, tasks)):
                row, point = divmod(t, len(POINTS))
                prompt = f"prompt {row}: " + " ".join(words[(row + k) % len(words)] for k in range(10))
                error = t % 20 == 7
                image = None if error else pool[t % len(pool)]
                values = {
                    "task_id": hashlib.blake2b(b"%d" % t, digest_size=8).hexdigest(),
                    "row_index": row, "prompt": prompt, "model": "dall-e-3",
                    "quality": POINTS[point]["quality"], "style": None, "size": "1024x1024",
                    "response_format": "b64_json", "n": 1, "image_index": 0,
                    "status": "error" if error else "ok",
                    "revised_prompt": None if error else (prompt + ", rendered ") * 3 + words[t % len(words)],
                    "image_path": image, "sha256": None if error else hashlib.sha256(image.encode()).hexdigest(),
                    "width": None if error else 64, "height": None if error else 64,
                    "bytes": None if error else 900,
                    "error_code": ("content_policy_violation" if t % 40 == 7 else "api_error") if error else None,
                    "error_message": "Your request was rejected by the safety system" if error else None,
                    "http_status": 400 if error else 200, "attempts": 1,
                    "latency_s": 0.5 + (t * 7919 % 1000) / 250.0, "created": 1_700_000_000 + t,
                    "trace_id": None, "provider": "acedata", "endpoint": ENDPOINT, "mode": "live",
                    "simulated": True, "sweep_point": labels[point],
                    "est_cost_usd": 0.0 if error else (0.04, 0.08)[point], "in_input": True,
                }
                for name, column in cols.items():
                    column.append(values.get(name))
            writer.write_table(pa.table({n: pa.array(v, SCHEMA.field(n).type) for n, v in cols.items()},
                                        schema=schema))
    job = {"job": {"defaults": {"model": "dall-e-3", "response_format": "b64_json"},
                   "sweep": [["quality", [p["quality"] for p in POINTS]]]},
           "tasks": tasks, "refused": 0, "sweep_points": list(POINTS)}
    (out / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=None, rounds=1)
    p.add_argument("--sizes", default="100000,300000", help="tasks, comma-separated (default 100000,300000)")
    p.add_argument("--per-page", type=int, default=50, help="prompts a page (default 50, the report's)")
    p.add_argument("--pool", type=int, default=16, help="distinct image files (default 16)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = {}
    with common.workdir(args.keep) as tmp:
        for n in sizes:
            out = tmp / f"out-{n}"
            out.mkdir()
            t0 = common.now()
            make_results(out, n, make_pool(out, args.pool))
            size_mb = (out / "results.parquet").stat().st_size / 1e6
            log(f"{n:,} tasks: results.parquet of {size_mb:.1f} MB made in {common.now() - t0:.1f} s")
            walls, peaks = [], []
            for r in range(1, args.rounds + 1):
                cmd = [common.PYTHON, "-m", "batchgen", "report", str(out), "--per-page", str(args.per_page)]
                m = common.measure(cmd, log_dir=tmp, name=f"report-{n}-{r}")
                pages = sum(1 for _ in out.glob("report*.html"))
                walls.append(m.wall)
                peaks.append(m.maxrss_mb)
                log(f"round {r}: report of {n:,} tasks: wall {m.wall:.1f} s, cpu {m.cpu:.1f} s, "
                    f"peak RSS {m.maxrss_mb:.0f} MB, {pages:,} pages")
            results[n] = (common.median(walls), common.median(peaks), pages)
            common.rmtree(out)      # a 300,000-task report's pages are about 1 GB
    for n, (wall, peak, pages) in results.items():
        log(f"RESULT report memory: {n:,} tasks ({n // 2:,} prompts x 2 sweep points, {pages:,} pages): "
            f"wall {wall:.1f} s, peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
