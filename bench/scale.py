"""Scale: memory that does not grow with the job, and big jobs that stay quick.

Three parts, each `batchgen` as a whole process against the built-in simulator (zero latency):
- run: the peak RSS of a run of S tasks and of L tasks of the same shape (distinct prompts,
  dall-e-3 1024x1024 b64, concurrency 64); targets: the large run <= 600 MB and <= 1.15 x the
  small one's peak.
- plan: `batchgen plan` of 1,000,000 Parquet rows x 4 sweep points (bench/plan.py's input);
  targets: <= 600 MB peak and <= 30 s. `--repeat N`: the prompts repeat, each on about N rows
  (the tasks of a repeated prompt are counted apart, see planning/tasks.py); the same targets.
- rerun: a finished job of R tasks run again (it must send nothing; checked with the
  simulator's request counter); targets: <= 10 s at 300,000 tasks, <= 30 s at 1,000,000.
  The first run is made once per size (its wall time and peak RSS are printed too).

Each figure is the median of `--rounds` rounds; every round is printed. The output folders go
to $TMPDIR (a 1,000,000-task folder holds about 7 GB of images: `TMPDIR=/dev/shm` keeps them
in memory, so it needs that much free); each is removed once measured.

    TMPDIR=/dev/shm .venv/bin/python bench/scale.py [--parts run,plan,rerun] [--small 100000]
        [--large 300000] [--rows 1000000] [--repeat 1] [--rerun-sizes 300000,1000000] [--rounds 3]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402
from plan import SWEEP, make_parquet  # noqa: E402

RUN_MAX_MB = 600.0
RUN_MAX_RATIO = 1.15
PLAN_MAX_MB = 600.0
PLAN_MAX_S = 30.0
RERUN_MAX_S = {300_000: 10.0, 1_000_000: 30.0}
CONCURRENCY = 64


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def part_run(args, tmp: Path, sim) -> None:
    peaks: dict = {args.small: [], args.large: []}
    walls: dict = {args.small: [], args.large: []}
    inputs = {n: common.make_csv(tmp / f"prompts-{n}.csv", n) for n in peaks}
    for r in range(1, args.rounds + 1):
        for n in peaks:
            out = tmp / f"run-{n}-{r}"
            sim.reset()
            try:
                m = common.measure(common.runner_cmd(inputs[n], out, sim.acedata_url, concurrency=CONCURRENCY),
                                   log_dir=tmp, name=f"run-{n}-{r}", env=common.RUNNER_ENV)
            finally:
                common.rmtree(out)
            sent = sim.stats()["requests"]
            peaks[n].append(m.maxrss_mb)
            walls[n].append(m.wall)
            log(f"round {r}: run of {n:,} tasks: peak RSS {m.maxrss_mb:.0f} MB, wall {m.wall:.1f} s "
                f"({n / m.wall:,.0f} img/s), cpu {m.cpu:.1f} s, requests {sent:,}")
    small, large = common.median(peaks[args.small]), common.median(peaks[args.large])
    ratio = large / small
    log(f"RESULT scale run: peak RSS {small:.0f} MB at {args.small:,} tasks, {large:.0f} MB at "
        f"{args.large:,} tasks, ratio {ratio:.2f} (target <= {RUN_MAX_MB:.0f} MB, ratio <= {RUN_MAX_RATIO}) "
        f"{verdict(large <= RUN_MAX_MB and ratio <= RUN_MAX_RATIO)}")


def part_plan(args, tmp: Path) -> None:
    data = make_parquet(tmp / "plan-input.parquet", args.rows, args.repeat)
    what = f"{args.rows:,} rows x 4" + (f", each prompt on ~{args.repeat} rows" if args.repeat > 1 else "")
    cmd = [common.PYTHON, "-m", "batchgen", "plan", str(data), "--out", str(tmp / "plan-out"),
           "--model", "dall-e-3", *SWEEP]
    walls, peaks = [], []
    for r in range(1, args.rounds + 1):
        m = common.measure(cmd, log_dir=tmp, name=f"plan-{r}", cwd=tmp)
        walls.append(m.wall)
        peaks.append(m.maxrss_mb)
        log(f"round {r}: plan of {what}: wall {m.wall:.2f} s, cpu {m.cpu:.1f} s, "
            f"peak RSS {m.maxrss_mb:.0f} MB")
    wall, peak = common.median(walls), common.median(peaks)
    log(f"RESULT scale plan: {args.rows * 4:,} tasks ({what}): wall {wall:.2f} s, peak RSS {peak:.0f} MB "
        f"(target <= {PLAN_MAX_S:.0f} s, <= {PLAN_MAX_MB:.0f} MB) "
        f"{verdict(wall <= PLAN_MAX_S and peak <= PLAN_MAX_MB)}")


def part_rerun(args, tmp: Path, sim, n: int) -> None:
    data = common.make_csv(tmp / f"rerun-{n}.csv", n)
    out = tmp / f"rerun-{n}"
    cmd = common.runner_cmd(data, out, sim.acedata_url, concurrency=CONCURRENCY)
    try:
        sim.reset()
        first = common.measure(cmd, log_dir=tmp, name=f"first-{n}", env=common.RUNNER_ENV)
        log(f"first run of {n:,} tasks: wall {first.wall:.1f} s ({n / first.wall:,.0f} img/s), peak RSS "
            f"{first.maxrss_mb:.0f} MB, requests {sim.stats()['requests']:,}, journal "
            f"{(out / 'journal.jsonl').stat().st_size / 1e6:.0f} MB")
        walls = common.rerun_rounds(cmd, sim, tmp, args.rounds, f"rerun-{n}", f"rerun of {n:,} finished tasks")
    finally:
        common.rmtree(out)
    wall = common.median(walls)
    target = RERUN_MAX_S.get(n)
    goal = f"(target <= {target:.0f} s) {verdict(wall <= target)}" if target else "(no target at this size)"
    log(f"RESULT scale rerun: {n:,} finished tasks: wall {wall:.2f} s, 0 requests {goal}")


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=None, rounds=3)
    p.add_argument("--parts", default="run,plan,rerun", help="which parts (default run,plan,rerun)")
    p.add_argument("--small", type=int, default=100_000, help="tasks of the small run (default 100000)")
    p.add_argument("--large", type=int, default=300_000, help="tasks of the large run (default 300000)")
    p.add_argument("--rows", type=int, default=1_000_000, help="plan: input rows, x 4 sweep points")
    p.add_argument("--repeat", type=int, default=1, help="plan: each prompt on about this many rows (default 1)")
    p.add_argument("--rerun-sizes", default="300000,1000000", help="rerun: job sizes (default 300000,1000000)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    log(f"scale: parts {', '.join(sorted(parts))}; folders in {tempfile.gettempdir()} "
        f"({common.free_gb(Path(tempfile.gettempdir())):.0f} GB free)")
    with common.workdir(args.keep) as tmp:
        if "plan" in parts:
            part_plan(args, tmp)
        if parts & {"run", "rerun"}:
            with common.Simulator(log_dir=tmp) as sim:
                if "run" in parts:
                    part_run(args, tmp, sim)
                if "rerun" in parts:
                    for n in (int(s) for s in args.rerun_sizes.split(",") if s.strip()):
                        part_rerun(args, tmp, sim, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
