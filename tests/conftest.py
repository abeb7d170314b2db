"""Shared fixtures: the built-in simulator on loopback, and helpers to run the CLI."""
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from batchgen.cli import main
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
    return [json.loads(line) for line in (Path(out) / "journal.jsonl").read_text().splitlines()]
