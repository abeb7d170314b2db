"""The GPT image models in full: their parameters, image edits, --param, and prices that follow
the bill. Real HTTP against the simulator (live and Batch API), the CLI for what users see."""
import hashlib
import io
import json
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
from conftest import TOKEN, results
from PIL import Image

import batchgen
from batchgen.simulator import SimConfig, SimulatorThread

SPEC = Path(__file__).resolve().parents[1] / "spec"
GPT = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}
PROMPTS = ["a lighthouse on a cliff", "a red fox in snow", "a teapot, product shot"]
MAGIC = {"png": b"\x89PNG", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}
EXTENSION = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def openai_run(sim, source, out, **options):
    settings = {"provider": "openai", "base_url": sim.openai_base_url, "environ": {"OPENAI_API_KEY": TOKEN},
                **options}
    return batchgen.run(str(source), out=str(out), **settings)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS, "tag": ["a", "b", "c"]}).to_csv(path, index=False)
    return path


def png(colour, size=(64, 64), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


# ---- parameters --------------------------------------------------------------------------

def test_a_sweep_over_output_format_saves_each_image_in_its_real_format(fresh_sim, prompts, tmp_path):
    out = tmp_path / "out"
    summary = openai_run(fresh_sim, prompts, out, defaults=GPT,
                         sweep=[("output_format", ["png", "webp", "jpeg"])])
    assert summary.exit_status == 0 and summary.ok == 9
    df = results(out)
    assert sorted(df.output_format) == sorted(["png", "webp", "jpeg"] * 3)
    for row in df.itertuples():
        data = (out / row.image_path).read_bytes()
        assert data.startswith(MAGIC[row.output_format]), row.image_path
        assert row.image_path.endswith(EXTENSION[row.output_format])
        assert (row.width, row.height) == Image.open(io.BytesIO(data)).size == (1024, 1024)
        assert hashlib.sha256(data).hexdigest() == row.sha256
    # each image answers its own prompt: the tasks' ids pair them
    assert sorted(df.prompt) == sorted(PROMPTS * 3)
    assert df.groupby("prompt").output_format.nunique().eq(3).all()
    # the response's usage is recorded, and the cost follows it (gpt-image-2: $40 per 1M output tokens)
    assert df.output_tokens.gt(0).all() and (df.total_tokens >= df.output_tokens).all()
    assert df.est_cost_usd.gt(0).all()
    assert fresh_sim.stats["params"]["output_format"] == 9


def test_transparent_webp_is_sent_and_comes_back_with_an_alpha_channel(fresh_sim, prompts, tmp_path):
    out = tmp_path / "out"
    summary = openai_run(fresh_sim, prompts, out, defaults={**GPT, "output_format": "webp",
                                                           "background": "transparent",
                                                           "output_compression": 80, "moderation": "low"})
    assert summary.exit_status == 0
    df = results(out)
    assert set(df.background) == {"transparent"} and set(df.moderation) == {"low"}
    assert set(df.output_compression) == {80}
    image = Image.open(out / df.image_path[0])
    assert image.format == "WEBP" and "A" in image.getbands()


def test_transparent_jpeg_is_refused_before_anything_is_sent(fresh_sim, prompts, tmp_path, cli):
    r = cli("run", prompts, "--out", tmp_path / "out", "--provider", "openai", "--base-url",
            fresh_sim.openai_base_url, "--model", "gpt-image-2", "--background", "transparent",
            "--output-format", "jpeg", env={"OPENAI_API_KEY": TOKEN})
    assert r.exit_code == 2
    assert "background 'transparent' needs output_format png or webp, not jpeg" in r.output
    assert fresh_sim.stats["requests"] == 0 and not (tmp_path / "out").exists()


def test_a_refused_combination_in_a_row_is_that_rows_invalid_params(fresh_sim, tmp_path):
    source = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["ok", "jpeg with alpha", "gif on 2"],
                  "model": ["gpt-image-2", "gpt-image-2", "gpt-image-2"],
                  "output_format": ["webp", "jpeg", "gif"],
                  "background": ["transparent", "transparent", None]}).to_csv(source, index=False)
    summary = openai_run(fresh_sim, source, tmp_path / "out", defaults={"quality": "low"})
    df = results(tmp_path / "out").set_index("prompt")
    assert summary.exit_status == 1 and fresh_sim.stats["requests"] == 1
    assert df.status["ok"] == "ok"
    assert df.error_code["jpeg with alpha"] == "invalid_params"
    assert "needs output_format png or webp" in df.error_message["jpeg with alpha"]
    assert "output_format 'gif' is not allowed for gpt-image-2" in df.error_message["gif on 2"]


def test_an_unknown_parameter_given_with_param_reaches_the_server_and_the_results(fresh_sim, prompts, tmp_path, cli):
    out = tmp_path / "out"
    r = cli("run", prompts, "--out", out, "--provider", "openai", "--base-url", fresh_sim.openai_base_url,
            "--model", "gpt-image-2", "--quality", "low", "--param", "user=dataset-42",
            env={"OPENAI_API_KEY": TOKEN})
    assert r.exit_code == 0, r.output
    assert "sending parameter(s) batchgen does not know, as given: user=\"dataset-42\"" in r.output
    assert r.output.count("does not know") == 1
    assert fresh_sim.stats["params"]["user"] == 3
    assert set(results(out).extra_params) == {'{"user":"dataset-42"}'}


def test_param_refuses_a_parameter_batchgen_knows(prompts, tmp_path, cli):
    r = cli("plan", prompts, "--param", "quality=high")
    assert r.exit_code == 2 and "set it with --quality" in r.output


def test_a_column_one_letter_from_a_parameter_gets_a_did_you_mean(tmp_path, cli):
    source = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a"], "sise": ["1024x1024"], "qualty": ["hd"]}).to_csv(source, index=False)
    r = cli("plan", source, "--model", "dall-e-3")
    assert r.exit_code == 0
    assert "the column 'sise' is passed through as data, not sent; did you mean 'size'?" in r.output
    assert "did you mean 'quality'?" in r.output


# ---- prices --------------------------------------------------------------------------------

def test_max_cost_with_a_model_without_a_price_is_a_usage_error(fresh_sim, prompts, tmp_path, cli):
    r = cli("run", prompts, "--out", tmp_path / "out", "--provider", "openai", "--base-url",
            fresh_sim.openai_base_url, "--model", "gpt-image-2.5-flare", "--quality", "xhigh", "--max-cost", "0.01",
            env={"OPENAI_API_KEY": TOKEN})
    # xhigh has no published token count
    assert r.exit_code == 2 and "no price for gpt-image-2.5-flare" in r.output and "--prices" in r.output
    assert fresh_sim.stats["requests"] == 0


def test_plan_says_no_price_apart_from_unknown_model(prompts, tmp_path, cli):
    r = cli("plan", prompts, "--model", "gpt-image-2.5-flare", "--quality", "max")
    assert r.exit_code == 0 and "no price" in r.output and "no price for gpt-image-2.5-flare" in r.output
    assert "unknown model" not in r.output
    r = cli("plan", prompts, "--model", "flux-pro")
    assert "unknown model(s) flux-pro" in r.output


def test_a_price_file_prices_gpt_image_2_from_its_tokens(fresh_sim, prompts, tmp_path, cli):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"gpt-image-2": {
        "tokens_usd_per_million": {"text_input": 5, "image_input": 8, "image_output": 30}}}}))
    r = cli("plan", prompts, "--model", "gpt-image-2", "--quality", "low", "--size", "1024x1024",
            "--prices", prices)
    assert r.exit_code == 0 and f"${3 * 272 * 30 / 1e6:,.2f}" in r.output
    out = tmp_path / "out"
    summary = openai_run(fresh_sim, prompts, out, defaults={"model": "gpt-image-2", "quality": "low",
                                                          "size": "1024x1024"},
                         prices=str(prices), max_cost=1.0)
    assert summary.exit_status == 0
    df = results(out)
    # the cost of each row is its response's usage at the file's token prices
    expected = ((df.input_tokens - 0) * 5 + df.output_tokens * 30) / 1e6
    assert df.est_cost_usd.tolist() == pytest.approx(expected.tolist())


def test_the_budget_counts_a_paid_answer_whose_image_was_unusable(tmp_path, prompts):
    # Every answer's image is garbage, and each is billed: with a budget of two and a half
    # answers, the first task is asked twice and the third ask is never made.
    from batchgen.rules import pricing
    with SimulatorThread(SimConfig(not_image=1.0)) as sim:
        each = pricing.load().estimate(GPT)
        summary = openai_run(sim, prompts, tmp_path / "out", defaults=GPT, max_cost=each * 2.5,
                             max_retries=5, backoff_base=0.001, concurrency=1)
        sent = sim.stats["requests"]
    assert summary.stopped == "budget_exceeded" and summary.exit_status == 3
    assert sent == 2 and summary.ok == 0


# ---- edits -------------------------------------------------------------------------------------

@pytest.fixture
def edits_table(tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "red.png").write_bytes(png("red"))
    (pictures / "blue.png").write_bytes(png("blue"))
    (pictures / "mask.png").write_bytes(png((0, 0, 0, 0), mode="RGBA"))
    (pictures / "notes.txt").write_text("not an image")
    source = tmp_path / "edits.csv"
    pd.DataFrame({"prompt": ["make it a watercolour", "add a hat", "missing", "not an image", "both"],
                  "image": ["pictures/red.png", "pictures/blue.png", "pictures/gone.png",
                            "pictures/notes.txt", "pictures/red.png|pictures/blue.png"],
                  "mask": ["pictures/mask.png", None, None, None, None]}).to_csv(source, index=False)
    return source


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_edit_results(out, source_dir):
    df = results(out).set_index("prompt")
    red, blue = sha(source_dir / "pictures/red.png"), sha(source_dir / "pictures/blue.png")
    # the simulator's revised_prompt names the first input's sha256: each answer edits its own input
    assert df.revised_prompt["make it a watercolour"].startswith(f"edit of {red[:16]}")
    assert df.revised_prompt["add a hat"].startswith(f"edit of {blue[:16]}")
    assert df.revised_prompt["both"].startswith(f"edit of {red[:16]} (+1 more image")
    assert df.input_sha256["add a hat"] == blue and df.input_sha256["both"] == f"{red}|{blue}"
    assert df.mask_sha256["make it a watercolour"] == sha(source_dir / "pictures/mask.png")
    assert df.error_code["missing"] == "invalid_params" and "no such file" in df.error_message["missing"]
    assert "pictures/gone.png" in df.error_message["missing"]
    assert df.error_code["not an image"] == "invalid_params"
    assert "is not a PNG, JPEG or WebP image" in df.error_message["not an image"]
    return df


def test_an_edits_table_is_sent_to_images_edits_as_multipart(fresh_sim, edits_table, tmp_path):
    out = tmp_path / "out"
    # input_fidelity: gpt-image-1, which AceData serves (the 2.x models take none)
    summary = batchgen.run(str(edits_table), out=str(out), provider="acedata", base_url=fresh_sim.acedata_url,
                           environ={"ACEDATA_API_TOKEN": TOKEN},
                           defaults={**GPT, "model": "gpt-image-1", "input_fidelity": "high"})
    assert summary.ok == 3 and summary.errors == 2 and summary.exit_status == 1
    df = check_edit_results(out, tmp_path)
    edits_url = fresh_sim.acedata_url.replace("/images/generations", "/images/edits")
    assert set(df.endpoint.dropna()) == {edits_url}
    assert fresh_sim.stats["by_path"] == {"/openai/images/edits": 3}
    assert fresh_sim.stats["input_images"] == 4 and fresh_sim.stats["params"]["input_fidelity"] == 3
    assert df.input_tokens.gt(0).all() if "input_tokens" in df else True


def test_an_edits_table_goes_through_the_batch_api_as_json(edits_table, tmp_path):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=0.2)) as sim:
        summary = openai_run(sim, edits_table, out, defaults=GPT, mode="batch", poll_interval=0.1)
        executions = sim.stats["batch_executions"]
    assert summary.ok == 3 and summary.exit_status == 1
    df = check_edit_results(out, tmp_path)
    assert set(df["mode"]) == {"batch"} and len(executions) == 3


def test_an_edit_is_the_input_images_bytes_not_their_path(fresh_sim, edits_table, tmp_path):
    out = tmp_path / "out"
    openai_run(fresh_sim, edits_table, out, defaults=GPT)
    first = fresh_sim.stats["requests"]
    # moved: nothing is sent again
    (tmp_path / "pictures").rename(tmp_path / "moved")
    table = pd.read_csv(edits_table)
    table["image"] = table["image"].str.replace("pictures/", "moved/")
    table["mask"] = table["mask"].str.replace("pictures/", "moved/")
    table.to_csv(edits_table, index=False)
    openai_run(fresh_sim, edits_table, out, defaults=GPT)
    assert fresh_sim.stats["requests"] == first
    # replaced: the tasks that use it are new
    (tmp_path / "moved/blue.png").write_bytes(png("green"))
    summary = openai_run(fresh_sim, edits_table, out, defaults=GPT)
    assert fresh_sim.stats["requests"] == first + 2          # "add a hat" and "both"
    assert summary.not_in_input == 2


def test_a_url_input_that_fails_to_download_is_download_failed(fresh_sim, tmp_path):
    source = tmp_path / "e.jsonl"
    source.write_text(json.dumps({"prompt": "p", "image": [fresh_sim.openai_base_url + "/nowhere.png"]}) + "\n")
    summary = openai_run(fresh_sim, source, tmp_path / "out", defaults=GPT, max_retries=0)
    df = results(tmp_path / "out")
    assert summary.exit_status == 1 and df.error_code[0] == "download_failed"
    assert fresh_sim.stats["by_path"].get("/v1/images/edits", 0) == 0


def test_edit_only_and_edit_refusing_settings_are_usage_errors(prompts, edits_table, cli):
    r = cli("plan", prompts, "--model", "gpt-image-2", "--input-fidelity", "high")
    assert r.exit_code == 2 and "applies to edits only" in r.output
    r = cli("plan", edits_table, "--model", "dall-e-3")
    assert r.exit_code == 2 and "does not edit images" in r.output
    r = cli("plan", edits_table, "--model", "gpt-image-2", "--image-column", "picture")
    assert r.exit_code == 2 and "--image-column 'picture'" in r.output


# ---- the published schema ------------------------------------------------------------------

def test_edit_bodies_conform_to_the_published_schema(edits_table, tmp_path):
    from batchgen.commands import prepare
    from batchgen.sending.backends.batch import edit_body
    from batchgen.sending.client import form_fields
    schema = json.loads((SPEC / "openai-images-edits.schema.json").read_text())
    json_body = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/EditImageBodyJsonParam"})
    multipart = set(schema["$defs"]["CreateImageEditRequest"]["properties"])
    _, _, plan = prepare(str(edits_table), {"defaults": {**GPT, "model": "gpt-image-1", "input_fidelity": "low",
                                                         "output_format": "webp"}})
    sent = [t for t in plan.tasks if t.problem is None]
    assert len(sent) == 3
    for task in sent:
        json_body.validate(edit_body(task.prompt, task.params, task.edit))
        assert {name for name, _ in form_fields(task.prompt, task.params)} | {"image", "mask"} <= multipart


def test_the_report_shows_each_edits_input_beside_its_prompt(fresh_sim, edits_table, tmp_path):
    import re

    from batchgen.showing.report import write_report
    out = tmp_path / "out"
    openai_run(fresh_sim, edits_table, out, defaults=GPT)
    page = write_report(out).read_text()
    heads = dict(re.findall(r'<span class="text">([^<]*)</span>(.*?)</th>', page, re.S))
    assert 'alt="input image pictures/blue.png"' in heads["add a hat"]     # named as the table does
    assert heads["add a hat"].count("<img") == 1 and heads["both"].count("<img") == 2
    assert 'src="data:image/jpeg;base64,' in heads["add a hat"]            # embedded, no request
    assert '<span class="missing"' in heads["missing"] and "<img" not in heads["missing"]


def test_a_job_file_sets_params_prices_and_the_image_column(tmp_path, prompts):
    from batchgen.commands import prepare
    (tmp_path / "prices.json").write_text(json.dumps({"models": {"gpt-image-2": {
        "tokens_usd_per_million": {"image_output": 30}}}}))
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{prompts.name}"\nprices = "prices.json"\n'
                   '[defaults]\nmodel = "gpt-image-2"\nquality = "low"\nsize = "1024x1024"\n'
                   '[params]\nuser = "dataset-42"\nseed = 7\n')
    config, _, plan = prepare(str(job), {})
    assert config.params == {"user": "dataset-42", "seed": 7}
    assert config.prices == str(tmp_path / "prices.json")
    assert all(t.params["user"] == "dataset-42" and t.params["seed"] == 7 for t in plan.tasks)
    # the extra parameters are part of what a task is
    _, _, other = prepare(str(prompts), {"defaults": {"model": "gpt-image-2", "quality": "low",
                                                      "size": "1024x1024"}})
    assert {t.task_id for t in plan.tasks}.isdisjoint(t.task_id for t in other.tasks)


def test_the_summary_counts_what_the_answers_were_billed_on_the_run_and_the_rerun(fresh_sim, prompts, tmp_path):
    out = tmp_path / "out"
    first = openai_run(fresh_sim, prompts, out, defaults=GPT)
    billed = results(out).est_cost_usd.sum()
    # usage-priced, not the per-image estimate ($0.011 each)
    assert billed != pytest.approx(3 * 0.011, abs=1e-6)
    assert first.est_cost_usd == round(billed, 4)
    again = openai_run(fresh_sim, prompts, out, defaults=GPT)      # read back from the journal
    assert again.requests_sent == 0 and again.est_cost_usd == first.est_cost_usd


def test_the_journal_reads_a_lines_cost_without_parsing_it():
    from batchgen.keeping.journal import _fast_cost
    line = (b'{"task_id":"0123456789abcdef","status":"ok","params":{"cost_usd":9},'
            b'"prompt":"say \\"cost_usd\\": 7","cost_usd":0.0125}\n')
    assert _fast_cost(line) == 0.0125
    assert _fast_cost(b'{"task_id":"0123456789abcdef","status":"ok"}\n') != _fast_cost(line)
    assert _fast_cost(b'{"cost_usd":-1}\n') != _fast_cost(b'{"cost_usd":-1}\n')       # NaN: refused
