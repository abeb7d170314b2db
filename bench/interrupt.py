"""Ctrl-C in a notebook: seconds from SIGINT to `batchgen.run()` returning, when it is called
inside a running event loop (as a Jupyter kernel runs a cell), with the simulator answering
each request `--latency` s after it arrives and `--concurrency` requests in flight.

Each round: a fresh process runs the call inside `loop.run_until_complete`; once the simulator
has seen `--concurrency` requests, the process gets SIGINT; the process prints the time from
the signal to the call's return, and whether the folder was free right after (a lock taken).
Expected: about one latency (what is in flight finishes), whatever the job's size.

    .venv/bin/python bench/interrupt.py [--latency 2] [--concurrency 8] [--tasks 400] [--rounds 3]
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from common import PYTHON, REPO, Simulator, base_parser, log, make_csv, median, workdir

CELL = textwrap.dedent("""
    import asyncio, json, signal, sys, time
    import batchgen
    from batchgen.keeping.outdir import OutputFolder

    csv, out, url, concurrency = sys.argv[1:5]
    got = {}
    signal.signal(signal.SIGUSR1, lambda *a: got.setdefault("t", time.monotonic()))

    async def cell():
        summary = batchgen.run(csv, out=out, base_url=url, model="dall-e-3", concurrency=int(concurrency),
                               progress=False, environ={"ACEDATA_API_TOKEN": "sim-token"})
        returned = time.monotonic()
        folder = OutputFolder(out)
        folder.lock()           # raises FolderBusy if the run still held it
        folder.unlock()
        print(json.dumps({"ok": summary.ok, "stopped": summary.stopped, "since_signal_s": returned - got["t"]}))

    asyncio.new_event_loop().run_until_complete(cell())
""")


def main() -> None:
    p = base_parser(__doc__, tasks=400, rounds=3, concurrency=8)
    p.add_argument("--latency", type=float, default=2.0, help="seconds the simulator takes per request")
    args = p.parse_args()
    with workdir(args.keep) as tmp:
        script = tmp / "cell.py"
        script.write_text(CELL)
        data = make_csv(tmp / "p.csv", args.tasks)
        figures = []
        with Simulator("--latency", str(args.latency), log_dir=tmp) as sim:
            for k in range(args.rounds):
                sim.reset()
                out = tmp / f"out{k}"
                proc = subprocess.Popen([PYTHON, str(script), str(data), str(out), sim.acedata_url,
                                         str(args.concurrency)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                                        env={**os.environ})
                waited = time.monotonic()
                while sim.stats().get("requests", 0) < args.concurrency:
                    time.sleep(0.05)
                log(f"  ({sim.stats().get('requests')} requests seen after {time.monotonic() - waited:.1f} s)")
                # SIGUSR1 marks the moment in the child's clock, then SIGINT is the Ctrl-C.
                proc.send_signal(signal.SIGUSR1)
                proc.send_signal(signal.SIGINT)
                line, _ = proc.communicate(timeout=600)
                doc = json.loads(line.strip().splitlines()[-1])
                figures.append(doc["since_signal_s"])
                log(f"round {k + 1}: stopped={doc['stopped']} ok={doc['ok']}/{args.tasks} "
                    f"returned {doc['since_signal_s']:.2f} s after Ctrl-C (latency {args.latency} s), folder free")
        log(f"RESULT interrupt: median {median(figures):.2f} s from Ctrl-C to run() returning "
            f"(latency {args.latency} s, {args.concurrency} in flight); expected about one latency")


if __name__ == "__main__":
    sys.exit(main())
