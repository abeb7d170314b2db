"""A task is its request: the prompt, the parameters as sent and its occurrence among identical
requests. What the input says around it (pass-through cells, their inferred types, row order,
empty columns) never makes a finished task be sent again. Through the CLI, against the simulator."""
import json
import os

import pyarrow as pa
import pytest
from conftest import results

from batchgen.keeping.journal import Replay
from batchgen.planning.identity import TASK_IDS_KEY, alias_records, is_legacy, legacy_ids
from batchgen.planning.reader import read_table
from batchgen.planning.settings import JobConfig
from batchgen.planning.tasks import make_plan, task_id

MODEL = ("--model", "dall-e-3", "--size", "1024x1024")


@pytest.fixture
def run(cli, fresh_sim, tmp_path):
    """Run a CSV (given as text) into one output folder; returns the requests it sent."""
    out = tmp_path / "out"

    def go(csv_text, *extra, expect=0):
        path = tmp_path / "p.csv"
        path.write_text(csv_text)
        fresh_sim.reset_stats()
        r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress", *MODEL, *extra)
        assert r.exit_code == expect, r.output
        return fresh_sim.stats.requests
    go.out = out
    return go


def test_a_row_that_turns_a_pass_through_column_into_text_sends_only_itself(run):
    assert run("prompt,batch\nan otter,1\na fox,2\nan owl,3\n") == 3
    assert run("prompt,batch\nan otter,1\na fox,2\nan owl,3\na heron,3b\n") == 1
    df = results(run.out)
    assert df.batch.tolist() == ["1", "2", "3", "3b"] and df.in_input.all() and len(df) == 4


def test_a_prompt_column_of_numbers_that_turns_into_text_keeps_its_tasks(run):
    assert run("prompt\n1\n2\n") == 2
    assert run("prompt\n1\n2\ntwo otters\n") == 1


def test_adding_an_empty_column_sends_nothing(run):
    assert run("prompt,tag\nan otter,a\na fox,b\n") == 2
    assert run("prompt,tag,notes\nan otter,a,\na fox,b,\n") == 0
    assert run("prompt,notes,tag,more\nan otter,,a,1\na fox,,b,2\n") == 0   # any cells, any order
    assert results(run.out).more.tolist() == [1, 2]


def test_editing_a_pass_through_cell_sends_nothing_and_the_results_show_the_new_cell(run):
    assert run("prompt,tag\nan otter,a\na fox,b\n") == 2
    assert run("prompt,tag\nan otter,a\na fox,changed\n") == 0
    df = results(run.out)
    assert df.tag.tolist() == ["a", "changed"] and df.in_input.all()


def test_changing_a_prompt_or_a_parameter_makes_a_new_task(run):
    assert run("prompt,size\nan otter,\na fox,\n") == 2
    assert run("prompt,size\nan otter,\na red fox,\n") == 1                 # the prompt
    assert run("prompt,size\nan otter,1792x1024\na red fox,\n") == 1        # a row's own parameter
    df = results(run.out)
    assert df.in_input.sum() == 2 and (~df.in_input).sum() == 2             # earlier tasks stay listed
    assert run("prompt,size\nan otter,1024x1024\na red fox,\n") == 0        # = the default: the same request


def test_identical_rows_stay_two_tasks_and_one_more_is_one_more(run):
    assert run("prompt,tag\nan otter,a\nan otter,b\n") == 2
    assert run("prompt,tag\nan otter,a\nan otter,b\n") == 0
    assert run("prompt,tag\nan otter,c\nan otter,a\nan otter,b\n") == 1
    df = results(run.out)
    assert df.task_id.nunique() == 3 and df.tag.tolist() == ["c", "a", "b"]


def test_reordering_the_input_sends_nothing(run):
    assert run("prompt,size\nan otter,\na fox,1792x1024\nan otter,\nan owl,\n") == 4
    assert run("prompt,size\nan owl,\nan otter,\na fox,1792x1024\nan otter,\n") == 0
    assert results(run.out).in_input.all()


# ---- folders written with the previous ids --------------------------------------------------

def _make_legacy(out, csv, config):
    """Turn a folder of this version into one of the previous: journal records, image names and
    job.json as the previous scheme wrote them."""
    plan = make_plan(read_table(csv), config)
    old_of = dict(zip((t.task_id for t in plan.tasks), legacy_ids(read_table(csv), config, plan)))
    lines = []
    for line in (out / "journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("task_id") in old_of:
            new = record["task_id"]
            record["task_id"] = old = old_of[new]
            for image in record.get("images") or ():
                path = image["image_path"].replace(new, old).replace(f"/{new[:2]}/", f"/{old[:2]}/")
                (out / path).parent.mkdir(exist_ok=True)
                os.replace(out / image["image_path"], out / path)
                image["image_path"] = path
        lines.append(json.dumps(record, separators=(",", ":")))
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    job = json.loads((out / "job.json").read_text())
    job.pop(TASK_IDS_KEY, None)
    (out / "job.json").write_text(json.dumps(job))
    (out / "results.parquet").unlink()
    return set(old_of.values())


def test_a_folder_of_the_previous_ids_resumes_without_sending(run, cli, tmp_path):
    csv_text = "prompt,tag\nan otter,a\na fox,b\nan otter,c\n"
    assert run(csv_text) == 3
    before = results(run.out)
    old_ids = _make_legacy(run.out, tmp_path / "p.csv",
                           JobConfig(source=str(tmp_path / "p.csv"),
                                     defaults={"model": "dall-e-3", "size": "1024x1024"}))
    assert run(csv_text) == 0
    df = results(run.out)
    assert len(df) == 3 and df.in_input.all() and not set(df.task_id) & old_ids
    assert all((run.out / p).exists() for p in df.image_path)
    assert df.sha256.tolist() == before.sha256.tolist() and df.endpoint.tolist() == before.endpoint.tolist()
    assert json.loads((run.out / "job.json").read_text())[TASK_IDS_KEY] == 2
    assert "3/3 tasks done" in cli("status", run.out).output
    assert run("prompt,tag\nan otter,a\na fox,b\nan otter,c\nan owl,d\n") == 1    # and on from there
    assert len(results(run.out)) == 4 and results(run.out).in_input.all()


# ---- the pieces, without a server -----------------------------------------------------------

def test_the_id_is_the_request():
    params = {"model": "dall-e-3", "size": "1024x1024"}
    table = pa.table({"prompt": ["an otter", "an otter", "a fox"], "tag": [1, 2, 3]})
    plan = make_plan(table, JobConfig(defaults=params))
    assert [t.task_id for t in plan.tasks] == [task_id("an otter", params, 0), task_id("an otter", params, 1),
                                               task_id("a fox", params, 0)]
    assert all(len(t.task_id) == 16 and int(t.task_id, 16) >= 0 for t in plan.tasks)


def test_legacy_ids_are_the_previous_scheme(dall_e_2_live):
    # Ids the previous version gave these rows (computed with its job.py), when dall-e-2 was live.
    table = pa.table({"prompt": ["an otter", "a fox", "an otter"], "tag": ["a", "b", "a"], "n": [None, 2, None]})
    config = JobConfig(defaults={"model": "dall-e-2"}, models=dall_e_2_live)
    plan = make_plan(table, config)
    assert legacy_ids(table, config, plan) == ["6900cf4d00f63917", "dbad6c46e8f6f2fd", "0ea48f4eba0c46ae"]


def test_alias_records_carry_finished_outcomes_to_the_new_ids():
    table = pa.table({"prompt": ["an otter", "a fox", "an owl"]})
    config = JobConfig(defaults={"model": "dall-e-3"})
    plan = make_plan(table, config)
    old = legacy_ids(table, config, plan)
    replay = Replay()
    replay.begin_origin({"provider": "acedata", "endpoint": "https://x/images/generations", "mode": "live",
                         "simulated": False})
    replay.apply({"task_id": old[0], "status": "ok", "attempts": 1,
                  "images": [{"image_path": f"images/{old[0][:2]}/{old[0]}.png"}]})
    replay.apply({"task_id": old[1], "status": "error", "error_code": "content_policy_violation", "attempts": 1})
    replay.apply({"task_id": plan.tasks[1].task_id, "status": "ok", "attempts": 1})   # already under its new id
    lines = alias_records(plan, old, replay, {"provider": "acedata"})
    assert lines[0] == {"origin": replay.origins[0]}
    assert lines[1:] == [{"replaces": old[0], "task_id": plan.tasks[0].task_id, "status": "ok", "attempts": 1,
                          "images": [{"image_path": f"images/{old[0][:2]}/{old[0]}.png"}]}]
    assert json.dumps(lines[1]).startswith('{"replaces": ')     # not read by the journal's fast path
    assert is_legacy({"fingerprint": "x"}) and not is_legacy({"fingerprint": "x", TASK_IDS_KEY: 2})
    assert not is_legacy(None)
