"""Shared fixtures: the built-in simulator on loopback, and helpers to run the CLI."""
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from batchgen.cli.main import main
from batchgen.simulator import SimulatorThread

TOKEN = "sim-token"
PROMPTS = ["A cute baby sea otter floating on its back", "A lighthouse at sunset, oil painting",
           "A red bicycle against a yellow wall"]


@pytest.fixture(scope="session")
def sim():
    with SimulatorThread() as server:
        yield server


@pytest.fixture
def fresh_sim(sim):
    sim.reset_stats()
    return sim


@pytest.fixture
def fresh(sim):
    """The shared simulator with every counter and stored file forgotten."""
    sim.reset_stats(everything=True)
    return sim


@pytest.fixture
def dall_e_2_live(tmp_path):
    """A --models file under which AceData still serves dall-e-2, as it did before 2026-05-12:
    for checks of what earlier versions computed with it (the simulator does not serve it)."""
    path = tmp_path / "dall-e-2-live.json"
    path.write_text(json.dumps({"providers": {"acedata": {"models": {"dall-e-2": {"status": "live"}}}}}))
    return str(path)


@pytest.fixture
def prompts_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS, "tag": ["otter", "lighthouse", "bicycle"]}).to_csv(path, index=False)
    return path


class Cli:
    def __init__(self, env):
        self.env = env

    def __call__(self, *args, env=None):
        result = CliRunner().invoke(main, [str(a) for a in args], env={**self.env, **(env or {})},
                                    catch_exceptions=False)
        return result


@pytest.fixture
def cli():
    return Cli({"ACEDATA_API_TOKEN": TOKEN, "OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})


def results(out) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "results.parquet")


def journal(out) -> list:
    """The journal's task records (not its synced markers)."""
    records = [json.loads(line) for line in (Path(out) / "journal.jsonl").read_text().splitlines()]
    return [r for r in records if "task_id" in r]


def wait_until(predicate, timeout=60.0, what="condition"):
    """Wait for something to happen (polling a condition, with a deadline), not for time to pass."""
    import threading
    import time
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.01)


def batchgen_process(*args, token=TOKEN, **popen):
    """`python -m batchgen ...` as a real process (for signals and kill -9)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "ACEDATA_API_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "batchgen", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def make_prompts(path, count):
    pd.DataFrame({"prompt": [f"prompt number {i}: a small watercolour of a harbour" for i in range(count)],
                  "idx": range(count)}).to_csv(path, index=False)
    return path
