"""The results a folder's journal gives do not change with how they are built.

One input and one journal, made to hold every kind of outcome (ok lines of three origins and
of none, errors, a short answer, retries carried over, a void line, a damaged line, tasks of an
earlier input, lines after the synced marker with and without their image, tasks never sent);
`batchgen run` on that folder sends the unfinished ones to an address where nothing listens,
stops, and writes results.parquet and metadata.jsonl. Both are compared with the files that
the code before issue 15 (streamed results, compact plan and journal state) wrote for the same
folder: tests/golden/results_rows.jsonl and tests/golden/metadata.jsonl.

Only the golden files' columns are compared (in their order), so columns added to the schema
later merge in without touching this test. `python tests/test_results_golden.py DIR` writes
the folder and runs it, for making the golden files again after a deliberate change.
"""
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

import batchgen
from batchgen.planning.reader import read_table
from batchgen.planning.settings import resolve_config
from batchgen.planning.tasks import make_plan

GOLDEN = Path(__file__).parent / "golden"
DEAD = "http://127.0.0.1:9/openai/images/generations"     # the discard port: nothing answers
ORIGIN_A = {"provider": "acedata", "endpoint": "https://api.acedata.cloud/openai/images/generations",
            "mode": "live", "simulated": False}
ORIGIN_B = {"provider": "openai", "endpoint": "https://api.openai.com/v1/images/generations",
            "mode": "batch", "simulated": False}
CSV = """prompt,tag,score,status,file_name,model,n,quality,flag
an otter,a,1.5,x,f0,,,hd,true
a fox,b,,y,f1,,,,false
an otter,c,2.25,z,f2,,,hd,
,d,3,w,f3,,,,true
a lighthouse,é,4.5,v,f4,,,ultra,false
a moth,f,5,u,f5,dall-e-2,2,,true
a whale,g,6,t,f6,,,,false
a heron,h,7,s,f7,,,,true
"""
OPTIONS = {"defaults": {"model": "dall-e-3", "response_format": "b64_json"},
           "sweep": [("size", ["1024x1024", "1792x1024"])]}


def _image(task_id, index=0, size=1000, **extra):
    return {"image_index": index, "image_path": f"images/{task_id[:2]}/{task_id}-{index}.png",
            "image_url": None, "sha256": f"{index:02d}" + task_id * 3 + "ab" * 7, "width": 1024, "height": 1024,
            "bytes": size, "revised_prompt": extra.get("revised", f"revised {task_id}")}


def make_folder(tmp: Path) -> tuple:
    """The input and the output folder (journal, one image); returns (csv, out)."""
    csv = tmp / "prompts.csv"
    csv.write_text(CSV, encoding="utf-8")
    out = tmp / "out"
    out.mkdir()
    config = resolve_config(str(csv), {**OPTIONS, "out": str(out), "models": _dall_e_2_live(tmp)})
    plan = make_plan(read_table(csv), config)
    t = {(task.row_index, task.point): task for task in plan.tasks}

    def tid(row, point):
        return t[(row, point)].task_id

    def request(row, point):
        task = t[(row, point)]
        return {"prompt": task.prompt, "params": task.params}

    def ok(row, point, images=None, **extra):
        task_id = tid(row, point)
        return {"task_id": task_id, "status": "ok", "images": images or [_image(task_id)], "created": 1700000000 + row,
                "trace_id": f"trace-{row}-{point}", "http_status": 200, "usage": None,
                "finished_at": 1700000100.5 + row, **request(row, point), "attempts": 1,
                "latency_s": 0.25 + row, **extra}

    def error(row, point, code, **extra):
        return {"task_id": tid(row, point), "status": "error", "error_code": code,
                "error_message": f"{code} for row {row}", "http_status": 400, "trace_id": 12345 + row,
                "attempts": 1, "latency_s": 0.5, "finished_at": 1700000200.0, **request(row, point), **extra}

    after_marker_kept = tid(7, 0)
    kept_image = out / "images" / after_marker_kept[:2] / f"{after_marker_kept}-0.png"
    kept_image.parent.mkdir(parents=True)
    kept_image.write_bytes(b"x" * 1000)
    lines = [
        ok(0, 0),                                   # before any origin line: job.json's (none here)
        {"origin": ORIGIN_A},
        {"task_id": tid(1, 0), "status": "not_done", "attempts": 2},
        ok(1, 0, attempts=1),                       # 3 attempts in all
        error(0, 1, "content_policy_violation"),
        ok(2, 0, usage={"total_tokens": 4160, "input_tokens": 10}, images=[_image(tid(2, 0), revised="ünïcode")]),
        ok(5, 0, images=[_image(tid(5, 0))], images_expected=2),     # asked 2, got 1
        {"task_id": "feedfacecafebeef", "status": "ok", "images": [_image("feedfacecafebeef")],
         "prompt": "an old prompt", "params": {"model": "dall-e-3", "quality": "hd"}, "attempts": 1,
         "http_status": 200, "created": 1600000000, "trace_id": None, "latency_s": 1.0},
        {"task_id": "0123456789abcdef", "status": "error", "error_code": "api_error", "error_message": "boom",
         "http_status": 500, "attempts": 4, "prompt": None, "params": {"model": "dall-e-2"}},
        ok(2, 1),
        {"task_id": tid(2, 1), "status": "void"},   # its line was found damaged: not done
        error(1, 1, "api_error"),
        ok(1, 1),                                   # the last final outcome wins
        "GLUED",
        {"origin": ORIGIN_B},
        ok(6, 0, batch_id="batch_abc", attempts=1),
        error(6, 1, "rate_limit_exceeded", batch_id="batch_abc"),
        {"synced": 1700000300.0},
        ok(7, 0),                                   # after the marker, image on disk: kept
        ok(7, 1),                                   # after the marker, no image: sent again
    ]
    with open(out / "journal.jsonl", "w", encoding="ascii") as f:
        for line in lines:
            if line == "GLUED":
                f.write('{"task_id":"' + tid(6, 1) + '","status":"ok"{"task_id":"x","status":"ok"}\n')
            else:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return csv, out


def _dall_e_2_live(folder: Path) -> str:
    """The folder's rows name dall-e-2, live on AceData when the folder was made."""
    models = folder / "dall-e-2-live.json"
    models.write_text(json.dumps({"providers": {"acedata": {"models": {"dall-e-2": {"status": "live"}}}}}))
    return str(models)


def run_folder(csv: Path, out: Path):
    return batchgen.run(str(csv), out=str(out), base_url=DEAD, concurrency=1, backoff_base=0.01,
                        environ={"ACEDATA_API_TOKEN": "sim-token"}, models=_dall_e_2_live(csv.parent), **OPTIONS)


def rows_of(out: Path) -> list:
    return pq.read_table(out / "results.parquet").to_pylist()


def test_the_results_of_a_folder_are_the_golden_ones(tmp_path):
    csv, out = make_folder(tmp_path)
    summary = run_folder(csv, out)
    assert summary.stopped == "endpoint_error" and summary.requests_sent == 0    # no connection: none sent
    golden_rows = [json.loads(line) for line in (GOLDEN / "results_rows.jsonl").read_text().splitlines()]
    table = pq.read_table(out / "results.parquet")
    names = list(golden_rows[0])
    assert [n for n in table.column_names if n in names] == names      # same columns, same order
    rows = table.select(names).to_pylist()
    assert len(rows) == len(golden_rows)
    for i, (row, want) in enumerate(zip(rows, golden_rows)):
        assert row == want, f"results row {i}"
    assert pq.read_schema(out / "results.parquet").pandas_metadata is not None
    golden_meta = [json.loads(line) for line in (GOLDEN / "metadata.jsonl").read_text("utf-8").splitlines()]
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert len(meta) == len(golden_meta)
    for i, (line, want) in enumerate(zip(meta, golden_meta)):
        assert [k for k in line if k in want] == list(want), f"metadata line {i}: key order"
        assert {k: line[k] for k in want} == want, f"metadata line {i}"


def _write_golden(tmp: Path) -> None:
    csv, out = make_folder(tmp)
    run_folder(csv, out)
    GOLDEN.mkdir(exist_ok=True)
    with open(GOLDEN / "results_rows.jsonl", "w", encoding="utf-8") as f:
        for row in rows_of(out):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (GOLDEN / "metadata.jsonl").write_bytes((out / "metadata.jsonl").read_bytes())


if __name__ == "__main__":
    _write_golden(Path(sys.argv[1]))
