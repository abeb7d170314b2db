"""`batchgen plan` (sends nothing) and `run --max-cost` (stops at the budget, resumes with more)."""
import pandas as pd
from conftest import make_prompts, results


def test_plan_counts_refusals_and_costs_per_sweep_point(cli, fresh_sim, tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["otter", "fox", "", "x" * 4001, "owl"]}).to_csv(csv, index=False)
    r = cli("plan", csv, "--model", "dall-e-3", "--sweep", "quality=standard,hd",
            "--sweep", "size=1024x1024,1792x1024", "--rpm", "5")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # 3 good rows per point: standard square $0.04, standard wide $0.08, hd square $0.08, hd wide $0.12
    assert any(line.split() == ["quality=standard,size=1024x1024", "3", "2", "3", "$0.12"] for line in lines)
    assert any(line.split() == ["quality=hd,size=1792x1024", "3", "2", "3", "$0.36"] for line in lines)
    assert any(line.split()[:2] == ["total", "12"] and line.split()[-1] == "$0.96" for line in lines)
    assert "4 × prompt is missing or blank" in r.output
    assert "4 × prompt is 4001 characters" in r.output
    assert "row 2: ''" in r.output
    assert "12 tasks (12 images) at 5/min: 2 min" in r.output
    assert fresh_sim.stats.requests == 0
    assert not (tmp_path / "runs").exists()


def test_plan_says_when_the_cost_is_unknown(cli, prompts_csv):
    r = cli("plan", prompts_csv, "--model", "flux-pro")
    assert r.exit_code == 0
    assert "unknown" in r.output and "flux-pro" in r.output


def test_plan_refuses_what_run_refuses(cli, prompts_csv):
    r = cli("plan", prompts_csv, "--model", "dall-e-3", "--size", "256x256")
    assert r.exit_code == 2 and "size '256x256'" in r.output


def test_budget_stops_launching_and_a_larger_budget_goes_on(cli, fresh_sim, tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 5)
    out = tmp_path / "out"
    args = ("run", csv, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--concurrency", "1", "--no-progress")
    r = cli(*args, "--max-cost", "0.10")  # $0.04 each: two fit, the third would pass the budget
    assert r.exit_code == 3
    assert "--max-cost" in r.output and "estimated cost of the images: $0.08" in r.output
    df = results(out)
    assert (df.status == "ok").sum() == 2
    assert df[df.status != "ok"].error_code.tolist() == ["budget_exceeded"] * 3
    assert df.est_cost_usd.sum() == 0.08
    assert fresh_sim.stats.requests == 2
    r = cli(*args, "--max-cost", "0.10")
    assert r.exit_code == 3 and fresh_sim.stats.requests == 2  # the budget covers the whole job
    r = cli(*args, "--max-cost", "1")
    assert r.exit_code == 0 and fresh_sim.stats.requests == 5
    assert set(results(out).status) == {"ok"}
