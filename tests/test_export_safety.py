"""batchgen export touches only its own: a DEST holding the user's files is refused untouched;
an export killed (kill -9, in a real process) or finding the disk full at any step leaves DEST
either the earlier export whole or visibly incomplete, never two exports' rows for a reader
that follows the card; the rerun repairs it; `export --verify` tells which; two exports into
one DEST at once: the second is refused."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import TOKEN, Cli

import batchgen
from batchgen.showing.exports import FAULT_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_JOB = ROOT / "jobs" / "otter_sweep.toml"


@pytest.fixture(scope="module")
def run_cli():
    return Cli({"ACEDATA_API_TOKEN": TOKEN, "OPENAI_API_KEY": None, "OPENAI_BASE_URL": None,
                FAULT_VARIABLE: None})


@pytest.fixture(scope="module")
def sweep_out(sim, run_cli, tmp_path_factory):
    """The sample sweep (6 prompts × 8 sweep points, dall-e-3 on acedata), finished once."""
    out = tmp_path_factory.mktemp("sweep") / "otter_sweep"
    r = run_cli("run", SAMPLE_JOB, "--out", out, "--base-url", sim.acedata_url, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def tree(folder: Path) -> dict:
    """Every file under `folder` -> (bytes, mtime): what "untouched" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def card_samples(dest: Path) -> dict:
    """What a reader that follows the card sees: the samples (key -> shard) of the files its YAML
    header's data_files name, as `datasets` and the Hub resolve them."""
    card = (dest / "README.md").read_text()
    pattern = re.search(r'^    path: "(.+)"$', card, re.M)[1]
    seen: dict = {}
    for shard in sorted(glob.glob(str(dest / pattern))):
        with tarfile.open(shard) as tar:
            for member in tar:
                key = member.name.split(".", 1)[0]
                seen.setdefault(key, set()).add(shard)
    return seen


def export_process(out, dest, *args, fault=None, **popen):
    """`batchgen export` as its own process (the fault hook's kill is a real SIGKILL)."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_VARIABLE}
    if fault:
        env[FAULT_VARIABLE] = fault
    return subprocess.Popen([sys.executable, "-m", "batchgen", "export", str(out), "--to", str(dest), *args],
                            env=env, cwd=ROOT, **popen)


def verify(run_cli, dest):
    return run_cli("export", "--verify", dest)


def only_the_export(dest: Path, generation: int) -> None:
    """DEST holds the card, the manifest, the lock and the listed shards of one export: nothing else."""
    manifest = json.loads((dest / "batchgen-export.json").read_text())
    assert manifest["complete"] is True and manifest["generation"] == generation and manifest["earlier"] == []
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == sorted([".lock", "README.md", "batchgen-export.json", *(s["name"] for s in manifest["shards"])])
    assert [p.name for p in (dest / "data").iterdir()] == [f"export-{generation}"]


# ---- the user's files ---------------------------------------------------------------------

def test_a_folder_of_the_users_own_shards_is_refused_untouched(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "mine"
    (dest / "data").mkdir(parents=True)
    for i in range(4):                                    # webdataset's usual names
        (dest / "data" / f"shard-{i:06d}.tar").write_bytes(b"the user's samples %d" % i)
    before = tree(dest)
    for fmt in ("webdataset", "parquet"):
        r = run_cli("export", sweep_out, "--format", fmt, "--to", dest)
        assert r.exit_code == 2, r.output
        assert "data/shard-000000.tar" in r.output and "not a batchgen export" in r.output
        assert "Nothing was changed" in r.output and "move those files out" in r.output
        assert "Traceback" not in r.output
        assert tree(dest) == before and not (dest / ".lock").exists()


@pytest.mark.parametrize("stray", ["notes.txt", "data/shard-000000.tar", "data/export-1/extra.tar", "data/mine/x"])
def test_a_file_beside_an_export_that_its_manifest_does_not_list_is_refused_untouched(run_cli, sweep_out,
                                                                                       tmp_path, stray):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="webdataset", to=dest, shard_size=20)
    (dest / stray).parent.mkdir(parents=True, exist_ok=True)
    (dest / stray).write_text("mine")
    before = tree(dest)
    r = run_cli("export", sweep_out, "--format", "parquet", "--to", dest)
    assert r.exit_code == 2 and stray in r.output and "no batchgen export's manifest lists them" in r.output
    assert tree(dest) == before
    v = verify(run_cli, dest)
    assert v.exit_code == 1 and stray in v.output
    # Moved out, as the message says: the export goes ahead.
    (dest / stray).unlink()
    if stray == "data/mine/x":
        (dest / "data" / "mine").rmdir()
    assert run_cli("export", sweep_out, "--format", "parquet", "--to", dest).exit_code == 0


def test_a_manifest_naming_files_outside_its_shards_makes_dest_no_export(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="webdataset", to=dest, shard_size=20)
    manifest = json.loads((dest / "batchgen-export.json").read_text())
    (tmp_path / "precious.txt").write_text("keep me")
    manifest["earlier"] = ["../precious.txt"]
    (dest / "batchgen-export.json").write_text(json.dumps(manifest))
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest)
    assert r.exit_code == 2 and "unreadable" in r.output and "'../precious.txt'" in r.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert verify(run_cli, dest).exit_code == 1


# ---- killed, or a full disk, at each step --------------------------------------------------
# The earlier export: 5 shards of 10. The new one: 7 shards of 7. Readers following the card
# must see 48 samples, each once, from one export's files.

STEPS = [
    # step, what --verify says after the kill (0 whole, 1 not)
    ("begin", 0),
    ("manifest:incomplete:writing", 0),
    ("manifest:incomplete:written", 1),
    ("shard:0:writing", 1),
    ("shard:3:written", 1),
    ("shard:6:writing", 1),
    ("card:writing", 1),
    ("card:written", 1),
    ("manifest:complete:writing", 1),
    ("manifest:complete:written", 1),        # the earlier shards are still there
    ("remove:2", 1),
    ("manifest:clean:writing", 0),           # all removed; the manifest still names them, absent
]


def one_export_seen(dest: Path) -> int:
    """The samples the card's reader sees are 48, each once, all from one export's folder:
    returns that export's number."""
    seen = card_samples(dest)
    assert len(seen) == 48 and all(len(shards) == 1 for shards in seen.values())
    folders = {Path(shard).parent.name for shards in seen.values() for shard in shards}
    assert len(folders) == 1
    return int(folders.pop().split("-")[1])


@pytest.mark.parametrize("step,verdict", STEPS)
def test_an_export_killed_at_any_step_leaves_one_whole_export_and_the_rerun_repairs_it(
        run_cli, sweep_out, tmp_path, step, verdict):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="webdataset", to=dest, shard_size=10)
    proc = export_process(sweep_out, dest, "--format", "webdataset", "--shard-size", "7",
                          fault=f"{step}=kill", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate()
    assert proc.returncode == -9, err.decode()
    # The card's reader sees the earlier export until the card switched, then the new one.
    seen = one_export_seen(dest)
    assert seen == (2 if step in ("card:written", "manifest:complete:writing", "manifest:complete:written",
                                  "remove:2", "manifest:clean:writing") else 1)
    v = verify(run_cli, dest)
    assert v.exit_code == verdict, v.output
    if not json.loads((dest / "batchgen-export.json").read_text())["complete"]:
        assert "the last export did not finish: its manifest says so, and the card " in v.output
        assert ("already names its files" if seen == 2 else "still names the earlier export's files") in v.output
    elif verdict:
        assert "shard(s) of an earlier export are still there" in v.output
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", "7")
    assert r.exit_code == 0, r.output
    assert verify(run_cli, dest).exit_code == 0
    generation = json.loads((dest / "batchgen-export.json").read_text())["generation"]
    only_the_export(dest, generation)       # no temporaries, no earlier shards left
    assert one_export_seen(dest) == generation
    assert len(list((dest / "data" / f"export-{generation}").iterdir())) == 7


@pytest.mark.parametrize("step", ["manifest:incomplete:writing", "shard:2:writing", "card:writing",
                                  "manifest:complete:writing"])
def test_a_full_disk_at_any_write_stops_with_exit_3_leaving_the_earlier_export_readable(
        run_cli, sweep_out, tmp_path, step):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="webdataset", to=dest, shard_size=10)
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", "7",
                env={FAULT_VARIABLE: f"{step}=enospc"})
    assert r.exit_code == 3, r.output
    assert "No space left on device" in r.output and "run the same export again" in r.output
    assert "Traceback" not in r.output
    assert not list(dest.rglob(".tmp-*"))                   # the half-written file is gone
    assert one_export_seen(dest) == (2 if step == "manifest:complete:writing" else 1)   # the card had switched
    v = verify(run_cli, dest)
    assert v.exit_code == (0 if step == "manifest:incomplete:writing" else 1), v.output
    assert run_cli("export", sweep_out, "--format", "webdataset", "--to", dest, "--shard-size", "7").exit_code == 0
    only_the_export(dest, 3 if step != "manifest:incomplete:writing" else 2)


# ---- --verify -------------------------------------------------------------------------------

def test_verify_says_whether_dest_is_one_whole_export(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="parquet", to=dest, shard_size=20)
    v = verify(run_cli, dest)
    assert v.exit_code == 0 and "is one whole parquet export: 48 image(s) in 3 shard(s)" in v.output
    shard = dest / "data" / "export-1" / "part-00001.parquet"
    good = shard.read_bytes()

    shard.write_bytes(good[: len(good) // 2])                    # torn
    v = verify(run_cli, dest)
    assert v.exit_code == 1 and "part-00001.parquet holds" in v.output and "bytes where the manifest" in v.output
    shard.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])   # same size, other bytes
    v = verify(run_cli, dest)
    assert v.exit_code == 1 and "part-00001.parquet does not match the sha256" in v.output
    shard.unlink()
    v = verify(run_cli, dest)
    assert v.exit_code == 1 and "part-00001.parquet is missing" in v.output
    shard.write_bytes(good)
    assert verify(run_cli, dest).exit_code == 0
    (dest / "README.md").unlink()
    assert verify(run_cli, dest).exit_code == 1


def test_verify_refuses_what_is_no_export_with_exit_2(run_cli, tmp_path):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "shard-000000.tar").write_bytes(b"x")
    v = verify(run_cli, mine)
    assert v.exit_code == 2 and "holds no batchgen export" in v.output and "Traceback" not in v.output
    v = verify(run_cli, tmp_path / "nowhere")
    assert v.exit_code == 2 and "is empty or does not exist" in v.output
    v = run_cli("export", mine, "--verify", mine)
    assert v.exit_code == 2 and "takes nothing else" in v.output
    v = run_cli("export", mine)
    assert v.exit_code == 2 and "export needs --format, --to" in v.output


# ---- one export at a time ------------------------------------------------------------------

def test_a_second_export_into_one_dest_at_once_is_refused(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    batchgen.export(sweep_out, format="webdataset", to=dest, shard_size=10)
    first = export_process(sweep_out, dest, "--format", "parquet", "--shard-size", "20",
                           fault="shard:0:written=pause", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        assert first.stderr.readline().decode().startswith("batchgen export paused at shard:0:written")
        before = tree(dest)
        r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest)
        assert r.exit_code == 2, r.output
        assert f"being written by another batchgen export (process {first.pid})" in r.output
        assert tree(dest) == before
        v = verify(run_cli, dest)
        assert v.exit_code == 1 and "an export is writing it now" in v.output
        assert one_export_seen(dest) == 1                    # readers still see the earlier one
    finally:
        out, err = first.communicate(b"\n")        # go on
    assert first.returncode == 0, err.decode()
    assert b"removed 5 shard(s) of the earlier export" in out
    assert verify(run_cli, dest).exit_code == 0
    only_the_export(dest, 2)


def test_the_dest_lock_is_released_when_an_export_is_killed(run_cli, sweep_out, tmp_path):
    dest = tmp_path / "ds"
    proc = export_process(sweep_out, dest, "--format", "parquet", fault="shard:0:writing=kill",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.communicate()
    assert proc.returncode == -9
    assert list(dest.rglob(".tmp-*"))                           # what it was writing
    assert verify(run_cli, dest).exit_code == 1                  # no card yet: incomplete
    assert run_cli("export", sweep_out, "--format", "parquet", "--to", dest).exit_code == 0
    only_the_export(dest, 2)
    shutil.rmtree(dest)


def test_an_export_written_before_export_folders_is_replaced_as_its_own(run_cli, sweep_out, tmp_path):
    # Its manifest listed names only, and its shards sat straight in data/.
    dest = tmp_path / "ds"
    (dest / "data").mkdir(parents=True)
    for i in range(2):
        (dest / "data" / f"shard-0000{i}.tar").write_bytes(b"an earlier export's shard")
    (dest / "README.md").write_text("the earlier card")
    (dest / "batchgen-export.json").write_text(json.dumps(
        {"batchgen": "0.1.0", "format": "webdataset", "images": 48, "shards": ["data/shard-00000.tar",
                                                                               "data/shard-00001.tar"]}))
    assert verify(run_cli, dest).exit_code == 0           # whole, as far as its manifest says
    r = run_cli("export", sweep_out, "--format", "webdataset", "--to", dest)
    assert r.exit_code == 0 and "removed 2 shard(s) of the earlier export" in r.output
    only_the_export(dest, 1)
