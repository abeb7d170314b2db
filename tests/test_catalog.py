"""The model catalog as data (issue 24): what each provider serves, retired models refused
before money moves, the 2.x lineup's parameters and prices, sweeps across models, the
`models` command, and the simulator's own knowledge of the lineup. Real HTTP against the
built-in simulator; the CLI for what users see."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import TOKEN, journal, results

import batchgen
from batchgen.exceptions import UsageError
from batchgen.rules import models, pricing

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a lighthouse on a cliff", "a red fox in snow"]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(path, index=False)
    return path


def openai(sim, **options):
    return {"provider": "openai", "base_url": sim.openai_base_url, "environ": {"OPENAI_API_KEY": TOKEN}, **options}


def acedata(sim, **options):
    return {"provider": "acedata", "base_url": sim.acedata_url, "environ": {"ACEDATA_API_TOKEN": TOKEN}, **options}


# ---- the catalog as data ----------------------------------------------------------------

def test_every_fact_of_the_catalog_has_a_source_and_a_date():
    raw = json.loads((ROOT / "batchgen" / "data" / "models.json").read_text())
    for name, spec in raw["specs"].items():
        assert spec.get("source") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec.get("checked", "")), name
        if "price" in spec:
            assert spec["price"].get("source"), name
    for provider, lineup in raw["providers"].items():
        assert lineup.get("source") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", lineup.get("checked", "")), provider
        assert lineup.get("default_source"), provider


def test_each_retired_model_names_a_replacement_its_provider_serves():
    catalog = models.load()
    for provider, lineup in catalog.lineups.items():
        live = catalog.live(provider)
        for name, listing in lineup.models.items():
            if listing.status != "live":
                assert listing.shutdown and listing.replacement in live, (provider, name)


def test_the_december_2026_lineup():
    catalog = models.load()
    assert sorted(catalog.live("openai")) == ["gpt-image-2", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst",
                                              "gpt-image-2.6-flare", "gpt-image-2.6-sunburst"]
    for retired, date in (("dall-e-2", "2026-05-12"), ("dall-e-3", "2026-05-12"), ("gpt-image-1", "2026-10-23"),
                          ("gpt-image-1-mini", "2026-12-01"), ("gpt-image-1.5", "2026-12-01"),
                          ("chatgpt-image-latest", "2026-12-01")):
        listing = catalog.listing(retired, "openai")
        assert (listing.status_on("2026-12-06"), listing.shutdown) == ("shut_down", date)
    ace = catalog.live("acedata")
    assert {"dall-e-3", "gpt-image-1", "gpt-image-2", "gpt-image-2:official", "gpt-image-2:reverse",
            "gpt-image-2.5-flare", "gpt-image-2.5-sunburst", "nano-banana"} <= set(ace)
    assert "dall-e-2" not in ace
    # the 2.x family's parameters
    assert "xhigh" in catalog.rules_for("gpt-image-2.5-flare").qualities
    assert "xhigh" not in catalog.rules_for("gpt-image-2").qualities
    assert catalog.rules_for("gpt-image-2.6-sunburst").complexities == ("low", "medium", "high")
    assert {"svg", "gif"} <= set(catalog.rules_for("gpt-image-2.6-flare").output_formats)
    assert catalog.rules_for("gpt-image-2.6-flare").markup
    assert catalog.rules_for("gpt-image-2-2026-04-21").name == "gpt-image-2"


@pytest.mark.parametrize("size, ok", [
    ("1536x864", True), ("3840x2160", True), ("2160x3840", True), ("1024x1024", True), ("auto", True),
    ("1000x1000", False),      # not multiples of 16
    ("3840x1264", False),      # wider than 3:1
    ("4096x1024", False),      # an edge over 3840
    ("512x512", False),        # under the minimum pixel count
])
def test_gpt_image_2_custom_sizes_follow_the_documented_limits(size, ok):
    assert (models.parameter_problems({"model": "gpt-image-2.5-flare", "size": size}) == []) is ok


def test_a_deprecated_model_before_its_date_is_live_with_a_warning_after_it_is_shut_down(tmp_path):
    overlay = tmp_path / "models.json"
    overlay.write_text(json.dumps({"providers": {"openai": {"models": {
        "gpt-image-2": {"status": "deprecated", "shutdown": "2099-01-01", "replacement": "gpt-image-2.5-flare"},
        "gpt-image-2.5-flare": {"status": "deprecated", "shutdown": "2026-01-01", "replacement": "gpt-image-2"}}}}}))
    catalog = models.load(str(overlay))
    soon = models.check_models({"gpt-image-2"}, "openai", catalog, today="2026-12-06")
    assert soon.errors == [] and "shuts it down on 2099-01-01" in soon.warnings[0]
    past = models.check_models({"gpt-image-2.5-flare"}, "openai", catalog, today="2026-12-06")
    assert "was shut down by openai on 2026-01-01" in past.errors[0]


def test_a_models_file_that_is_not_a_catalog_is_a_usage_error(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text(json.dumps({"providers": {"openai": {"models": {"x": {"status": "retired"}}}}}))
    with pytest.raises(UsageError, match="status must be one of live, deprecated, shut_down"):
        models.load(str(bad))
    bad.write_text(json.dumps({"providers": {"openai": {"models": {"x": {"status": "live", "spec": "nope"}}}}}))
    with pytest.raises(UsageError, match="specs.nope"):
        models.load(str(bad))


# ---- prices ------------------------------------------------------------------------------

def test_every_live_openai_model_is_priced_from_the_per_token_prices():
    prices = pricing.load()
    for model in models.load().live("openai"):
        price = prices.for_model(model)
        assert price.tokens == {"text_input": 5.0, "cached_text_input": 1.25, "image_input": 8.0,
                                "cached_image_input": 2.0, "image_output": 30.0}, model
        # OpenAI's published 4160 output tokens for a high 1024x1024 image, at $30 per 1M
        assert prices.estimate({"model": model, "quality": "high", "size": "1024x1024"}) == pytest.approx(0.1248)
        assert prices.estimate({"model": model, "quality": "low", "size": "1024x1024", "n": 2},
                               "batch") == pytest.approx(272 * 30e-6)


def test_max_cost_is_kept_on_the_live_models(fresh_sim, prompts, tmp_path):
    summary = batchgen.run(str(prompts), out=str(tmp_path / "out"), max_cost=5,
                           **openai(fresh_sim, model="gpt-image-2", quality="low", size="1024x1024"))
    assert summary.exit_status == 0 and summary.ok == 2
    df = results(tmp_path / "out")
    # the answers' usage is billed: output tokens at $30 per 1M, text input at $5
    assert (df.est_cost_usd > 0).all()
    assert df.est_cost_usd.iloc[0] == pytest.approx(
        (df.input_tokens.iloc[0] * 5 + df.output_tokens.iloc[0] * 30) / 1e6)


# ---- dead, misspelt and default models ------------------------------------------------------

def test_a_shut_down_model_is_refused_before_any_request_naming_its_date_and_replacement(fresh_sim, prompts,
                                                                                             tmp_path, cli):
    result = cli("run", prompts, "--out", tmp_path / "out", "--provider", "openai", "--model", "gpt-image-1",
                 "--base-url", fresh_sim.openai_base_url, env={"OPENAI_API_KEY": TOKEN})
    assert result.exit_code == 2
    assert "'gpt-image-1' was shut down by openai on 2026-10-23; use gpt-image-2" in result.output
    assert fresh_sim.stats.requests == 0 and not (tmp_path / "out").exists()


def test_a_model_one_provider_retired_runs_on_the_one_that_serves_it(fresh_sim, prompts, tmp_path):
    summary = batchgen.run(str(prompts), out=str(tmp_path / "out"), **acedata(fresh_sim, model="dall-e-3"))
    assert summary.exit_status == 0 and summary.ok == 2
    with pytest.raises(UsageError, match="'dall-e-3' was shut down by openai on 2026-05-12"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o2"), provider="openai", model="dall-e-3")


def test_a_shut_down_model_in_a_row_or_a_sweep_is_refused_too(prompts, tmp_path):
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": PROMPTS, "model": ["gpt-image-2", "gpt-image-1.5"]}).to_csv(rows, index=False)
    with pytest.raises(UsageError, match="'gpt-image-1.5' was shut down by openai on 2026-12-01"):
        batchgen.plan(str(rows), out=str(tmp_path / "o"), provider="openai")
    with pytest.raises(UsageError, match="'gpt-image-1-mini' was shut down .* use gpt-image-2.5-flare"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), provider="openai",
                      sweep={"model": ["gpt-image-2", "gpt-image-1-mini"]})
    # even when none of its points would be offered anyway
    with pytest.raises(UsageError, match="'dall-e-2' was shut down by acedata"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), sweep={"model": ["dall-e-3", "dall-e-2"],
                                                                   "quality": ["hd"]})


def test_a_misspelt_model_gets_did_you_mean_and_costs_nothing(fresh_sim, prompts, tmp_path, cli):
    result = cli("run", prompts, "--out", tmp_path / "out", "--model", "dall-e3", "--base-url", fresh_sim.acedata_url)
    assert result.exit_code == 2
    assert "model 'dall-e3' is not one acedata serves; did you mean 'dall-e-3'?" in result.output
    assert fresh_sim.stats.requests == 0


def test_with_no_model_plan_says_which_the_provider_uses_or_refuses_a_shut_down_default(prompts, tmp_path, cli):
    result = cli("plan", prompts, "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert "no model is given: acedata uses dall-e-3" in result.output
    result = cli("plan", prompts, "--out", tmp_path / "out", "--provider", "openai")
    assert result.exit_code == 2
    assert "no model is given, so openai would use 'dall-e-2', which was shut down" in result.output
    assert "live on openai: gpt-image-2, gpt-image-2.5-flare" in result.output


def test_a_model_the_server_does_not_know_stops_the_run_early_naming_the_nearest(fresh_sim, prompts, tmp_path):
    # A catalog that lists a model the server has never heard of (as a stale or hopeful overlay would).
    overlay = tmp_path / "models.json"
    overlay.write_text(json.dumps({"providers": {"openai": {"models": {
        "gpt-image-2.7-flare": {"status": "live", "spec": "gpt-image-2.6"}}}}}))
    many = tmp_path / "many.csv"
    pd.DataFrame({"prompt": [f"a harbour, study {i}" for i in range(40)]}).to_csv(many, index=False)
    out = tmp_path / "out"
    summary = batchgen.run(str(many), out=str(out), models=str(overlay), concurrency=2,
                           **openai(fresh_sim, model="gpt-image-2.7-flare"))
    assert summary.exit_status == 3 and summary.stopped == "model_not_found"
    assert "does not serve model 'gpt-image-2.7-flare'" in summary.stop_message
    assert "gpt-image-2.6-flare" in summary.stop_message
    # the tasks not sent are left for a rerun, not failed
    assert summary.not_done >= 40 - 2 and summary.errors == 0
    assert fresh_sim.stats.requests <= 4


# ---- the live lineup's parameters ----------------------------------------------------------------

def test_complexity_is_an_option_a_column_a_sweep_axis_and_a_result_column(fresh_sim, prompts, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("run", prompts, "--out", out, "--provider", "openai", "--base-url", fresh_sim.openai_base_url,
                 "--model", "gpt-image-2.6-flare", "--quality", "low", "--complexity", "high",
                 env={"OPENAI_API_KEY": TOKEN})
    assert result.exit_code == 0, result.output
    df = results(out)
    assert list(df.complexity) == ["high", "high"]
    # complexity plans in tokens the answer's usage counts (the simulator's: 2048 an image)
    assert (df.output_tokens == 272 + 2048).all()
    out2 = tmp_path / "out2"
    summary = batchgen.run(str(prompts), out=str(out2), sweep={"complexity": ["low", "medium"]},
                           **openai(fresh_sim, model="gpt-image-2.6-sunburst", quality="low"))
    assert summary.ok == 4 and sorted(results(out2).complexity) == ["low", "low", "medium", "medium"]
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": PROMPTS, "complexity": ["low", "high"]}).to_csv(rows, index=False)
    summary = batchgen.run(str(rows), out=str(tmp_path / "out3"), complexity="medium",
                           **openai(fresh_sim, model="gpt-image-2.6-flare", quality="low"))
    assert sorted(results(tmp_path / "out3").complexity) == ["high", "low"]


def test_complexity_and_the_new_qualities_are_refused_where_the_model_lacks_them(prompts, tmp_path):
    with pytest.raises(UsageError, match="complexity 'high' is not allowed for gpt-image-2 "
                                         r"\(allowed: none; gpt-image-2 takes no complexity\)"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), provider="openai", model="gpt-image-2",
                      complexity="high")
    with pytest.raises(UsageError, match="quality 'xhigh' is not allowed for gpt-image-2 "):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), provider="openai", model="gpt-image-2",
                      quality="xhigh")


def test_xhigh_and_max_run_on_gpt_image_2_5(fresh_sim, prompts, tmp_path):
    out = tmp_path / "out"
    summary = batchgen.run(str(prompts), out=str(out), sweep={"quality": ["xhigh", "max"]},
                           **openai(fresh_sim, model="gpt-image-2.5-flare", size="1024x1024"))
    assert summary.exit_status == 0 and summary.ok == 4
    df = results(out)
    assert sorted(df.quality) == ["max", "max", "xhigh", "xhigh"]
    # no published token count for them: priced from the answers' usage only
    assert df.est_cost_usd.notna().all()


def test_nano_banana_takes_model_prompt_and_size_only(fresh_sim, prompts, tmp_path):
    with pytest.raises(UsageError, match="quality 'hd' is not allowed for nano-banana"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), model="nano-banana", quality="hd")
    summary = batchgen.run(str(prompts), out=str(tmp_path / "out"),
                           **acedata(fresh_sim, model="nano-banana", size="1024x768"))
    assert summary.exit_status == 0 and summary.ok == 2
    assert set(results(tmp_path / "out").width) == {1024}


# ---- sweeps across models --------------------------------------------------------------

def test_a_sweep_across_models_leaves_out_what_a_model_does_not_offer(fresh_sim, prompts, tmp_path, cli):
    args = [prompts, "--out", tmp_path / "out", "--base-url", fresh_sim.acedata_url,
            "--sweep", "model=dall-e-3,gpt-image-2", "--sweep", "quality=hd,high"]
    result = cli("plan", *args)
    assert result.exit_code == 0, result.output
    assert "left out of the sweep, not offered by the model (no tasks):" in result.output
    assert "model=dall-e-3,quality=high: quality 'high' is not allowed for dall-e-3" in result.output
    assert "model=gpt-image-2,quality=hd: quality 'hd' is not allowed for gpt-image-2" in result.output
    planned = json.loads(cli("plan", *args, "--json").output)
    assert planned["tasks"] == 4 and set(planned["points"]) == {"model=dall-e-3,quality=hd",
                                                                "model=gpt-image-2,quality=high"}
    assert set(planned["left_out"]) == {"model=dall-e-3,quality=high", "model=gpt-image-2,quality=hd"}
    result = cli("run", *args)
    assert result.exit_code == 0, result.output
    df = results(tmp_path / "out")
    assert sorted(zip(df.model, df.quality)) == [("dall-e-3", "hd")] * 2 + [("gpt-image-2", "high")] * 2
    assert fresh_sim.stats.requests == 4
    report = cli("report", tmp_path / "out")
    assert report.exit_code == 0, report.output
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('class="cell none not-offered"') == 2 * len(PROMPTS)     # the grid's cells
    assert html.count('class="na"') == 2        # and the per-point table's rows, not rows of zeros
    assert "quality &#x27;high&#x27; is not allowed for dall-e-3" in html or \
           "quality &#39;high&#39; is not allowed for dall-e-3" in html


def test_a_sweep_whose_points_no_model_offers_is_still_a_usage_error(prompts, tmp_path):
    with pytest.raises(UsageError, match="sweep quality 'high' is not allowed for dall-e-3"):
        batchgen.plan(str(prompts), out=str(tmp_path / "o"), sweep={"model": ["dall-e-3"], "quality": ["high"]})


# ---- the models command ---------------------------------------------------------------

def test_models_lists_live_models_with_parameters_and_prices_and_retired_ones_with_replacements(cli):
    result = cli("models", "--provider", "openai")
    assert result.exit_code == 0
    text = result.output
    assert "gpt-image-2.6-flare" in text and "complexity: low, medium, high" in text
    assert "image output $30" in text
    assert re.search(r"gpt-image-1 +shut down 2026-10-23; use gpt-image-2", text)
    assert "acedata" not in text
    listed = json.loads(cli("models", "--json").output)
    openai_models = {m["model"]: m for m in listed["providers"]["openai"]["models"]}
    assert openai_models["gpt-image-2.5-sunburst"]["parameters"]["quality"] == [
        "low", "medium", "high", "xhigh", "max", "auto"]
    assert openai_models["gpt-image-2"]["usd_per_image_1024"]["high"] == 0.1248
    assert openai_models["dall-e-2"]["status"] == "shut_down" and "parameters" not in openai_models["dall-e-2"]
    assert listed["providers"]["acedata"]["default_model"] == "dall-e-3"


def test_models_shows_a_models_file_laid_over_the_catalog(cli, tmp_path):
    overlay = tmp_path / "models.json"
    overlay.write_text(json.dumps({"providers": {"acedata": {"models": {
        "gpt-image-2.6-flare": {"status": "live", "spec": "gpt-image-2.6"}}}}}))
    listed = json.loads(cli("models", "--provider", "acedata", "--models", overlay, "--json").output)
    assert "gpt-image-2.6-flare" in {m["model"] for m in listed["providers"]["acedata"]["models"]}
    result = cli("models", "--models", tmp_path / "missing.json")
    assert result.exit_code == 2 and "no such file" in result.output


# ---- the simulator checks the client -------------------------------------------------------------

def test_the_simulator_refuses_retired_models_as_openai_does(fresh_sim):
    import urllib.error
    import urllib.request
    for model, status in (("dall-e-2", 404), ("gpt-image-1", 404), ("gpt-image-9", 400)):
        body = json.dumps({"model": model, "prompt": "x"}).encode()
        request = urllib.request.Request(fresh_sim.openai_url, data=body,
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        body = json.loads(refused.value.read())
        assert (refused.value.code, body["error"]["code"]) == (status, "model_not_found"), model


# ---- the README's table is the catalog's ---------------------------------------------------

def test_the_readme_model_table_is_the_catalog():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- models table: from batchgen/data/models.json -->")
    end = readme.index("<!-- end of models table -->")
    assert readme[start:end].split("\n", 1)[1].strip() == models_table_markdown().strip()


def models_table_markdown() -> str:
    from batchgen.commands import list_models
    lines = ["| provider | model | status | replacement |", "|---|---|---|---|"]
    for provider, lineup in list_models(today="2026-12-06")["providers"].items():
        for m in lineup["models"]:
            status = m["status"].replace("_", " ") + (f" {m['shutdown']}" if m["shutdown"] else "")
            lines.append(f"| {provider} | `{m['model']}` | {status} | {m['replacement'] or ''} |")
    return "\n".join(lines)


def _many(tmp_path, rows=30):
    path = tmp_path / f"many-{rows}.csv"
    pd.DataFrame({"prompt": [f"a harbour, study {i}" for i in range(rows)]}).to_csv(path, index=False)
    return path


def _run_on(server, table, out, model, concurrency):
    return batchgen.run(str(table), out=str(out), provider="openai", base_url=server.base_url,
                        environ={"OPENAI_API_KEY": TOKEN}, model=model, concurrency=concurrency)


def test_the_same_4xx_on_a_models_first_requests_stops_the_run_and_fails_none(tmp_path):
    # A proxy that words "no such model" its own way: every request of the model refused alike,
    # until (the rerun) it serves the model.
    from hostile import Hostile, generation, json_response
    served = {"gpt-image-2.5-flare"}

    def answer(request, body, count):
        if json.loads(body).get("model") in served:
            return json_response(generation())
        return json_response({"error": {"message": "unsupported model", "code": "invalid_value"}}, status=400)

    many = _many(tmp_path)
    with Hostile(answer) as server:
        # eight workers on their first request of the model at once
        summary = _run_on(server, many, tmp_path / "out", "gpt-image-2.6-sunburst", 8)
        assert summary.exit_status == 3 and summary.stopped == "model_refused"
        assert "the first 3 requests of model 'gpt-image-2.6-sunburst' were all refused alike" in summary.stop_message
        assert "nothing was marked failed" in summary.stop_message
        assert summary.errors == 0 and summary.not_done == 30
        assert 3 <= server.requests < 30
        assert {r["status"] for r in journal(tmp_path / "out")} == {"not_done"}    # none recorded as failed
        # the server now serves the model: a rerun sends every task, and finishes
        served.add("gpt-image-2.6-sunburst")
        before = server.requests
        again = _run_on(server, many, tmp_path / "out", "gpt-image-2.6-sunburst", 8)
        assert again.exit_status == 0 and again.ok == 30 and server.requests - before == 30
        # a model the server takes is not stopped by a refusal of one task's content
        ok = _run_on(server, many, tmp_path / "ok", "gpt-image-2.5-flare", 1)
        assert ok.exit_status == 0 and ok.ok == 30


def test_a_model_accepted_once_has_its_refusals_recorded(tmp_path):
    from hostile import Hostile, generation, json_response

    def answer(request, body, count):
        if count == 1:
            return json_response(generation())
        return json_response({"error": {"message": "that setting is not offered", "code": "invalid_value"}},
                             status=400)

    with Hostile(answer) as server:
        summary = _run_on(server, _many(tmp_path), tmp_path / "out", "gpt-image-2.6-sunburst", 1)
    assert summary.exit_status == 1 and summary.stopped is None
    assert (summary.ok, summary.errors, summary.not_done) == (1, 29, 0)
    assert server.requests == 30
    assert set(results(tmp_path / "out").error_code.dropna()) == {"invalid_value"}


def test_refusals_held_before_the_model_is_accepted_are_then_recorded(tmp_path):
    # The first two requests (of eight sent at once) refused, the rest served: the two held
    # refusals become their tasks' errors once the model is seen served, and nothing is sent twice.
    from hostile import Hostile, generation, json_response

    def answer(request, body, count):
        if count <= 2:
            return json_response({"error": {"message": "bad size", "code": "invalid_value"}}, status=400)
        return json_response(generation())

    with Hostile(answer) as server:
        summary = _run_on(server, _many(tmp_path), tmp_path / "out", "gpt-image-2.6-sunburst", 8)
    assert summary.exit_status == 1 and summary.stopped is None
    assert (summary.ok, summary.errors, summary.not_done) == (28, 2, 0)
    assert server.requests == 30


def test_a_model_with_too_few_tasks_to_tell_has_its_refusals_recorded_at_the_end(tmp_path):
    from hostile import Hostile, json_response

    def answer(request, body, count):
        return json_response({"error": {"message": "unsupported model", "code": "invalid_value"}}, status=400)

    with Hostile(answer) as server:
        summary = _run_on(server, _many(tmp_path, rows=2), tmp_path / "out", "gpt-image-2.6-sunburst", 8)
    assert summary.exit_status == 1 and summary.stopped is None
    assert (summary.errors, summary.not_done) == (2, 0) and server.requests == 2


def test_a_job_file_lays_its_models_file_over_the_catalog(tmp_path, prompts, cli):
    (tmp_path / "models.json").write_text(json.dumps({"providers": {"acedata": {"models": {
        "gpt-image-2.6-flare": {"status": "live", "spec": "gpt-image-2.6"}}}}}))
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{prompts.name}"\nmodels = "models.json"\n[defaults]\nmodel = "gpt-image-2.6-flare"\n'
                   'complexity = "low"\n')
    result = cli("plan", job, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "not one batchgen knows" not in result.output
    # without it, AceData does not list gpt-image-2.6: its rules still apply, from OpenAI's listing
    job.write_text(f'input = "{prompts.name}"\n[defaults]\nmodel = "gpt-image-2.6-flare"\ncomplexity = "extreme"\n')
    result = cli("plan", job, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "complexity 'extreme' is not allowed for gpt-image-2.6-flare" in result.output


def test_a_request_without_a_model_is_priced_as_the_providers_default(prompts, tmp_path):
    # AceData's default is dall-e-3: $0.04 a standard 1024x1024 image, not dall-e-2's $0.02
    summary = batchgen.plan(str(prompts), out=str(tmp_path / "o"))
    assert summary.cost_usd == pytest.approx(2 * 0.04)


def test_a_model_another_provider_serves_is_checked_by_its_rules_with_a_warning():
    checked = models.check_models({"dall-e-3"}, "acedata", models.load())
    assert checked.errors == [] and checked.warnings == []
    checked = models.check_models({"nano-banana"}, "openai", models.load())
    assert checked.errors == []
    assert checked.warnings == ["openai does not list model 'nano-banana' (batchgen knows it from acedata): it is "
                                "checked by that model's rules and sent; openai may refuse it"]
