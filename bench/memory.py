"""Memory: the runner's peak RSS must not grow with the size of the job.

Simulator `--photo` (incompressible 1024x1024 PNGs of about 3 MB, 4 MB of base64 each), dall-e-3
1024x1024 b64_json, concurrency 32; a small job (300 tasks) and a large one (1,200 tasks), each
run as a whole `batchgen run` process.  Reported: the runner's peak RSS for each (ru_maxrss of
the runner process alone, read by a fresh helper process whose only child it is) and the ratio
large / small.  Each output folder (~1 GB and ~4 GB) is deleted right after its round; the script
refuses to start with less than 8 GB free on the temporary folder's disk.

Targets: peak RSS <= 700 MB, and large <= 1.15 x small (median over rounds).

    .venv/bin/python bench/memory.py [--small 300] [--large 1200] [--rounds 2] [--concurrency 32]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

MAX_MB = 700
MAX_RATIO = 1.15
MIN_FREE_GB = 8


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=None, rounds=2, concurrency=32)
    p.add_argument("--small", type=int, default=300, help="tasks of the small job (default 300)")
    p.add_argument("--large", type=int, default=1200, help="tasks of the large job (default 1200)")
    args = p.parse_args(argv)
    free = common.free_gb(Path(tempfile.gettempdir()))
    if free < MIN_FREE_GB:
        log(f"memory: only {free:.1f} GB free in {tempfile.gettempdir()}; "
            f"refusing to run (needs {MIN_FREE_GB} GB)")
        return 2
    conc = args.concurrency
    peaks = {args.small: [], args.large: []}
    with common.workdir(args.keep) as tmp:
        inputs = {n: common.make_csv(tmp / f"prompts-{n}.csv", n) for n in peaks}
        with common.Simulator("--photo", log_dir=tmp) as sim:
            log(f"memory: {args.small} vs {args.large} tasks, --photo dall-e-3 1024x1024 b64, "
                f"concurrency {conc} ({free:.0f} GB free)")
            for r in range(1, args.rounds + 1):
                for n in peaks:
                    out = tmp / f"runner-{n}-{r}"
                    sim.reset()
                    try:
                        m = common.measure(
                            common.runner_cmd(inputs[n], out, sim.acedata_url, concurrency=conc,
                                              size="1024x1024"),
                            log_dir=tmp, name=f"runner-{n}-{r}", env=common.RUNNER_ENV)
                        size_gb = common.tree_bytes(out) / 1e9
                    finally:
                        common.rmtree(out)
                    st = sim.stats()
                    peaks[n].append(m.maxrss_mb)
                    log(f"round {r}: {n} tasks: peak RSS {m.maxrss_mb:.0f} MB, wall {m.wall:.1f} s, "
                        f"cpu {m.cpu:.1f} s, wrote {size_gb:.2f} GB "
                        f"(requests {st['requests']}, 200s {st['by_status'].get('200', 0)})")
    small = common.median(peaks[args.small])
    large = common.median(peaks[args.large])
    ratio = large / small
    verdict = "ok" if max(small, large) <= MAX_MB and ratio <= MAX_RATIO else "MISSED"
    log(f"RESULT memory: peak RSS {small:.0f} MB at {args.small} tasks, {large:.0f} MB at "
        f"{args.large} tasks, ratio {ratio:.2f} (target <= {MAX_MB} MB, ratio <= {MAX_RATIO}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
