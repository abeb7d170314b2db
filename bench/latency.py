"""Latency hiding: does `batchgen run` keep `--concurrency` requests in flight?

1,000 tasks, simulator `--latency 0.5`, concurrency 50, dall-e-3 1024x1024 b64.  The ideal wall time
is tasks x 0.5 s / 50 = 10 s.  Each round runs the runner as a whole process (start to exit,
results.parquet included) into a fresh output folder; reported: wall time and ideal / wall.
For reference (not part of the target), each round also runs the floor (bench/floor.py) under the
same conditions: it shows what Python, aiohttp and loopback allow on this machine (a bare
aiohttp loop with no work reaches about 10.3 s); `--no-floor` skips it.

Target: median ideal / wall >= 0.9.

    TMPDIR=/dev/shm .venv/bin/python bench/latency.py [--tasks 1000] [--rounds 3] [--concurrency 50] [--latency 0.5]

(TMPDIR=/dev/shm keeps the images off this machine's disk, whose ext4 journal commits stall
file creation for tens of milliseconds at a time; the runner and the floor are both measured there.)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TARGET = 0.9


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=1000, rounds=3, concurrency=50)
    p.add_argument("--latency", type=float, default=0.5, help="simulator latency, s (default 0.5)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor reference runs")
    args = p.parse_args(argv)
    n, conc = args.tasks, args.concurrency
    ideal = n * args.latency / conc
    walls, shares, floors = [], [], []
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", n)
        with common.Simulator("--latency", str(args.latency), log_dir=tmp) as sim:
            log(f"latency: {n} tasks, latency {args.latency} s, concurrency {conc}, "
                f"ideal {ideal:.2f} s")
            for r in range(1, args.rounds + 1):
                if not args.no_floor:
                    fout = tmp / f"floor-{r}"
                    sim.reset()
                    fm = common.measure(common.floor_cmd(data, fout, sim.acedata_url, concurrency=conc),
                                        log_dir=tmp, name=f"floor-{r}", env=common.RUNNER_ENV)
                    common.rmtree(fout)
                    floors.append(fm.wall)
                    log(f"round {r}: floor (reference) wall {fm.wall:.2f} s, "
                        f"ideal/wall {ideal / fm.wall:.3f}")
                out = tmp / f"runner-{r}"
                sim.reset()
                m = common.measure(common.runner_cmd(data, out, sim.acedata_url, concurrency=conc),
                                   log_dir=tmp, name=f"runner-{r}", env=common.RUNNER_ENV)
                st = sim.stats()
                common.rmtree(out)
                walls.append(m.wall)
                shares.append(ideal / m.wall)
                log(f"round {r}: runner wall {m.wall:.2f} s, ideal/wall {ideal / m.wall:.3f} "
                    f"(requests {st['requests']}, 200s {st['by_status'].get('200', 0)}, "
                    f"cpu {m.cpu:.1f} s)")
    share = common.median(shares)
    if floors:
        f = common.median(floors)
        log(f"reference: floor wall {f:.2f} s, ideal/wall {ideal / f:.3f}; "
            f"runner/floor time {common.median(walls) / f:.2f}")
    verdict = "ok" if share >= TARGET else "MISSED"
    log(f"RESULT latency: wall {common.median(walls):.2f} s, ideal {ideal:.2f} s, "
        f"ideal/wall {share:.3f} (target >= {TARGET}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
