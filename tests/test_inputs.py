"""Inputs are regular files: the table, the job file and an edit's images are checked with stat
before anything is read (a FIFO, a device or a folder is that input's clear error, never a hang
or a memory blow-up); what is sent is what was hashed; paths in results are as the input gave
them."""
import io
import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import TOKEN, batchgen_process, results
from PIL import Image

import batchgen

GPT = {"model": "gpt-image-2", "quality": "low", "size": "1024x1024"}


def png(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()


def edits(tmp_path, cells, **columns):
    (tmp_path / "pictures").mkdir(exist_ok=True)
    (tmp_path / "pictures" / "blue.png").write_bytes(png("blue"))
    source = tmp_path / "edits.csv"
    pd.DataFrame({"prompt": [f"edit {i}" for i in range(len(cells))], "image": cells, **columns}).to_csv(
        source, index=False)
    return source


def openai(sim, **options):
    return {"provider": "openai", "base_url": sim.openai_base_url, "environ": {"OPENAI_API_KEY": TOKEN},
            "defaults": GPT, **options}


def finished(process, timeout=120):
    """A real process's (exit status, stdout, stderr); the timeout only keeps a hang from
    hanging the suite."""
    try:
        out, err = process.communicate(timeout=timeout)
    except Exception:
        process.kill()
        raise
    return process.returncode, out, err


# ---- what is not a regular file --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_table_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, kind):
    source = tmp_path / "prompts.csv"
    os.mkfifo(source) if kind == "fifo" else source.mkdir()
    code, _, err = finished(batchgen_process("plan", source))
    assert code == 2 and "Traceback" not in err
    assert ("is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a folder") in err


def test_a_job_file_that_is_a_fifo_is_refused_before_it_is_read(tmp_path):
    job = tmp_path / "job.toml"
    os.mkfifo(job)
    code, _, err = finished(batchgen_process("plan", job))
    assert code == 2 and "is a FIFO (named pipe), not a regular file" in err


def test_an_image_cell_naming_a_device_a_fifo_or_a_folder_is_that_rows_error(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    source = edits(tmp_path, ["pictures/blue.png", "/dev/zero", "pipe.png", "pictures"])
    code, out, err = finished(batchgen_process("plan", source, "--model", "gpt-image-2", "--json"))
    assert code == 0 and "Traceback" not in err
    summary = json.loads(out)
    assert (summary["tasks"], summary["refused"]) == (1, 3)
    text = " | ".join(summary["refused_by_reason"])
    assert "input image '/dev/zero': is a character device, not an image file" in text
    assert "input image 'pipe.png': is a FIFO (named pipe), not an image file" in text
    assert "input image 'pictures': is a folder, not an image file" in text


# ---- what is sent is what was hashed ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["live", "batch"])
def test_an_input_changed_since_planning_is_that_rows_error_and_the_next_run_sends_the_new_bytes(
        fresh_sim, tmp_path, mode):
    from batchgen.commands import prepare
    from batchgen.rules.providers import Endpoint
    from batchgen.runner import run_plan
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "red.png").write_bytes(png("red"))
    source = edits(tmp_path, ["pictures/blue.png", "pictures/red.png"])
    out = tmp_path / "out"
    options = {"out": str(out), "provider": "openai", "defaults": GPT, "mode": mode, "poll_interval": 0.05}
    config, table, plan = prepare(str(source), options)
    (tmp_path / "pictures" / "red.png").write_bytes(png("green"))       # after planning, before sending
    endpoint = Endpoint(url=fresh_sim.openai_base_url + "/images/generations", token=TOKEN, provider="openai")
    summary = run_plan(config, table, plan, endpoint)
    assert summary.ok == 1 and summary.by_code == {"invalid_params": 1}
    df = results(out).set_index("input_image")
    assert df.status.to_dict() == {"pictures/blue.png": "ok", "pictures/red.png": "error"}
    assert "image 'pictures/red.png' changed since the run was planned" in df.error_message["pictures/red.png"]
    assert str(tmp_path) not in df.error_message["pictures/red.png"]
    again = batchgen.run(str(source), progress=False, **{**openai(fresh_sim), "mode": mode, "poll_interval": 0.05,
                                                           "out": str(out)})
    assert again.ok == 2 and again.requests_sent >= 1
    green = results(out)
    assert green[green.in_job & (green.input_image == "pictures/red.png")].status.tolist() == ["ok"]


# ---- paths as the input gave them -----------------------------------------------------------

def test_results_and_metadata_keep_input_paths_as_the_table_gave_them(fresh_sim, tmp_path):
    source = edits(tmp_path, ["pictures/blue.png", "pictures/blue.png|pictures/blue.png"],
                   mask=[None, None])
    out = tmp_path / "out"
    summary = batchgen.run(str(source), out=str(out), progress=False, **openai(fresh_sim))
    assert summary.ok == 2
    table = pq.read_table(out / "results.parquet")
    assert table.column("input_image").to_pylist() == ["pictures/blue.png", "pictures/blue.png|pictures/blue.png"]
    assert str(tmp_path) not in (out / "metadata.jsonl").read_text()
    assert str(tmp_path) not in (out / "journal.jsonl").read_text()


def test_a_jsonl_image_field_may_be_a_name_on_one_line_and_a_list_on_another(fresh_sim, tmp_path):
    (tmp_path / "a.png").write_bytes(png("blue"))
    (tmp_path / "b.png").write_bytes(png("red"))
    source = tmp_path / "edits.jsonl"
    source.write_text(json.dumps({"prompt": "one", "image": "a.png"}) + "\n"
                      + json.dumps({"prompt": "two", "image": ["a.png", "b.png"]}) + "\n")
    summary = batchgen.run(str(source), out=str(tmp_path / "out"), progress=False, **openai(fresh_sim))
    assert summary.ok == 2 and summary.errors == 0
    assert results(tmp_path / "out").input_image.tolist() == ["a.png", "a.png|b.png"]


def test_an_in_memory_table_naming_a_fifo_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    df = pd.DataFrame({"prompt": ["x"], "image": [str(tmp_path / "pipe.png")]})
    summary = batchgen.plan(df, out=str(tmp_path / "out"), model="gpt-image-2")
    assert summary.refused == 1 and "FIFO" in next(iter(summary.refused_by_reason))
