"""A job's settings: `JobConfig`, job files (TOML) laid under the command line's options, the
values of parameters and sweeps, and the checks every setting passes before anything is read.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from batchgen.exceptions import UsageError
from batchgen.rules import models, modes, pricing, providers
from batchgen.rules.modes import MAX_BATCH_REQUESTS

PARAMETERS = models.PARAMETERS
INT_PARAMETERS = models.INT_PARAMETERS

AUTO = "auto"     # --concurrency auto: in flight follows the learned rate × latency

@dataclass
class JobConfig:
    source: Optional[str] = None          # the data file
    out: Optional[str] = None
    prompt_column: str = "prompt"
    defaults: dict = field(default_factory=dict)     # parameter -> value for rows that lack it
    sweep: list = field(default_factory=list)        # [(axis, [values...]), ...]
    concurrency: Union[int, str] = AUTO   # requests in flight; AUTO: the learned rate × latency
    max_concurrency: int = 1000           # the most in flight that AUTO may reach
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
    max_wait: float = 600.0               # seconds: a server asking for a longer pause stops the run
    batch_size: int = 1000                # Batch API: requests per batch (see the CLI's help)
    no_wait: bool = False                 # Batch API: submit and leave; a later run collects
    poll_interval: float = 60.0           # Batch API: the longest pause between two looks
    resubmit_lost: bool = False           # Batch API: send again the tasks of a batch the server lost
    callback_url: Optional[str] = None    # async mode: where AceData POSTs each task's outcome
    simulate: bool = False
    encoding: Optional[str] = None
    job_file: Optional[str] = None
    params: dict = field(default_factory=dict)       # --param: sent as is, batchgen does not know them
    image_column: Optional[str] = None    # edits: the input images (None: "image" when present)
    mask_column: Optional[str] = None     # edits: the masks (None: "mask" when present)
    markup_column: Optional[str] = None   # edits: markup images, gpt-image-2.6 (None: "markup" when present)
    prices: Optional[str] = None          # a price file over the built-in one
    models: Optional[str] = None          # a model catalog file over the built-in one

    def fingerprint(self) -> str:
        """What makes two runs the same job: the parameters that define each task.

        The row set, the file's name and the operational knobs (concurrency, endpoint, retries,
        limit, budget) are left out, so a reordered or extended input and a rerun against another
        endpoint resume the same job.
        """
        defining = {"prompt_column": self.prompt_column, "defaults": self.defaults,
                    "sweep": [[axis, values] for axis, values in self.sweep]}
        for key in ("params", "image_column", "mask_column", "markup_column"):
            if getattr(self, key):     # only when set, so folders made before them keep their job
                defining[key] = getattr(self, key)
        return _digest(json.dumps(defining, sort_keys=True, default=str))[:16]

    def public_dict(self) -> dict:
        """The settings as job.json records them (a base URL without credentials or query)."""
        d = asdict(self)
        d["sweep"] = [[axis, values] for axis, values in self.sweep]
        if d["base_url"]:
            d["base_url"] = providers.public_url(d["base_url"])
        if d["callback_url"]:       # a webhook's secret may sit in its query
            d["callback_url"] = providers.public_url(d["callback_url"])
        return d


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- values -----------------------------------------------------------------------------

def parse_param_value(param: str, value: Any, where: str) -> Any:
    """A parameter value as the API wants it; raises UsageError naming `where` (the option,
    or the job file's table, it came from)."""
    if param not in PARAMETERS:
        raise UsageError(f"{where}: unknown parameter {param!r}; parameters are {', '.join(PARAMETERS)}")
    label = where if where.replace("-", "_").endswith(param) else f"{where} {param}"
    if param in INT_PARAMETERS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{label} must be a whole number (e.g. {_EXAMPLES[param]}), not {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"{label} must be a whole number (e.g. {_EXAMPLES[param]}), not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{label} must be one text value (e.g. {_EXAMPLES[param]}), not {value!r}")
    text = str(value).strip()
    if not text:
        raise UsageError(f"{label} is empty; give it a value (e.g. {_EXAMPLES[param]}) or leave it out")
    return text


_EXAMPLES = models.EXAMPLES


def parse_extra_param(spec, where: str = "--param") -> tuple[str, Any]:
    """'KEY=VALUE' as (key, value): VALUE as JSON when it reads as JSON (a number, true,
    an object), else the text. A key batchgen knows is refused: it has its own option."""
    if isinstance(spec, tuple):
        key, value = spec
    else:
        key, sep, value = str(spec).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where} {spec!r}: write KEY=VALUE (e.g. --param user=dataset-42)")
        key = key.strip()
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if key in PARAMETERS or key == "prompt":
        raise UsageError(f"{where} {key}: batchgen knows {key!r}; set it with --{key.replace('_', '-')} "
                         "(or a column or sweep axis) instead")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        raise UsageError(f"{where} {key!r}: a parameter name is letters, digits and _ (e.g. user)")
    return key, value


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
        if not parsed:
            raise UsageError(f"--sweep {spec!r} names no value; write AXIS=V1,V2 "
                             "(e.g. --sweep quality=standard,hd)")
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

_JOB_KEYS = {"input", "out", "prompt_column", "defaults", "sweep", "concurrency", "max_concurrency", "rpm",
             "max_retries", "backoff_base", "timeout", "provider", "mode", "base_url", "limit", "max_cost",
             "max_wait", "encoding", "batch_size", "no_wait", "poll_interval", "params", "image_column",
             "mask_column", "markup_column", "prices", "resubmit_lost", "callback_url", "models"}


def load_job_file(path) -> dict:
    """Settings from a job file, as keyword arguments of JobConfig (paths resolved)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    from batchgen.planning.reader import regular_file
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such job file")
    regular_file(path)
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
    for key, example in (("input", "../data/prompts.csv"), ("out", "../runs/my_job")):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise UsageError(f"{path}: {key} must be a path in quotes (e.g. {key} = \"{example}\"), "
                             f"not {data[key]!r}")
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
    extra = data.get("params", {})
    if not isinstance(extra, dict):
        raise UsageError(f"{path}: [params] must be a table of name = value (sent as is)")
    settings["params"] = dict(parse_extra_param((k, v), f"{path} [params]") for k, v in extra.items())
    for key in ("prompt_column", "concurrency", "max_concurrency", "rpm", "max_retries", "backoff_base", "timeout",
                "provider", "mode", "base_url", "limit", "max_cost", "max_wait", "encoding", "batch_size", "no_wait",
                "poll_interval", "image_column", "mask_column", "markup_column", "resubmit_lost",
                "callback_url"):
        if key in data:
            settings[key] = data[key]
    for key in ("prices", "models"):
        if key in data:
            if not isinstance(data[key], str):
                raise UsageError(f"{path}: {key} must be a path in quotes (e.g. {key} = \"{key}.json\")")
            settings[key] = os.path.normpath(base / data[key])
    check_settings(JobConfig(**settings), job_file=str(path))
    return settings


def resolve_config(source: str, overrides: dict) -> JobConfig:
    """A JobConfig from SOURCE (job file or data file) and command-line overrides (None = unset)."""
    settings: dict = {}
    if str(source).lower().endswith(".toml"):
        settings.update(load_job_file(source))
    else:
        settings["source"] = str(source)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    explicit_out = "out" in overrides
    cli_defaults = {k: parse_param_value(k, v, "--" + k.replace("_", "-"))
                    for k, v in (overrides.pop("defaults", {}) or {}).items() if v is not None}
    settings["defaults"] = {**settings.get("defaults", {}), **cli_defaults}
    if overrides.get("sweep"):
        # Axes named on the command line replace the job file's axes of the same name.
        cli_axes = dict(overrides.pop("sweep"))
        file_axes = [(a, v) for a, v in settings.get("sweep", []) if a not in cli_axes]
        settings["sweep"] = file_axes + list(cli_axes.items())
    else:
        overrides.pop("sweep", None)
    if overrides.get("params"):
        settings["params"] = {**settings.get("params", {}),
                              **dict(parse_extra_param(spec) for spec in overrides.pop("params"))}
    else:
        overrides.pop("params", None)
    settings.update(overrides)
    config = JobConfig(**settings)
    if config.out is None:
        config.out = str(Path("runs") / Path(config.job_file or config.source or "").stem)
    if config.simulate and not explicit_out:
        config.out = simulated_out(config.out)
    check_settings(config)
    return config


SIMULATED_DIR = "simulated"


def simulated_out(out: str) -> str:
    """Where a simulated run goes when no --out names it: runs/simulated/NAME beside the real
    run's runs/NAME (the job file's `out`, or the default), so placeholders never land where
    the real run of the same job would."""
    path = Path(out)
    if path.parent.name == SIMULATED_DIR:
        return out
    return str(path.parent / SIMULATED_DIR / path.name)


_TEXT_SETTINGS = (("prompt_column", "prompt"), ("provider", providers.DEFAULT_PROVIDER), ("mode", "live"),
                  ("base_url", "https://api.openai.com/v1"), ("encoding", "cp1252"), ("image_column", "image"),
                  ("mask_column", "mask"), ("markup_column", "markup"), ("prices", "prices.json"),
                  ("models", "models.json"))


def check_settings(config: JobConfig, job_file: Optional[str] = None) -> None:
    """Every setting has a value of the right kind; raises UsageError naming the option (or,
    for a job file's own values, the file and its key) and an example of a good value."""
    def name(key: str) -> str:
        return f"{job_file}: {key}" if job_file else "--" + key.replace("_", "-")

    def example(key: str, value: str, quoted: bool = False) -> str:
        if job_file:
            return f"{key} = \"{value}\"" if quoted else f"{key} = {value}"
        return f"--{key.replace('_', '-')} {value}"

    for key, good in _TEXT_SETTINGS:
        value = getattr(config, key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{name(key)} must be text (e.g. {example(key, good, True)}), not {value!r}")
    if not config.prompt_column.strip():
        raise UsageError(f"{name('prompt_column')} is empty; name the column that holds the prompts")
    try:
        providers.get(config.provider)
        modes.get(config.mode)
        if config.base_url is not None:
            providers.endpoint_url(config.base_url, "base_url" if job_file else "--base-url")
        if config.encoding is not None:
            from batchgen.planning.reader import check_encoding
            check_encoding(config.encoding, "encoding" if job_file else "--encoding")
        if config.models is not None:
            models.load(config.models)
        if config.prices is not None or config.models is not None:
            pricing.load(config.prices, config.models)
    except UsageError as e:
        raise UsageError(f"{job_file}: {e}" if job_file else str(e)) from None
    if config.concurrency != AUTO:
        value = config.concurrency
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name('concurrency')} must be {AUTO} or a whole number ≥ 1 "
                             f"(e.g. {example('concurrency', AUTO, True)} or {example('concurrency', '64')}), "
                             f"not {value!r}")
    for key, low in (("max_concurrency", 1), ("max_retries", 0), ("limit", 0)):
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"{name(key)} must be a whole number ≥ {low} (e.g. {example(key, str(max(low, 8)))}), "
                             f"not {value!r}")
    for key, good in (("rpm", "60"), ("timeout", "300"), ("max_cost", "5"), ("backoff_base", "1"),
                      ("max_wait", "600"), ("poll_interval", "60")):
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise UsageError(f"{name(key)} must be a finite number > 0 (e.g. {example(key, good)}), not {value!r}")
    check_mode_settings(config, name)


def check_mode_settings(config: JobConfig, name=lambda key: "--" + key.replace("_", "-")) -> None:
    """The Batch API's options have values of their kind; the mode's own checks (its provider,
    options that need it)."""
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) \
            or not 1 <= config.batch_size <= MAX_BATCH_REQUESTS:
        raise UsageError(f"{name('batch_size')} must be a whole number from 1 to {MAX_BATCH_REQUESTS:,} "
                         f"(the Batch API's limit), not {config.batch_size!r}")
    if not isinstance(config.no_wait, bool):
        raise UsageError(f"{name('no_wait')} must be true or false, not {config.no_wait!r}")
    if not isinstance(config.resubmit_lost, bool):
        raise UsageError(f"{name('resubmit_lost')} must be true or false, not {config.resubmit_lost!r}")
    modes.get(config.mode).check_settings(config, name)
