"""What each command does, as a function: `prepare` (settings -> table -> plan, where every
bad input is caught before anything is sent), `run`, `plan` and `cancel`. The command line
(`batchgen.cli`) and the Python API (`batchgen.api`) both call these.

`run` chooses where to send (a provider's endpoint, or the built-in simulator it starts for
`simulate=True`) and hands over to the runner.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping, Optional

from batchgen.planning.edits import edit_columns, read_edit_inputs
from batchgen.planning.reader import read_table
from batchgen.planning.settings import resolve_config
from batchgen.planning.tasks import make_plan
from batchgen.rules import providers
from batchgen.rules.providers import Endpoint, resolve_endpoint

log = logging.getLogger(__name__)


def prepare(source, options: dict, table=None):
    """Everything that can fail on bad input, before anything is sent or written:
    (config, table, plan). `table`: the input already in memory (source then only names it)."""
    config = resolve_config(source, options)
    if table is None:
        table = read_table(config.source, config.encoding)
    image_column, mask_column, markup_column = edit_columns(table.column_names, config.image_column,
                                                            config.mask_column, config.markup_column)
    inputs = None
    if image_column is not None:
        if config.limit is not None:
            table = table.slice(0, config.limit)
        inputs = read_edit_inputs(table, config.source or source, image_column, mask_column, markup_column)
    plan = make_plan(table, config, inputs)
    return config, table, plan


def run(source, *, progress: bool = False, environ=None, verbose: bool = False,
        log_file=None, table=None, **options):
    """Run a job (a job file or a data file); the Python API behind `batchgen run`.

    Options are those of the command line, by their Python names (`out`, `prompt_column`,
    `defaults={...}`, `sweep=[('quality', ['standard', 'hd'])]`, `concurrency`, `rpm`, ...).
    `verbose` writes a line per attempt, rate-limit pause and stop on stderr, `log_file`
    appends them to that file (the loggers are "batchgen.*", at INFO, for your own handlers).
    Returns a Summary; raises UsageError for bad usage or input (nothing sent).
    """
    from batchgen.runner import run_plan
    from batchgen.util.logs import logging_to
    config, table, plan = prepare(source, options, table)
    connect: Any
    if config.simulate:
        connect = _simulated(config.provider)
    else:
        connect = resolve_endpoint(config.provider, config.base_url, environ)
    with logging_to(verbose, log_file):
        return run_plan(config, table, plan, connect, progress=progress)


def plan(source, options: dict, table=None):
    """`batchgen plan`: (config, PlanSummary). When the job's output folder holds a run of this
    job, the summary says what it has done and what is left to send and spend; a folder that
    holds another job's run is refused, as `run` would refuse it (UsageError)."""
    from batchgen.planning.summary import summarise_plan
    config, table, job_plan = prepare(source, options, table)
    for warning in job_plan.warnings:
        log.warning(warning)
    found = _done_in(config, table, job_plan)
    summary = summarise_plan(job_plan, found[0] if found else None)
    if found:
        summary.folder_simulated, summary.not_in_job = found[1], found[2]
    return config, summary


def _done_in(config, table, job_plan):
    """(task id -> its status in config.out's journal ("ok", "error", IN_BATCH, None), whether
    the folder's results are simulated, how many finished tasks it holds that this job does
    not), or None when the folder holds no run. Read only: no lock, nothing written."""
    import numpy as np

    from batchgen.keeping.journal import replay, task_key
    from batchgen.keeping.outdir import OutputFolder, provenance_of
    from batchgen.planning.identity import is_legacy, legacy_ids
    from batchgen.planning.summary import IN_BATCH
    folder = OutputFolder(config.out)
    existing = folder.existing_job()
    if existing is None:
        return None
    folder.check_same_job(existing, config.fingerprint(), config.public_dict())
    state = replay(folder.journal_path, out_dir=folder.path)
    origin = provenance_of(existing)
    simulated = bool(origin and origin.simulated and folder.holds_outcomes())
    if is_legacy(existing) and folder.holds_outcomes():
        # Its journal names tasks by the previous ids; the first run will carry them over.
        old = dict(zip((t.task_id for t in job_plan.tasks), legacy_ids(table, config, job_plan)))
        return (lambda task_id: state.status(task_id) or state.status(old[task_id])), simulated, 0
    others = len(state.finished_elsewhere(np.sort(job_plan.tasks.keys())))
    held = set(state.open_batch_keys().tolist())
    if not held:
        return state.status, simulated, others

    def status(task_id: str):
        found = state.status(task_id)
        return IN_BATCH if found is None and task_key(task_id) in held else found
    return status, simulated, others


@contextlib.asynccontextmanager
async def _simulated(provider: str):
    """The built-in simulator on a free loopback port, for as long as the run lasts."""
    from batchgen.simulator import SimConfig, start_simulator
    sim_config = SimConfig()
    simulator = await start_simulator(sim_config)
    try:
        url = providers.get(provider).endpoint_on(simulator.base_url)
        yield Endpoint(url=url, token=sim_config.token, provider=provider)
    finally:
        await simulator.close()


def cancel(out, environ: Optional[Mapping[str, str]] = None) -> list:
    """Cancel what OUT's runs left running on the server (the batches it planned or submitted
    to OpenAI's Batch API and has not collected); returns [(remote id, status)]. The token
    comes from the environment, the endpoint from job.json. Each mode's backend cancels its
    own. When something was cancelled, job.json says so (for `status`), unless a run holds OUT."""
    import asyncio

    from batchgen.exceptions import EXIT_STOPPED, FolderBusy, UsageError
    from batchgen.keeping.journal import replay
    from batchgen.keeping.outdir import OutputFolder, provenance_of, read_job
    from batchgen.rules import modes
    from batchgen.sending.backends import backend_for
    job = read_job(out)
    provenance = provenance_of(job)
    if provenance is None or not provenance.endpoint:
        raise UsageError(f"{out}'s job.json does not say where its batches were sent; nothing was cancelled")
    folder = OutputFolder(out)
    open_chunks = {k: c for k, c in replay(folder.journal_path).batches.items()
                   if "collected" not in c.get("events", ())}
    if not open_chunks:
        return []
    endpoint = resolve_endpoint(provenance.provider, provenance.endpoint, environ)

    async def cancel_all() -> list:
        done: list = []
        for mode in modes.NAMES:
            done += await backend_for(mode).cancel_remote(endpoint, 60.0, open_chunks)
        return done
    done = asyncio.run(cancel_all())
    cancelled = [batch_id for batch_id, status in done if status in ("cancelling", "cancelled")]
    if cancelled:
        try:
            folder.lock()
        except FolderBusy:
            return done         # the run that holds OUT finds them cancelled and says so
        try:
            folder.record_end("batch_cancelled", f"batchgen cancel cancelled {len(cancelled)} batch(es) "
                              f"({', '.join(cancelled)}); run the same command again to collect what they "
                              "finished and send the rest", EXIT_STOPPED)
        finally:
            folder.unlock()
    return done


def list_models(provider: Optional[str] = None, models_file: Optional[str] = None,
                today: Optional[str] = None) -> dict:
    """`batchgen models`: what the catalog (with `models_file` over it) knows, per provider:
    each model's status and dates, and for those not shut down their parameters and prices.
    Keys: see the README's "Models" section."""
    import datetime

    from batchgen.rules import models, pricing
    catalog = models.load(models_file)
    prices = pricing.load(None, models_file)
    today = today or datetime.date.today().isoformat()
    if provider is not None:
        providers.get(provider)
    listed: dict = {}
    for name, lineup in catalog.lineups.items():
        if provider is not None and name != provider:
            continue
        entries = []
        for model, listing in lineup.models.items():
            status = listing.status_on(today)
            entry: dict = {"model": model, "status": status, "shutdown": listing.shutdown,
                           "replacement": listing.replacement, "since": listing.since,
                           "rules": listing.rules.name, "source": listing.rules.source,
                           "checked": listing.rules.checked}
            if status != models.SHUT_DOWN:
                rules = listing.rules
                entry["parameters"] = rules.allowed()
                entry["sizes"] = rules.describe_sizes() or "not checked"
                entry["max_prompt_chars"] = rules.max_prompt_chars
                entry["edits"] = rules.edits
                entry["markup"] = rules.markup
                price = prices.for_model(model)
                entry["tokens_usd_per_million"] = dict(price.tokens) if price else None
                entry["usd_per_image_1024"] = {
                    q: _rounded(prices.per_image({"model": model, "quality": q, "size": "1024x1024"}))
                    for q in (rules.qualities or ("",)) if q != "auto"} if price else None
            entries.append(entry)
        order = {status: i for i, status in enumerate(models.STATUSES)}
        entries.sort(key=lambda e: order[e["status"]])
        listed[name] = {"default_model": lineup.default_model, "default_source": lineup.default_source,
                        "source": lineup.source, "checked": lineup.checked, "models": entries}
    return {"catalog": catalog.source, "today": today, "providers": listed}


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
