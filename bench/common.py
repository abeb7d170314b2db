"""Shared helpers of the benchmark scripts in bench/ (not a benchmark itself).

- ``Simulator``: ``python -m batchgen simulate --port 0 ...`` as its own process, its two URLs,
  its ``/_sim/stats`` counters and ``/_sim/reset``; stopped with SIGTERM (then SIGKILL).
- ``make_csv``: an input CSV of distinct prompts (``prompt 0``, ``prompt 1``, ...).
- ``measure``: run a command as a whole process and return its wall time and peak RSS.  The
  command is started by a fresh Python helper process, which times it with
  ``time.perf_counter`` around ``subprocess.run`` and reads
  ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` afterwards: that helper's only child is the
  measured command, so the RSS is the command's own (never the simulator's, which is a child of
  the benchmark script, not of the helper).
  ``measure(..., timeout=S)`` stops a command that runs longer (SIGTERM, then SIGKILL after
  5 s) and says so (``Measured.timed_out``).
- ``median``, ``bench_dir``, ``runner_cmd``, ``run_help``, argument helpers.

Everything listens and connects on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

PYTHON = sys.executable
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TOKEN = "sim-token"


# ---------------------------------------------------------------------------------------------
# Small things
# ---------------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def log(*parts: object) -> None:
    print(*parts, flush=True)


def base_parser(doc: Optional[str], tasks: Optional[int], rounds: int = 3,
                concurrency: Optional[int] = None) -> argparse.ArgumentParser:
    first = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=first)
    if tasks is not None:
        p.add_argument("--tasks", type=int, default=tasks, help=f"tasks (default {tasks})")
    p.add_argument("--rounds", type=int, default=rounds, help=f"rounds (default {rounds})")
    if concurrency is not None:
        p.add_argument("--concurrency", type=int, default=concurrency,
                       help=f"requests in flight (default {concurrency})")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (debugging)")
    return p


@contextlib.contextmanager
def workdir(keep: bool = False, prefix: str = "batchgen-bench-") -> Iterator[Path]:
    """A temporary folder, removed at the end (also on error) unless keep."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def make_csv(path: Path, n: int) -> Path:
    """A CSV with one column `prompt` and n distinct prompts."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("prompt\n")
        f.writelines(f"prompt {i}\n" for i in range(n))
    return path


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _cpus() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return []


def server_cpus() -> list:
    """With BENCH_PIN=1 and two CPUs or more: the simulator gets the last CPU..."""
    cpus = _cpus()
    return cpus[-1:] if os.environ.get("BENCH_PIN") == "1" and len(cpus) >= 2 else []


def client_cpus() -> list:
    """...and the measured command the others, so the scheduler never puts them together."""
    cpus = _cpus()
    return cpus[:-1] if server_cpus() else []


# ---------------------------------------------------------------------------------------------
# The simulator as its own process
# ---------------------------------------------------------------------------------------------

class Simulator:
    """`python -m batchgen simulate --port 0 ARGS` in its own process (use as a context manager)."""

    def __init__(self, *args: str, log_dir: Optional[Path] = None):
        self.args = [str(a) for a in args]
        self.log_dir = log_dir
        self.proc: Optional[subprocess.Popen] = None
        self.acedata_url = ""
        self.openai_url = ""
        self.root = ""
        self._err = None

    def __enter__(self) -> "Simulator":
        cmd = [PYTHON, "-m", "batchgen", "simulate", "--port", "0", *self.args]
        if self.log_dir is not None:
            self._err = open(self.log_dir / "simulator.stderr", "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=self._err or subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        if server_cpus():
            os.sched_setaffinity(self.proc.pid, server_cpus())
        try:
            assert self.proc.stdout is not None
            line1 = self.proc.stdout.readline().decode().strip()
            line2 = self.proc.stdout.readline().decode().strip()
            if not (line1.startswith("http://127.0.0.1:") and line2.startswith("http://127.0.0.1:")):
                raise RuntimeError(f"simulator did not start: {line1!r} {line2!r} "
                                   f"(exit {self.proc.poll()})")
            self.acedata_url, self.openai_url = line1, line2
            self.root = line1.split("/openai/", 1)[0]
            self.stats()  # it answers
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._err is not None:
            self._err.close()
            self._err = None

    def stats(self) -> dict:
        with urllib.request.urlopen(self.root + "/_sim/stats", timeout=30) as r:
            return json.load(r)

    def reset(self, everything: bool = False) -> None:
        url = self.root + "/_sim/reset" + ("?all=1" if everything else "")
        req = urllib.request.Request(url, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def set_limits(self, **limits: Optional[float]) -> dict:
        """POST /_sim/limit: ``set_limits(rpm=300)`` (None removes a limit); the limits now."""
        req = urllib.request.Request(self.root + "/_sim/limit", data=json.dumps(limits).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["limits"]


def simulate_help() -> str:
    out = subprocess.run([PYTHON, "-m", "batchgen", "simulate", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def run_help() -> str:
    """`batchgen run --help`, to see which options this client offers."""
    out = subprocess.run([PYTHON, "-m", "batchgen", "run", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    return out.stdout


# ---------------------------------------------------------------------------------------------
# Measuring a whole process
# ---------------------------------------------------------------------------------------------

# Run by a fresh interpreter: its only child is the measured command.
_HELPER = r"""
import json, os, resource, subprocess, sys, time
spec = json.loads(sys.stdin.read())
if spec.get("cpus"):
    os.sched_setaffinity(0, spec["cpus"])   # the measured command inherits it
timed_out = False
with open(spec["stdout"], "wb") as out, open(spec["stderr"], "wb") as err:
    t0 = time.perf_counter()
    proc = subprocess.Popen(spec["cmd"], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            cwd=spec["cwd"], env=spec["env"])
    try:
        rc = proc.wait(timeout=spec.get("timeout"))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.terminate()
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "maxrss_kb": ru.ru_maxrss,
                  "user": ru.ru_utime, "sys": ru.ru_stime, "timed_out": timed_out}))
"""


@dataclass
class Measured:
    rc: int
    wall: float          # seconds
    maxrss_mb: float     # peak RSS of the command, MB (1e6 bytes)
    cpu: float           # user + sys seconds of the command
    stdout: str
    stderr: str
    timed_out: bool = False   # stopped after measure's timeout

    def tail(self, n: int = 20) -> str:
        lines = (self.stdout + "\n" + self.stderr).strip().splitlines()
        return "\n".join(lines[-n:])


_compiled = False


def compile_package() -> None:
    """Write batchgen's bytecode (__pycache__) once, before anything is measured.

    An installed package has it (pip compiles at install), and Python writes it on the first
    import of an editable one, unless PYTHONDONTWRITEBYTECODE is set, as it is on some CI
    machines and containers: then every measured run would compile batchgen's modules from
    source first (~60 ms), which no user's second run pays."""
    global _compiled
    if not _compiled:
        import compileall
        compileall.compile_dir(str(REPO / "batchgen"), quiet=1)
        _compiled = True


def measure(cmd: Sequence[str], *, log_dir: Path, name: str = "cmd",
            env: Optional[dict] = None, cwd: Optional[Path] = None,
            check: bool = True, timeout: Optional[float] = None) -> Measured:
    """Run cmd as a whole process; wall time and peak RSS (see the module docstring).  With
    ``timeout``, a command still running after that many seconds is stopped (SIGTERM, then
    SIGKILL) and ``timed_out`` is set; ``check`` then does not raise."""
    compile_package()
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    out_path = log_dir / f"{name}.stdout"
    err_path = log_dir / f"{name}.stderr"
    spec = {"cmd": [str(c) for c in cmd], "cwd": str(cwd or REPO), "env": full_env,
            "stdout": str(out_path), "stderr": str(err_path), "cpus": client_cpus(),
            "timeout": timeout}
    # The spec (with the environment) goes in on stdin, not argv: `ps` shows argv to everyone.
    res = subprocess.run([PYTHON, "-c", _HELPER], input=json.dumps(spec), capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise RuntimeError(f"measuring helper failed: {res.stderr.strip()}")
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    m = Measured(rc=doc["rc"], wall=doc["wall"], maxrss_mb=doc["maxrss_kb"] * 1024 / 1e6,
                 cpu=doc["user"] + doc["sys"],
                 stdout=out_path.read_text(errors="replace"),
                 stderr=err_path.read_text(errors="replace"),
                 timed_out=bool(doc.get("timed_out")))
    if check and m.rc != 0 and not m.timed_out:
        raise RuntimeError(f"{name} exited {m.rc}: {' '.join(spec['cmd'])}\n{m.tail()}")
    return m


def runner_cmd(data: Path, out: Path, url: str, *, concurrency: Optional[object],
               model: str = "dall-e-3", size: str = "1024x1024", extra: Sequence[str] = ()) -> list:
    """`python -m batchgen run ...` against the simulator's AceData endpoint; ``concurrency``
    None gives no --concurrency (the client's default), else its value (a number or "auto")."""
    conc = [] if concurrency is None else ["--concurrency", str(concurrency)]
    # GPT image models always answer in base64 and refuse a response_format.
    fmt = [] if model.startswith("gpt-image") else ["--response-format", "b64_json"]
    return [PYTHON, "-m", "batchgen", "run", str(data), "--out", str(out), "--base-url", url,
            "--model", model, "--size", size, *fmt, *conc, "--no-progress", *extra]


RUNNER_ENV = {"ACEDATA_API_TOKEN": TOKEN}


def floor_cmd(data: Path, out: Path, url: str, *, concurrency: int, model: str = "dall-e-3",
              size: str = "1024x1024", fast: bool = False) -> list:
    return [PYTHON, str(BENCH / "floor.py"), str(data), "--out", str(out), "--url", url,
            "--concurrency", str(concurrency), "--model", model, "--size", size, *(["--fast"] if fast else [])]


def count_files(path: Path) -> int:
    return sum(len(files) for _r, _d, files in os.walk(path))


def now() -> float:
    return time.perf_counter()


def rerun_rounds(cmd: list, sim, tmp: Path, rounds: int, name: str, what: str) -> list:
    """Run `cmd` (the rerun of a finished job) `rounds` times; each must send nothing.
    Returns the wall times; logs each round as "round R: <what>: wall ...". """
    walls = []
    for r in range(1, rounds + 1):
        sim.reset()
        m = measure(cmd, log_dir=tmp, name=f"{name}-{r}", env=RUNNER_ENV)
        sent = sim.stats()["requests"]
        if sent:
            raise RuntimeError(f"the rerun sent {sent} requests; expected none")
        walls.append(m.wall)
        log(f"round {r}: {what}: wall {m.wall:.2f} s, cpu {m.cpu:.2f} s, "
            f"peak RSS {m.maxrss_mb:.0f} MB, requests {sent}")
    return walls
