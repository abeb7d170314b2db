"""Jobs: settings from a job file and the command line, and the plan they make.

A plan turns each input row × sweep point into a Task with a stable id. Planning is pure
(the table is read elsewhere) so it tests without a server or files.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import _gc, models, providers
from .exceptions import UsageError

PARAMETERS = models.PARAMETERS
MODES = ("live",)      # each has a backend in batchgen.backends


@dataclass
class JobConfig:
    source: Optional[str] = None          # the data file
    out: Optional[str] = None
    prompt_column: str = "prompt"
    defaults: dict = field(default_factory=dict)     # parameter -> value for rows that lack it
    sweep: list = field(default_factory=list)        # [(axis, [values...]), ...]
    concurrency: int = 8
    rpm: Optional[float] = None
    max_retries: int = 8
    backoff_base: float = 1.0             # seconds; the first retry waits up to this (full jitter)
    timeout: float = 300.0
    provider: str = providers.DEFAULT_PROVIDER
    mode: str = "live"
    base_url: Optional[str] = None
    limit: Optional[int] = None
    retry_failed: bool = False
    max_cost: Optional[float] = None
    simulate: bool = False
    encoding: Optional[str] = None
    job_file: Optional[str] = None

    def fingerprint(self) -> str:
        """What makes two runs the same job: the parameters that define each task.

        The row set, the file's name and the operational knobs (concurrency, endpoint, retries,
        limit, budget) are left out, so a reordered or extended input and a rerun against another
        endpoint resume the same job.
        """
        return _digest(json.dumps(
            {"prompt_column": self.prompt_column, "defaults": self.defaults,
             "sweep": [[axis, values] for axis, values in self.sweep]},
            sort_keys=True, default=str))[:16]

    def public_dict(self) -> dict:
        """The settings as job.json records them (a base URL without credentials or query)."""
        d = asdict(self)
        d["sweep"] = [[axis, values] for axis, values in self.sweep]
        if d["base_url"]:
            d["base_url"] = providers.public_url(d["base_url"])
        return d


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- values -----------------------------------------------------------------------------

def parse_param_value(param: str, value: Any, where: str) -> Any:
    """A parameter value as the API wants it; raises UsageError naming `where`."""
    if param == "n":
        try:
            n = int(str(value))
        except ValueError:
            raise UsageError(f"{where}: n must be a whole number, not {value!r}") from None
        return n
    if param not in PARAMETERS:
        raise UsageError(f"{where}: unknown parameter {param!r}; parameters are {', '.join(PARAMETERS)}")
    return str(value).strip()


def parse_sweep(specs: list[str]) -> list[tuple[str, list]]:
    """['quality=standard,hd', 'style=vivid,natural'] -> [('quality', [...]), ('style', [...])]"""
    axes = []
    for spec in specs:
        axis, sep, values = spec.partition("=")
        axis = axis.strip()
        if not sep or not values.strip():
            raise UsageError(f"--sweep {spec!r}: write AXIS=V1,V2 (e.g. --sweep quality=standard,hd)")
        if axis not in PARAMETERS:
            raise UsageError(f"--sweep {spec!r}: {axis!r} is not a parameter; sweep one of {', '.join(PARAMETERS)}")
        parsed = [parse_param_value(axis, v, f"--sweep {axis}") for v in values.split(",") if v.strip()]
        axes.append((axis, parsed))
    return _merge_axes(axes)


def _merge_axes(axes):
    seen = {}
    for axis, values in axes:
        if axis in seen:
            raise UsageError(f"--sweep names {axis!r} twice; give all its values once: {axis}=A,B,C")
        if len(set(map(str, values))) != len(values):
            raise UsageError(f"--sweep {axis}: a value is listed twice")
        seen[axis] = values
    return list(seen.items())


def sweep_points(sweep) -> list[dict]:
    """The cartesian product of the sweep axes; [{}] when there is no sweep."""
    if not sweep:
        return [{}]
    names = [axis for axis, _ in sweep]
    return [dict(zip(names, combo)) for combo in itertools.product(*[v for _, v in sweep])]


def point_label(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "all"


# ---- job files --------------------------------------------------------------------------

_JOB_KEYS = {"input", "out", "prompt_column", "defaults", "sweep", "concurrency", "rpm",
             "max_retries", "backoff_base", "timeout", "provider", "mode", "base_url", "limit", "max_cost",
             "encoding"}


def load_job_file(path) -> dict:
    """Settings from a job file, as keyword arguments of JobConfig (paths resolved)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such job file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a valid TOML job file: {e}") from None
    unknown = set(data) - _JOB_KEYS
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; "
                         f"a job file may set {', '.join(sorted(_JOB_KEYS))}")
    settings: dict = {"job_file": str(path)}
    base = path.parent
    if "input" not in data:
        raise UsageError(f"{path}: the job file needs input = \"path/to/prompts.csv\"")
    settings["source"] = os.path.normpath(base / data["input"])
    if "out" in data:
        settings["out"] = os.path.normpath(base / data["out"])
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{path}: [defaults] must be a table of parameter = value")
    settings["defaults"] = {k: parse_param_value(k, v, f"{path} [defaults]") for k, v in defaults.items()}
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise UsageError(f"{path}: [sweep] must be a table of axis = [values, ...]")
    settings["sweep"] = _merge_axes([
        (axis, [parse_param_value(axis, v, f"{path} [sweep]") for v in values])
        for axis, values in sweep.items()])
    for key in ("prompt_column", "concurrency", "rpm", "max_retries", "backoff_base", "timeout", "provider",
                "mode", "base_url", "limit", "max_cost", "encoding"):
        if key in data:
            settings[key] = data[key]
    return settings


def resolve_config(source: str, overrides: dict) -> JobConfig:
    """A JobConfig from SOURCE (job file or data file) and command-line overrides (None = unset)."""
    settings: dict = {}
    if str(source).lower().endswith(".toml"):
        settings.update(load_job_file(source))
    else:
        settings["source"] = str(source)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cli_defaults = {k: parse_param_value(k, v, "defaults")
                    for k, v in (overrides.pop("defaults", {}) or {}).items() if v is not None}
    settings["defaults"] = {**settings.get("defaults", {}), **cli_defaults}
    if overrides.get("sweep"):
        # Axes named on the command line replace the job file's axes of the same name.
        cli_axes = dict(overrides.pop("sweep"))
        file_axes = [(a, v) for a, v in settings.get("sweep", []) if a not in cli_axes]
        settings["sweep"] = file_axes + list(cli_axes.items())
    else:
        overrides.pop("sweep", None)
    settings.update(overrides)
    config = JobConfig(**settings)
    if config.out is None:
        config.out = str(Path("runs") / Path(config.job_file or config.source).stem)
    check_settings(config)
    return config


def check_settings(config: JobConfig) -> None:
    providers.get(config.provider)
    if config.mode not in MODES:
        raise UsageError(f"mode {config.mode!r} is unknown; use one of {', '.join(MODES)}")
    for name, low in (("concurrency", 1), ("max_retries", 0), ("limit", 0)):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"{name} must be a whole number ≥ {low}, not {value!r}")
    for name in ("rpm", "timeout", "max_cost", "backoff_base"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise UsageError(f"{name} must be a number > 0, not {value!r}")


# ---- planning ---------------------------------------------------------------------------

@dataclass(slots=True)
class Task:
    task_id: str
    row_index: int
    prompt: Any
    params: dict               # only the parameters that are set; shared by tasks alike
    point: int                 # index into Plan.points
    problem: Optional[str] = None   # set: refused before sending (invalid_params)

    @property
    def images_expected(self) -> int:
        return int(self.params.get("n") or 1)


@dataclass
class Plan:
    config: JobConfig
    points: list[dict]
    tasks: list[Task]              # every task, refused ones included, in input order
    passthrough: list[str]         # input columns that go to the results unchanged
    unknown_models: list[str]


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
    if param == "n":
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        try:
            return int(str(value).strip()), None
        except ValueError:
            return None, f"n {value!r} is not a whole number"
    return str(value).strip(), None


def check_defaults(config: JobConfig, points: list[dict]) -> list[str]:
    """Default or sweep values the model refuses: a usage error, as no row could use them."""
    problems = []
    for point in points:
        params = {**config.defaults, **point}
        for problem in models.parameter_problems(params):
            param = problem.split(" ", 1)[0]     # each problem starts with its parameter
            text = f"{'sweep' if param in point else 'default'} {problem}"
            if text not in problems:
                problems.append(text)
    return problems


@dataclass(frozen=True, slots=True)
class _Variant:
    """What every task with the same parameters shares: computed once, not per task."""
    params: dict
    key: bytes                   # the parameters' part of the task id
    problem: Optional[str]       # the model refuses these parameters
    max_prompt: Optional[int]


def _variant(params: dict) -> _Variant:
    params = {k: params[k] for k in PARAMETERS if params.get(k) is not None}
    found = models.parameter_problems(params)
    rules = models.rules_for(params.get("model"))
    return _Variant(params, json.dumps(params, sort_keys=True).encode(), "; ".join(found) or None,
                    rules.max_prompt_chars if rules else None)


def make_plan(table, config: JobConfig) -> Plan:
    """Every task of the job, with refused rows marked; raises UsageError for bad settings.

    `table` is the input as a pyarrow.Table (reader.read_table)."""
    with _gc.paused():
        return _make_plan(table, config)


def _make_plan(table, config: JobConfig) -> Plan:
    columns = list(table.column_names)
    if config.prompt_column not in columns:
        raise UsageError(
            f"no column {config.prompt_column!r} in {config.source}; its columns are: "
            f"{', '.join(map(repr, columns))}. Name the prompt column with --prompt-column NAME.")
    points = sweep_points(config.sweep)
    problems = check_defaults(config, points)
    if problems:
        raise UsageError("; ".join(problems))
    param_columns = [c for c in PARAMETERS if c in columns]
    passthrough = [c for c in columns if c != config.prompt_column and c not in PARAMETERS]
    if config.limit is not None:
        table = table.slice(0, config.limit)

    # Row identity: the row's cells (by column name, so column order does not matter) plus
    # how many identical rows came before it, so duplicates stay distinct tasks and a
    # reordered file maps every row to the same ids.
    ordered = sorted(columns)
    lists = {c: table.column(c).to_pylist() for c in columns}
    values = [lists[c] for c in ordered]
    header = "\x1e".join(ordered)
    seen: dict[str, int] = {}
    prompts = lists[config.prompt_column]
    row_params = [lists[c] for c in param_columns]
    variants: dict = {}      # (row's own parameters, point index) -> _Variant
    tasks: list[Task] = []
    append = tasks.append
    blake2b = hashlib.blake2b
    point_range = range(len(points))
    for i, cells in enumerate(zip(*values)):
        row_key = header + "\x1f" + "\x1f".join(map(repr, cells))
        occurrence = seen.get(row_key, 0)
        seen[row_key] = occurrence + 1
        row_hash = blake2b(f"{row_key}\x1d{occurrence}".encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()
        prompt = _cell(prompts[i])
        if prompt is not None and not isinstance(prompt, str):
            prompt = str(prompt)
        own: dict = {}
        row_problem = None
        for param, col_values in zip(param_columns, row_params):
            value = _cell(col_values[i])
            if value is not None:
                own[param], problem = _row_param(param, value)
                row_problem = row_problem or problem
        own_key = tuple(own.items())
        blank = prompt is None or not prompt.strip()
        for p_index in point_range:
            variant = variants.get((own_key, p_index))
            if variant is None:
                variant = variants[(own_key, p_index)] = _variant({**config.defaults, **own, **points[p_index]})
            task_id = blake2b(row_hash + variant.key, digest_size=8).hexdigest()
            problem = row_problem
            if problem is None:
                if blank:
                    problem = "prompt is missing or blank"
                elif variant.max_prompt is not None and len(prompt) > variant.max_prompt:
                    problem = models.prompt_problem(prompt, variant.params.get("model"))
                else:
                    problem = variant.problem
            append(Task(task_id, i, prompt, variant.params, p_index, problem))
    unknown_models = sorted({v.params["model"] for v in variants.values()
                             if models.rules_for(v.params.get("model")) is None})
    return Plan(config, points, tasks, passthrough, unknown_models)
