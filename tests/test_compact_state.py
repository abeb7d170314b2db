"""The plan and the journal's state kept as columns (issue 15): they read as the objects did."""
import json

import pyarrow as pa
import pytest

import batchgen.keeping.journal
from batchgen.keeping.journal import Journal, Replay, replay
from batchgen.planning.settings import JobConfig
from batchgen.planning.tasks import make_plan

HEX = "0123456789abcdef"


def test_a_plans_tasks_read_alike_by_index_slice_and_iteration():
    table = pa.table({"prompt": [f"p{i}" for i in range(10_000)] + ["", "p3"]})
    plan = make_plan(table, JobConfig(source="x.csv", defaults={"model": "dall-e-3"},
                                      sweep=[("quality", ["standard", "hd"])]))
    tasks = list(plan.tasks)
    assert len(tasks) == len(plan.tasks) == 20_004
    assert [t.task_id for t in plan.tasks[4094 * 2:4098 * 2]] == [t.task_id for t in tasks[4094 * 2:4098 * 2]]
    last = plan.tasks[-1]
    assert (last.row_index, last.point, last.prompt, last.params["quality"]) == (10_001, 1, "p3", "hd")
    assert plan.tasks[20_000].problem == "prompt is missing or blank" and plan.refused == 2
    assert tasks[20_002].task_id != tasks[6].task_id          # "p3" twice: occurrence 1
    with pytest.raises(IndexError):
        plan.tasks[20_004]


def test_outcomes_of_this_run_are_found_before_and_after_the_state_is_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr(batchgen.keeping.journal, "RECENT_MAX", 5)      # resolved every few outcomes
    path = tmp_path / "journal.jsonl"
    state = replay(path)
    ids = [f"{i:016x}" for i in range(40)]
    with Journal(path) as j:
        for i, task_id in enumerate(ids):
            if i % 3 == 0:
                state.apply({"task_id": task_id, "status": "not_done", "attempts": 2},
                            j.append({"task_id": task_id, "status": "not_done", "attempts": 2}))
            record = {"task_id": task_id, "status": "ok" if i % 2 else "error", "attempts": 1, "n": i}
            state.apply(record, j.append(record))
            assert state.status(task_id) == record["status"]      # at once, resolved or not
            assert state.status(ids[i // 2]) == ("ok" if (i // 2) % 2 else "error")
    for i, task_id in enumerate(ids):
        final = state.final(task_id)
        assert final["n"] == i and final["attempts"] == (3 if i % 3 == 0 else 1)
    again = replay(path)
    assert [again.final(t) for t in ids] == [state.final(t) for t in ids]
    assert state.status("feedfacefeedface") is None and state.final("not a hex id") is None


def test_a_final_line_damaged_on_disk_makes_its_task_not_done(tmp_path):
    path = tmp_path / "journal.jsonl"
    good = json.dumps({"task_id": HEX, "status": "ok", "images": []}, separators=(",", ":"))
    # Whole in shape (our head, one object's end), yet not JSON: found when the record is read.
    path.write_text(good + "\n" + '{"task_id":"' + "f" * 16 + '","status":"ok",x}\n')
    state = replay(path)
    assert state.status("f" * 16) == "ok"
    assert state.final("f" * 16) is None
    assert state.status("f" * 16) is None and state.damaged_tasks() == ["f" * 16]
    assert state.final(HEX) == {"task_id": HEX, "status": "ok", "images": []}


def test_a_replay_without_a_journal_keeps_what_it_is_given():
    state = Replay()
    state.apply({"task_id": "a", "status": "error", "error_code": "x", "attempts": 1})
    state.apply({"task_id": "a", "status": "not_done", "attempts": 4})
    state.apply({"task_id": "b" * 16, "status": "ok", "replaces": "a"})
    assert state.status("a") is None and state.replaced == {"a": "b" * 16}
    assert state.final("b" * 16)["replaces"] == "a"
    assert [task_id for task_id, s in state.states.items() if s.status] == ["b" * 16]
