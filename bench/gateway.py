"""Issue 28's cases through the simulator's LiteLLM mode: what each costs in requests.

    .venv/bin/python bench/gateway.py [--tasks N]

Prints, per case: the exit status, the stop code, the requests the server saw, the requests a
task took at most, and the wall time. Cases: a spent account behind the proxy (it must stop at
the first refusal, not retry without end), images answered as data: URLs (one request a task),
a link that can never be fetched (two requests a task: one re-ask, then download_failed).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import batchgen
from batchgen.simulator import SimulatorThread

TOKEN = "sim-token"


def case(name: str, sim_options: dict, defaults: dict, tasks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "p.csv"
        pd.DataFrame({"prompt": [f"a lighthouse at dusk, number {i}" for i in range(tasks)]}).to_csv(csv, index=False)
        with SimulatorThread(**sim_options) as sim:
            started = time.monotonic()
            summary = batchgen.run(str(csv), out=str(Path(tmp) / "out"), base_url=sim.acedata_url,
                                   defaults=defaults, environ={"ACEDATA_API_TOKEN": TOKEN}, progress=False,
                                   backoff_base=0.05, max_retries=8)
            elapsed = time.monotonic() - started
            requests = sim.stats.requests
        df = pd.read_parquet(Path(tmp) / "out" / "results.parquet")
        print(f"{name:<28} exit={summary.exit_status} stopped={summary.stopped or '-':<20} "
              f"server_requests={requests:<4} max_attempts={int(df.attempts.max() or 0):<2} "
              f"ok={summary.ok:<3} wall_s={elapsed:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    tasks = parser.parse_args().tasks
    url = {"model": "dall-e-3", "response_format": "url"}
    case("spent account via litellm", {"gateway": "litellm", "quota_images": tasks // 2},
         {"model": "dall-e-3", "response_format": "b64_json"}, tasks)
    case("data: URL answers", {"gateway": "litellm", "data_urls": True}, url, tasks)
    case("links that 404", {"expired_link": 1.0}, url, tasks)


if __name__ == "__main__":
    sys.exit(main())
