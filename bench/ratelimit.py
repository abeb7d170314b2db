"""Rate limit: does the runner reach a server's limit that nobody told it, whatever the latency
and however the server states its waits?  (Issue #27.)

The server is `batchgen simulate` as its own process, made to behave like a real gateway: a
token bucket of `--limit` requests/s (one second of burst), a success answered `latency` s
(+-20%) after the request, a 429 answered AT ONCE.  The runner is NOT given `--rpm`.  Each cell
is one whole `batchgen run` process (dall-e-3 1024x1024 b64, one image per task) against the
simulator, its counters and bucket reset first.

The matrix (48 cells):

    latency      0.2, 8, 30 s (each +-20%, uniform)
    Retry-After  exact    fractional seconds + retry-after-ms (OpenAI's style)
                 seconds  whole seconds rounded up ("Retry-After: 1")
                 date     an HTTP date (whole seconds)
                 none     no Retry-After at all
    x-ratelimit  on (x-ratelimit-*-requests sent with every answer) / off
    concurrency  fixed (`--concurrency`, default 256: never the bottleneck here) / the client's
                 automatic one (`--concurrency auto`; where `batchgen run --help` does not offer
                 it, no --concurrency at all, labelled "default")

Cells are named LATENCY-STYLE-HEADERS-COLUMN, e.g. `8s-none-off-fixed`, `30s-date-on-auto`.

Named cells:

    issue27   the issue's case: 10 requests/s, 8 s +-20%, 429 at once with `Retry-After: 1`,
              no x-ratelimit headers, 800 tasks, --concurrency 200
    issue27-date, issue27-none   the same with Retry-After as an HTTP date / with none
    tokens-on, tokens-off   a server whose binding limit is tokens a minute, as OpenAI limits its
              image models: gpt-image-2 medium 1024x1024 (the simulator charges 1,056 tokens
              an image), `--limit` requests/s worth of tokens (`--tpm-limit`) under a requests
              limit ten times higher, 8 s +-20%, OpenAI's exact Retry-After, the automatic
              concurrency; with the x-ratelimit-* headers (requests and tokens) / without

Per cell: ideal = tasks / limit + one latency; wall; ideal/wall; tasks done; the accepted rate
(200s per second after the first latency) as a share of the limit; the 429s' share of
the generation requests; the server's peak of generation requests in flight (from
/_sim/stats); the accepted rate (200s per second, from the stats' timeline) in ten slices of
the run.  A cell still running at `--cap` x ideal is stopped and shown as `>` its wall.
Targets, per cell (printed, not asserted): ideal/wall >= 0.85, 429s <= 25% of requests.

    .venv/bin/python bench/ratelimit.py                  # the whole matrix (~20 min when the
                                                        # targets are met; capped cells take longer)
    .venv/bin/python bench/ratelimit.py --quick          # issue27 and four matrix cells
    .venv/bin/python bench/ratelimit.py --cells 'issue27,8s-*-off-fixed'   # names or globs
    .venv/bin/python bench/ratelimit.py --cells 'tokens-*'                 # the tokens-bound pair
    options: --tasks 200 --limit 20 --concurrency 256 --cap 3 --rounds 1 --keep
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402

TARGET_SHARE = 0.85
MAX_429 = 0.25
SPREAD = 0.2
LATENCIES = (0.2, 8.0, 30.0)
STYLES = ("exact", "seconds", "date", "none")
HEADERS = ("on", "off")
# What the simulator charges an image under --tpm-limit (its default): a tokens-bound cell's
# limit in requests/s is its tokens a second over this.
TOKENS_PER_IMAGE = 1056
QUICK = ("issue27", "0.2s-exact-on-fixed", "8s-seconds-off-fixed", "8s-none-off-fixed",
         "8s-date-off-fixed")


@dataclass
class Cell:
    name: str
    latency: float
    style: str
    headers: bool
    concurrency: Optional[object]    # a number, "auto", or None (the client's default)
    limit: float                     # requests per second (of the binding limit)
    tasks: int
    binding: str = "requests"        # the limit that binds: "requests", or "tokens" (a minute's
                                     # tokens for `limit` requests/s, requests 10x above it)

    @property
    def ideal(self) -> float:
        return self.tasks / self.limit + self.latency

    def sim_args(self) -> list:
        if self.binding == "tokens":
            limits = ["--tpm-limit", f"{self.limit * 60 * TOKENS_PER_IMAGE:g}",
                      "--rpm-limit", f"{self.limit * 600:g}"]
        else:
            limits = ["--rpm-limit", f"{self.limit * 60:g}"]
        args = [*limits, "--latency", f"{self.latency:g}",
                "--latency-spread", f"{SPREAD:g}", "--rate-limit-retry-after", self.style]
        return args if self.headers else [*args, "--no-ratelimit-headers"]

    @property
    def server(self) -> tuple:    # cells with the same server share one simulator process
        return (self.latency, self.style, self.headers, self.limit, self.binding)

    def runner_args(self) -> dict:
        """A tokens-bound cell asks for a GPT image model, whose answers count their tokens."""
        if self.binding == "tokens":
            return {"model": "gpt-image-2", "extra": ["--quality", "medium"]}
        return {}


@dataclass
class Outcome:
    cell: Cell
    wall: float
    capped: bool
    rc: int
    done: int
    requests: int
    n429: int
    peak: int
    slices: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.cell.ideal / self.wall if self.wall else 0.0

    @property
    def rate_share(self) -> float:
        """The accepted rate, 200s per second after the first latency, as a share of the limit."""
        span = max(self.wall - self.cell.latency, 1e-3)
        return self.done / span / self.cell.limit

    @property
    def share429(self) -> float:
        return self.n429 / self.requests if self.requests else 0.0

    @property
    def met(self) -> bool:
        return (not self.capped and self.done >= self.cell.tasks and self.ratio >= TARGET_SHARE
                and self.share429 <= MAX_429)


def offers_auto(run_help: str) -> bool:
    """Does `batchgen run --help` say --concurrency takes "auto"?"""
    _, found, rest = run_help.partition("--concurrency")
    return bool(found) and "auto" in rest.split("\n  --", 1)[0]


def matrix(args, auto_label: str) -> list:
    columns = [("fixed", args.concurrency), (auto_label, "auto" if auto_label == "auto" else None)]
    cells = []
    for latency in LATENCIES:
        for style in STYLES:
            for hdr in HEADERS:
                for label, conc in columns:
                    cells.append(Cell(f"{latency:g}s-{style}-{hdr}-{label}", latency, style,
                                      hdr == "on", conc, args.limit, args.tasks))
    for suffix, style in (("", "seconds"), ("-date", "date"), ("-none", "none")):
        cells.append(Cell(f"issue27{suffix}", 8.0, style, False, 200, 10.0, 800))
    for hdr in HEADERS:
        cells.append(Cell(f"tokens-{hdr}", 8.0, "exact", hdr == "on", "auto" if auto_label == "auto" else None,
                          args.limit, args.tasks, binding="tokens"))
    return cells


def choose(cells: list, patterns: list) -> list:
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cells)]
    if missing:
        raise SystemExit(f"ratelimit: no cell matches {', '.join(missing)}; cells are e.g. "
                         f"{', '.join(c.name for c in cells[:4])}, ..., issue27, tokens-on")
    return chosen


def slices(timeline: dict, wall: float, n: int = 10) -> list:
    """The accepted rate (200s per second) in n equal slices of the run."""
    ok = timeline.get("ok", [])
    if not ok:
        return []
    span = max(len(ok), int(wall) + 1)
    width = max(1, -(-span // n))
    return [sum(ok[i:i + width]) / width for i in range(0, span, width)]


def run_cell(cell: Cell, sim, args, data: Path, tmp: Path, rnd: int) -> Outcome:
    out = tmp / f"{cell.name}-{rnd}"
    sim.reset(everything=True)    # counters, the bucket full, the timeline anew
    cmd = common.runner_cmd(data, out, sim.acedata_url, concurrency=cell.concurrency, **cell.runner_args())
    m = common.measure(cmd, log_dir=tmp, name=f"{cell.name}-{rnd}", env=common.RUNNER_ENV,
                       check=False, timeout=cell.ideal * args.cap)
    st = sim.stats()
    common.rmtree(out)
    if m.rc not in (0, 1) and not m.timed_out:
        log(f"  {cell.name}: batchgen run exited {m.rc}:\n{m.tail()}")
    return Outcome(cell, m.wall, m.timed_out, m.rc, st["by_status"].get("200", 0), st["requests"],
                   st["by_status"].get("429", 0), st.get("peak_in_flight", 0),
                   slices(st.get("timeline", {}), m.wall))


def report(o: Outcome) -> str:
    c = o.cell
    wall = f">{o.wall:.1f}" if o.capped else f"{o.wall:.1f}"
    ratio = f"<{o.ratio:.2f}" if o.capped else f"{o.ratio:.2f}"
    rates = " ".join(f"{r:.1f}" for r in o.slices)
    return (f"{c.name:22s} ideal {c.ideal:6.1f} s  wall {wall:>7s} s  ideal/wall {ratio:>5s}  "
            f"done {o.done}/{c.tasks}  rate {o.rate_share:4.0%} of limit  "
            f"429s {o.share429:6.1%} of {o.requests}  "
            f"peak in flight {o.peak:4d}  {'ok' if o.met else 'MISSED'}  accepted/s: {rates}")


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=200, rounds=1, concurrency=256)
    p.add_argument("--limit", type=float, default=20.0,
                   help="the matrix's limit, requests per second (default 20)")
    p.add_argument("--cap", type=float, default=3.0,
                   help="stop a cell at this many times its ideal (default 3)")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--cells", default="",
                   help="comma-separated cell names or globs (default: the matrix, without the "
                        "named cells; 'issue27*' or 'tokens-*' picks those)")
    args = p.parse_args(argv)
    auto_label = "auto" if offers_auto(common.run_help()) else "default"
    if auto_label == "default":
        log("ratelimit: `batchgen run --help` does not offer --concurrency auto; the automatic "
            "column runs with no --concurrency and is labelled 'default'")
    cells = matrix(args, auto_label)
    if args.quick:
        chosen = choose(cells, list(QUICK))
    elif args.cells:
        chosen = choose(cells, [c.strip() for c in args.cells.split(",") if c.strip()])
    else:
        chosen = [c for c in cells if not c.name.startswith(("issue27", "tokens-"))]
    help_text = common.simulate_help()
    if "--latency-spread" not in help_text or "none" not in help_text:
        raise SystemExit("ratelimit: this simulator lacks --latency-spread or "
                         "--rate-limit-retry-after none (issue #27's simulator)")
    log(f"ratelimit: {len(chosen)} cell(s); each stopped at {args.cap:g} x its ideal; targets "
        f"ideal/wall >= {TARGET_SHARE}, 429s <= {MAX_429:.0%}")
    results = []
    with common.workdir(args.keep) as tmp:
        datas: dict = {}
        groups: dict = {}
        for cell in chosen:
            groups.setdefault(cell.server, []).append(cell)
        for group in groups.values():
            with common.Simulator(*group[0].sim_args(), log_dir=tmp) as sim:
                for cell in group:
                    if cell.tasks not in datas:
                        datas[cell.tasks] = common.make_csv(tmp / f"prompts-{cell.tasks}.csv", cell.tasks)
                    for rnd in range(1, args.rounds + 1):
                        o = run_cell(cell, sim, args, datas[cell.tasks], tmp, rnd)
                        log(("" if args.rounds == 1 else f"round {rnd}: ") + report(o))
                        results.append(o)
    log("")
    met = sum(o.met for o in results)
    for o in results:
        log("RESULT ratelimit " + report(o))
    log(f"RESULT ratelimit: {met}/{len(results)} cells met the targets (ideal/wall >= "
        f"{TARGET_SHARE}, 429s <= {MAX_429:.0%}, every task done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
