"""Planning a block of rows at a time, and the journal's state kept as arrays (issue 15): the
plans and states are those of the code that held the whole input as Python objects."""
import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

import batchgen.keeping.journal
import batchgen.planning.tasks
from batchgen.keeping.journal import Journal, Replay, replay
from batchgen.planning.edits import EditInput
from batchgen.planning.settings import JobConfig
from batchgen.planning.tasks import make_plan, task_id


def golden_table():
    """Every shape planning handles: repeated and blank prompts, row parameters (some refused),
    a pass-through column, over several Arrow chunks."""
    prompts, quality, n, model = [], [], [], []
    for i in range(3000):
        prompts.append(None if i % 97 == 0 else "" if i % 89 == 0 else f"prompt {i % 1300}"
                       if i % 5 else f"a much longer prompt number {i} " * (1 + i % 3))
        quality.append([None, "standard", "hd", " ", "ultra"][i % 5] if i % 7 else None)
        n.append([None, 1.0, 2.0, 1.5][i % 4])
        model.append("dall-e-2" if i % 11 == 0 else None)
    table = pa.table({"prompt": prompts, "quality": quality, "n": n, "model": model,
                      "tag": [i % 13 for i in range(3000)]})
    return pa.concat_tables([table.slice(0, 1000), table.slice(1000, 1234), table.slice(2234)])


def digest(plan) -> str:
    t = plan.tasks
    h = hashlib.blake2b(digest_size=16)
    for part in (t.ids, t.variant, t.problem):
        h.update(bytes(part))
    h.update(json.dumps([t.problems, [v.params for v in t.variants]], sort_keys=True).encode())
    return h.hexdigest()


GOLDEN_CONFIG = {"source": "x.csv", "defaults": {"model": "dall-e-3"}, "sweep": [("style", ["vivid", "natural"])]}
# The digest of golden_table's plan as the planner before blocks made it (the whole prompt
# column and parameter columns as Python lists): ids, parameters and refusals unchanged.
GOLDEN_DIGEST = "a8a523d4acc132d8a64f87ffa8bf6044"


@pytest.mark.parametrize("rows", [1, 7, 1000, 65_536])
def test_the_plan_of_any_block_size_is_the_plan_made_before_blocks(monkeypatch, rows, dall_e_2_live):
    monkeypatch.setattr(batchgen.planning.tasks, "PLAN_ROWS", rows)
    # the golden plan's rows name dall-e-2, live when it was made
    plan = make_plan(golden_table(), JobConfig(**GOLDEN_CONFIG, models=dall_e_2_live))
    assert (len(plan.tasks), plan.refused) == (6000, 3796)
    assert digest(plan) == GOLDEN_DIGEST


def occurrences_by_hand(prompts: list, params_of) -> list:
    """Each task's occurrence as the README defines it: the tasks with the same prompt text and
    parameters before it, in input order."""
    seen: Counter = Counter()
    out = []
    for row, prompt in enumerate(prompts):
        for params in params_of(row):
            key = (prompt, json.dumps(params, sort_keys=True))
            out.append(seen[key])
            seen[key] += 1
    return out


@pytest.mark.parametrize("rows", [2, 5, 4096])
def test_repeated_prompts_across_blocks_count_their_occurrences(monkeypatch, rows):
    monkeypatch.setattr(batchgen.planning.tasks, "PLAN_ROWS", rows)
    prompts = ["otter", "fox", "otter", None, "owl", "otter", None, "fox", "x", "otter", "owl"]
    quality = ["hd", None, None, None, "hd", "hd", None, None, None, "hd", "hd"]
    plan = make_plan(pa.table({"prompt": prompts, "quality": quality}),
                     JobConfig(source="x.csv", defaults={"model": "dall-e-3"},
                               sweep=[("style", ["vivid", "natural"])]))
    tasks = list(plan.tasks)
    expected = occurrences_by_hand(prompts, lambda row: [t.params for t in tasks[2 * row:2 * row + 2]])
    assert max(expected) == 2
    assert [t.task_id for t in tasks] == [task_id(prompts[t.row_index], t.params, k)
                                          for t, k in zip(tasks, expected)]
    assert len({t.task_id for t in tasks}) == len(tasks)


def test_prompts_whose_hashes_collide_are_still_told_apart(monkeypatch):
    # Every row's hash the same: every row is a candidate, and only equal texts are counted.
    monkeypatch.setattr(batchgen.planning.tasks, "hash", lambda text: 7, raising=False)
    prompts = ["a", "b", "a", "c", "b", "a"]
    plan = make_plan(pa.table({"prompt": prompts}), JobConfig(source="x.csv", defaults={"model": "dall-e-3"}))
    params = plan.tasks[0].params
    assert [t.task_id for t in plan.tasks] == [task_id(p, params, k) for p, k in
                                               zip(prompts, [0, 0, 1, 0, 1, 2])]


def test_a_number_prompt_column_counts_repeats_by_its_text(monkeypatch):
    monkeypatch.setattr(batchgen.planning.tasks, "PLAN_ROWS", 2)
    numbers = make_plan(pa.table({"prompt": [1, 2, 1, None, 1, None]}), JobConfig(source="x.csv"))
    texts = make_plan(pa.table({"prompt": ["1", "2", "1", None, "1", None]}), JobConfig(source="x.csv"))
    assert list(numbers.tasks.ids) == list(texts.tasks.ids)
    assert len(set(numbers.tasks.ids)) == 6


def test_edits_alike_but_for_their_images_are_counted_apart(monkeypatch):
    monkeypatch.setattr(batchgen.planning.tasks, "PLAN_ROWS", 3)
    images = ["1", "2", "1", "1", "2", "3", "1"]
    inputs = [EditInput(images=(f"/in/{d}.png",), digests=(d,)) for d in images]
    prompts = ["same"] * len(images)
    plan = make_plan(pa.table({"prompt": prompts}), JobConfig(source="x.csv", defaults={"model": "gpt-image-1"}),
                     inputs)
    # The k-th task with the same prompt, parameters and images: k = 0, 0, 1, 2, 1, 0, 3.
    variant = plan.tasks.variants[0]
    expected = []
    for inp, k in zip(inputs, [0, 0, 1, 2, 1, 0, 3]):
        head = batchgen.planning.tasks._id_head(variant.key + b"\x1d" + inp.key, k)
        expected.append(hashlib.blake2b(head + b"\x1fsame", digest_size=8).hexdigest())
    assert [t.task_id for t in plan.tasks] == expected


def test_a_plans_keys_are_its_ids_and_cannot_be_changed_through_them():
    plan = make_plan(pa.table({"prompt": ["a", "b", "c"]}), JobConfig(source="x.csv"))
    keys = plan.tasks.keys()
    assert keys.tolist() == [int(t.task_id, 16) for t in plan.tasks]
    with pytest.raises(ValueError):
        keys[0] = 1


# ---- the journal's state ---------------------------------------------------------------------

def write_journal(path, lines):
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))


def mixed_lines(count: int) -> list:
    """Lines of three runs: finals, not-done, retried, voided and carried-over tasks."""
    lines = []
    for i in range(count):
        if i in (0, count // 3, 2 * count // 3):
            lines.append({"origin": {"provider": "sim", "endpoint": f"run {i}", "mode": "live"}})
        key = f"{i % (count // 2):016x}"
        if i % 17 == 0:
            lines.append({"task_id": key, "status": "not_done", "attempts": 2})
        status = "ok" if i % 3 else "error"
        lines.append({"task_id": key, "status": status, "attempts": 1, "cost_usd": i / 100, "i": i})
        if i % 29 == 0:
            lines.append({"task_id": key, "status": "void"})
        if i % 31 == 0:
            lines.append({"task_id": f"legacy-{i}", "status": "ok", "attempts": 1})
            # "replaces" first, as identity.alias_records writes it: replay hands it to apply.
            lines.append({"replaces": f"legacy-{i}", "task_id": f"{10**6 + i:016x}", "status": "ok"})
    return lines


def test_a_replay_is_the_state_of_its_lines_taken_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setattr(batchgen.keeping.journal, "RECENT_MAX", 7)      # resolved every few outcomes
    path = tmp_path / "journal.jsonl"
    lines = mixed_lines(400)
    write_journal(path, lines)
    read = replay(path)
    applied = Replay(path)
    pos = 0
    for line in lines:
        text = json.dumps(line, separators=(",", ":")) + "\n"
        if "origin" in line:
            applied.begin_origin(line["origin"])
        else:
            applied.apply(line, pos)
        pos += len(text)
    ids = sorted({line["task_id"] for line in lines if "task_id" in line})
    assert [read.status(t) for t in ids] == [applied.status(t) for t in ids]
    assert [read.final(t) for t in ids] == [applied.final(t) for t in ids]
    assert [read.states[t].origin for t in ids] == [applied.states[t].origin for t in ids]
    assert [read.states[t].carried_attempts for t in ids] == [applied.states[t].carried_attempts for t in ids]
    assert list(read.states) == list(applied.states)
    assert {read.states[t].origin for t in ids if read.status(t)} == {0, 1, 2}
    keys = np.array(sorted(int(t, 16) for t in ids if len(t) == 16), np.uint64)
    events = read.join(keys)
    assert events.tolist() == applied.join(keys).tolist()
    assert np.array_equal(read.costs(events), applied.costs(events), equal_nan=True)
    assert read.kinds(events).tolist() == applied.kinds(events).tolist()
    half = keys[: len(keys) // 2]
    assert read.finished_elsewhere(half) == applied.finished_elsewhere(half)
    assert len(read.finished_elsewhere(half)) > 0
    assert read.finished_elsewhere(np.empty(0, np.uint64)) == [
        k for k in (int(t, 16) if len(t) == 16 else batchgen.keeping.journal.task_key(t) for t in read.states)
        if read.final_event(k) >= 0]


def test_events_of_a_missing_task_read_as_nothing(tmp_path):
    state = replay(tmp_path / "journal.jsonl")
    events = state.join(np.array([1, 2], np.uint64))
    assert events.tolist() == [-1, -1]
    assert np.isnan(state.costs(events)).all() and state.kinds(events).tolist() == [0, 0]
    assert state.finished_elsewhere(np.array([1], np.uint64)) == []


def test_the_state_still_grows_after_it_is_read_as_arrays(tmp_path):
    # A view of the arrays taken by a reader must not outlive it: appends would then fail.
    path = tmp_path / "journal.jsonl"
    state = replay(path)
    with Journal(path) as journal:
        for i in range(50):
            record = {"task_id": f"{i:016x}", "status": "ok", "cost_usd": 0.5}
            state.apply(record, journal.append(record))
            events = state.join(np.array([i], np.uint64))
            assert state.costs(events).tolist() == [0.5] and state.kinds(events).tolist() == [1]
            assert state.finished_elsewhere(np.array([i], np.uint64)) == list(range(i))


def repeats_table(rows: int = 4000):
    """Each prompt on four rows spread over the input (as bench/scale.py --repeat 4), some rows
    with a quality of their own (a request of its own), a few blank, over several Arrow chunks."""
    distinct = rows // 4
    prompts = [None if i % 211 == 0 else f"item {i % distinct}" for i in range(rows)]
    quality = ["hd" if i % 7 == 0 else None for i in range(rows)]
    table = pa.table({"prompt": prompts, "quality": quality})
    return pa.concat_tables([table.slice(0, 1500), table.slice(1500)])


REPEATS_CONFIG = {"source": "x.csv", "defaults": {"model": "dall-e-3"},
                  "sweep": [("style", ["vivid", "natural"])]}
# The ids of repeats_table's plan as the planner made them before the occurrences were counted
# with one sort key a task (issue 27, the plan's memory with repeated prompts): unchanged.
REPEATS_DIGEST = "605ee476051882c1cb65e6fd8ea2791b"


@pytest.mark.parametrize("rows", [3, 1000, 65_536])
def test_the_ids_of_a_plan_full_of_repeated_prompts_are_those_made_before(monkeypatch, rows):
    monkeypatch.setattr(batchgen.planning.tasks, "PLAN_ROWS", rows)
    table = repeats_table()
    plan = make_plan(table, JobConfig(**REPEATS_CONFIG))
    assert hashlib.blake2b(bytes(plan.tasks.ids), digest_size=16).hexdigest() == REPEATS_DIGEST
    tasks = list(plan.tasks)
    prompts = table.column("prompt").to_pylist()
    expected = occurrences_by_hand(prompts, lambda row: [t.params for t in tasks[2 * row:2 * row + 2]])
    assert max(k for t, k in zip(tasks, expected) if t.prompt is not None) == 3
    assert max(k for t, k in zip(tasks, expected) if t.prompt is None) > 3
    assert [t.task_id for t in tasks] == [task_id(prompts[t.row_index], t.params, k)
                                          for t, k in zip(tasks, expected)]
