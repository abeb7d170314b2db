"""The output folder's one owner: its file names, job.json (write, read, check), the lock that
lets one run hold it at a time, where its results came from, atomic writes, and the sweep of
temporary files a killed process left behind.

Files only, no HTTP.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, Optional, Sequence, Union

from batchgen._version import __version__
from batchgen.exceptions import EXIT_STOPPED, FolderBusy, JobMismatch, UsageError
from batchgen.planning.identity import is_legacy, job_json_fields
from batchgen.rules.providers import DEFAULT_PROVIDER

JOB_FILE = "job.json"
JOURNAL_FILE = "journal.jsonl"
RESULTS_FILE = "results.parquet"
METADATA_FILE = "metadata.jsonl"
IMAGES_DIR = "images"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
# job.json's "run": what the last run to claim the folder is doing, or how it ended.
RUNNING, FINISHED, STOPPED = "running", "finished", "stopped"
# A run that takes the lock just as `status` looks at it (see is_locked) tries again this often.
LOCK_TRIES, LOCK_RETRY_S = 20, 0.005

log = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]     # a path as the functions here take it

# What a task *is*, beside its request: the columns its prompt and input images come from
# (setting -> what None means). Any other setting of the job may change on a folder.
IDENTITY_COLUMNS = (("prompt_column", "prompt"), ("image_column", "image"), ("mask_column", "mask"))
# job.json's "history": what each job asked of the folder, oldest first.
HISTORY_KEYS = ("source", "defaults", "sweep", "params", "limit")

# store.relative_image_path: the task id, `_k` for the k-th of several images, the format.
_IMAGE_NAME = re.compile(r"([0-9a-f]{16})(?:_\d+)?\.[a-z]+")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: written on every results row and in job.json."""
    provider: str
    endpoint: Optional[str]     # scheme, host and path only (providers.public_url)
    mode: str                   # "live"; "batch" for OpenAI's Batch API
    simulated: bool             # made by the built-in simulator (--simulate)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> Optional["Provenance"]:
        if not isinstance(d, dict):
            return None
        return cls(str(d.get("provider") or ""), d.get("endpoint") if isinstance(d.get("endpoint"), str) else None,
                   str(d.get("mode") or "live"), bool(d.get("simulated")))


# ---- atomic writes ------------------------------------------------------------------------

def temporary_name(path: StrPath) -> str:
    """A sibling name for a file being written; our pid at the end tells a live writer's
    temporary from one a killed process left."""
    folder, sep, name = os.fspath(path).rpartition(os.sep)
    return f"{folder}{sep}{TMP_PREFIX}{name}.{_pid}"


# Read once (and again in a forked child): os.getpid() is a system call, and every image's
# temporary name holds it.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def write_atomic(path: StrPath, data: bytes, *, fsync: bool = True) -> None:
    """`data` appears at `path` whole, or not at all (temporary name, then rename).

    Images pass fsync=False: one fsync per image would cost more than the request; a run
    flushes the filesystem once at its end instead (see journal)."""
    tmp = temporary_name(path)
    # os.open/os.write rather than open(): no buffered file object for one write.
    fd = os.open(tmp, _CREATE, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: StrPath) -> Iterator[IO[bytes]]:
    """A file object whose contents appear at `path` whole when the block ends, or not at all."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _writer_alive(tmp_name: str) -> bool:
    pid = tmp_name.rsplit(".", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- the folder ----------------------------------------------------------------------------

def safe_image_path(path: object) -> Optional[str]:
    """A results row's image_path as a relative POSIX path inside OUT, or None when it is
    absent or would point outside OUT (absolute, `..`, a drive): results are read back as data."""
    if not isinstance(path, str) or not path:
        return None
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        return None
    return p.as_posix()


def read_job(out: StrPath) -> dict:
    """OUT/job.json, for the commands that read a run (status, report)."""
    out = Path(out)
    path = out / JOB_FILE
    if not path.exists():
        raise UsageError(f"{out} holds no batchgen run (no {JOB_FILE}); give the --out folder of a run")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UsageError(f"{path} is unreadable ({e}); use another --out, or remove it to start afresh") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a batchgen job file; use another --out")
    return doc


def provenance_of(doc: dict) -> Optional[Provenance]:
    """The provenance job.json records; for a folder of an earlier version, what it implies."""
    found = Provenance.from_dict(doc.get("provenance"))
    if found is not None:
        return found
    job = doc.get("job") if isinstance(doc.get("job"), dict) else {}
    if not job:
        return None
    return Provenance(str(job.get("provider") or DEFAULT_PROVIDER), None, "live", bool(job.get("simulate")))


def _asked(fingerprint: object, job: dict, counts: dict, at: object) -> dict:
    return {"fingerprint": fingerprint, **{k: job.get(k) for k in HISTORY_KEYS},
            "tasks": counts.get("tasks"), "asked_at": at}


def job_history(before: Optional[dict], fingerprint: str, job: dict, counts: dict) -> list:
    """job.json's history with this job last: an entry per job that asked something other than
    the one before it (another fingerprint, input or task count). A folder written before the
    history was kept starts it with the job it recorded."""
    history: list = []
    if isinstance(before, dict):
        found = before.get("history")
        if isinstance(found, list):
            history = [h for h in found if isinstance(h, dict)]
        elif isinstance(before.get("job"), dict):
            history = [_asked(before.get("fingerprint"), before["job"], before, before.get("updated_at"))]
    entry = _asked(fingerprint, job, counts, round(time.time(), 3))
    same = ("fingerprint", "source", "tasks")
    if history and all(history[-1].get(k) == entry[k] for k in same):
        return history
    return history + [entry]


def history_axes(doc: Optional[dict]) -> list:
    """The sweep axes of every job the folder's history records, first asked first."""
    axes: dict = {}
    found = doc.get("history") if isinstance(doc, dict) else None
    for entry in found if isinstance(found, list) else ():
        sweep = entry.get("sweep") if isinstance(entry, dict) else None
        for pair in sweep if isinstance(sweep, list) else ():
            if isinstance(pair, (list, tuple)) and pair and isinstance(pair[0], str):
                axes.setdefault(pair[0], None)
    return list(axes)


class OutputFolder:
    """OUT and everything batchgen keeps in it."""

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)
        self.job_path = self.path / JOB_FILE
        self.journal_path = self.path / JOURNAL_FILE
        self.results_path = self.path / RESULTS_FILE
        self.metadata_path = self.path / METADATA_FILE
        self.images_path = self.path / IMAGES_DIR
        self._lock_fd: Optional[int] = None
        self.legacy_ids = False     # job.json predates "task_ids": the journal holds the old ids

    def existing_job(self) -> Optional[dict]:
        return read_job(self.path) if self.job_path.exists() else None

    def holds_outcomes(self) -> bool:
        try:
            return self.journal_path.stat().st_size > 0
        except OSError:
            return False

    def check(self, fingerprint: str, provenance: Provenance, describe_job: dict) -> Optional[dict]:
        """The existing job.json, if any; raises JobMismatch when this run may not use OUT."""
        existing = self.existing_job()
        if existing is None:
            return None
        self.check_same_job(existing, fingerprint, describe_job)
        before = provenance_of(existing)
        if before is not None and before.simulated != provenance.simulated and self.holds_outcomes():
            raise JobMismatch(self._simulated_mismatch(before, provenance))
        return existing

    def check_same_job(self, existing: dict, fingerprint: str, describe_job: dict) -> None:
        """Raises JobMismatch, naming what differs, when job.json (`existing`) reads its tasks
        from other columns. Defaults, sweep values and axes, --param and the rows may change:
        a task's id is its request, so the folder grows by the new tasks and keeps the old."""
        found = existing.get("job")
        old = found if isinstance(found, dict) else {}
        for key, default in IDENTITY_COLUMNS:
            before, now = old.get(key) or default, describe_job.get(key) or default
            if before != now:
                option = "--" + key.replace("_", "-")
                raise JobMismatch(
                    f"{self.path} holds tasks whose {key.replace('_', ' ')} is {before!r}; this job's is "
                    f"{now!r}, which makes every task another request. Nothing was changed. Add "
                    f"{option} {before} to grow this folder, or use another --out for this job.")

    def _simulated_mismatch(self, before: Provenance, now: Provenance) -> str:
        if before.simulated:
            return (f"{self.path} holds simulated results (made with --simulate): their images are "
                    f"placeholders, and a real run would mix them into the dataset. Nothing was "
                    f"changed. Give the real run another --out, or remove {self.path} to start afresh.")
        where = f"provider {before.provider}" + (f", {before.endpoint}" if before.endpoint else "")
        return (f"{self.path} holds results from a real API ({where}); a --simulate run would mix "
                f"placeholder images into them. Nothing was changed. Give the simulated run another --out.")

    def write_job(self, fingerprint: str, job: dict, provenance: Provenance, counts: dict) -> None:
        # "run" says "running" until the run records its end: a run killed meanwhile leaves it
        # so, and `status` (finding the lock free) knows it stopped without saying why.
        try:
            before = self.existing_job()
        except UsageError:
            before = None
        doc = {"fingerprint": fingerprint, "batchgen_version": __version__, "job": job,
               "provenance": provenance.as_dict(), **counts, "updated_at": time.time(),
               "run": {"state": RUNNING, "pid": os.getpid(), "started_at": round(time.time(), 3)},
               "history": job_history(before, fingerprint, job, counts)}
        if not self.legacy_ids:
            doc.update(job_json_fields())
        self._write_job_doc(doc)

    def _write_job_doc(self, doc: dict) -> None:
        write_atomic(self.job_path, json.dumps(doc, indent=2, default=str).encode())

    def mark_current_ids(self) -> None:
        """job.json says the journal now names tasks by the current ids (after the aliases)."""
        doc = read_job(self.path)
        doc.update(job_json_fields())
        self._write_job_doc(doc)
        self.legacy_ids = False

    def claim(self, fingerprint: str, job: dict, provenance: Provenance, counts: dict) -> Optional[Provenance]:
        """Check OUT may take this run, hold its lock, record the job, remove dead writers'
        temporaries. Returns the provenance the folder recorded before (for outcomes of a
        version that wrote no origin lines). The caller unlocks.

        Checked before the lock, so a refusal leaves the folder as it was (not even a lock
        file), and again under it, so a run that ended meanwhile is seen."""
        self.check(fingerprint, provenance, job)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock()
        except OSError as e:
            raise UsageError(f"cannot write the output folder {self.path}: {e.strerror or e}; "
                             "choose another --out") from None
        try:
            existing = self.check(fingerprint, provenance, job)
            self.legacy_ids = is_legacy(existing) and self.holds_outcomes()
            self.write_job(fingerprint, job, provenance, counts)
            self.remove_temporaries()
        except OSError as e:
            self.unlock()
            raise UsageError(f"cannot write the output folder {self.path}: {e.strerror or e}; "
                             "choose another --out") from None
        except BaseException:
            self.unlock()
            raise
        return provenance_of(existing) if existing else None

    def record_end(self, stopped: Optional[str], message: Optional[str], exit_status: int) -> None:
        """Say in job.json how this run ended (for `status`). Called while the lock is held.
        A disk that refuses it loses only this note: the journal holds every outcome."""
        if exit_status == EXIT_STOPPED and not stopped:
            stopped = "interrupted"     # as the results label its unfinished tasks
        try:
            doc = read_job(self.path)
            run = doc.get("run")
            if not isinstance(run, dict):
                run = {}
            run.update({"state": STOPPED if stopped else FINISHED, "stopped": stopped,
                        "stop_message": message, "exit_status": exit_status,
                        "ended_at": round(time.time(), 3)})
            doc["run"] = run
            self._write_job_doc(doc)
        except (OSError, UsageError) as e:
            log.warning("could not record the run's end in %s (%s); `batchgen status` will say "
                        "it stopped without saying why", self.job_path, e)

    def record_not_in_job(self, counts: dict) -> None:
        """Say in job.json what the folder holds finished that this job does not ask for (for
        `status`, which reads the journal without the plan). Called while the lock is held;
        none is what write_job's fresh document says already."""
        if not (counts.get("ok") or counts.get("errors")):
            return
        try:
            doc = read_job(self.path)
            doc["not_in_job"] = counts
            self._write_job_doc(doc)
        except (OSError, UsageError) as e:
            log.debug("could not record the tasks beside this job in %s (%s)", self.job_path, e)

    def record_pace(self, pace: dict) -> None:
        """Say in job.json how fast this run sends and what it has in flight (for `status`).
        Called while the lock is held, every few seconds at most; a disk that refuses it loses
        only this note."""
        try:
            doc = read_job(self.path)
            run = doc.get("run")
            if isinstance(run, dict):
                run["pace"] = pace
                self._write_job_doc(doc)
        except (OSError, UsageError) as e:
            log.debug("could not record the pace in %s (%s)", self.job_path, e)

    # -- one run at a time --

    def lock(self) -> None:
        """Hold OUT for this process. The kernel releases the lock when the process ends,
        however it ends (kill -9 included), so a folder is never left stuck."""
        import fcntl
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if holder or attempt == LOCK_TRIES - 1:
                    os.close(fd)
                    who = f"process {holder}" if holder.isdigit() else "another process"
                    raise FolderBusy(
                        f"{self.path} is in use by another batchgen run ({who}); one run writes a folder "
                        f"at a time. Wait for it to finish (batchgen status {self.path} shows its "
                        f"progress) or stop it, then run the same command again.") from None
                # No pid written: `status` looking (is_locked holds the lock for two system
                # calls), or a run in its first instant. The first lets go at once.
                time.sleep(LOCK_RETRY_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def is_locked(self) -> bool:
        """Whether a run holds OUT now (for `status`): a shared lock, tried and let go at once,
        fails only while a run holds it. Never creates the lock file."""
        import fcntl
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:         # none (no run ever held OUT), or unreadable: no run can be seen
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            # Another error (a filesystem without locks) means no run could have locked it either.
            return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)     # closing lets go of the shared lock, if it was taken
        return False

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_temporaries(self) -> int:
        """Delete what killed writers left half-written anywhere under OUT; returns how many.
        A temporary whose writer is still alive (a `report` running beside us) is left alone."""
        removed = 0
        folders = [self.path]
        if self.images_path.is_dir():
            folders += [p for p in self.images_path.iterdir() if p.is_dir()]
        for folder in folders:
            for tmp in folder.glob(TMP_PREFIX + "*"):
                if tmp.is_file() and not _writer_alive(tmp.name):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    def remove_unrecorded_images(self, finished_among: Callable[[list], Sequence[bool]]) -> int:
        """Delete the images of tasks that are not finished: written by a request whose journal
        line never came (the process died, or was cancelled, between the two). The task is
        sent again, so nothing finished is lost, and every image left is one the results list.
        Files batchgen did not name are left alone. `finished_among(task_ids)` says which of a
        folder's tasks are finished, all at once (a million lookups one by one took seconds).
        Returns how many were removed."""
        removed = 0
        if not self.images_path.is_dir():
            return 0
        for sub in os.scandir(self.images_path):
            if not sub.is_dir(follow_symlinks=False):
                continue
            named = [(m[1], entry) for entry in os.scandir(sub.path)
                     if (m := _IMAGE_NAME.fullmatch(entry.name))]
            if not named:
                continue
            for (_, entry), finished in zip(named, finished_among([task_id for task_id, _ in named])):
                if not finished and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
        return removed
