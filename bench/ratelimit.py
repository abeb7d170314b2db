"""Rate limit: the runner finds a server's limit that nobody told it.

Simulator `--rpm-limit 1200` (20 requests/s, one second of burst), zero latency; 400 tasks,
concurrency 8, dall-e-2 256x256 b64; the runner is NOT given `--rpm`.  Each round restarts the
simulator's counters and bucket and runs `batchgen run` as a whole process.  Ideal: 400 / 20 =
20 s.  Reported: wall time, and the share of the simulator's generation requests that drew a
429 (from /_sim/stats).

The server styles measured, one variant each:

    headers             x-ratelimit-* headers (the simulator's default when its limit is on), so the
                        runner can pace before a 429; 429s state the exact wait
    no-headers-exact    no x-ratelimit-* headers (the runner learns the limit from 429s alone);
                        429s say the exact wait (fractional Retry-After and retry-after-ms)
    no-headers-seconds  no headers; 429s say `Retry-After: 1` (whole seconds, rounded up), no ms
    no-headers-date     no headers; 429s say Retry-After as an HTTP date (whole seconds), no ms

A variant whose simulator flag `batchgen simulate --help` does not offer is skipped, and says so.

Targets: median wall <= 20 / 0.85 = 23.5 s, and 429s <= 25% of the requests (each variant).

`--latency S` gives the simulator a latency (every answer, 429s included, S seconds after the
request arrives; raise --concurrency to at least 20 * S * 1.5 so it is not the limit): the
runner then learns of a 429 S seconds late.  The targets are set for the default, 0.

    .venv/bin/python bench/ratelimit.py [--tasks 400] [--rounds 3] [--concurrency 8] [--rpm-limit 1200]
                                        [--variants headers,no-headers-seconds,...] [--latency 0]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TARGET_SHARE = 0.85
MAX_429 = 0.25


def header_flag(help_text: str) -> str | None:
    """The simulator's flag that suppresses the x-ratelimit-* headers, if it has one."""
    for flag in re.findall(r"(--[a-z0-9-]+)", help_text):
        if "header" in flag and any(w in flag for w in ("no-", "hide", "suppress", "without", "omit")):
            return flag
    return None


STYLE_FLAG = "--rate-limit-retry-after"
VARIANTS = ("headers", "no-headers-exact", "no-headers-seconds", "no-headers-date")


def variant_args(name: str, help_text: str):
    """The simulator's arguments for a variant, or None when the simulator cannot do it."""
    if name == "headers":
        return []
    flag = header_flag(help_text)
    if not flag:
        return None
    style = name.rsplit("-", 1)[1]
    if STYLE_FLAG not in help_text:
        return [flag] if style == "exact" else None   # an older simulator: exact waits only
    return [flag, STYLE_FLAG, style]


def run_variant(name: str, sim_args: list, args, data: Path, tmp: Path) -> tuple:
    n, conc = args.tasks, args.concurrency
    ideal = n / (args.rpm_limit / 60.0)
    walls, shares = [], []
    if args.latency:
        sim_args = [*sim_args, "--latency", f"{args.latency:g}"]
    with common.Simulator("--rpm-limit", str(args.rpm_limit), *sim_args, log_dir=tmp) as sim:
        log(f"ratelimit [{name}]: {n} tasks, concurrency {conc}, simulator "
            f"{' '.join(['--rpm-limit', f'{args.rpm_limit:g}', *sim_args])}, ideal {ideal:.1f} s")
        for r in range(1, args.rounds + 1):
            out = tmp / f"{name}-{r}"
            sim.reset(everything=True)  # counters and the rate bucket
            m = common.measure(common.runner_cmd(data, out, sim.acedata_url, concurrency=conc),
                               log_dir=tmp, name=f"{name}-{r}", env=common.RUNNER_ENV)
            st = sim.stats()
            common.rmtree(out)
            req = st["requests"]
            n429 = st["by_status"].get("429", 0)
            share = n429 / req if req else 0.0
            walls.append(m.wall)
            shares.append(share)
            log(f"round {r}: wall {m.wall:.2f} s (ideal/wall {ideal / m.wall:.2f}), requests {req}, "
                f"429s {n429} ({share:.1%}), by status {st['by_status']}")
    return common.median(walls), common.median(shares), ideal


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=400, rounds=3, concurrency=8)
    p.add_argument("--rpm-limit", type=float, default=1200.0,
                   help="the simulator's requests-per-minute limit (default 1200)")
    p.add_argument("--latency", type=float, default=0.0,
                   help="the simulator's --latency, seconds per request (default 0)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    help_text = common.simulate_help()
    variants = []
    for name in names:
        sim_args = variant_args(name, help_text)
        if sim_args is None:
            log(f"ratelimit: `batchgen simulate --help` has no flag for variant {name}; skipped")
        else:
            variants.append((name, sim_args))
    results = []
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", args.tasks)
        for name, sim_args in variants:
            results.append((name, *run_variant(name, sim_args, args, data, tmp)))
    limit = None
    for name, wall, share, ideal in results:
        limit = ideal / TARGET_SHARE
        verdict = "ok" if wall <= limit and share <= MAX_429 else "MISSED"
        log(f"RESULT ratelimit [{name}]: wall {wall:.2f} s, ideal {ideal:.1f} s, "
            f"ideal/wall {ideal / wall:.2f}, 429s {share:.1%} of requests "
            f"(target wall <= {limit:.1f} s, 429s <= {MAX_429:.0%}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
