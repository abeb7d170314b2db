"""The Python API as a notebook uses it: batchgen.run / batchgen.plan with the command line's
option names as keywords, a table in memory as the source, batchgen exceptions worded for Python."""
import dataclasses
import inspect
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from conftest import PROMPTS, TOKEN

import batchgen
from batchgen.planning.settings import PARAMETERS, JobConfig

ENV = {"ACEDATA_API_TOKEN": TOKEN}


def test_a_notebook_runs_a_dataframe_and_gets_its_results_as_a_dataframe(fresh_sim, tmp_path):
    df = pd.DataFrame({"prompt": PROMPTS, "tag": ["otter", "lighthouse", "bicycle"], "score": [1, 2, 3]})
    summary = batchgen.run(df, out=tmp_path / "o", model="dall-e-3", sweep={"quality": ["standard", "hd"]},
                           base_url=fresh_sim.acedata_url, environ=ENV, progress=False)
    assert (summary.ok, summary.errors, summary.exit_status) == (6, 0, 0)
    results = summary.results()
    assert isinstance(results, pd.DataFrame) and len(results) == 6
    assert sorted(results.quality.unique()) == ["hd", "standard"] and set(results.model) == {"dall-e-3"}
    assert results.groupby("tag").size().to_dict() == {"bicycle": 2, "lighthouse": 2, "otter": 2}
    assert str(results.score.dtype) == "Int64"
    assert all((Path(summary.out) / p).is_file() for p in results.image_path)
    # The same call again resumes: nothing is sent.
    again = batchgen.run(df, out=tmp_path / "o", model="dall-e-3", sweep={"quality": ["standard", "hd"]},
                         base_url=fresh_sim.acedata_url, environ=ENV, progress=False)
    assert again.requests_sent == 0 and again.ok == 6


@pytest.mark.parametrize("make", [
    lambda: pa.table({"prompt": PROMPTS, "k": [1, 2, 3]}),
    lambda: [{"prompt": p, "k": i} for i, p in enumerate(PROMPTS)],
    lambda: pd.DataFrame({"prompt": PROMPTS, "k": [1, "two", 3.5]}),     # a mixed column: text
])
def test_plan_takes_a_table_in_memory_and_runs_keywords(make):
    summary = batchgen.plan(make(), out="unused", model="dall-e-3", quality="hd", concurrency=4,
                            sweep=["style=vivid,natural"])
    assert (summary.tasks, summary.refused) == (6, 0)
    assert summary.cost_usd == pytest.approx(6 * 0.08)
    assert "total" in str(summary) and "style=vivid" in str(summary)


def test_a_mistyped_keyword_is_named_with_the_one_it_resembles(prompts_csv):
    with pytest.raises(batchgen.UsageError, match=r"no keyword 'modle' \(did you mean 'mode' or 'model'\?\)"):
        batchgen.run(prompts_csv, modle="dall-e-3")
    with pytest.raises(batchgen.UsageError, match=r"'concurency' \(did you mean 'concurrency'"):
        batchgen.plan(prompts_csv, concurency=3)


def test_errors_are_batchgen_exceptions_worded_for_python(prompts_csv, tmp_path):
    with pytest.raises(batchgen.UsageError) as e:
        batchgen.run(prompts_csv, out=tmp_path / "o", environ={}, progress=False)
    assert "ACEDATA_API_TOKEN" in str(e.value) and "pass simulate=True" in str(e.value)
    assert "--" not in str(e.value)
    with pytest.raises(batchgen.UsageError) as e:
        batchgen.run(prompts_csv, out=tmp_path / "o", concurrency="8", environ=ENV)
    assert str(e.value).startswith("concurrency must be auto or a whole number") and "--" not in str(e.value)
    with pytest.raises(batchgen.UsageError, match="'colour' is not a parameter"):
        batchgen.plan(prompts_csv, sweep={"colour": ["red"]})
    with pytest.raises(batchgen.UsageError, match="out is needed"):
        batchgen.run(pd.DataFrame({"prompt": PROMPTS}), simulate=True)
    with pytest.raises(batchgen.UsageError, match="item 1 is a str, not a dict"):
        batchgen.plan([{"prompt": "a"}, "b"], out="x")
    with pytest.raises(batchgen.UsageError, match="no column 'prompt' in the DataFrame"):
        batchgen.plan(pd.DataFrame({"text": PROMPTS}), out="x")
    assert not (tmp_path / "o").exists()


def test_simulate_needs_no_token(prompts_csv, tmp_path):
    summary = batchgen.run(prompts_csv, out=tmp_path / "o", model="dall-e-3", simulate=True, environ={},
                           progress=False)
    assert summary.ok == 3 and summary.results().simulated.all()


def test_every_setting_of_a_job_is_a_typed_keyword_of_run_and_plan():
    run_keywords = inspect.signature(batchgen.run).parameters
    internal = {"source", "job_file"}    # given by the source
    settings = {f.name for f in dataclasses.fields(JobConfig)} - internal
    assert settings <= set(run_keywords), settings - set(run_keywords)
    assert set(PARAMETERS) <= set(run_keywords), set(PARAMETERS) - set(run_keywords)
    assert all(run_keywords[k].kind is inspect.Parameter.KEYWORD_ONLY and run_keywords[k].annotation
               is not inspect.Parameter.empty for k in settings | set(PARAMETERS))
    assert inspect.signature(batchgen.plan).parameters == run_keywords
    assert (Path(batchgen.__file__).parent / "py.typed").is_file()
