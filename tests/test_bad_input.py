"""Bad input gets a clear message and exit 2, never a traceback, and nothing is sent."""
import pandas as pd
import pyarrow as pa
import pytest
from conftest import results


@pytest.fixture
def run(cli, fresh_sim, tmp_path):
    def go(source, *extra):
        r = cli("run", source, "--out", tmp_path / "out", "--base-url", fresh_sim.acedata_url,
                "--no-progress", *extra)
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and "error: " in r.output.lower()
        assert fresh_sim.stats.requests == 0
        return r.output
    return go


def test_missing_prompt_column_lists_the_columns(run, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("promt,id\notter,1\n")
    out = run(path)
    assert "no column 'prompt'" in out and "'promt', 'id'" in out and "--prompt-column" in out
    assert not (tmp_path / "out").exists()


def test_empty_file(run, tmp_path):
    (tmp_path / "p.csv").write_text("")
    assert "empty" in run(tmp_path / "p.csv")
    (tmp_path / "h.csv").write_text("prompt\n")
    assert "no rows" in run(tmp_path / "h.csv")


def test_unknown_extension(run, tmp_path):
    (tmp_path / "p.xlsx").write_text("x")
    out = run(tmp_path / "p.xlsx")
    assert "unknown file type '.xlsx'" in out and ".csv" in out


def test_a_file_that_does_not_exist(run, tmp_path):
    assert "no such file" in run(tmp_path / "nope.csv")
    assert "no such job file" in run(tmp_path / "nope.toml")


def test_corrupt_parquet(run, tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["otter"] * 50}).to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "Parquet" in run(path)
    path.write_text("prompt\nnot parquet at all\n")
    assert "Parquet" in run(path)


def test_bad_jsonl(run, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "otter"}\n{"prompt": \n')
    assert "JSON Lines" in run(path)


def test_a_csv_that_is_not_utf8_names_the_encoding_option(run, cli, fresh_sim, tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("prompt\nA caf\u00e9 in Z\u00fcrich at dusk\n".encode("cp1252"))
    out = run(path, "--model", "dall-e-3")
    assert "not UTF-8" in out and "--encoding" in out
    r = cli("run", path, "--out", tmp_path / "out", "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--encoding", "cp1252", "--no-progress")
    assert r.exit_code == 0, r.output
    assert results(tmp_path / "out").prompt.tolist() == ["A caf\u00e9 in Z\u00fcrich at dusk"]


@pytest.mark.parametrize("args, words", [
    (("--model", "dall-e-3", "--size", "512x512"),
     "size '512x512' is not allowed for dall-e-3 (allowed: 1024x1024, 1792x1024, 1024x1792)"),
    (("--model", "dall-e-3", "--quality", "ultra"), "quality 'ultra'"),
    (("--model", "gpt-image-2", "--style", "vivid"), "style 'vivid' is not allowed for gpt-image-2"),
    (("--model", "dall-e-3", "--sweep", "quality=standard,high"), "quality 'high'"),
    (("--sweep", "colour=red"), "not a parameter"),
    (("--provider", "nobody"), "Invalid value for '--provider'"),
    (("--n", "0"), "Invalid value for '--n'"),
    (("--base-url", "ftp://example"), "http"),
])
def test_option_values_the_model_does_not_allow(run, prompts_csv, args, words):
    out = run(prompts_csv, *args)
    assert words in out


def test_a_bad_job_file(run, tmp_path):
    job = tmp_path / "j.toml"
    job.write_text("input = 'p.csv'\n[defaults\n")
    assert "not a valid TOML" in run(job)


def test_an_unwritable_out(cli, prompts_csv, tmp_path, fresh_sim):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("run", prompts_csv, "--out", blocker / "out", "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    assert r.exit_code == 2 and "cannot write the output folder" in r.output


def test_the_command_keeps_its_exit_status_and_messages_through_its_quick_exit(tmp_path, sim):
    # `python -m batchgen` leaves with os._exit after flushing (cli.entry): what it printed and
    # its exit status must survive that.
    from conftest import batchgen_process, make_prompts
    bad = batchgen_process("run", tmp_path / "missing.csv", "--simulate")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "no such file" in err and "Traceback" not in err
    csv = make_prompts(tmp_path / "p.csv", 3)
    good = batchgen_process("run", csv, "--out", tmp_path / "out", "--base-url", sim.acedata_url,
                            "--model", "dall-e-3", "--size", "1024x1024", "--no-progress")
    out, err = good.communicate(timeout=120)
    assert good.returncode == 0, err
    assert out.splitlines()[0].startswith("3 ok, 0 error(s)") and "results:" in out
    assert len(results(tmp_path / "out")) == 3 and (tmp_path / "out" / "metadata.jsonl").read_text().count("\n") == 3


@pytest.mark.parametrize("args, words", [
    (("--base-url", "http://[::1/v1"), "--base-url 'http://[::1/v1' is not a valid URL (Invalid IPv6 URL)"),
    (("--base-url", "http://"), "--base-url 'http://' names no valid host"),
    (("--base-url", "http://127.0.0.1:99999/v1"), "Port out of range"),
    (("--base-url", "http://me:hunter2@[::1/v1?key=abc"), "not a valid URL"),
    (("--encoding", "no-such-codec"), "--encoding 'no-such-codec' is not a text encoding Python knows"),
    (("--encoding", "rot13"), "not a text encoding"),
    (("--timeout", "inf"), "--timeout must be a finite number > 0 (e.g. --timeout 300), not inf"),
    (("--timeout", "nan"), "--timeout must be a finite number > 0"),
    (("--sweep", "quality=,"), "--sweep 'quality=,' names no value"),
    (("--quality", ""), "--quality is empty"),
])
def test_malformed_settings(run, prompts_csv, tmp_path, args, words):
    out = run(prompts_csv, "--model", "dall-e-3", *args)
    assert words in out and "hunter2" not in out and "key=abc" not in out
    assert not (tmp_path / "out").exists()


def test_a_malformed_base_url_is_refused_even_with_simulate(run, prompts_csv):
    assert "not a valid URL" in run(prompts_csv, "--model", "dall-e-3", "--simulate", "--base-url", "http://[::1")


def test_an_unknown_encoding_is_refused_for_a_file_that_would_not_use_it(run, tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["an otter"]}).to_parquet(path)
    assert "not a text encoding" in run(path, "--model", "dall-e-3", "--encoding", "nope")


@pytest.mark.parametrize("setting, words", [
    ("input = 5", "input must be a path in quotes"),
    ('input = "p.csv"\nout = ["x"]', "out must be a path in quotes"),
    ('input = "p.csv"\nencoding = 5', "encoding must be text (e.g. encoding = \"cp1252\"), not 5"),
    ('input = "p.csv"\nencoding = "nope"', "not a text encoding"),
    ('input = "p.csv"\nconcurrency = true',
     'concurrency must be auto or a whole number ≥ 1 (e.g. concurrency = "auto" or concurrency = 64), not True'),
    ('input = "p.csv"\ntimeout = inf', "timeout must be a finite number > 0 (e.g. timeout = 300), not inf"),
    ('input = "p.csv"\nrpm = "fast"', "rpm must be a finite number > 0"),
    ('input = "p.csv"\nprompt_column = 5', "prompt_column must be text"),
    ('input = "p.csv"\nbase_url = 5', "base_url must be text"),
    ('input = "p.csv"\nbase_url = "http://"', "base_url 'http://' names no valid host"),
    ('input = "p.csv"\n[defaults]\nquality = ["hd"]', "quality must be one text value"),
    ('input = "p.csv"\n[sweep]\nquality = [""]', "quality is empty"),
])
def test_job_file_values_of_the_wrong_type(run, tmp_path, setting, words):
    (tmp_path / "p.csv").write_text("prompt\nan otter\n")
    job = tmp_path / "j.toml"
    job.write_text(setting + "\n")
    out = run(job, "--model", "dall-e-3")
    assert words in out and str(job) in out


@pytest.mark.parametrize("column, words", [
    (pa.array([b"an otter", b"a fox"]), "holds binary values, not text"),
    (pa.array([["an", "otter"], ["a", "fox"]]), "holds list<element: string> values, not text"),
    (pa.array([{"text": "an otter"}, {"text": "a fox"}]), "holds struct<text: string> values, not text"),
])
def test_a_prompt_column_that_is_not_text(run, tmp_path, column, words):
    import pyarrow.parquet as pq
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": column}), path)
    out = run(path, "--model", "dall-e-3")
    assert words in out and "--prompt-column" in out


def test_a_default_is_checked_against_each_rows_own_model(cli, fresh_sim, tmp_path):
    # Every row names gpt-image-2: --quality low is theirs to use, whatever the API's default model.
    path = tmp_path / "p.csv"
    path.write_text("prompt,model\nan otter,gpt-image-2\na fox,gpt-image-2\n")
    r = cli("run", path, "--out", tmp_path / "out", "--base-url", fresh_sim.acedata_url, "--quality", "low",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert set(results(tmp_path / "out").quality) == {"low"} and fresh_sim.stats.requests == 2


def test_a_default_no_row_could_use_is_still_refused(run, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,model\nan otter,gpt-image-2\na fox,dall-e-3\n")
    out = run(path, "--quality", "ultra")
    assert "default quality 'ultra' is not allowed for dall-e-3 (allowed: standard, hd), nor for gpt-image-2" in out


@pytest.mark.parametrize("doc, words", [
    ('{"tasks": "x"}', "its 'tasks' is 'x', not a number of tasks"),
    ('{"tasks": 3, "refused": null}', "its 'refused' is None"),
    ('{"tasks": [1]}', "its 'tasks' is [1]"),
    ('{bad json', "is unreadable"),
    ('[]', "is not a batchgen job file"),
])
def test_status_of_a_folder_whose_job_json_is_damaged(cli, tmp_path, doc, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text(doc)
    (out / "journal.jsonl").write_text('{"task_id":"0123456789abcdef","status":"ok","finished_at":"noon"}\n')
    r = cli("status", out)
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


def test_status_skips_journal_values_of_the_wrong_type(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text('{"tasks": 3}')
    (out / "journal.jsonl").write_text('{"task_id":"0123456789abcdef","status":"ok","finished_at":"noon"}\n'
                                       '{"task_id":"1123456789abcdef","status":"error","error_code":["x"]}\n')
    r = cli("status", out)
    assert r.exit_code == 0 and "2/3 tasks done" in r.output, r.output
