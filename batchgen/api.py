"""The Python API: `batchgen.run` and `batchgen.plan` as a notebook calls them, keyword
arguments named as the command line's options (typed, documented, a typo answered with the
name it resembles), a source that is a path or a table in memory, and errors worded for Python
(`simulate=True`, not `--simulate`). Both hand over to `commands`, which the command line calls too.

A new option of `batchgen run` is one keyword here: one line in `run`'s signature (and its
docstring). An image parameter (a name in `models.PARAMETERS`) becomes a default of the job by
itself; any other keyword is the `JobConfig` field of that name. `plan` shares `run`'s keywords.
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional, ParamSpec, Sequence, TypeVar, Union

from batchgen.exceptions import UsageError

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from batchgen.planning.summary import PlanSummary
    from batchgen.runner import Summary

Source = Union[str, "os.PathLike[str]", "pandas.DataFrame", "pyarrow.Table", Sequence[Mapping[str, Any]]]
Sweep = Union[Mapping[str, Sequence[Any]], Sequence[str], Sequence[tuple]]
P = ParamSpec("P")
R = TypeVar("R")

# Keywords that are no setting of the job.
_CALL_ONLY = ("source", "progress", "environ", "verbose", "log_file", "unknown")


def run(source: Source, *,
        out: Union[str, "os.PathLike[str]", None] = None,
        prompt_column: Optional[str] = None,
        model: Optional[str] = None,
        quality: Optional[str] = None,
        style: Optional[str] = None,
        size: Optional[str] = None,
        response_format: Optional[str] = None,
        n: Optional[int] = None,
        output_format: Optional[str] = None,
        output_compression: Optional[int] = None,
        background: Optional[str] = None,
        moderation: Optional[str] = None,
        input_fidelity: Optional[str] = None,
        complexity: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        image_column: Optional[str] = None,
        mask_column: Optional[str] = None,
        markup_column: Optional[str] = None,
        prices: Union[str, "os.PathLike[str]", None] = None,
        models: Union[str, "os.PathLike[str]", None] = None,
        defaults: Optional[Mapping[str, Any]] = None,
        sweep: Optional[Sweep] = None,
        provider: Optional[str] = None,
        mode: Optional[str] = None,
        base_url: Optional[str] = None,
        limit: Optional[int] = None,
        encoding: Optional[str] = None,
        rpm: Optional[float] = None,
        concurrency: Union[int, Literal["auto"], None] = None,
        max_concurrency: Optional[int] = None,
        max_retries: Optional[int] = None,
        backoff_base: Optional[float] = None,
        timeout: Optional[float] = None,
        retry_failed: Optional[bool] = None,
        max_cost: Optional[float] = None,
        max_wait: Optional[float] = None,
        batch_size: Optional[int] = None,
        no_wait: Optional[bool] = None,
        poll_interval: Optional[float] = None,
        resubmit_lost: Optional[bool] = None,
        callback_url: Optional[str] = None,
        simulate: Optional[bool] = None,
        progress: bool = True,
        environ: Optional[Mapping[str, str]] = None,
        verbose: bool = False,
        log_file: Union[str, "os.PathLike[str]", None] = None,
        **unknown: Any) -> "Summary":
    """Generate an image for every task of `source`; resumable, like `batchgen run`.

    source: a job file (.toml), a data file (.csv, .tsv, .parquet, .jsonl), or a table in memory:
        a pandas DataFrame, a pyarrow Table or a list of dicts (then `out` is needed).
    out: the output folder (default: the job file's `out`, else runs/<name>; with simulate=True,
        simulated/<name> beside it). Run again with the same `out` to resume: finished tasks are
        not sent again, and added rows, sweep values or defaults send only their new tasks.
    prompt_column: the column holding the prompt (default "prompt").
    model, quality, style, size, response_format, n: the default of each image parameter for
        rows without a cell of their own (e.g. model="dall-e-3", quality="hd"). `defaults` gives
        them as one dict instead (a keyword wins over its entry).
    output_format ("png", "jpeg", "webp"), output_compression (0-100, jpeg/webp), background
        ("transparent" needs png or webp, "opaque", "auto"), moderation ("low", "auto"),
        input_fidelity (edits: "high", "low"), complexity (gpt-image-2.6: "low", "medium", "high"):
        the GPT image models' parameters, defaults likewise.
    params: parameters batchgen does not know, sent as given ({"user": "dataset-42"}).
    image_column, mask_column: an edits table's input images and masks (default: the columns
        "image" and "mask" when present); paths relative to the input file, or URLs.
    markup_column: an edits table's markup images (gpt-image-2.6's markup-guided edits; default:
        the column "markup" when present), one per row, sent beside the images.
    prices: a JSON price file over the built-in prices (for a model batchgen has no price for).
    models: a JSON model catalog over the built-in one (`batchgen models` shows what it knows).
    sweep: parameters to sweep, every combination: {"quality": ["standard", "hd"]} (also
        [("quality", [...])] or ["quality=standard,hd"], the command line's spelling).
    provider: "acedata" (ACEDATA_API_TOKEN; the default) or "openai" (OPENAI_API_KEY).
    mode: "live" (default) or "batch" (OpenAI's Batch API, half the price, within 24 h).
    base_url: the endpoint (…/images/generations) or an SDK-style base (…/v1).
    limit: only the first N input rows. encoding: a CSV/JSONL's text encoding if not UTF-8.
    rpm: requests per minute never to exceed (a request for n images counts n).
    concurrency: requests in flight: "auto" (the default: what the rate the server allows needs at
        its latency, up to max_concurrency, 1000) or a fixed number. max_retries: retries per task (default 8).
    backoff_base: seconds the first retry waits at most (1; each retry doubles it, capped at 60).
    timeout: seconds per request (300). retry_failed: send again the tasks that failed.
    max_cost: stop launching once the estimated spend would pass this many USD.
    max_wait: the longest Retry-After pause to wait for, in seconds (600).
    batch_size, no_wait, poll_interval: batch mode (see `batchgen run --help`).
    resubmit_lost: batch mode: send again the tasks of a batch the server no longer knows (it
        may pay twice if that batch still runs elsewhere).
    callback_url: async mode (AceData's callback mode): where AceData POSTs each task's outcome
        (default: an address that receives nothing; batchgen polls the Tasks API either way).
    simulate: run against the built-in simulator (no token needed; placeholder images).
    progress: show a progress bar. environ: where tokens are read (default os.environ).
    verbose: a line per attempt, rate-limit pause and stop on stderr; log_file: the same lines
        appended to that file.

    Returns the Summary (counts, cost, exit_status; `.results()` is the results DataFrame;
    print() it for what `batchgen run` prints). Inside a running event loop (Jupyter), Ctrl-C
    stops the run as on the command line and the Summary says so (stopped == "interrupted").
    Raises UsageError (or JobMismatch, FolderBusy) before anything is sent when the input or an
    argument is wrong, with the message `batchgen run` prints.
    """
    options = {k: v for k, v in locals().items() if k not in _CALL_ONLY}
    from batchgen import commands
    source_name, table = _source(source, options.get("out"))
    with _python_wording():
        return commands.run(source_name, progress=progress, environ=environ, table=table, verbose=verbose,
                       log_file=None if log_file is None else os.fspath(log_file),
                       **_settings(options, unknown, "run"))


def _same_keywords(of: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give the decorated function `of`'s keywords: for type checkers (ParamSpec) and for help()
    and notebooks (its signature)."""
    def decorate(f: Callable[..., R]) -> Callable[P, R]:
        f.__signature__ = inspect.signature(of).replace(  # type: ignore[attr-defined]
            return_annotation=inspect.signature(f).return_annotation)
        return f
    return decorate


@_same_keywords(run)
def plan(source: Source, **options: Any) -> "PlanSummary":
    """Validate `source` and count its tasks, images and estimated cost per sweep point, as
    `batchgen plan` does; sends nothing and writes nothing. Takes `run`'s keywords (those that
    only matter when sending are accepted and ignored, so one dict of options serves both).

    Returns a PlanSummary: `.tasks`, `.refused`, `.cost_usd` (None when a price is unknown),
    `.points` (per sweep point), `.refused_by_reason`; print() it for the table `batchgen plan` shows.
    """
    from batchgen.commands import plan as plan_job
    for call_only in _CALL_ONLY:
        options.pop(call_only, None)
    known = set(inspect.signature(run).parameters) - set(_CALL_ONLY)
    unknown = {k: options.pop(k) for k in list(options) if k not in known}
    source_name, table = _source(source, options.get("out"))
    with _python_wording():
        return plan_job(source_name, _settings(options, unknown, "plan"), table)[1]


# ---- keywords to settings ---------------------------------------------------------------

def _settings(options: dict, unknown: dict, function: str) -> dict:
    """The keywords as commands.run/prepare take them: parameters gathered into `defaults`, the sweep
    checked and as [(axis, values)]; unset (None) keywords left out."""
    if unknown:
        known = sorted(set(inspect.signature(run).parameters) - {"source", "unknown"})
        words = []
        for name in sorted(unknown):
            close = difflib.get_close_matches(name, known, n=2)
            words.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise UsageError(f"batchgen.{function}() has no keyword {', '.join(words)}; its keywords are "
                         f"{', '.join(known)}")
    from batchgen.planning.settings import PARAMETERS
    options = {k: v for k, v in options.items() if v is not None}
    defaults = options.pop("defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise UsageError(f"defaults must be a dict of parameter: value (e.g. {{'model': 'dall-e-3'}}), "
                         f"not {defaults!r}")
    defaults = dict(defaults)
    defaults.update({k: options.pop(k) for k in PARAMETERS if k in options})
    settings: dict[str, Any] = {"defaults": defaults}
    if "sweep" in options:
        settings["sweep"] = _sweep(options.pop("sweep"))
    for path in ("out", "prices", "models"):
        if path in options:
            options[path] = os.fspath(options[path])
    if "params" in options:
        extra = options["params"]
        if not isinstance(extra, Mapping):
            raise UsageError(f"params must be a dict of name: value (e.g. {{'user': 'dataset-42'}}), not {extra!r}")
        options["params"] = list(extra.items())
    return {**options, **settings}


def _sweep(sweep: Any) -> list:
    # `import batchgen` stays light: the planning modules load when a function is called.
    from batchgen.planning.settings import PARAMETERS, _merge_axes, parse_param_value, parse_sweep
    if isinstance(sweep, Mapping):
        pairs = list(sweep.items())
    elif isinstance(sweep, (list, tuple)) and all(isinstance(s, str) for s in sweep):
        return parse_sweep(list(sweep))
    elif isinstance(sweep, (list, tuple)) and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sweep):
        pairs = [tuple(s) for s in sweep]
    else:
        raise UsageError(f"sweep must be a dict of parameter: [values] (e.g. {{'quality': ['standard', 'hd']}}), "
                         f"not {sweep!r}")
    axes = []
    for axis, values in pairs:
        if axis not in PARAMETERS:
            raise UsageError(f"sweep: {axis!r} is not a parameter; sweep one of {', '.join(PARAMETERS)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UsageError(f"sweep {axis!r} must be a list of values (e.g. {{'quality': ['standard', 'hd']}}), "
                             f"not {values!r}")
        axes.append((axis, [parse_param_value(axis, v, f"sweep {axis}") for v in values]))
    return _merge_axes(axes)


def _source(source: Source, out: object) -> tuple[str, Optional["pyarrow.Table"]]:
    """(what api takes as the source, the table when it is in memory)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source), None
    from batchgen.planning.reader import table_from
    what = _IN_MEMORY.get(type(source).__name__, f"the {type(source).__name__}")
    table = table_from(source, what)
    if out is None:
        raise UsageError(f"out is needed when the source is {what}: name the output folder "
                         "(e.g. out='runs/my_job'), where the images and results go")
    return what, table


_IN_MEMORY = {"DataFrame": "the DataFrame", "Table": "the pyarrow Table", "list": "the list of dicts",
              "tuple": "the list of dicts"}


# ---- messages ---------------------------------------------------------------------------

_OPTION = re.compile(r"(add |with )?--([a-z][a-z0-9-]*)")
_FLAGS = ("simulate", "retry_failed", "no_wait", "resubmit_lost")


class _python_wording:
    """Re-raise a UsageError (same class) with the command line's option names as keywords."""

    def __enter__(self) -> "_python_wording":
        return self

    def __exit__(self, kind: object, error: Optional[BaseException], tb: object) -> Literal[False]:
        if isinstance(error, UsageError):
            raise type(error)(python_wording(str(error))) from None
        return False


def python_wording(message: str) -> str:
    """'add --simulate' -> 'pass simulate=True'; '--max-cost' -> 'max_cost'. Only the names of
    run()'s keywords are changed (a `--` elsewhere in a message stays)."""
    keywords = set(inspect.signature(run).parameters)

    def keyword(m: re.Match) -> str:
        name = m[2].replace("-", "_")
        if name not in keywords:
            return m[0]
        if name in _FLAGS:
            return f"pass {name}=True" if m[1] else f"{name}=True"
        return f"{m[1] or ''}{name}"
    return _OPTION.sub(keyword, message)
