"""A folder grows with the question: rows, sweep values and axes added to a folder's job send
only the new tasks; job.json keeps what was asked; the results list every task the folder
holds and say which the current job asks for; `report` compares all of them (or the current
job's). What a task *is* (its prompt column) cannot change, nor may simulated and real mix, and
a simulated run without --out never lands where the real run would."""
import json
from pathlib import Path

import pandas as pd
from conftest import PROMPTS, results

SIZES = ("1024x1024", "1792x1024", "1024x1792")


def grow(cli, csv, out, sim, *extra):
    r = cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
            "--no-progress", "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def job_doc(out) -> dict:
    return json.loads((Path(out) / "job.json").read_text())


def images_on_disk(out) -> set:
    return {str(p.relative_to(out)) for p in (Path(out) / "images").rglob("*") if p.is_file()}


# ---- growing -------------------------------------------------------------------------------

def test_a_sweep_value_added_to_a_finished_folder_sends_only_its_tasks(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    assert grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1024,1792x1024")["requests_sent"] == 6
    first = results(out).set_index("task_id").sha256
    summary = grow(cli, prompts_csv, out, fresh_sim, "--sweep", f"size={','.join(SIZES)}")
    assert summary["requests_sent"] == 3 and summary["ok"] == 9 and summary["not_in_input"] == 0
    df = results(out)
    assert len(df) == 9 and df.in_job.all() and df.in_input.all()
    assert df.set_index("task_id").sha256[first.index].to_dict() == first.to_dict()    # nothing redone
    assert sorted(df.sweep_point.unique()) == sorted(f"size={s}" for s in SIZES)
    history = job_doc(out)["history"]
    assert [h["sweep"] for h in history] == [[["size", list(SIZES[:2])]], [["size", list(SIZES)]]]
    assert [h["tasks"] for h in history] == [6, 9]


def test_an_axis_added_over_the_value_a_folder_used_sends_only_the_other_values(cli, fresh_sim, prompts_csv,
                                                                               tmp_path):
    out = tmp_path / "out"
    grow(cli, prompts_csv, out, fresh_sim, "--size", "1024x1024", "--quality", "standard")
    summary = grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1024,1792x1024",
                   "--sweep", "quality=standard,hd")
    # (1024, standard) is the request the first run sent: the other three points are new.
    assert summary["requests_sent"] == 9 and summary["ok"] == 12


def test_rows_added_to_the_input_send_only_the_new_rows(cli, fresh_sim, tmp_path):
    out, csv = tmp_path / "out", tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS[:2]}).to_csv(csv, index=False)
    grow(cli, csv, out, fresh_sim)
    pd.DataFrame({"prompt": PROMPTS + ["A kite over the dunes"]}).to_csv(csv, index=False)
    assert grow(cli, csv, out, fresh_sim)["requests_sent"] == 2
    assert len(job_doc(out)["history"]) == 2


def test_a_narrower_job_keeps_the_other_points_listed_beside_their_prompts(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1024,1792x1024")
    fresh_sim.reset_stats()
    summary = grow(cli, prompts_csv, out, fresh_sim, "--size", "1792x1024")
    assert fresh_sim.stats.requests == 0 and summary["not_in_input"] == 3
    df = results(out)
    assert len(df) == 6 and set(df.image_path) == images_on_disk(out)
    old = df[~df.in_job]
    assert list(old.in_input) == [False] * 3
    # Labelled by the axis the folder was swept over, and placed on their prompt's row.
    assert set(old.sweep_point) == {"size=1024x1024"} and set(old["size"]) == {"1024x1024"}
    assert sorted(old.row_index.tolist()) == [0, 1, 2]
    # status counts this job's tasks, and the others apart.
    status = json.loads(cli("status", out, "--json").stdout)
    assert (status["total"], status["done"], status["ok"], status["not_in_job"]) == (3, 3, 3, 3)
    assert "and 3 finished task(s) of earlier jobs" in cli("status", out).stdout


def test_report_compares_every_point_the_folder_holds_or_the_current_jobs(cli, fresh_sim, prompts_csv, tmp_path):
    out = tmp_path / "out"
    grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1024,1792x1024")
    grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1792")
    assert cli("report", out).exit_code == 0
    page = (out / "report.html").read_text()
    assert all(size in page for size in SIZES) and page.count("<img") >= 9
    r = cli("report", out, "--current-job")
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    assert "1024x1792" in page and "1792x1024" not in page


# ---- what may not change ---------------------------------------------------------------------

def test_plan_of_a_grown_job_counts_what_is_done_and_what_the_folder_holds_beside_it(cli, fresh_sim, prompts_csv,
                                                                                   tmp_path):
    out = tmp_path / "out"
    grow(cli, prompts_csv, out, fresh_sim, "--sweep", "size=1024x1024,1792x1024")
    r = cli("plan", prompts_csv, "--out", out, "--model", "dall-e-3", "--sweep", "size=1024x1024,1024x1792",
            "--json")
    doc = json.loads(r.stdout)
    assert (doc["done"], doc["to_send"], doc["not_in_job"], doc["folder_simulated"]) == (3, 3, 3, False)
    text = cli("plan", prompts_csv, "--out", out, "--model", "dall-e-3", "--size", "1024x1024").stdout
    assert "also holds 3 finished task(s) this job does not ask for" in text


def test_plan_says_when_the_folders_results_are_simulated(cli, prompts_csv, tmp_path):
    out = tmp_path / "out"
    assert cli("run", prompts_csv, "--out", out, "--simulate", "--model", "dall-e-3",
               "--no-progress").exit_code == 0
    r = cli("plan", prompts_csv, "--out", out, "--model", "dall-e-3")
    assert r.exit_code == 0 and "its results are simulated" in r.stdout
    assert "a real run there is refused; give the real run another --out" in r.stdout
    assert json.loads(cli("plan", prompts_csv, "--out", out, "--model", "dall-e-3",
                          "--json").stdout)["folder_simulated"] is True


def test_a_simulated_run_without_out_lands_beside_the_real_runs_folder(cli, prompts_csv, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = jobs / "otters.toml"
    job.write_text(f'input = "{prompts_csv}"\nout = "../runs/otters"\n[defaults]\nmodel = "dall-e-3"\n')
    r = cli("run", job, "--simulate", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["out"] == str(tmp_path / "runs" / "simulated" / "otters")
    assert (tmp_path / "runs" / "simulated" / "otters" / "results.parquet").is_file()
    assert not (tmp_path / "runs" / "otters").exists()
    # An explicit --out is taken as given.
    mine = tmp_path / "mine"
    assert cli("run", job, "--simulate", "--no-progress", "--out", mine).exit_code == 0
    assert (mine / "results.parquet").is_file()


def test_the_image_column_of_an_edits_folder_cannot_change(cli, tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    csv = tmp_path / "edits.csv"
    pd.DataFrame({"prompt": ["make it blue"], "image": ["a.png"], "other": ["a.png"]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    args = ("--out", out, "--simulate", "--model", "gpt-image-2", "--no-progress")
    assert cli("run", csv, *args).exit_code == 0
    r = cli("run", csv, *args, "--image-column", "other")
    assert r.exit_code == 2 and "image column is 'image'; this job's is 'other'" in r.output
