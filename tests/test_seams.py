"""Each seam is declared whole: a backend calls nothing on its recorder but what the Recorder
protocol declares, the runner nothing on a backend but what SendBackend declares, and nothing
outside rules/modes.py asks which mode a job is in. Read from the source, as the layer test is."""
import ast
from pathlib import Path

from batchgen.rules import modes
from batchgen.sending import backends
from batchgen.sending.backends import Recorder, SendBackend, backend_for

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"


def declared(protocol) -> set:
    return {name for name in vars(protocol) if not name.startswith("_")} | set(protocol.__annotations__)


def attributes_used_on(path: Path, holder: str) -> set:
    """Names read on `<holder>` or `self.<holder>` anywhere in the file."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            value = node.value
            if (isinstance(value, ast.Name) and value.id == holder) or \
                    (isinstance(value, ast.Attribute) and value.attr == holder
                     and isinstance(value.value, ast.Name) and value.value.id == "self"):
                used.add(node.attr)
    return used


def test_backends_call_only_what_the_recorder_protocol_declares():
    folder = PACKAGE / "sending" / "backends"
    used = set().union(*(attributes_used_on(p, "recorder") for p in folder.glob("*.py")))
    assert used, "the backends' calls on the recorder were not found"
    assert used <= declared(Recorder), used - declared(Recorder)


def test_the_runner_calls_only_what_the_backend_protocol_declares():
    used = attributes_used_on(PACKAGE / "runner.py", "backend")
    assert {"send", "requests_sent"} <= used
    assert used <= declared(SendBackend), used - declared(SendBackend)


def test_the_runners_recorder_has_everything_the_protocol_declares():
    from batchgen.runner import Recorder as RunnersRecorder
    assert declared(Recorder) <= set(dir(RunnersRecorder))


def test_every_mode_has_a_backend_with_the_whole_protocol():
    for name in modes.NAMES:
        backend = backend_for(name)
        missing = {m for m in declared(SendBackend) - {"requests_sent"} if not hasattr(backend, m)}
        assert not missing, (name, missing)
    assert backends.backend_for("live").__name__ == "LiveBackend"


def test_nothing_outside_the_modes_asks_which_mode_a_job_is_in():
    """`mode == "batch"` and its kin belong in rules/modes.py (a Mode's attributes and methods)."""
    asked = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "modes.py" or "simulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in (node.left, *node.comparators)
                         if isinstance(n, ast.Constant) and n.value in modes.NAMES]
                if names:
                    asked.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert asked == []


class _Dry(modes.Mode):
    """A way to send made in a test: every task is recorded as refused, nothing goes out."""
    name = "dry"
    backend = f"{__name__}:DryBackend"
    plan_note = "a dry run: nothing is sent"


class DryBackend:
    def __init__(self, config, endpoint, images, recorder, budget, stop):
        self.recorder, self.requests_sent = recorder, 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def send(self, tasks):
        for task in tasks:
            self.recorder.finished({"task_id": task.task_id, "status": "error", "error_code": "dry_run",
                                    "error_message": "not sent", "attempts": 0, "prompt": task.prompt,
                                    "params": task.params})

    def cancel_in_flight(self):
        pass

    def busy(self):
        return False

    def pace(self):
        return None

    @classmethod
    async def cancel_remote(cls, endpoint, timeout, chunks):
        return []


def test_a_new_way_to_send_is_one_mode_and_one_backend(monkeypatch, tmp_path):
    """ARCHITECTURE.md's "Where new things go": a Mode in rules/modes.py and its backend class,
    and the run, the plan's note and the results take it with nothing else changed."""
    import batchgen
    monkeypatch.setitem(modes.MODES, "dry", _Dry())
    source = tmp_path / "p.csv"
    source.write_text("prompt\nan otter\na heron\n")
    summary = batchgen.run(source, out=tmp_path / "out", mode="dry", simulate=True, progress=False)
    assert (summary.total, summary.errors, summary.by_code) == (2, 2, {"dry_run": 2})
    assert set(summary.results()["error_code"]) == {"dry_run"}
    plan = batchgen.plan(source, out=tmp_path / "other", mode="dry")
    assert plan.tasks == 2 and "a dry run: nothing is sent" in str(plan)
