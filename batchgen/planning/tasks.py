"""The plan: each input row × sweep point becomes a Task with a stable id (`task_id`), planned a
block of rows at a time. Planning is pure (the table is read elsewhere), so it tests without a
server or files.
"""
from __future__ import annotations

import hashlib
import json
import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Optional

from batchgen.exceptions import UsageError
from batchgen.planning.settings import JobConfig, sweep_points
from batchgen.rules import models, modes, pricing
from batchgen.util import arrowbuf, gcpause

PARAMETERS = models.PARAMETERS
INT_PARAMETERS = models.INT_PARAMETERS


@dataclass(slots=True)
class Task:
    task_id: str
    row_index: int
    prompt: Any
    params: dict               # only the parameters that are set; shared by tasks alike
    point: int                 # index into Plan.points
    problem: Optional[str] = None   # set: refused before sending (invalid_params)
    edit: Any = None           # edits.EditInput: the images an edit sends; None for a generation

    @property
    def images_expected(self) -> int:
        return int(self.params.get("n") or 1)


ROWS_AT_A_TIME = 4096    # rows whose prompts become Python values at once, when tasks are read


class TaskList:
    """Every task of a plan, refused ones included, in input order: row by row, each row's
    sweep points in order (so task k is row k // points, point k % points).

    Kept as columns (its id as a 64-bit number, the index of its parameters, the index of
    its refusal), not as objects, so memory stays a few bytes a task (bench/README.md); a Task
    is made when it is read, with its prompt taken from the input's column a block of rows at
    a time."""

    def __init__(self, prompts, text_column: bool, n_points: int, variants: list, problems: list,
                 ids: array, variant: array, problem: array, edits: Optional[list] = None):
        self._prompts = prompts          # the input's prompt column (pyarrow)
        self._text_column = text_column
        self.n_points = n_points
        self.variants = variants         # index -> _Variant
        self.problems = problems         # index -> refusal text; index 0 is None
        self.ids = ids                   # task -> its id as a number (array "Q")
        self.variant = variant           # task -> index into variants
        self.problem = problem           # task -> index into problems
        self.edits = edits               # row -> edits.EditInput, for an edits table
        self.refused = len(problem) - problem.count(0)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return list(self.at(range(*k.indices(len(self)))))
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return next(self.at((k,)))

    def __iter__(self):
        return self.at(range(len(self)))

    def at(self, indices):
        """The tasks at `indices` (ascending), made a block of rows at a time."""
        block, prompts = -1, []
        ids, variants, variant, problems, problem = self.ids, self.variants, self.variant, self.problems, self.problem
        points, edits = self.n_points, self.edits
        for k in indices:
            k = int(k)
            row, point = divmod(k, points)
            if row // ROWS_AT_A_TIME != block:
                block = row // ROWS_AT_A_TIME
                start = block * ROWS_AT_A_TIME
                prompts = _prompts(self._prompts.slice(start, ROWS_AT_A_TIME).to_pylist(), self._text_column)
            yield Task("%016x" % ids[k], row, prompts[row - block * ROWS_AT_A_TIME],
                       variants[variant[k]].params, point, problems[problem[k]], edits[row] if edits else None)

    def rows_of(self, prompts: set) -> dict:
        """prompt -> the first input row holding it, for the `prompts` some row holds; read a
        block of rows at a time, and not at all when `prompts` is empty."""
        found: dict = {}
        rows = len(self._prompts) if prompts else 0
        for start in range(0, rows, ROWS_AT_A_TIME):
            block = _prompts(self._prompts.slice(start, ROWS_AT_A_TIME).to_pylist(), self._text_column)
            for offset, prompt in enumerate(block):
                if prompt in prompts and prompt not in found:
                    found[prompt] = start + offset
            if len(found) == len(prompts):
                break
        return found

    def keys(self):
        """Every task's id as a 64-bit number (numpy uint64, read-only), in plan order.

        A view of `ids`, not a copy (a copy would be made by every stage that joins the plan
        with the journal): the plan is complete, so `ids` no longer grows."""
        import numpy as np
        if not len(self.ids):
            return np.empty(0, np.uint64)
        keys = np.frombuffer(self.ids, dtype=np.uint64)
        keys.flags.writeable = False
        return keys


class Pending:
    """Some of a plan's tasks (ascending task indices), made as they are read."""

    def __init__(self, tasks: TaskList, indices):
        self.tasks, self.indices = tasks, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __bool__(self) -> bool:
        return len(self.indices) > 0

    def __iter__(self):
        return self.tasks.at(self.indices)


def _prompts(cells: list, text_column: bool) -> list:
    """The prompt each cell sends: its text, or None when it is empty."""
    if text_column:
        return [c if c is not None and c.strip() else None for c in cells]
    return [None if _cell(c) is None else str(c) for c in cells]


@dataclass
class Plan:
    config: JobConfig
    points: list[dict]
    tasks: TaskList                # every task, refused ones included, in input order
    passthrough: list[str]         # input columns that go to the results unchanged
    unknown_models: list[str]
    # What the pass-through columns hold (types and values): they are no part of a task's id,
    # so results built from other cells are told apart by this (results.results_key).
    passthrough_digest: str = ""
    edit: bool = False             # the tasks are edits (/images/edits)
    warnings: list = field(default_factory=list)
    # Sweep points across models that a point's model does not offer: (point, why), no tasks.
    left_out: list = field(default_factory=list)

    @property
    def refused(self) -> int:
        return self.tasks.refused


def _cell(value):
    """A table cell as a parameter value, or None when the cell is empty."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _row_param(param: str, value) -> tuple[Any, Optional[str]]:
    if param in INT_PARAMETERS:
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        text = str(value).strip()
        try:
            return int(text), None
        except ValueError:
            pass
        try:     # "2.0": a column of whole numbers that a text cell turned into text
            number = float(text)
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number), None
        return None, f"{param} {value!r} is not a whole number"
    return str(value).strip(), None


def check_defaults(config: JobConfig, points: list[dict], row_models: Optional[set] = None,
                   edit: bool = False, catalog: Optional[models.Catalog] = None) -> list[str]:
    """Default or sweep values that no row could use: a usage error (nothing is sent).

    A value is checked against the models the rows use at each sweep point: `row_models` are
    the models named in the rows' own model column (None stands for a row without one, which
    takes the default model); None when there is no model column. A value that some of those
    models allow is kept: the rows whose model refuses it become invalid_params, as a row's
    own cell would."""
    problems = []
    for point in points:
        params = {**config.defaults, **point}
        if "model" in point or row_models is None:
            used = {params.get("model")}
        else:
            used = {params.get("model") if m is None else m for m in row_models}
        found = {}
        for model in used:
            asked = ({**params, "model": model} if model is not None
                     else {k: v for k, v in params.items() if k != "model"})
            found[model] = {p.split(" ", 1)[0]: p for p in models.parameter_problems(
                asked, edit, config.provider, catalog)}
        for param in params:
            refusals = [found[m][param] for m in sorted(used, key=str) if param in found[m]]
            if not refusals or len(refusals) < len(used):
                continue      # some model the rows use allows it
            text = f"{'sweep' if param in point else 'default'} {_refused_by_all(param, params[param], refusals)}"
            if text not in problems:
                problems.append(text)
    return problems


def _refused_by_all(param: str, value, refusals: list) -> str:
    """'quality 'x' is not allowed for dall-e-3 (allowed: ...), nor for gpt-image-1 (allowed: ...)'"""
    head = f"{param} {value!r} is not allowed for "
    if len(refusals) > 1 and all(r.startswith(head) for r in refusals):
        return head + ", nor for ".join(r[len(head):] for r in refusals)
    return "; ".join(refusals)


@dataclass(frozen=True, slots=True)
class _Variant:
    """What every task with the same parameters shares: computed once, not per task."""
    params: dict
    key: bytes                   # the parameters as sent, canonical JSON: part of the task id
    problem: Optional[str]       # the model refuses these parameters
    max_prompt: Optional[int]
    head: bytes                  # what a task id hashes before the prompt, for occurrence 0


def _variant(params: dict, extras: Optional[dict] = None, edit: bool = False, provider: Optional[str] = None,
             catalog: Optional[models.Catalog] = None) -> _Variant:
    """`extras`: --param's parameters, sent as is after the known ones."""
    params = {k: params[k] for k in PARAMETERS if params.get(k) is not None}
    found = models.parameter_problems(params, edit, provider, catalog)
    if extras:
        params.update((k, v) for k, v in extras.items() if k not in params)
    rules = models.rules_for(params.get("model"), provider, catalog)
    key = json.dumps(params, sort_keys=True).encode()
    return _Variant(params, key, "; ".join(found) or None, rules.max_prompt_chars if rules else None,
                    _id_head(key, 0))


# ---- task identity ---------------------------------------------------------------------------
#
# A task is the request it pays for: its id is blake2b (8 bytes, as 16 hex digits) of
#     the parameters as sent (canonical JSON) \x1f occurrence \x1f the prompt (UTF-8)
# (or \x1e instead of \x1f and the prompt when the cell is empty), where occurrence counts the
# tasks with the same prompt and parameters that come before it in the input: two identical
# rows are two tasks, and a reordered input gives every task the id it had. Pass-through
# columns, the row's position and the column types play no part. The JSON holds no raw control
# character, so the text is unambiguous. (A request that sends an image, an edit, must add the
# image's digest.) batchgen.planning.identity keeps the ids of the scheme before this one.

TASK_ID_VERSION = 2


def _id_head(key: bytes, occurrence: int) -> bytes:
    return b"%s\x1f%d" % (key, occurrence)


def _prompt_part(text: Optional[str]) -> bytes:
    return b"\x1e" if text is None else b"\x1f" + text.encode("utf-8", "surrogatepass")


def _edit_key(variant_key: bytes, inputs) -> bytes:
    """An edit's id covers its inputs too: tasks alike but for their images are told apart."""
    return variant_key + b"\x1d" + inputs.key


def _id_key(head: bytes, prompt_part: bytes) -> int:
    """A task's id as the 64-bit number it is kept as (16 hex digits when written)."""
    return int.from_bytes(hashlib.blake2b(head + prompt_part, digest_size=8).digest(), "big")


def task_id(prompt: Optional[str], params: dict, occurrence: int = 0) -> str:
    """The id of the `occurrence`-th task (from 0) asking for `prompt` with `params` (the
    parameters that are set, as sent). make_plan computes the same, faster."""
    key = _variant(params).key
    return f"{_id_key(_id_head(key, occurrence), _prompt_part(prompt)):016x}"


# ---- the plan ---------------------------------------------------------------------------------

def make_plan(table, config: JobConfig, edit_inputs: Optional[list] = None) -> Plan:
    """Every task of the job, with refused rows marked; raises UsageError for bad settings.

    `table` is the input as a pyarrow.Table (reader.read_table); `edit_inputs`, for an edits
    table, each row's edits.EditInput (edits.read_edit_inputs)."""
    with gcpause.paused():
        return _make_plan(table, config, edit_inputs)


PLAN_ROWS = 65_536    # rows whose cells are Python values at once while planning


def _make_plan(table, config: JobConfig, edit_inputs: Optional[list]) -> Plan:
    columns = list(table.column_names)
    if config.prompt_column not in columns:
        raise UsageError(
            f"no column {config.prompt_column!r} in {config.source}; its columns are: "
            f"{', '.join(map(repr, columns))}. Name the prompt column with --prompt-column NAME.")
    param_columns = [c for c in PARAMETERS if c in columns]
    _check_column_types(table, config.prompt_column, param_columns)
    catalog = models.load(config.models)
    every_point = sweep_points(config.sweep)
    points, left_out = _offered_points(config, every_point, edit_inputs is not None, catalog)
    passthrough = [c for c in columns if c != config.prompt_column and c not in PARAMETERS]
    if config.limit is not None:
        table = table.slice(0, config.limit)
    edit = edit_inputs is not None
    n_rows = table.num_rows
    prompt_column = table.column(config.prompt_column)
    param_values = [table.column(c) for c in param_columns]

    row_models: Optional[set] = None
    if "model" in param_columns:
        model_column = table.column("model")
        row_models = set()
        for start in range(0, n_rows, PLAN_ROWS):
            row_models.update(None if _cell(m) is None else str(m).strip()
                              for m in set(model_column.slice(start, PLAN_ROWS).to_pylist()))
    problems = check_defaults(config, points, row_models, edit, catalog)
    if problems:
        raise UsageError("; ".join(problems))
    # The models the requests name (None: a request that names none), left-out points' too.
    named: set = set()
    for point in every_point:
        if "model" in point:
            named.add(point["model"])
        elif row_models is None:
            named.add(config.defaults.get("model"))
        else:
            named |= {config.defaults.get("model") if m is None else m for m in row_models}
    checked = models.check_models(named, config.provider, catalog)
    if checked.errors:
        raise UsageError("; ".join(checked.errors))

    # Only the prompt and parameter columns become Python values, PLAN_ROWS rows at a time:
    # the whole input as Python objects would take far more memory than its Arrow form.
    text_column = _is_text(table.schema.field(config.prompt_column).type)
    variants: dict = {}            # (row's own parameters, point index) -> variant index
    shared: dict = {}              # variant key -> the index of the one _Variant with those parameters
    listed: list = []              # variant index -> _Variant
    problem_index: dict = {None: 0}
    ids, variant_of, problem_of = array("Q"), array("I"), array("I")
    # hash() of each row's prompt text: rows whose text no other row has (the usual case) have
    # occurrence 0 in every task; the others are counted once every row is planned.
    hashes = array("q")
    # _prompt_part and _id_key written out in the loop below: two calls a task slow planning (bench/plan.py).
    # task_id() is the rule; tests hold the two to the same ids.
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    point_range = range(len(points))
    for start in range(0, n_rows, PLAN_ROWS):
        cells = prompt_column.slice(start, PLAN_ROWS).to_pylist()
        texts = _identifying(cells, text_column)
        hashes.extend(map(hash, texts))
        prompts = _prompts(cells, text_column)
        row_params = [c.slice(start, PLAN_ROWS).to_pylist() for c in param_values]
        for j, text in enumerate(texts):
            prompt = prompts[j]
            prompt_part = b"\x1e" if text is None else b"\x1f" + text.encode("utf-8", "surrogatepass")
            own: dict = {}
            row_problem = None
            for param, col_values in zip(param_columns, row_params):
                value = _cell(col_values[j])
                if value is not None:
                    own[param], problem = _row_param(param, value)
                    row_problem = row_problem or problem
            own_key = tuple(own.items())
            blank = prompt is None
            inputs = edit_inputs[start + j] if edit_inputs is not None else None
            for p_index in point_range:
                index = variants.get((own_key, p_index))
                if index is None:
                    variant = _variant({**config.defaults, **own, **points[p_index]}, config.params, edit,
                                       config.provider, catalog)
                    index = shared.get(variant.key)
                    if index is None:
                        index = shared[variant.key] = len(listed)
                        listed.append(variant)
                    variants[(own_key, p_index)] = index
                variant = listed[index]
                head = _id_head(_edit_key(variant.key, inputs), 0) if inputs is not None else variant.head
                ids.append(from_bytes(blake2b(head + prompt_part, digest_size=8).digest(), "big"))
                variant_of.append(index)
                problem = row_problem or (inputs.problem if inputs is not None else None)
                if problem is None and inputs is not None and inputs.markup is not None:
                    problem = variant.problem or models.markup_problem(variant.params.get("model"), config.provider,
                                                                        catalog)
                if problem is None:
                    if blank:
                        problem = "prompt is missing or blank"
                    elif variant.max_prompt is not None and len(prompt) > variant.max_prompt:
                        problem = models.prompt_problem(prompt, variant.params.get("model"), config.provider,
                                                        catalog)
                    else:
                        problem = variant.problem
                p = problem_index.get(problem)
                if p is None:
                    p = problem_index[problem] = len(problem_index)
                problem_of.append(p)
        del cells, texts, prompts, row_params
    _count_repeated_prompts(prompt_column, text_column, hashes, len(points), listed, ids, variant_of,
                            edit_inputs)
    del hashes
    unknown_models = sorted({v.params["model"] for v in listed if v.params.get("model")
                             and models.rules_for(v.params.get("model"), config.provider, catalog) is None})
    modes.get(config.mode).check_models(listed)
    if config.max_cost is not None:
        _check_prices(listed, config)
    tasks = TaskList(prompt_column, text_column, len(points), listed, list(problem_index),
                     ids, variant_of, problem_of, edit_inputs)
    warnings = [*checked.warnings, *([checked.default_note] if checked.default_note else []),
                *_plan_warnings(config, columns)]
    return Plan(config, points, tasks, passthrough, unknown_models, _content_digest(table, passthrough),
                edit, warnings, left_out)


def _offered_points(config: JobConfig, points: list, edit: bool, catalog: models.Catalog) -> tuple[list, list]:
    """A sweep across models: the points whose model refuses the point's other values (or the
    defaults) are left out, each with why, so each model is compared at its own settings; a
    sweep without a model axis keeps every point (a refused value is a usage error there)."""
    if not any("model" in p for p in points):
        return points, []
    kept, left_out = [], []
    for point in points:
        problems = models.parameter_problems({**config.defaults, **point}, edit, config.provider, catalog)
        if problems:
            left_out.append((point, "; ".join(problems)))
        else:
            kept.append(point)
    if not kept:
        return points, []       # nothing is offered: check_defaults says why, value by value
    return kept, left_out


def _count_repeated_prompts(prompt_column, text_column: bool, hashes: array, n_points: int, listed: list,
                            ids: array, variant_of: array, edit_inputs: Optional[list]) -> None:
    """Give the tasks of prompts on several rows their occurrence (see task identity): the
    k-th task (from 0) with the same prompt, parameters and edit inputs gets occurrence k,
    and a new id when k > 0. Only the rows whose prompt's hash another row shares are read
    again, and they are grouped as Arrow and numpy arrays, not a dict of their texts."""
    import numpy as np
    if len(hashes) < 2:
        return
    h = np.frombuffer(hashes, np.int64)
    ordered = np.sort(h)
    again = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    if not len(again):
        return
    rows = np.flatnonzero(np.isin(h, again))
    del h, again
    # A group for each candidate row: its prompt as the bytes its ids hash (equal bytes, equal
    # text; equal hashes alone may be a collision), and for an edit its inputs too.
    group = _groups(lambda start: [_prompt_part(t) for t in _texts(prompt_column, rows[start:start + PLAN_ROWS],
                                                                   text_column)], len(rows))
    if edit_inputs is not None:
        inputs = _groups(lambda start: [edit_inputs[r].key for r in rows[start:start + PLAN_ROWS].tolist()],
                         len(rows))
        # Both are below the number of rows: the pair as one number, then numbered densely again.
        group = np.unique(group * (int(inputs.max()) + 1) + inputs, return_inverse=True)[1].reshape(-1)
        del inputs
    # One sort key for each task of these rows (row after row, each row's points in order): its
    # row's group, then its parameters. One array sorted once, 32-bit where the numbers fit:
    # sorting the three apart (np.lexsort) held a 64-bit array of every task for each, and for
    # its row and its index, the plan's peak memory when prompts repeat. The group is below the
    # number of rows and the parameters below the number of tasks: for any input that fits in
    # memory the key fits in 64 bits.
    tasks = len(rows) * n_points
    variants = np.frombuffer(variant_of, np.uint32).reshape(-1, n_points)[rows]
    key = (group.reshape(-1, 1) * len(listed) + variants).reshape(-1)
    del group, variants
    if len(rows) * len(listed) < 2 ** 31:
        key = key.astype(np.int32)
    index = np.int32 if tasks < 2 ** 31 else np.int64
    order = np.argsort(key, kind="stable").astype(index, copy=False)   # stable: in plan order within a group
    key = key[order]
    first = np.empty(tasks, bool)               # the first task of its group, in that order
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    del key
    # In that order, a task's occurrence is how far it is from the first task of its group.
    occurrence = np.arange(tasks, dtype=index)
    starts = np.where(first, occurrence, 0).astype(index, copy=False)
    del first
    np.maximum.accumulate(starts, out=starts)
    occurrence -= starts
    del starts
    counted = np.flatnonzero(occurrence)          # the tasks that get a new id, by their place in that order
    occurrence = occurrence[counted]
    order = order[counted]
    del counted
    in_plan_order = np.argsort(order)
    candidates, occurrence = order[in_plan_order], occurrence[in_plan_order]
    del order, in_plan_order
    for start in range(0, len(candidates), PLAN_ROWS):
        block = candidates[start:start + PLAN_ROWS].astype(np.int64)
        input_rows = rows[block // n_points]
        texts = _texts(prompt_column, input_rows, text_column)
        for task, row, k, text in zip((input_rows * n_points + block % n_points).tolist(), input_rows.tolist(),
                                      occurrence[start:start + PLAN_ROWS].tolist(), texts):
            key = listed[variant_of[task]].key
            if edit_inputs is not None:
                key = _edit_key(key, edit_inputs[row])
            ids[task] = _id_key(_id_head(key, k), _prompt_part(text))


def _texts(prompt_column, rows, text_column: bool) -> list:
    """What identifies the prompts of these rows (numpy indices), as _make_plan reads it."""
    return _identifying(prompt_column.take(arrowbuf.int64_array(rows)).to_pylist(), text_column)


def _identifying(cells: list, text_column: bool) -> list:
    """What identifies a prompt: its text as sent, or the cell's own text when that is blank
    (two blank rows are told apart by it, as refused tasks need ids too)."""
    return cells if text_column else [None if c is None else str(c) for c in cells]


def _groups(values_from, count: int):
    """A number for each of `count` bytes values (values_from(start): PLAN_ROWS of them from
    `start`), equal for equal values, as a numpy int64 array. The values are held as Arrow only
    while they are numbered, and the memory Arrow took for them is given back before sorting."""
    # Only now: pyarrow.compute is slow to import, and most inputs repeat no prompt.
    import pyarrow as pa
    import pyarrow.compute as pc
    values = pa.concat_arrays([arrowbuf.binary_array(values_from(start)) for start in range(0, count, PLAN_ROWS)])
    numbers = arrowbuf.numpy_ints(pc.dictionary_encode(values).indices).copy()
    del values
    pa.default_memory_pool().release_unused()
    return numbers


def _check_prices(variants, config: JobConfig) -> None:
    """--max-cost needs a price for every model it would send to: a budget it cannot count is
    no budget."""
    prices = pricing.load(config.prices, config.models, config.provider)
    default = models.load(config.models).default_model(config.provider)
    unpriced = sorted({str(v.params.get("model") or default) for v in variants
                       if not v.problem and prices.estimate(v.params, config.mode) is None})
    if unpriced:
        raise UsageError(f"--max-cost cannot be kept: batchgen has no price for {', '.join(unpriced)} "
                         "(at these settings); give one with --prices FILE (a JSON price table, see the "
                         "README), or leave out --max-cost")


def _plan_warnings(config: JobConfig, columns: list) -> list:
    """--param's unknown parameters, and columns whose name looks like a misspelt parameter."""
    warnings = []
    if config.params:
        sent = ", ".join(f"{k}={json.dumps(v)}" for k, v in config.params.items())
        warnings.append(f"sending parameter(s) batchgen does not know, as given: {sent}; "
                        "the server decides what they mean")
    for column in columns:
        near = [p for p in PARAMETERS if len(column) > 2 and models.one_edit_apart(column.lower(), p)]
        if near and column not in PARAMETERS:
            warnings.append(f"the column {column!r} is passed through as data, not sent; "
                            f"did you mean {near[0]!r}?")
    return warnings


def _content_digest(table, names: list) -> str:
    """A digest of what the columns `names` hold: their types and their Arrow buffers (the same
    digest means the same cells; the same cells laid out otherwise may digest otherwise, which
    costs a rebuild of the results, nothing more). Tens of milliseconds for a million rows."""
    import pyarrow as pa
    h = hashlib.blake2b(digest_size=16)
    for name in names:
        column = table.column(name)
        h.update(b"%s\x1f%s\x1f%d\x1f" % (name.encode("utf-8", "surrogatepass"), str(column.type).encode(),
                                            column.num_chunks))
        for chunk in column.chunks:
            if pa.types.is_nested(chunk.type):
                # Children may have offsets of their own that buffers() does not show: by value.
                h.update(repr(chunk.to_pylist()).encode("utf-8", "surrogatepass"))
                continue
            _update_with_array(h, chunk)
    return h.hexdigest()


def _update_with_array(h, array) -> None:
    h.update(b"%d\x1f%d\x1f%d\x1f" % (array.offset, len(array), array.null_count))
    for buffer in array.buffers():
        if buffer is None:
            h.update(b"-")
        else:
            h.update(b"%d:" % buffer.size)
            h.update(buffer)
    if hasattr(array, "dictionary"):
        _update_with_array(h, array.dictionary)


def _is_text(arrow_type) -> bool:
    import pyarrow as pa
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_view = getattr(pa.types, "is_string_view", lambda t: False)
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or is_view(arrow_type)
            or pa.types.is_null(arrow_type))


def _check_column_types(table, prompt_column: str, param_columns: list) -> None:
    """The prompt column holds text (or numbers, which a CSV makes of digits); a parameter
    column holds one value per row. Anything else is a usage error, not a repr sent as is."""
    import pyarrow as pa
    kind = table.schema.field(prompt_column).type
    if not (_is_text(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            how = (f"decode the bytes first (in pandas: df[{prompt_column!r}] = "
                   f"df[{prompt_column!r}].str.decode('utf-8'))")
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            how = (f"join each list into one text first (in pandas: df[{prompt_column!r}] = "
                   f"df[{prompt_column!r}].str.join(' '))")
        else:
            how = "write each prompt as a string first"
        raise UsageError(
            f"the prompt column {prompt_column!r} holds {kind} values, not text; a prompt is sent as text, "
            f"so store the prompts in a text (string) column: {how}. Or name the column that holds "
            "the text with --prompt-column NAME.")
    for column in param_columns:
        kind = table.schema.field(column).type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            raise UsageError(
                f"the column {column!r} sets the {column} parameter of its row, but holds {kind} values; "
                f"give it one text value per row (like {models.EXAMPLES[column]}), or rename the column to "
                "keep it as a pass-through column")
