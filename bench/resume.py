"""Resume: rerunning a finished big job must be instant.

100,000 tasks (zero latency, concurrency 32, dall-e-3 1024x1024 b64) are run to the end once (its
wall time is printed too; it takes a few minutes), then the same `batchgen run` command is run
again on the same output folder, several rounds: each rerun finds every task done and sends
nothing (checked with the simulator's request counter).  Reported: the rerun's wall time, as a
whole process from start to exit.

Target: median rerun <= 5 s.

    .venv/bin/python bench/resume.py [--tasks 100000] [--rounds 3] [--concurrency 32]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TARGET = 5.0


def main(argv=None) -> int:
    args = common.base_parser(__doc__, tasks=100_000, rounds=3, concurrency=32).parse_args(argv)
    n, conc = args.tasks, args.concurrency
    walls = []
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", n)
        out = tmp / "out"
        with common.Simulator(log_dir=tmp) as sim:
            cmd = common.runner_cmd(data, out, sim.acedata_url, concurrency=conc)
            log(f"resume: {n} tasks, concurrency {conc}; first run ...")
            first = common.measure(cmd, log_dir=tmp, name="first", env=common.RUNNER_ENV)
            st = sim.stats()
            log(f"first run: wall {first.wall:.1f} s ({n / first.wall:.0f} img/s), "
                f"peak RSS {first.maxrss_mb:.0f} MB, requests {st['requests']}, "
                f"200s {st['by_status'].get('200', 0)}, journal "
                f"{(out / 'journal.jsonl').stat().st_size / 1e6:.1f} MB")
            walls += common.rerun_rounds(cmd, sim, tmp, args.rounds, "rerun", "rerun")
    rerun = common.median(walls)
    verdict = "ok" if rerun <= TARGET else "MISSED"
    log(f"RESULT resume: rerun {rerun:.2f} s with {n} tasks done, first run {first.wall:.1f} s "
        f"(target rerun <= {TARGET:.0f} s) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
