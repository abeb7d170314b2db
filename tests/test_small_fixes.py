"""Small things a user meets: a summary that prints as text, a count of requests that says
what left the machine, a pandas Series answered in batchgen's words, and a standard output that
cannot take what a command prints (full disk, closed pipe) without a traceback."""
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
from conftest import TOKEN

import batchgen
from batchgen.exceptions import UsageError


def test_print_summary_shows_the_counts_and_where_the_results_are(prompts_csv, tmp_path):
    summary = batchgen.run(str(prompts_csv), out=str(tmp_path / "out"), model="dall-e-3", simulate=True,
                           progress=False)
    text = str(summary)
    assert text.startswith("3 ok, 0 error(s), 0 not done, of 3 task(s)") and "Summary(" not in text
    assert f"results: {tmp_path / 'out'}/results.parquet" in text
    assert "(simulated: nothing was charged)" in text


def test_with_no_connection_at_all_no_request_counts_as_sent(prompts_csv, tmp_path):
    with socket.socket() as s:         # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = batchgen.run(str(prompts_csv), out=str(tmp_path / "out"), model="dall-e-3", progress=False,
                           base_url=f"http://127.0.0.1:{port}/openai/images/generations",
                           environ={"ACEDATA_API_TOKEN": TOKEN})
    assert summary.exit_status == 3 and summary.not_done == 3
    assert summary.requests_sent == 0 and "0 request(s) sent this run" in str(summary)


def test_a_pandas_series_is_a_usage_error_that_says_to_give_a_dataframe(tmp_path):
    with pytest.raises(UsageError, match=r"one column \(a pandas Series\); give a DataFrame, e\.g\. "
                                         r"series\.to_frame\('text'\)"):
        batchgen.run(pd.Series(["an otter"], name="text"), out=str(tmp_path / "out"), simulate=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", [("status", "--json"), ("status",), ("plan", "--json")])
def test_a_full_stdout_is_said_on_stderr_without_a_traceback(prompts_csv, tmp_path, command):
    out = tmp_path / "out"
    assert batchgen.run(str(prompts_csv), out=str(out), model="dall-e-3", simulate=True,
                        progress=False).exit_status == 0
    target = out if command[0] == "status" else prompts_csv
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", command[0], str(target), *command[1:]],
                                stdout=full, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    assert "cannot write to standard output (No space left on device)" in err


def test_a_reader_that_leaves_early_ends_the_command_quietly(prompts_csv, tmp_path):
    read, write = os.pipe()
    os.close(read)                      # the reader has gone before a byte is written
    try:
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", "plan", str(prompts_csv), "--json",
                                 "--model", "dall-e-3"], stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == ""
