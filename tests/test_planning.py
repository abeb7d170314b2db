"""Planning: task ids, sweeps, row validation and settings, without a server or files."""
import pyarrow as pa
import pytest

from batchgen.exceptions import UsageError
from batchgen.job import JobConfig, make_plan, parse_sweep, resolve_config
from batchgen.planning import format_plan, summarise_plan


def config(**kw):
    kw.setdefault("source", "prompts.csv")
    kw.setdefault("defaults", {"model": "dall-e-3"})
    return JobConfig(**kw)


def ids(plan):
    return [t.task_id for t in plan.tasks]


def test_a_sweep_makes_one_task_per_row_and_point():
    df = pa.table({"prompt": ["an otter", "a fox"]})
    plan = make_plan(df, config(sweep=parse_sweep(["quality=standard,hd", "style=vivid,natural"])))
    assert len(plan.tasks) == 8
    assert len(set(ids(plan))) == 8
    assert {(t.params["quality"], t.params["style"]) for t in plan.tasks if t.row_index == 0} == {
        ("standard", "vivid"), ("standard", "natural"), ("hd", "vivid"), ("hd", "natural")}


def test_task_ids_survive_reordering_and_duplicates_stay_distinct():
    df = pa.table({"prompt": ["otter", "fox", "otter", "owl"], "tag": ["a", "b", "a", "c"]})
    plan = make_plan(df, config())
    assert len(set(ids(plan))) == 4  # the two identical otter rows are two tasks
    shuffled = make_plan(df.take([3, 2, 1, 0]), config())
    assert sorted(ids(plan)) == sorted(ids(shuffled))
    by_prompt = {t.task_id: (t.prompt, df["tag"][t.row_index].as_py()) for t in plan.tasks}
    assert {t.task_id: (t.prompt, df["tag"][[3, 2, 1, 0][t.row_index]].as_py()) for t in shuffled.tasks} == by_prompt


def test_task_ids_do_not_depend_on_column_order():
    df = pa.table({"prompt": ["otter"], "tag": ["a"]})
    assert ids(make_plan(df, config())) == ids(make_plan(df.select(["tag", "prompt"]), config()))


def test_task_ids_change_with_the_parameters():
    df = pa.table({"prompt": ["otter"]})
    assert ids(make_plan(df, config())) != ids(make_plan(df, config(defaults={"model": "dall-e-2"})))


def test_row_columns_set_their_parameters_and_empty_cells_fall_back():
    df = pa.table({"prompt": ["a", "b"], "quality": ["hd", None], "n": [None, 1.0]})
    plan = make_plan(df, config(defaults={"model": "dall-e-3", "quality": "standard"}))
    assert plan.tasks[0].params == {"model": "dall-e-3", "quality": "hd"}
    assert plan.tasks[1].params == {"model": "dall-e-3", "quality": "standard", "n": 1}
    assert plan.passthrough == []


def test_bad_rows_are_refused_with_a_reason_not_sent():
    df = pa.table({"prompt": ["fine", "", None, "x" * 4001, "fine too"],
                   "size": [None, None, None, None, "256x256"]})
    plan = make_plan(df, config())
    problems = [t.problem for t in plan.tasks]
    assert problems[0] is None
    assert problems[1] == problems[2] == "prompt is missing or blank"
    assert "at most 4000" in problems[3]
    assert "size '256x256' is not allowed for dall-e-3" in problems[4]
    assert len([t for t in plan.tasks if t.problem is None]) == 1


def test_a_default_the_model_refuses_is_a_usage_error_listing_allowed_values():
    df = pa.table({"prompt": ["otter"]})
    with pytest.raises(UsageError, match=r"size '512x512' is not allowed for dall-e-3 \(allowed: 1024x1024, 1792x1024, 1024x1792\)"):
        make_plan(df, config(defaults={"model": "dall-e-3", "size": "512x512"}))
    with pytest.raises(UsageError, match="quality 'ultra'"):
        make_plan(df, config(sweep=parse_sweep(["quality=standard,ultra"])))


def test_a_missing_prompt_column_lists_the_columns_that_exist():
    df = pa.table({"text": ["otter"], "id": [1]})
    with pytest.raises(UsageError, match=r"no column 'prompt'.*'text', 'id'.*--prompt-column"):
        make_plan(df, config())


def test_limit_takes_the_first_rows():
    df = pa.table({"prompt": ["a", "b", "c"]})
    assert [t.row_index for t in make_plan(df, config(limit=2)).tasks] == [0, 1]


@pytest.mark.parametrize("spec, message", [
    (["quality"], "AXIS=V1,V2"),
    (["colour=red"], "not a parameter"),
    (["quality=hd", "quality=standard"], "twice"),
    (["n=two"], "whole number"),
])
def test_bad_sweep_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_sweep(spec)


def test_job_file_settings_and_command_line_overrides(tmp_path):
    (tmp_path / "p.csv").write_text("prompt\notter\n")
    job = tmp_path / "job.toml"
    job.write_text('input = "p.csv"\nout = "o"\nconcurrency = 3\n[defaults]\nmodel = "dall-e-3"\n'
                   'quality = "standard"\n[sweep]\nstyle = ["vivid", "natural"]\n')
    c = resolve_config(str(job), {"concurrency": 5, "defaults": {"quality": "hd"}, "sweep": []})
    assert c.source == str(tmp_path / "p.csv") and c.out == str(tmp_path / "o")
    assert c.concurrency == 5
    assert c.defaults == {"model": "dall-e-3", "quality": "hd"}
    assert c.sweep == [("style", ["vivid", "natural"])]


def test_job_file_with_an_unknown_setting_is_refused(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('input = "p.csv"\nconcurency = 3\n')
    with pytest.raises(UsageError, match="unknown setting.*concurency"):
        resolve_config(str(job), {})


def test_fingerprint_ignores_operational_settings():
    a = config(concurrency=2, base_url="http://x", limit=3)
    b = config(concurrency=9)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != config(defaults={"model": "dall-e-2"}).fingerprint()


def test_plan_summary_counts_and_costs_per_sweep_point():
    df = pa.table({"prompt": ["a", "b", ""]})
    plan = make_plan(df, config(sweep=parse_sweep(["quality=standard,hd"])))
    summary = summarise_plan(plan)
    assert [(p.label, p.tasks, p.refused) for p in summary.points] == [
        ("quality=standard", 2, 1), ("quality=hd", 2, 1)]
    assert summary.points[0].cost_usd == pytest.approx(0.08)
    assert summary.points[1].cost_usd == pytest.approx(0.16)
    assert summary.refused_by_reason == {"prompt is missing or blank": 2}
    text = format_plan(summary, rpm=2)
    assert "$0.24" in text and "4 tasks (4 images) at 2/min: 2 min" in text


def test_python_api_defaults_are_parsed_like_the_command_line(tmp_path):
    (tmp_path / "p.csv").write_text("prompt\notter\n")
    c = resolve_config(str(tmp_path / "p.csv"), {"defaults": {"model": "dall-e-2", "n": "3"}})
    assert c.defaults == {"model": "dall-e-2", "n": 3}
    with pytest.raises(UsageError, match="n must be a whole number"):
        resolve_config(str(tmp_path / "p.csv"), {"defaults": {"n": "three"}})
