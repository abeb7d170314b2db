"""Planning: task ids, sweeps, row validation and settings, without a server or files."""
import pyarrow as pa
import pytest

from batchgen.exceptions import UsageError
from batchgen.planning.settings import JobConfig, parse_sweep, resolve_config
from batchgen.planning.summary import format_plan, summarise_plan
from batchgen.planning.tasks import make_plan


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
    assert ids(make_plan(df, config())) != ids(make_plan(df, config(defaults={"model": "gpt-image-2"})))


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
    with pytest.raises(UsageError, match=r"size '512x512' is not allowed for dall-e-3 "
                                         r"\(allowed: 1024x1024, 1792x1024, 1024x1792\)"):
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


def test_a_job_file_sets_automatic_concurrency_and_its_ceiling(tmp_path):
    (tmp_path / "p.csv").write_text("prompt\notter\n")
    job = tmp_path / "job.toml"
    job.write_text('input = "p.csv"\nconcurrency = "auto"\nmax_concurrency = 40\n')
    c = resolve_config(str(job), {})
    assert (c.concurrency, c.max_concurrency) == ("auto", 40)
    assert resolve_config(str(tmp_path / "p.csv"), {}).concurrency == "auto"      # the default


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


# ---- what a task's id is made of ---------------------------------------------------------

def test_a_task_id_is_the_prompt_the_parameters_and_the_occurrence():
    from batchgen.planning.tasks import task_id
    df = pa.table({"prompt": ["otter", "fox", "otter"]})
    params = {"model": "dall-e-3"}
    assert ids(make_plan(df, config())) == [task_id("otter", params, 0), task_id("fox", params, 0),
                                           task_id("otter", params, 1)]
    # Pass-through columns, their types and empty columns are no part of it.
    with_more = df.append_column("tag", pa.array([1, 2, 3])).append_column("empty", pa.nulls(3))
    assert ids(make_plan(with_more, config())) == ids(make_plan(df, config()))
    assert ids(make_plan(df.append_column("tag", pa.array(["1", "2", "3b"])), config())) == ids(make_plan(df, config()))


def test_tasks_that_send_the_same_request_are_counted_among_identical_ones():
    from batchgen.planning.tasks import task_id
    # Row 0 asks for hd itself; the sweep asks both rows for standard and hd: the same requests.
    df = pa.table({"prompt": ["otter", "otter"], "quality": ["hd", None]})
    plan = make_plan(df, config(sweep=parse_sweep(["quality=standard,hd"])))
    standard, hd = {"model": "dall-e-3", "quality": "standard"}, {"model": "dall-e-3", "quality": "hd"}
    assert ids(plan) == [task_id("otter", standard, 0), task_id("otter", hd, 0),
                         task_id("otter", standard, 1), task_id("otter", hd, 1)]
    # A row's own cell that equals the default sends the same request as an empty one.
    same = pa.table({"prompt": ["otter"], "quality": ["standard"]})
    assert ids(make_plan(same, config(defaults={"model": "dall-e-3", "quality": "standard"}))) == \
        [task_id("otter", standard, 0)]


def test_blank_prompts_are_refused_and_still_told_apart():
    df = pa.table({"prompt": ["", "  ", None, None]})
    plan = make_plan(df, config())
    assert {t.problem for t in plan.tasks} == {"prompt is missing or blank"}
    assert len(set(ids(plan))) == 4


def test_a_number_prompt_column_and_its_text_give_the_same_tasks():
    numbers = make_plan(pa.table({"prompt": [1, 2]}), config())
    text = make_plan(pa.table({"prompt": ["1", "2"]}), config())
    assert ids(numbers) == ids(text) and [t.prompt for t in numbers.tasks] == ["1", "2"]


def test_many_repeated_prompts_keep_their_occurrences_in_input_order():
    from batchgen.planning.tasks import task_id
    df = pa.table({"prompt": ["a", "b", "a", "a", "b"], "n": [None, None, 2, None, None]})
    plan = make_plan(df, config(defaults={"model": "gpt-image-2"}))
    one, two = {"model": "gpt-image-2"}, {"model": "gpt-image-2", "n": 2}
    assert ids(plan) == [task_id("a", one, 0), task_id("b", one, 0), task_id("a", two, 0),
                         task_id("a", one, 1), task_id("b", one, 1)]


def test_the_pass_through_digest_follows_the_cells():
    df = pa.table({"prompt": ["otter", "fox"], "tag": ["a", "b"]})
    digest = make_plan(df, config()).passthrough_digest
    assert make_plan(pa.table({"prompt": ["otter", "fox"], "tag": ["a", "b"]}), config()).passthrough_digest == digest
    assert make_plan(pa.table({"prompt": ["otter", "fox"], "tag": ["a", "c"]}), config()).passthrough_digest != digest
    assert make_plan(pa.table({"prompt": ["otter", "fox"], "tag": [1, 2]}), config()).passthrough_digest != digest


def test_n_written_as_a_whole_number_in_text_is_that_number():
    df = pa.table({"prompt": ["a", "b"], "n": ["2.0", "two"]})
    plan = make_plan(df, config(defaults={"model": "gpt-image-2"}))
    assert plan.tasks[0].params["n"] == 2 and plan.tasks[0].problem is None
    assert plan.tasks[1].problem == "n 'two' is not a whole number"


# ---- defaults against the models the rows use ---------------------------------------------

def test_a_default_is_checked_against_the_models_the_rows_name():
    df = pa.table({"prompt": ["otter", "fox"], "model": ["gpt-image-2", "gpt-image-2"]})
    plan = make_plan(df, config(defaults={"quality": "low"}))
    assert [t.problem for t in plan.tasks] == [None, None]
    assert [t.params for t in plan.tasks] == [{"model": "gpt-image-2", "quality": "low"}] * 2


def test_a_row_whose_model_refuses_a_default_others_use_is_refused_alone():
    df = pa.table({"prompt": ["otter", "fox"], "model": ["gpt-image-2", None]})
    plan = make_plan(df, config(defaults={"model": "dall-e-3", "quality": "low"}))
    assert plan.tasks[0].problem is None
    assert plan.tasks[1].problem == "quality 'low' is not allowed for dall-e-3 (allowed: standard, hd)"


def test_a_default_no_model_of_the_rows_allows_is_a_usage_error_naming_each():
    df = pa.table({"prompt": ["otter", "fox"], "model": ["gpt-image-2", "dall-e-3"]})
    with pytest.raises(UsageError, match=r"default quality 'ultra' is not allowed for dall-e-3 "
                                         r"\(allowed: standard, hd\), "
                                         r"nor for gpt-image-2 \(allowed: low, medium, high, auto\)"):
        make_plan(df, config(defaults={"quality": "ultra"}))
    # A swept model is the model of every row at its point.
    with pytest.raises(UsageError, match="sweep quality 'low' is not allowed for dall-e-3"):
        make_plan(df, config(sweep=parse_sweep(["model=dall-e-3", "quality=low"])))


@pytest.mark.parametrize("where, value, message", [
    ("quality", "", "quality is empty"),
    ("quality", ["hd"], "quality must be one text value"),
    ("n", True, "n must be a whole number"),
    ("n", "2.5", "n must be a whole number"),
])
def test_bad_default_values_are_usage_errors(tmp_path, where, value, message):
    (tmp_path / "p.csv").write_text("prompt\notter\n")
    with pytest.raises(UsageError, match=message):
        resolve_config(str(tmp_path / "p.csv"), {"defaults": {where: value}})


@pytest.mark.parametrize("options, message", [
    ({"concurrency": True}, "--concurrency must be auto or a whole number"),
    ({"timeout": float("inf")}, "--timeout must be a finite number > 0"),
    ({"rpm": float("nan")}, "--rpm must be a finite number > 0"),
    ({"encoding": "no-such-codec"}, "not a text encoding"),
    ({"encoding": 5}, "--encoding must be text"),
    ({"base_url": "http://[::1/v1"}, "not a valid URL"),
    ({"prompt_column": " "}, "--prompt-column is empty"),
])
def test_bad_settings_from_the_python_api_are_usage_errors(tmp_path, options, message):
    (tmp_path / "p.csv").write_text("prompt\notter\n")
    with pytest.raises(UsageError, match=message):
        resolve_config(str(tmp_path / "p.csv"), options)


def test_an_empty_sweep_axis_is_a_usage_error():
    with pytest.raises(UsageError, match="names no value"):
        parse_sweep(["quality=,"])


@pytest.mark.parametrize("column", [
    pa.array([b"otter"]), pa.array([["an", "otter"]]), pa.array([{"text": "otter"}]),
])
def test_a_prompt_column_that_is_not_text_is_a_usage_error(column):
    with pytest.raises(UsageError, match=r"the prompt column 'prompt' holds .* values, not text"):
        make_plan(pa.table({"prompt": column}), config())


def test_a_parameter_column_of_lists_is_a_usage_error():
    with pytest.raises(UsageError, match="column 'size' sets the size parameter"):
        make_plan(pa.table({"prompt": ["otter"], "size": pa.array([["1024x1024"]])}), config())
