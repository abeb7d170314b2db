"""Reading the prompt table: what each format's columns become, and what reaches the results."""
import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest
from conftest import PROMPTS, results

from batchgen.exceptions import UsageError
from batchgen.planning.reader import read_table


def test_csv_columns_get_the_types_their_cells_share(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed,weight,keep,note,day,empty\n"
                    "otter,1,0.5,true,NA,2024-01-02,\n"
                    "fox,,2,False,,2024-01-03,\n"
                    "owl,3,,TRUE,null,,\n")
    table = read_table(path)
    assert table.schema.types == [pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.string(),
                                  pa.string(), pa.string()]
    assert table.to_pydict() == {"prompt": ["otter", "fox", "owl"], "seed": [1, None, 3],
                                 "weight": [0.5, 2.0, None], "keep": [True, False, True],
                                 "note": ["NA", None, "null"],  # only an empty cell is missing
                                 "day": ["2024-01-02", "2024-01-03", None], "empty": [None] * 3}


def test_csv_quoted_cells_byte_order_mark_and_tsv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes('\ufeffprompt,tag\n"an otter, floating","two\nlines"\n'.encode("utf-8"))
    assert read_table(path).to_pydict() == {"prompt": ["an otter, floating"], "tag": ["two\nlines"]}
    tsv = tmp_path / "p.tsv"
    tsv.write_text("prompt\tsize\nan otter, floating\t1024x1024\n")
    assert read_table(tsv).to_pydict() == {"prompt": ["an otter, floating"], "size": ["1024x1024"]}


def test_repeated_and_empty_header_names_are_made_unique(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,tag,tag,\notter,a,b,c\n")
    assert read_table(path).column_names == ["prompt", "tag", "tag.1", "Unnamed: 3"]


def test_a_row_with_too_many_cells_is_a_clear_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\notter\nfox,extra\n")
    with pytest.raises(UsageError, match="cannot read it as CSV: .*Expected 1 columns, got 2"):
        read_table(path)


def test_parquet_keeps_its_types_and_drops_a_stored_pandas_index(tmp_path):
    path = tmp_path / "p.parquet"
    df = pd.DataFrame({"prompt": ["otter", "fox"], "seed": [7, 8]}, index=pd.Index([10, 20], name="key"))
    df.to_parquet(path)
    table = read_table(path)
    assert table.column_names == ["prompt", "seed"]
    assert table.to_pydict() == {"prompt": ["otter", "fox"], "seed": [7, 8]}


def test_jsonl_missing_keys_are_null_and_mixed_columns_are_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "otter", "seed": 1, "extra": {"a": 1}}\n'
                    '\n'
                    '{"prompt": "fox", "seed": "one"}\n')
    table = read_table(path)
    assert table.to_pydict() == {"prompt": ["otter", "fox"], "seed": ["1", "one"],
                                 "extra": [{"a": 1}, None]}


def test_jsonl_line_that_is_not_an_object_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "otter"}\n["fox"]\n')
    with pytest.raises(UsageError, match="line 2 is not a JSON object"):
        read_table(path)


def test_pass_through_columns_reach_the_results_with_their_types(cli, fresh_sim, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed,weight,note,status\n"
                    f'"{PROMPTS[0]}",1,0.5,first,draft\n'
                    f'"{PROMPTS[1]}",,1.5,,final\n')
    out = tmp_path / "out"
    r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--size", "1024x1024", "--no-progress")
    assert r.exit_code == 0, r.output
    df = results(out).sort_values("row_index")
    assert str(df.seed.dtype) == "Int64" and df.seed.tolist()[0] == 1 and df.seed.isna().tolist() == [False, True]
    assert df.weight.tolist() == [0.5, 1.5]
    assert df.note.tolist()[0] == "first" and pd.isna(df.note.tolist()[1])
    assert df.input_status.tolist() == ["draft", "final"]   # a name the results use already
    assert set(df.status) == {"ok"}
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted((m["seed"], m["note"]) for m in lines if m["seed"]) == [(1, "first")]
    assert {m["file_name"] for m in lines} == set(df.image_path)


@pytest.mark.parametrize("csv, expected", [
    # pandas costs about half a second to import; a run reads and writes with pyarrow alone.
    ("prompt,seed\nan otter,1\na fox,\n", ["2", "False"]),
    # repeated prompts are counted with Arrow arrays made from buffers, not Python lists
    ("prompt\nan otter\nan otter\na fox\n", ["3", "False"]),
    # pyarrow.compute (40 ms) only when the input's own columns are passed through.
    ("prompt\nan otter\na fox\n", ["2", "False", "False"]),
])
def test_a_run_does_not_import_pandas_nor_pyarrow_compute_without_passthrough(tmp_path, csv, expected):
    path = tmp_path / "p.csv"
    path.write_text(csv)
    code = ("import sys, batchgen\n"
            f"s = batchgen.run({str(path)!r}, out={str(tmp_path / 'out')!r}, simulate=True,\n"
            "                 defaults={'model': 'dall-e-3', 'size': '1024x1024'})\n"
            "print(s.ok, 'pandas' in sys.modules, 'pyarrow.compute' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:len(expected)] == expected


def test_input_columns_named_like_results_get_unique_names_pandas_and_imagefolder_can_read(cli, fresh_sim, tmp_path):
    import pyarrow.parquet as pq
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS[:2], "task_id": ["t0", "t1"], "input_task_id": ["i0", "i1"],
                             "file_name": ["f0", "f1"], "status": ["draft", "final"]}), path)
    out = tmp_path / "out"
    r = cli("run", path, "--out", out, "--base-url", fresh_sim.acedata_url, "--model", "dall-e-3",
            "--size", "1024x1024", "--no-progress")
    assert r.exit_code == 0, r.output
    df = results(out)       # pandas refuses a file with two columns of one name
    assert df.columns.is_unique
    assert df["input_task_id.1"].tolist() == ["t0", "t1"]          # task_id: input_task_id is taken
    assert df["input_task_id"].tolist() == ["i0", "i1"]            # a column keeps its own name when it can
    assert df["input_file_name"].tolist() == ["f0", "f1"] and df["input_status"].tolist() == ["draft", "final"]
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["file_name"] for m in lines] == df.image_path.tolist()
    assert [m["input_file_name"] for m in lines] == ["f0", "f1"]


def test_pass_through_names_never_take_a_result_name():
    from batchgen.keeping.results import COLUMNS, passthrough_names
    names = passthrough_names(["task_id", "input_task_id", "input_task_id.1", "file_name", "seed", "prompt_id"])
    assert names == ["input_task_id.2", "input_task_id", "input_task_id.1", "input_file_name", "seed", "prompt_id"]
    assert len(set(names)) == len(names) and not set(names) & (set(COLUMNS) | {"file_name"})


@pytest.mark.parametrize("encoding", ["nope", "rot13", "", 5])
def test_an_encoding_that_is_not_a_text_encoding_is_refused_before_reading(tmp_path, encoding):
    path = tmp_path / "p.csv"
    path.write_text("prompt\notter\n")
    with pytest.raises(UsageError, match="not a text encoding Python knows"):
        read_table(path, encoding)
