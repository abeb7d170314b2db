"""Export: `batchgen export` throughput and peak RSS, both formats, to a local folder.

A run of --tasks tasks is made once (simulator `--photo`: incompressible 1024x1024 PNGs of about
3 MB, dall-e-3 b64_json), then each round exports it as a whole `batchgen export` process, as
webdataset and as parquet (shards of --shard-size samples), to a fresh folder beside it. Reported
per format: images/s, MB/s of images read, checked (sha256) and written, and peak RSS, which
should stay near one shard's row group or one image, not grow with the job; and how long
`batchgen export --verify` takes on the export (every shard read and hashed).

    TMPDIR=/dev/shm .venv/bin/python bench/export.py [--tasks 300] [--shard-size 100] [--rounds 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=300, rounds=3, concurrency=16)
    p.add_argument("--shard-size", type=int, default=100, help="samples per shard (default 100)")
    args = p.parse_args(argv)
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", args.tasks)
        out = tmp / "run"
        with common.Simulator("--photo", log_dir=tmp) as sim:
            common.measure(common.runner_cmd(data, out, sim.acedata_url, concurrency=args.concurrency,
                                             size="1024x1024"),
                           log_dir=tmp, name="run", env=common.RUNNER_ENV)
        images_mb = common.tree_bytes(out / "images") / 1e6
        log(f"export: {args.tasks} images, {images_mb:.0f} MB, shards of {args.shard_size}")
        walls: dict = {"webdataset": [], "parquet": []}
        peaks: dict = {"webdataset": [], "parquet": []}
        verifies: dict = {"webdataset": [], "parquet": []}
        for r in range(1, args.rounds + 1):
            for fmt in walls:
                dest = tmp / f"{fmt}-{r}"
                m = common.measure([common.PYTHON, "-m", "batchgen", "export", str(out), "--format", fmt,
                                    "--to", str(dest), "--shard-size", str(args.shard_size)],
                                   log_dir=tmp, name=f"{fmt}-{r}")
                v = common.measure([common.PYTHON, "-m", "batchgen", "export", "--verify", str(dest)],
                                   log_dir=tmp, name=f"verify-{fmt}-{r}")
                common.rmtree(dest)
                walls[fmt].append(m.wall)
                peaks[fmt].append(m.maxrss_mb)
                verifies[fmt].append(v.wall)
                log(f"round {r}: {fmt}: {m.wall:.2f} s, {args.tasks / m.wall:.0f} img/s, "
                    f"{images_mb / m.wall:.0f} MB/s, peak RSS {m.maxrss_mb:.0f} MB, cpu {m.cpu:.2f} s; "
                    f"--verify {v.wall:.2f} s, peak RSS {v.maxrss_mb:.0f} MB")
        for fmt in walls:
            wall = common.median(walls[fmt])
            log(f"RESULT export {fmt}: {args.tasks / wall:.0f} img/s, {images_mb / wall:.0f} MB/s, "
                f"peak RSS {common.median(peaks[fmt]):.0f} MB; --verify {common.median(verifies[fmt]):.2f} s "
                f"(median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
