"""End to end through the CLI against the simulator over real HTTP: batchgen run."""
import hashlib
import json
from pathlib import Path

import jsonschema
import pandas as pd
import pyarrow as pa
import pytest
from conftest import PROMPTS, TOKEN, journal, results
from PIL import Image

from batchgen.keeping.results import COLUMNS
from batchgen.planning.settings import JobConfig, parse_sweep
from batchgen.planning.tasks import make_plan
from batchgen.sending.client import BodyEncoder

# A copy of OpenAI's published schema lives in the repo (CI may have no ../shared); where the
# shared original is present, the copy must not have drifted from it.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "spec" / "openai-images-generations.schema.json"
SHARED_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "spec" / SCHEMA_PATH.name


def test_csv_in_images_and_results_out(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--response-format", "b64_json")
    assert r.exit_code == 0, r.output
    assert "3 ok, 0 error(s)" in r.output
    df = results(out)
    assert len(df) == 3 and set(df.status) == {"ok"}
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert df["tag"].tolist() == ["otter", "lighthouse", "bicycle"]  # pass-through column
    assert fresh_sim.stats.requests == 3


def test_every_ok_row_has_its_image_whole_with_recorded_hash_and_size(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
        "--size", "1792x1024", "--response-format", "b64_json")
    df = results(out)
    for row in df.itertuples():
        data = (out / row.image_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert len(data) == row.bytes
        with Image.open(out / row.image_path) as im:
            assert im.size == (row.width, row.height) == (1792, 1024)
        assert row.image_path.startswith("images/") and row.task_id in row.image_path
        assert row.revised_prompt and row.revised_prompt != row.prompt  # dall-e-3 rewrites prompts
    assert not list(out.rglob(".tmp-*"))


def test_result_columns_are_typed(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    df = results(out)
    for col in ("row_index", "n", "image_index", "width", "height", "bytes", "http_status", "attempts", "created"):
        assert pd.api.types.is_integer_dtype(df[col]), col
    assert pd.api.types.is_float_dtype(df["latency_s"])
    assert df["error_code"].isna().all()


def test_url_mode_downloads_at_once(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--response-format", "url")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert df.image_url.str.startswith("http://127.0.0.1").all()
    assert all((out / p).exists() for p in df.image_path)
    assert fresh_sim.stats.downloads == 3


def test_openai_dialect_with_a_gpt_image_model(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--provider", "openai", "--model", "gpt-image-2",
            "--quality", "low", env={"ACEDATA_API_TOKEN": None, "OPENAI_API_KEY": TOKEN,
                                     "OPENAI_BASE_URL": fresh_sim.openai_base_url})
    assert r.exit_code == 0, r.output
    df = results(out)
    assert set(df.status) == {"ok"} and (df.total_tokens > 0).all()
    assert df.revised_prompt.isna().all()
    assert fresh_sim.stats.by_path == {"/v1/images/generations": 3}


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_parquet_and_jsonl_input(cli, fresh_sim, tmp_path, suffix):
    df = pd.DataFrame({"text": PROMPTS, "size": ["1024x1024", None, "1024x1792"], "id": [1, 2, 3]})
    path = tmp_path / f"p.{suffix}"
    df.to_parquet(path) if suffix == "parquet" else df.to_json(path, orient="records", lines=True)
    out = tmp_path / "out"
    r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--prompt-column", "text",
            "--model", "dall-e-3", "--size", "1792x1024")
    assert r.exit_code == 0, r.output
    got = results(out)
    assert got["size"].tolist() == ["1024x1024", "1792x1024", "1024x1792"]
    assert (got.width.tolist(), got.id.tolist()) == ([1024, 1792, 1024], [1, 2, 3])


def test_a_sweep_makes_every_combination(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--sweep", "quality=standard,hd", "--sweep", "style=vivid,natural")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert len(df) == 12 and df.task_id.nunique() == 12
    assert df.groupby(["quality", "style"]).size().to_dict() == {
        ("hd", "natural"): 3, ("hd", "vivid"): 3, ("standard", "natural"): 3, ("standard", "vivid"): 3}


def test_invalid_rows_become_invalid_params_and_are_never_sent(cli, fresh_sim, tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["fine", "", "x" * 4001, "also fine"],
                  "size": [None, None, None, "512x512"]}).to_csv(path, index=False)
    out = tmp_path / "out"
    r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    assert r.exit_code == 1, r.output
    df = results(out).set_index("row_index")
    assert df.loc[0, "status"] == "ok"
    assert df.loc[[1, 2, 3], "error_code"].tolist() == ["invalid_params"] * 3
    assert "blank" in df.loc[1, "error_message"] and "4000" in df.loc[2, "error_message"]
    assert "size '512x512'" in df.loc[3, "error_message"]
    assert df.loc[[1, 2, 3], "attempts"].tolist() == [0, 0, 0]
    assert fresh_sim.stats.requests == 1


def test_a_rerun_sends_nothing(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    args = ("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    assert cli(*args).exit_code == 0
    before = results(out)
    fresh_sim.reset_stats()
    r = cli(*args)
    assert r.exit_code == 0 and "0 request(s) sent" in r.output
    assert fresh_sim.stats.requests == 0
    pd.testing.assert_frame_equal(results(out), before)
    assert len(journal(out)) == 3


def test_a_reordered_input_sends_nothing(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    first = results(out).set_index("task_id")
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(prompts_csv).iloc[[2, 0, 1]].to_csv(shuffled, index=False)
    fresh_sim.reset_stats()
    r = cli("run", shuffled, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    assert r.exit_code == 0, r.output
    assert fresh_sim.stats.requests == 0
    again = results(out).set_index("task_id")
    assert again.tag.tolist() == ["bicycle", "otter", "lighthouse"]
    assert again.sha256.to_dict() == first.sha256.to_dict()


def test_duplicate_rows_are_two_tasks(cli, fresh_sim, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\nan otter\nan otter\n")
    out = tmp_path / "out"
    cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    assert results(out).task_id.nunique() == 2 and fresh_sim.stats.requests == 2


def test_another_prompt_column_on_the_same_out_is_refused_and_touches_nothing(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "gpt-image-2",
        "--quality", "low")
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fresh_sim.reset_stats()
    r = cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--prompt-column", "tag")
    assert r.exit_code == 2
    assert "prompt column is 'prompt'; this job's is 'tag'" in r.output and "--prompt-column prompt" in r.output
    assert "Traceback" not in r.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert fresh_sim.stats.requests == 0


def test_no_token_and_no_simulate_is_a_usage_error(cli, prompts_csv, tmp_path):
    r = cli("run", prompts_csv, "--out", tmp_path / "out", env={"ACEDATA_API_TOKEN": None})
    assert r.exit_code == 2
    assert "ACEDATA_API_TOKEN" in r.output and "--simulate" in r.output
    assert not (tmp_path / "out").exists()


def test_simulate_needs_no_token(cli, prompts_csv, tmp_path):
    out = tmp_path / "out"
    r = cli("run", prompts_csv, "--out", out, "--simulate", "--model", "dall-e-3", "--no-progress",
            env={"ACEDATA_API_TOKEN": None})
    assert r.exit_code == 0, r.output
    assert set(results(out).status) == {"ok"}


def test_the_token_is_in_no_file_under_out(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    secret = "sim-token"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
        "--sweep", "style=vivid,natural")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def test_metadata_jsonl_lists_every_image_for_imagefolder(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    meta = pd.read_json(out / "metadata.jsonl", lines=True)
    assert sorted(meta.file_name) == sorted(results(out).image_path)
    assert all((out / f).exists() for f in meta.file_name)
    assert {"prompt", "revised_prompt", "quality", "tag"} <= set(meta.columns)


def test_results_built_in_pieces_keep_every_row_in_order(cli, fresh_sim, tmp_path, monkeypatch):
    import batchgen.keeping.results
    monkeypatch.setattr(batchgen.keeping.results, "_CHUNK", 2)   # 7 tasks x 2 points: many pieces
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": [f"a lantern, number {i}" for i in range(7)], "idx": range(7)}).to_csv(csv, index=False)
    out = tmp_path / "out"
    r = cli("run", csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--sweep", "quality=standard,hd", "--no-progress")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert df.row_index.tolist() == [i for i in range(7) for _ in range(2)]
    assert df.idx.tolist() == df.row_index.tolist()          # pass-through rows line up
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["file_name"] for m in meta] == df.image_path.tolist()
    assert [m["idx"] for m in meta] == df.idx.tolist()


def test_python_api_leaves_the_same_files(fresh_sim, prompts_csv, tmp_path):
    import batchgen
    summary = batchgen.run(str(prompts_csv), out=str(tmp_path / "o"), base_url=fresh_sim.acedata_url,
                           defaults={"model": "dall-e-3"}, sweep=parse_sweep(["quality=standard,hd"]),
                           environ={"ACEDATA_API_TOKEN": TOKEN})
    assert (summary.ok, summary.errors, summary.exit_status) == (6, 0, 0)
    assert summary.est_cost_usd == pytest.approx(3 * 0.04 + 3 * 0.08)
    assert len(batchgen.read_results(summary.out)) == 6
    assert {p.name for p in Path(summary.out).iterdir()} >= {"job.json", "journal.jsonl", "results.parquet",
                                                             "metadata.jsonl", "images"}


def test_a_run_leaves_the_garbage_collector_as_it_found_it(fresh_sim, prompts_csv, tmp_path, monkeypatch):
    # A notebook runs many jobs in one process: the freezing and the rarer collections of
    # the send loop must not outlive it.
    import gc

    import batchgen
    import batchgen.sending.backends.live
    monkeypatch.setattr(batchgen.sending.backends.live, "FREEZE_EVERY", 1)   # freeze after every task
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    summary = batchgen.run(str(prompts_csv), out=str(tmp_path / "o"), base_url=fresh_sim.acedata_url,
                           defaults={"model": "dall-e-3"}, environ={"ACEDATA_API_TOKEN": TOKEN})
    assert summary.ok == 3
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_every_request_body_conforms_to_the_published_schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    if SHARED_SCHEMA.exists():
        assert json.loads(SHARED_SCHEMA.read_text()) == schema
    request_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"],
                      "$ref": "#/$defs/CreateImageRequest"}
    validator = jsonschema.Draft202012Validator(request_schema)
    df = pa.table({"prompt": ["otter", "fox"]})
    configs = [
        JobConfig(defaults={"model": "dall-e-3", "response_format": "url"},
                  sweep=parse_sweep(["quality=standard,hd", "style=vivid,natural", "size=1024x1024,1792x1024"])),
        JobConfig(defaults={"model": "gpt-image-2", "n": 4}, sweep=parse_sweep(["size=1024x1024,1536x1024"])),
        JobConfig(defaults={"model": "gpt-image-2"},
                  sweep=parse_sweep(["quality=low,high,auto", "size=auto,1536x1024"])),
        JobConfig(defaults={"model": "gpt-image-2", "size": "1536x864"}),
        JobConfig(defaults={}),
        JobConfig(defaults={"model": "gpt-image-2", "background": "opaque", "output_compression": 60,
                            "moderation": "low"}, params={"user": "dataset-42"},
                  sweep=parse_sweep(["output_format=webp,jpeg"])),
    ]
    encode = BodyEncoder()   # the bytes that are sent
    bodies = [json.loads(encode(t.prompt, t.params))
              for c in configs for t in make_plan(df, c).tasks if t.problem is None]
    assert len(bodies) == 16 + 4 + 12 + 2 + 2 + 4
    for body in bodies:
        validator.validate(body)
    assert "response_format" not in bodies[16]  # gpt-image: never sent
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"prompt": "x", "n": 11})  # the validator does refuse bad bodies


def test_the_python_api_works_inside_a_running_event_loop_like_a_notebook(fresh_sim, prompts_csv, tmp_path):
    import asyncio

    import batchgen

    async def notebook_cell():
        return batchgen.run(str(prompts_csv), out=str(tmp_path / "o"), base_url=fresh_sim.acedata_url,
                            defaults={"model": "dall-e-3"}, environ={"ACEDATA_API_TOKEN": TOKEN})
    assert asyncio.run(notebook_cell()).ok == 3


def test_a_rerun_with_nothing_to_do_keeps_results_but_a_reordered_input_rebuilds_them(cli, fresh_sim, prompts_csv,
                                                                                      tmp_path):
    out = tmp_path / "out"
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3")
    cli("run", prompts_csv, *args)
    first = (out / "results.parquet").stat().st_mtime_ns
    cli("run", prompts_csv, *args)
    assert (out / "results.parquet").stat().st_mtime_ns == first
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(prompts_csv).iloc[[2, 0, 1]].to_csv(shuffled, index=False)
    r = cli("run", shuffled, *args)
    assert "3 ok" in r.output and "(3 image(s)" in r.output
    assert results(out).tag.tolist() == ["bicycle", "otter", "lighthouse"]


def test_n_images_per_request_give_one_row_and_one_file_each(cli, fresh_sim, tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["three cats \U0001F408 in a row", "\u4e00\u53ea\u732b"],
                  "n": [3, None]}).to_csv(path, index=False)
    out = tmp_path / "out"
    r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "gpt-image-2",
            "--quality", "low", "--size", "1024x1024", "--n", "2", "--rpm", "6000")
    assert r.exit_code == 0, r.output
    df = results(out)
    assert df.groupby("row_index").size().to_dict() == {0: 3, 1: 2}
    assert df.n.tolist() == [3, 3, 3, 2, 2] and df.image_index.tolist() == [0, 1, 2, 0, 1]
    assert df.image_path.is_unique and df.sha256.nunique() == 5
    assert all((out / p).exists() for p in df.image_path)
    assert df.prompt.tolist()[3] == "\u4e00\u53ea\u732b"
    assert fresh_sim.stats.requests == 2 and fresh_sim.stats.images == 5


def test_hugging_face_imagefolder_loads_the_output(cli, fresh_sim, prompts_csv, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the test extras install datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "out"
    cli("run", prompts_csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
        "--sweep", "style=vivid,natural")
    assert cli("report", out).exit_code == 0  # contact_sheet.png beside the images must not confuse it
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6
    row = ds[0]
    assert row["image"].size == (1024, 1024)
    assert {"prompt", "revised_prompt", "style", "tag", "sha256"} <= set(ds.column_names)


def test_an_unknown_model_is_sent_unchecked_with_one_warning(cli, fresh_sim, prompts_csv, tmp_path):
    r = cli("run", prompts_csv, "--out", tmp_path / "out", "--base-url", fresh_sim.acedata_url,
            "--model", "flux-pro", "--size", "7x7", "--no-progress", "--concurrency", "1")
    assert r.output.count("model 'flux-pro' is not one batchgen knows") == 1
    # sent: the server, not batchgen, refuses it; its model_not_found stops the run, nothing failed
    assert r.exit_code == 3 and "does not serve model 'flux-pro'" in r.output
    assert fresh_sim.stats.requests == 1
    assert set(results(tmp_path / "out").error_code) == {"model_not_found"}
