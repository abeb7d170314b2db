"""Bad input gets a clear message and exit 2, never a traceback, and nothing is sent."""
import pandas as pd
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
    (("--model", "dall-e-3", "--size", "512x512"), "size '512x512' is not allowed for dall-e-3 (allowed: 1024x1024, 1792x1024, 1024x1792)"),
    (("--model", "dall-e-3", "--quality", "ultra"), "quality 'ultra'"),
    (("--model", "gpt-image-1", "--style", "vivid"), "style 'vivid' is not allowed for gpt-image-1"),
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
                            "--model", "dall-e-2", "--size", "256x256", "--no-progress")
    out, err = good.communicate(timeout=120)
    assert good.returncode == 0, err
    assert out.splitlines()[0].startswith("3 ok, 0 error(s)") and "results:" in out
    assert len(results(tmp_path / "out")) == 3 and (tmp_path / "out" / "metadata.jsonl").read_text().count("\n") == 3
