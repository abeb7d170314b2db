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
    assert sorted(p.name for p in (dest / "data" / "export-1").iterdir()) == [f"shard-0000{i}.tar" for i in range(3)]
    by_key = expected_by_key(sweep_out)
    seen = []
    shards = str(dest / "data" / "export-1" / "shard-{00000..00002}.tar")
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        row = json.loads(sample["json"])
        (ext,) = [k for k in sample if not k.startswith("__") and k != "json"]
        check_sample(sample["__key__"], sample[ext], ext, row, by_key)
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(by_key) and len(seen) == 48
    manifest = json.loads((dest / "batchgen-export.json").read_text())
    assert manifest["format"] == "webdataset" and manifest["images"] == 48 and manifest["complete"] is True
    assert [s["name"] for s in manifest["shards"]] == [f"data/export-1/shard-0000{i}.tar" for i in range(3)]
    assert [s["rows"] for s in manifest["shards"]] == [20, 20, 8]
    card = (dest / "README.md").read_text()
    assert "48 image(s)" in card and "quality = standard, hd" in card
    assert "data/export-1/shard-{00000..00002}.tar" in card
    for path in dest.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_parquet_reads_back_with_pandas_datasets_and_duckdb(run_cli, sweep_out, tmp_path, monkeypatch):
    dest = tmp_path / "pq"
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest, "--shard-size", 30)
    assert r.exit_code == 0, r.output
    files = sorted((dest / "data" / "export-1").iterdir())
    assert [p.name for p in files] == ["part-00000.parquet", "part-00001.parquet"]
    by_key = expected_by_key(sweep_out)

    df = pd.read_parquet(dest / "data" / "export-1")          # pandas, given the folder (as the card says)
    assert len(df) == 48 and df.key.is_unique
    assert str(df.row_index.dtype) == "Int64"                 # the results' nullable integers survive
    for row in df.to_dict("records"):
        check_sample(row["key"], row["image"], Path(row["image_path"]).suffix[1:], row, by_key)
    assert list(df.columns[:2]) == ["key", "image"] and {"id", "topic", "in_input"} <= set(df.columns)

    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = datasets.load_dataset("parquet", data_files=str(dest / "data" / "export-1" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    ds = ds.cast_column("image", datasets.Image())
    assert len(ds) == 48
    for record in ds:
        assert (record["image"].width, record["image"].height) == (record["width"], record["height"])
        assert by_key[record["key"]]["prompt"] == record["prompt"]

    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT key, image, sha256 FROM read_parquet('{dest}/data/export-1/*.parquet')").fetchall()
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


def card_code(dest) -> str:
    """The dataset card's Python block, as a user would copy it."""
    card = (Path(dest) / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """`datasets` on this machine only: no Hub, its caches in the test's folder."""
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (the test extra) is not installed")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    return datasets


@pytest.fixture(scope="module")
def formats_out(sim, run_cli, tmp_path_factory):
    """A real run over the three output formats of the GPT image models: 3 prompts × 3 formats."""
    tmp = tmp_path_factory.mktemp("formats")
    prompts = tmp / "p.csv"
    pd.DataFrame({"prompt": ["a fox", "a lighthouse", "a kite"]}).to_csv(prompts, index=False)
    out = tmp / "formats"
    r = run_cli("run", prompts, "--out", out, "--provider", "openai", "--base-url", sim.openai_base_url,
                "--model", "gpt-image-2", "--quality", "low", "--sweep", "output_format=png,jpeg,webp",
                "--no-progress", env={"OPENAI_API_KEY": TOKEN})
    assert r.exit_code == 0, r.output
    return out


def test_a_sweep_over_image_formats_gives_every_sample_the_same_names(run_cli, formats_out, tmp_path):
    dest = tmp_path / "wds"
    assert run_cli("export", formats_out, "--format", "webdataset", "--to", dest, "--shard-size", 4).exit_code == 0
    samples: dict = {}
    for shard in sorted((dest / "data" / "export-1").iterdir()):
        with open(shard, "rb") as f:
            samples.update(read_tar_samples(f))
    assert len(samples) == 9 and {tuple(sorted(files)) for files in samples.values()} == {("json", "png")}
    by_key = expected_by_key(formats_out)
    kinds = set()
    for key, files in samples.items():
        row = json.loads(files["json"])
        assert hashlib.sha256(files["png"]).hexdigest() == row["sha256"] == by_key[key]["sha256"]  # bytes as made
        kinds.add((row["output_format"], Image.open(io.BytesIO(files["png"])).format))
    assert kinds == {("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")}
    assert "whichever format its row's `image_path` says" in (dest / "README.md").read_text()
    # One format: the image keeps its own extension.
    single = tmp_path / "single"
    assert run_cli("export", sweep_single_format(formats_out, tmp_path), "--format", "webdataset",
                   "--to", single).exit_code == 0
    with open(single / "data" / "export-1" / "shard-00000.tar", "rb") as f:
        assert {tuple(sorted(files)) for files in read_tar_samples(f).values()} == {("jpg", "json")}


def sweep_single_format(out, tmp_path) -> Path:
    """A copy of the run whose results hold only its jpeg images."""
    copy = Path(shutil.copytree(out, tmp_path / "jpeg-only"))
    table = pq.read_table(copy / "results.parquet")
    df = table.to_pandas()
    pq.write_table(table.filter(pd.Series(df.output_format == "jpeg").to_numpy()), copy / "results.parquet")
    return copy


def test_a_webdataset_export_of_mixed_formats_loads_in_datasets_as_its_card_says(
        run_cli, formats_out, tmp_path, hf_offline):
    datasets = hf_offline
    dest = tmp_path / "wds"
    assert run_cli("export", formats_out, "--format", "webdataset", "--to", dest, "--shard-size", 4).exit_code == 0
    by_key = expected_by_key(formats_out)

    def check(ds) -> None:
        assert len(ds) == 9
        for record in ds:
            row, image = record["json"], record["png"]
            assert (image.width, image.height) == (row["width"], row["height"])
            assert by_key[record["__key__"]]["prompt"] == row["prompt"]
        assert {r["json"]["output_format"] for r in ds} == {"png", "jpeg", "webp"}

    scope: dict = {}
    exec(card_code(dest), scope)            # the card's own lines: datasets' webdataset builder, webdataset
    check(scope["ds"])
    assert sorted(s["__key__"] for s in scope["samples"]) == sorted(by_key)
    # The Hub's way: the folder, read through the card's YAML header.
    check(datasets.load_dataset(str(dest), split="train"))


def test_a_parquet_export_loads_in_pandas_and_datasets_as_its_card_says(run_cli, formats_out, tmp_path, hf_offline):
    datasets = hf_offline
    dest = tmp_path / "pq"
    assert run_cli("export", formats_out, "--format", "parquet", "--to", dest, "--shard-size", 4).exit_code == 0
    scope: dict = {}
    exec(card_code(dest), scope)
    by_key = expected_by_key(formats_out)
    assert sorted(scope["df"].key) == sorted(by_key)
    ds = scope["ds"]
    assert len(ds) == 9
    for record in ds:
        assert (record["image"].width, record["image"].height) == (record["width"], record["height"])
        assert by_key[record["key"]]["sha256"] == record["sha256"]
    assert len(datasets.load_dataset(str(dest), split="train")) == 9


def test_an_export_again_replaces_the_earlier_one_and_removes_its_extra_shards(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    assert run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", 10).exit_code == 0
    assert len(list((dest / "data" / "export-1").iterdir())) == 5
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest, "--shard-size", 20)
    assert r.exit_code == 0 and "removed 5 shard(s) of the earlier export" in r.output
    assert [p.name for p in (dest / "data").iterdir()] == ["export-2"]
    assert sorted(p.name for p in (dest / "data" / "export-2").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    manifest = json.loads((dest / "batchgen-export.json").read_text())
    assert manifest["format"] == "parquet" and manifest["generation"] == 2 and manifest["earlier"] == []
    assert len(pd.read_parquet(dest / "data" / "export-2")) == 48
    assert sorted(p.name for p in dest.iterdir()) == [".lock", "README.md", "batchgen-export.json", "data"]


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

    def write(self, f, out, chunk, first):
        images = errors = 0
        for sample in exports.samples(out, chunk, first):
            line = {"key": sample.key, "image_bytes": None if sample.image is None else len(sample.image),
                    "sha256": sample.row["sha256"]}
            f.write(json.dumps(line).encode() + b"\n")
            images, errors = (images + 1, errors) if sample.image is not None else (images, errors + 1)
        return images, errors

    def card_files(self, summary):
        return "A JSON line per image."

    def card_code(self, summary, folder):
        return ["import pandas as pd", f"df = pd.read_json(\"{summary.dest}/{folder}/rows-00000.jsonl\", lines=True)"]


def test_a_new_format_is_one_writer_class_in_the_registry(sweep_out, tmp_path, monkeypatch):
    import batchgen
    dest = tmp_path / "jsonl"
    with monkeypatch.context() as m:
        m.setitem(exports.WRITERS, "jsonl", JsonLinesWriter)
        summary = batchgen.export(sweep_out, format="jsonl", to=dest, shard_size=20, include_errors=True)
        assert summary.format == "jsonl" and summary.images == 48 and summary.error_rows == 0
        assert summary.shards == [f"data/export-1/rows-0000{i}.jsonl" for i in range(3)]
        lines = [json.loads(line) for path in sorted((dest / "data" / "export-1").iterdir())
                 for line in path.read_text().splitlines()]
        by_key = expected_by_key(sweep_out)
        assert sorted(row["key"] for row in lines) == sorted(by_key)
        assert all(row["sha256"] == by_key[row["key"]]["sha256"] for row in lines)
        manifest = json.loads((dest / "batchgen-export.json").read_text())
        assert manifest["format"] == "jsonl" and [s["name"] for s in manifest["shards"]] == summary.shards
        card = (dest / "README.md").read_text()
        assert 'path: "data/export-1/*.jsonl"' in card and "3 jsonl shard(s)" in card
        assert "A JSON line per image." in card
        assert "```python\nimport pandas as pd\ndf = pd.read_json(" in card
        # Its shards are the export's own: exporting again replaces them, in this format or another.
        again = batchgen.export(sweep_out, format="jsonl", to=dest, shard_size=30)
        assert again.removed == summary.shards
        assert again.shards == ["data/export-2/rows-00000.jsonl", "data/export-2/rows-00001.jsonl"]
        again = batchgen.export(sweep_out, format="parquet", to=dest)
        assert again.removed == ["data/export-2/rows-00000.jsonl", "data/export-2/rows-00001.jsonl"]
        again = batchgen.export(sweep_out, format="jsonl", to=dest)
        assert again.removed == ["data/export-3/part-00000.parquet"]
    # Out of the registry, the format is unknown; its shards stay the export's (its manifest lists them).
    with pytest.raises(batchgen.UsageError, match="format 'jsonl' is unknown; export as one of webdataset, parquet"):
        batchgen.export(sweep_out, format="jsonl", to=tmp_path / "other")
    assert batchgen.export(sweep_out, format="parquet", to=dest).removed == ["data/export-4/rows-00000.jsonl"]


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
    # The shard being written when it was found never appears; the manifest says the export is incomplete.
    assert sorted(p.name for p in (dest / "data" / "export-1").iterdir()) == ["shard-00000.tar"]
    assert json.loads((dest / "batchgen-export.json").read_text())["complete"] is False
    assert not (dest / "README.md").exists()


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
    shards = sorted(s3.ls("exports/otter/data/export-1"))
    assert shards == [f"exports/otter/data/export-1/shard-0000{i}.tar" for i in range(5)]
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
    assert sorted(s3.find("exports/otter/data")) == ["exports/otter/data/export-2/part-00000.parquet",
                                                     "exports/otter/data/export-2/part-00001.parquet"]
    df = pd.concat(pd.read_parquet(io.BytesIO(s3.cat_file(p))) for p in s3.find("exports/otter/data"))
    assert len(df) == 48
    for row in df.to_dict("records"):
        check_sample(row["key"], row["image"], Path(row["image_path"]).suffix[1:], row, by_key)
    assert run_cli("export", "--verify", "s3://exports/otter").exit_code == 0
    s3.pipe_file("exports/otter/data/export-2/part-00001.parquet", b"torn")
    r = run_cli("export", "--verify", "s3://exports/otter")
    assert r.exit_code == 1 and "part-00001.parquet holds 4 bytes" in r.output


def test_an_s3_prefix_holding_the_users_objects_is_refused_untouched(run_cli, sweep_out, s3):
    s3.pipe_file("exports/mine/data/shard-000000.tar", b"the user's")
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", "s3://exports/mine")
    assert r.exit_code == 2 and "data/shard-000000.tar" in r.output and "Nothing was changed" in r.output
    s3.invalidate_cache()
    assert s3.find("exports/mine") == ["exports/mine/data/shard-000000.tar"]
    assert s3.cat_file("exports/mine/data/shard-000000.tar") == b"the user's"


def test_an_s3_bucket_that_does_not_exist_fails_with_a_message_and_exit_3(run_cli, sweep_out, s3):
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", "s3://no-such-bucket/x")
    assert r.exit_code == 3, r.output
    assert "no-such-bucket" in r.output and "run the same export again" in r.output
    assert "Traceback" not in r.output
