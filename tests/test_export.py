"""batchgen export: the sample sweep exported to a folder and to a local S3-compatible server
(moto's, on loopback), read back sample by sample with the readers users have: the
`webdataset` package, pandas, `datasets`, DuckDB, s3fs."""
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import TOKEN, Cli, results
from PIL import Image

from batchgen.showing import exports

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_JOB = ROOT / "jobs" / "otter_sweep.toml"


@pytest.fixture(scope="module")
def run_cli():
    return Cli({"ACEDATA_API_TOKEN": TOKEN, "OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})


@pytest.fixture(scope="module")
def sweep_out(sim, run_cli, tmp_path_factory):
    """The sample sweep (6 prompts × 8 sweep points), finished once for the whole module."""
    out = tmp_path_factory.mktemp("sweep") / "otter_sweep"
    r = run_cli("run", SAMPLE_JOB, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def run_copy(sweep_out, tmp_path):
    """A copy of the finished sweep a test may change."""
    return Path(shutil.copytree(sweep_out, tmp_path / "copy"))


def ok_rows(out) -> pd.DataFrame:
    df = results(out)
    return df[df.status == "ok"].reset_index(drop=True)


def check_sample(key: str, image: bytes, ext: str, row: dict, by_key: dict) -> None:
    """A sample belongs to its row: its key, its bytes (the recorded sha256), its extension."""
    expected = by_key[key]
    assert hashlib.sha256(image).hexdigest() == row["sha256"] == expected["sha256"]
    assert key == f"{row['task_id']}_{row['image_index']}"
    assert row["prompt"] == expected["prompt"] and row["sweep_point"] == expected["sweep_point"]
    assert ext == Path(expected["image_path"]).suffix.lstrip(".")
    im = Image.open(io.BytesIO(image))
    assert (im.width, im.height) == (row["width"], row["height"])


def expected_by_key(out) -> dict:
    return {f"{r['task_id']}_{r['image_index']}": r for r in ok_rows(out).to_dict("records")}


def read_tar_samples(fileobj) -> dict:
    """key -> {extension: bytes}, with plain tarfile (what a WebDataset shard is)."""
    found: dict = {}
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


def check_tar_samples(samples: dict, by_key: dict) -> None:
    for key, files in samples.items():
        row = json.loads(files.pop("json"))
        (ext, image), = files.items()
        check_sample(key, image, ext, row, by_key)


# ---- to a folder ------------------------------------------------------------------------

def test_webdataset_reads_back_sample_by_sample_with_the_webdataset_package(run_cli, sweep_out, tmp_path):
    wds = pytest.importorskip("webdataset")
    dest = tmp_path / "wds"
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", 20)
    assert r.exit_code == 0, r.output
    assert "exported 48 image(s) in 3 webdataset shard(s)" in r.output
    assert sorted(p.name for p in (dest / "data").iterdir()) == [f"shard-0000{i}.tar" for i in range(3)]
    by_key = expected_by_key(sweep_out)
    seen = []
    shards = str(dest / "data" / "shard-{00000..00002}.tar")
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        row = json.loads(sample["json"])
        (ext,) = [k for k in sample if not k.startswith("__") and k != "json"]
        check_sample(sample["__key__"], sample[ext], ext, row, by_key)
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(by_key) and len(seen) == 48
    manifest = json.loads((dest / "batchgen-export.json").read_text())
    assert manifest["format"] == "webdataset" and manifest["images"] == 48
    assert manifest["shards"] == [f"data/shard-0000{i}.tar" for i in range(3)]
    card = (dest / "README.md").read_text()
    assert "48 image(s)" in card and "quality = standard, hd" in card and "data/shard-{00000..00002}.tar" in card
    for path in dest.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_parquet_reads_back_with_pandas_datasets_and_duckdb(run_cli, sweep_out, tmp_path, monkeypatch):
    dest = tmp_path / "pq"
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest, "--shard-size", 30)
    assert r.exit_code == 0, r.output
    files = sorted((dest / "data").iterdir())
    assert [p.name for p in files] == ["part-00000.parquet", "part-00001.parquet"]
    by_key = expected_by_key(sweep_out)

    df = pd.read_parquet(dest / "data")                       # pandas, given the folder
    assert len(df) == 48 and df.key.is_unique
    assert str(df.row_index.dtype) == "Int64"                 # the results' nullable integers survive
    for row in df.to_dict("records"):
        check_sample(row["key"], row["image"], Path(row["image_path"]).suffix[1:], row, by_key)
    assert list(df.columns[:2]) == ["key", "image"] and {"id", "topic", "in_input"} <= set(df.columns)

    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = datasets.load_dataset("parquet", data_files=str(dest / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    ds = ds.cast_column("image", datasets.Image())
    assert len(ds) == 48
    for record in ds:
        assert (record["image"].width, record["image"].height) == (record["width"], record["height"])
        assert by_key[record["key"]]["prompt"] == record["prompt"]

    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT key, image, sha256 FROM read_parquet('{dest}/data/*.parquet')").fetchall()
    assert len(rows) == 48
    assert all(hashlib.sha256(image).hexdigest() == digest == by_key[key]["sha256"] for key, image, digest in rows)


def test_parquet_row_groups_stay_small_for_streaming(sweep_out, tmp_path, monkeypatch):
    import batchgen
    import batchgen.showing.exports
    monkeypatch.setattr(batchgen.showing.exports, "ROW_GROUP_IMAGES", 10)
    summary = batchgen.export(sweep_out, format="parquet", to=tmp_path / "pq")
    meta = pq.ParquetFile(tmp_path / "pq" / summary.shards[0]).metadata
    assert summary.images == 48 and meta.num_rows == 48
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10, 10, 10, 10, 8]
    # A group also ends at ROW_GROUP_BYTES of images (big images: fewer per group).
    monkeypatch.setattr(batchgen.showing.exports, "ROW_GROUP_BYTES", 1)
    summary = batchgen.export(sweep_out, format="parquet", to=tmp_path / "pq")
    meta = pq.ParquetFile(tmp_path / "pq" / summary.shards[0]).metadata
    assert meta.num_row_groups == 48 and meta.num_rows == 48


def test_each_image_keeps_its_own_file_type(run_cli, sim, tmp_path):
    # A real run over the three output formats of the GPT image models.
    prompts = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a fox", "a lighthouse"]}).to_csv(prompts, index=False)
    out = tmp_path / "formats"
    r = run_cli("run", prompts, "--out", out, "--provider", "openai", "--base-url", sim.openai_base_url,
                "--model", "gpt-image-2", "--quality", "low", "--sweep", "output_format=png,jpeg,webp",
                "--no-progress", env={"OPENAI_API_KEY": TOKEN})
    assert r.exit_code == 0, r.output
    dest = tmp_path / "wds"
    assert run_cli("export", out, "--format", "webdataset", "--to", dest).exit_code == 0
    with open(dest / "data" / "shard-00000.tar", "rb") as f:
        samples = read_tar_samples(f)
    extensions = sorted(ext for files in samples.values() for ext in files if ext != "json")
    assert extensions == ["jpg", "jpg", "png", "png", "webp", "webp"]
    check_tar_samples(samples, expected_by_key(out))


def test_an_export_again_replaces_the_earlier_one_and_removes_its_extra_shards(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    assert run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", 10).exit_code == 0
    assert len(list((dest / "data").iterdir())) == 5
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest, "--shard-size", 20)
    assert r.exit_code == 0 and "removed 5 shard(s) of the earlier export" in r.output
    assert sorted(p.name for p in (dest / "data").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    assert json.loads((dest / "batchgen-export.json").read_text())["format"] == "parquet"
    assert len(pd.read_parquet(dest / "data")) == 48
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "batchgen-export.json", "data"]


def test_error_rows_go_to_parquet_only_when_asked(run_cli, sim, tmp_path):
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["a calm sea", "forbidden-fruit on a table", "a red kite"]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert run_cli("run", csv, "--out", out, "--base-url", sim.acedata_url, "--model", "dall-e-3",
                   "--no-progress").exit_code == 1
    assert run_cli("export", out, "--format", "parquet", "--to", tmp_path / "a").exit_code == 0
    assert len(pd.read_parquet(tmp_path / "a" / "data")) == 2
    r = run_cli("export", out, "--format", "parquet", "--to", tmp_path / "b", "--include-errors")
    assert r.exit_code == 0 and "2 image(s) and 1 error row(s)" in r.output
    df = pd.read_parquet(tmp_path / "b" / "data")
    failed = df[df.status == "error"]
    assert len(failed) == 1 and failed.image.isna().all() and failed.error_code.tolist() == ["content_policy_violation"]
    r = run_cli("export", out, "--format", "webdataset", "--to", tmp_path / "c", "--include-errors")
    assert r.exit_code == 2 and "only the parquet format" in r.output and not (tmp_path / "c").exists()



class JsonLinesWriter(exports.ShardWriter):
    """A format the package does not have: a JSON line per row, the image's size in place of it."""
    name, stem, extension = "jsonl", "rows", "jsonl"
    includes_errors = True

    @classmethod
    def write(cls, f, out, chunk, first):
        images = errors = 0
        for sample in exports.samples(out, chunk, first):
            line = {"key": sample.key, "image_bytes": None if sample.image is None else len(sample.image),
                    "sha256": sample.row["sha256"]}
            f.write(json.dumps(line).encode() + b"\n")
            images, errors = (images + 1, errors) if sample.image is not None else (images, errors + 1)
        return images, errors

    @classmethod
    def card_files(cls, summary):
        return "A JSON line per image."

    @classmethod
    def card_code(cls, summary):
        return ["import pandas as pd", f"df = pd.read_json(\"{summary.dest}/data/rows-00000.jsonl\", lines=True)"]


def test_a_new_format_is_one_writer_class_in_the_registry(sweep_out, tmp_path, monkeypatch):
    import batchgen
    dest = tmp_path / "jsonl"
    with monkeypatch.context() as m:
        m.setitem(exports.WRITERS, "jsonl", JsonLinesWriter)
        summary = batchgen.export(sweep_out, format="jsonl", to=dest, shard_size=20, include_errors=True)
        assert summary.format == "jsonl" and summary.images == 48 and summary.error_rows == 0
        assert summary.shards == [f"data/rows-0000{i}.jsonl" for i in range(3)]
        lines = [json.loads(line) for path in sorted((dest / "data").iterdir())
                 for line in path.read_text().splitlines()]
        by_key = expected_by_key(sweep_out)
        assert sorted(row["key"] for row in lines) == sorted(by_key)
        assert all(row["sha256"] == by_key[row["key"]]["sha256"] for row in lines)
        manifest = json.loads((dest / "batchgen-export.json").read_text())
        assert manifest["format"] == "jsonl" and manifest["shards"] == summary.shards
        card = (dest / "README.md").read_text()
        assert 'path: "data/*.jsonl"' in card and "3 jsonl shard(s)" in card and "A JSON line per image." in card
        assert "```python\nimport pandas as pd\ndf = pd.read_json(" in card
        # Its shards are the export's own: exporting again replaces them, in this format or another.
        again = batchgen.export(sweep_out, format="jsonl", to=dest, shard_size=30)
        assert again.removed == ["data/rows-00002.jsonl"]
        assert sorted(p.name for p in (dest / "data").iterdir()) == ["rows-00000.jsonl", "rows-00001.jsonl"]
        (dest / "data" / "rows-00005.jsonl").write_text("")        # left by an export of more shards
        again = batchgen.export(sweep_out, format="parquet", to=dest)
        assert again.removed == ["data/rows-00000.jsonl", "data/rows-00001.jsonl", "data/rows-00005.jsonl"]
        again = batchgen.export(sweep_out, format="jsonl", to=dest)
        assert again.removed == ["data/part-00000.parquet"]
    # Out of the registry, the format is unknown, and its shards are no export's.
    with pytest.raises(batchgen.UsageError, match="format 'jsonl' is unknown; export as one of webdataset, parquet"):
        batchgen.export(sweep_out, format="jsonl", to=tmp_path / "other")
    with pytest.raises(batchgen.UsageError, match="not a batchgen export \\(data/rows-00000.jsonl\\)"):
        batchgen.export(sweep_out, format="parquet", to=dest)


# ---- refusals ---------------------------------------------------------------------------

def test_a_folder_that_is_not_an_export_is_refused_and_left_alone(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest)
    assert r.exit_code == 2 and "notes.txt" in r.output and "Traceback" not in r.output
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", sweep_out)
    assert r.exit_code == 2 and "the run's own folder" in r.output


def test_an_image_changed_since_the_run_stops_the_export(run_cli, run_copy, tmp_path):
    victim = run_copy / ok_rows(run_copy).image_path[30]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF                       # same size, other bytes
    victim.write_bytes(bytes(data))
    dest = tmp_path / "wds"
    r = run_cli("export", run_copy, "--format", "webdataset", "--to", dest, "--shard-size", 20)
    assert r.exit_code == 2 and str(victim) in r.output and "sha256" in r.output
    assert "Traceback" not in r.output
    # The shard being written when it was found never appears, nor does the manifest.
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["shard-00000.tar"]
    assert not (dest / "batchgen-export.json").exists()


def test_a_folder_that_is_no_run_or_a_bad_url_is_a_usage_error(run_cli, sweep_out, tmp_path):
    r = run_cli("export", tmp_path, "--format", "parquet", "--to", tmp_path / "x")
    assert r.exit_code == 2 and "no job.json" in r.output
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", "nosuchprotocol://bucket/x")
    assert r.exit_code == 2 and "nosuchprotocol" in r.output and "Traceback" not in r.output


# ---- to S3 (moto's server on loopback) ----------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """A local S3-compatible server, and the environment that points s3fs at it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("exports")
        yield fs
    server.stop()


def test_exports_to_s3_read_back_shard_by_shard_and_replace_the_earlier_one(run_cli, sweep_out, s3):
    by_key = expected_by_key(sweep_out)
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", "s3://exports/otter", "--shard-size", 10)
    assert r.exit_code == 0, r.output
    s3.invalidate_cache()
    shards = sorted(s3.ls("exports/otter/data"))
    assert shards == [f"exports/otter/data/shard-0000{i}.tar" for i in range(5)]
    samples: dict = {}
    for shard in shards:
        with s3.open(shard, "rb") as f:
            samples.update(read_tar_samples(io.BytesIO(f.read())))
    assert sorted(samples) == sorted(by_key)
    check_tar_samples(samples, by_key)
    assert json.loads(s3.cat_file("exports/otter/batchgen-export.json"))["images"] == 48
    assert b"48 image(s)" in s3.cat_file("exports/otter/README.md")

    # Again, as Parquet in fewer shards: the tar shards are gone, the Parquet ones read back.
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", "s3://exports/otter", "--shard-size", 40)
    assert r.exit_code == 0 and "removed 5 shard(s)" in r.output, r.output
    s3.invalidate_cache()
    assert sorted(s3.ls("exports/otter/data")) == ["exports/otter/data/part-00000.parquet",
                                                   "exports/otter/data/part-00001.parquet"]
    df = pd.concat(pd.read_parquet(io.BytesIO(s3.cat_file(p))) for p in s3.ls("exports/otter/data"))
    assert len(df) == 48
    for row in df.to_dict("records"):
        check_sample(row["key"], row["image"], Path(row["image_path"]).suffix[1:], row, by_key)


def test_an_s3_bucket_that_does_not_exist_fails_with_a_message_and_exit_3(run_cli, sweep_out, s3):
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", "s3://no-such-bucket/x")
    assert r.exit_code == 3, r.output
    assert "no-such-bucket" in r.output and "run the same export again" in r.output
    assert "Traceback" not in r.output
