"""Async mode (issue 25): long generations behind a gateway's time limit, and kill -9 without paying twice.

1. `limit`: a server whose generations take --latency s behind a gateway that answers 504 after
   --sync-limit s (the generation still completes and is billed). Live mode (--max-retries as
   given) against async mode: tasks ok, tasks failed, images the server billed, wall time.
2. `kills`: --kills kill -9 during one job of --tasks tasks (submissions held to the server's
   --rpm-limit, each generation --kill-latency s), then a run to the end; per mode the tasks the
   server executed once, twice or more (async: by trace id; live: images billed beyond one per task).

    .venv/bin/python bench/async_mode.py                # both parts
    .venv/bin/python bench/async_mode.py --parts kills  # one

Prints a line per run and RESULT lines; targets (printed, not asserted): live fails every row and
async finishes every row of part 1; async executes every task exactly once in part 2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from common import PYTHON, RUNNER_ENV, Simulator, base_parser, log, make_csv, workdir


def run_cmd(data, out, url: str, mode: str, extra=()) -> list:
    return [PYTHON, "-m", "batchgen", "run", str(data), "--out", str(out), "--base-url", url,
            "--model", "dall-e-3", "--mode", mode, "--no-progress", "--json", *map(str, extra)]


def env() -> dict:
    return {**os.environ, **RUNNER_ENV}


def whole_run(cmd: list, timeout: float) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    try:
        return json.loads(done.stdout), wall
    except ValueError:
        raise RuntimeError(f"run gave no summary (exit {done.returncode}): {done.stderr[-800:]}") from None


def part_limit(args, tmp) -> None:
    data = make_csv(tmp / "limit.csv", args.limit_tasks)
    with Simulator("--latency", args.latency, "--sync-time-limit", args.sync_limit) as sim:
        figures = {}
        for mode, extra in (("live", ["--max-retries", args.max_retries, "--concurrency", args.limit_tasks]),
                            ("async", ["--poll-interval", 1])):
            sim.reset(everything=True)
            summary, wall = whole_run(run_cmd(data, tmp / f"limit-{mode}", sim.acedata_url, mode, extra),
                                      timeout=args.latency * (args.max_retries + 2) * 20 + 600)
            billed = sim.stats()["images"]
            figures[mode] = (summary["ok"], summary["errors"], billed, wall)
            log(f"limit {mode:5}: {summary['ok']} ok, {summary['errors']} failed {summary['by_code']}, "
                f"{billed} images billed by the server, wall {wall:.1f} s")
    live, asynchronous = figures["live"], figures["async"]
    met = live[0] == 0 and asynchronous[0] == args.limit_tasks
    log(f"RESULT limit tasks={args.limit_tasks} latency={args.latency}s sync_limit={args.sync_limit}s: "
        f"live ok={live[0]}/{args.limit_tasks} billed={live[2]}; async ok={asynchronous[0]}/{args.limit_tasks} "
        f"billed={asynchronous[2]} wall={asynchronous[3]:.1f}s; "
        f"target live 0 ok, async all ok: {'met' if met else 'NOT met'}")


def killed_run(sim, data, out, mode: str, args) -> tuple[dict, int]:
    """--kills kill -9 spread over the job's submissions, then a run to the end. Returns the
    last run's summary and how many kills landed."""
    extra = ["--poll-interval", 1] if mode == "async" else ["--concurrency", args.live_concurrency]
    cmd = run_cmd(data, out, sim.acedata_url, mode, extra)
    landed = 0
    for k in range(1, args.kills + 1):
        # The k-th kill once k/(kills+1) of the job has reached the server.
        goal = args.tasks * k // (args.kills + 1)
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and _reached(sim.stats(), mode) < goal:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
    summary, _ = whole_run(cmd, timeout=args.tasks * 5 + 600)
    return summary, landed


def _reached(stats: dict, mode: str) -> int:
    return stats["tasks_created"] if mode == "async" else stats["requests"]


def part_kills(args, tmp) -> None:
    data = make_csv(tmp / "kills.csv", args.tasks)
    with Simulator("--latency", args.kill_latency, "--rpm-limit", args.rpm_limit) as sim:
        results = {}
        for mode in ("async", "live"):
            sim.reset(everything=True)
            summary, landed = killed_run(sim, data, tmp / f"kills-{mode}", mode, args)
            stats = sim.stats()
            if mode == "async":
                per_task: dict = {}
                for trace, count in stats["trace_executions"].items():
                    task = trace.split("-")[0]
                    per_task[task] = per_task.get(task, 0) + count
                twice = sum(1 for c in per_task.values() if c > 1)
                executions = sum(per_task.values())
            else:
                executions = stats["images"]        # every 200 is billed, answered or not
                twice = executions - summary["ok"]
            results[mode] = (summary["ok"], executions, twice, landed)
            log(f"kills {mode:5}: {landed} kill -9 landed; {summary['ok']}/{args.tasks} ok; server executed "
                f"{executions} generations, {twice} task(s) paid twice")
    a, live = results["async"], results["live"]
    log(f"RESULT kills tasks={args.tasks} kills={a[3]}/{live[3]} (async/live): async executed {a[1]} "
        f"for {a[0]} ok, {a[2]} paid twice; live executed {live[1]} for {live[0]} ok, {live[2]} paid twice; "
        f"target async exactly once: {'met' if a[2] == 0 and a[1] == args.tasks == a[0] else 'NOT met'}")


def main() -> None:
    p = base_parser(__doc__, tasks=400, rounds=1)
    p.add_argument("--parts", default="limit,kills", help="limit, kills or both (default)")
    p.add_argument("--limit-tasks", type=int, default=40)
    p.add_argument("--latency", type=float, default=3.0, help="part 1: seconds a generation takes")
    p.add_argument("--sync-limit", type=float, default=1.0, help="part 1: the gateway's limit (s)")
    p.add_argument("--max-retries", type=int, default=2, help="part 1: live mode's retries")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--kill-latency", type=float, default=2.0, help="part 2: seconds a generation takes")
    p.add_argument("--rpm-limit", type=float, default=1200.0, help="part 2: the server's requests a minute")
    p.add_argument("--live-concurrency", type=int, default=8, help="part 2: live mode's requests in flight")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    with workdir(args.keep) as tmp:
        if "limit" in parts:
            part_limit(args, tmp)
        if "kills" in parts:
            part_kills(args, tmp)


if __name__ == "__main__":
    main()
