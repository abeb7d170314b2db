"""Report pages: `batchgen report` on a run of many prompts, paged and not.

Input: a run made with --simulate of N prompts (default 2,000) x 2 sweep points (dall-e-3,
size=1024x1024,1792x1024: 4,000 images). Each round runs `batchgen report` as a whole process,
once with the default --per-page 50 and once with every prompt on one page (--per-page N);
reported: wall time, peak RSS (ru_maxrss of the report process alone), the pages written and
their largest file. Paging should keep the peak near that of one page, whatever N is.

    .venv/bin/python bench/report_pages.py [--prompts 2000] [--rounds 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import log  # noqa: E402


def main(argv=None) -> int:
    p = common.base_parser(__doc__, tasks=None, rounds=3)
    p.add_argument("--prompts", type=int, default=2000, help="input rows (default 2000)")
    args = p.parse_args(argv)
    results = {}
    with common.workdir(args.keep) as tmp:
        data = common.make_csv(tmp / "prompts.csv", args.prompts)
        out = tmp / "out"
        run = [common.PYTHON, "-m", "batchgen", "run", str(data), "--out", str(out), "--simulate",
               "--model", "dall-e-3", "--response-format", "b64_json", "--sweep", "size=1024x1024,1792x1024",
               "--concurrency", "16", "--no-progress"]
        m = common.measure(run, log_dir=tmp, name="run")
        log(f"run: {args.prompts} prompts x 2 sweep points in {m.wall:.1f} s")
        for name, per_page in (("paged", 50), ("one page", args.prompts)):
            walls, peaks = [], []
            for r in range(1, args.rounds + 1):
                cmd = [common.PYTHON, "-m", "batchgen", "report", str(out), "--per-page", str(per_page)]
                m = common.measure(cmd, log_dir=tmp, name=f"report-{per_page}-{r}")
                walls.append(m.wall)
                peaks.append(m.maxrss_mb)
                log(f"{name} round {r}: wall {m.wall:.2f} s, cpu {m.cpu:.1f} s, peak RSS {m.maxrss_mb:.0f} MB")
            pages = sorted(out.glob("report*.html"))
            biggest = max(f.stat().st_size for f in pages) / 1e6
            results[name] = (common.median(walls), common.median(peaks), len(pages), biggest)
    for name, (wall, peak, pages, biggest) in results.items():
        log(f"RESULT report {name}: wall {wall:.2f} s, peak RSS {peak:.0f} MB, {pages} page(s), "
            f"largest {biggest:.1f} MB, for {args.prompts} prompts x 2 sweep points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
