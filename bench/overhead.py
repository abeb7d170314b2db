"""Overhead: `batchgen run` throughput against the floor.

Zero latency, 20,000 tasks, concurrency 32, dall-e-3 1024x1024, b64_json.  One simulator process
serves every client.  Each round runs the floor (bench/floor.py: a minimal aiohttp client that
posts, parses with json, decodes with base64 and writes each image under the same semaphore),
the fast floor (the same client parsing with orjson and decoding with pybase64, as batchgen
does) and the runner (`python -m batchgen run ...`) as whole processes into fresh output
folders (the order rotates between rounds), and reports each one's throughput (tasks / wall
seconds, process start to exit, results.parquet included for the runner), the ratio runner /
floor (the target's) and the ratio runner / fast floor (batchgen's own overhead: the journal,
hashing, atomic writes, pacing, the results).  The simulator's request counter proves each
client sent every task.

Target: median ratio runner / floor >= 0.8.

    .venv/bin/python bench/overhead.py [--tasks 20000] [--rounds 3] [--concurrency 32]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TARGET = 0.8


def main(argv=None) -> int:
    args = common.base_parser(__doc__, tasks=20_000, rounds=3, concurrency=32).parse_args(argv)
    n, conc = args.tasks, args.concurrency
    floors, runners, ratios, own = [], [], [], []
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", n)
        with common.Simulator(log_dir=tmp) as sim:
            log(f"overhead: {n} tasks, concurrency {conc}, dall-e-3 1024x1024 b64, "
                f"simulator {sim.acedata_url}")
            for r in range(1, args.rounds + 1):
                results = {}
                kinds = ("floor", "fast", "runner")
                order = kinds[(r - 1) % 3:] + kinds[:(r - 1) % 3]
                for who in order:
                    out = tmp / f"{who}-{r}"
                    sim.reset()
                    if who != "runner":
                        cmd = common.floor_cmd(data, out, sim.acedata_url, concurrency=conc,
                                               fast=who == "fast")
                    else:
                        cmd = common.runner_cmd(data, out, sim.acedata_url, concurrency=conc)
                    m = common.measure(cmd, log_dir=tmp, name=f"{who}-{r}", env=common.RUNNER_ENV)
                    st = sim.stats()
                    ok200 = st["by_status"].get("200", 0)
                    results[who] = (m, st)
                    if st["requests"] < n or ok200 < n:
                        raise RuntimeError(f"{who} sent {st['requests']} requests "
                                           f"({ok200} answered 200) for {n} tasks")
                    common.rmtree(out)
                fm, _ = results["floor"]
                qm, _ = results["fast"]
                rm, rst = results["runner"]
                f_tp, q_tp, r_tp = n / fm.wall, n / qm.wall, n / rm.wall
                floors.append(f_tp)
                runners.append(r_tp)
                ratios.append(r_tp / f_tp)
                own.append(r_tp / q_tp)
                log(f"round {r}: floor {fm.wall:.2f} s = {f_tp:.0f} img/s (cpu {fm.cpu:.1f} s); "
                    f"fast floor {qm.wall:.2f} s = {q_tp:.0f} img/s (cpu {qm.cpu:.1f} s); "
                    f"runner {rm.wall:.2f} s = {r_tp:.0f} img/s (cpu {rm.cpu:.1f} s, "
                    f"requests {rst['requests']}, 200s {rst['by_status'].get('200', 0)}, "
                    f"peak RSS {rm.maxrss_mb:.0f} MB); ratio {r_tp / f_tp:.2f}, "
                    f"to the fast floor {r_tp / q_tp:.2f}")
    ratio = common.median(ratios)
    verdict = "ok" if ratio >= TARGET else "MISSED"
    log(f"RESULT overhead: runner {common.median(runners):.0f} img/s, "
        f"floor {common.median(floors):.0f} img/s, ratio {ratio:.2f} (target >= {TARGET}) {verdict}; "
        f"to the fast floor {common.median(own):.2f} (rounds {min(own):.2f}-{max(own):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
