"""The Python API: what `batchgen run` and `batchgen plan` call, and what a notebook calls.

It resolves the settings, reads and plans the input, chooses where to send (a provider's
endpoint, or the built-in simulator it starts for `simulate=True`), and hands over to the runner.
"""
from __future__ import annotations

import contextlib

from .job import make_plan, resolve_config
from .providers import Endpoint, endpoint_url, resolve_endpoint
from .reader import read_table


def prepare(source, options: dict, table=None):
    """Everything that can fail on bad input, before anything is sent or written:
    (config, table, plan). `table`: the input already in memory (source then only names it)."""
    config = resolve_config(source, options)
    if table is None:
        table = read_table(config.source, config.encoding)
    plan = make_plan(table, config)
    return config, table, plan


def run(source, *, progress: bool = False, environ=None, table=None, **options):
    """Run a job (a job file or a data file); the Python API behind `batchgen run`.

    Options are those of the command line, by their Python names (`out`, `prompt_column`,
    `defaults={...}`, `sweep=[('quality', ['standard', 'hd'])]`, `concurrency`, `rpm`, ...).
    Returns a Summary; raises UsageError for bad usage or input (nothing sent).
    """
    from .runner import run_job
    config, table, plan = prepare(source, options, table)
    if config.simulate:
        connect = _simulated(config.provider)
    else:
        connect = resolve_endpoint(config.provider, config.base_url, environ)
    return run_job(config, table, plan, connect, progress=progress)


@contextlib.asynccontextmanager
async def _simulated(provider: str):
    """The built-in simulator on a free loopback port, for as long as the run lasts."""
    from .simulator import SimConfig, start_simulator
    sim_config = SimConfig()
    simulator = await start_simulator(sim_config)
    try:
        base = simulator.acedata_url if provider == "acedata" else simulator.openai_base_url
        yield Endpoint(url=endpoint_url(base), token=sim_config.token, provider=provider)
    finally:
        await simulator.close()


def cancel(out, environ=None) -> list:
    """Cancel the batches OUT submitted to OpenAI's Batch API and has not collected; returns
    [(batch id, status)]. The token comes from the environment, the endpoint from job.json."""
    import asyncio

    from .backends.batch import cancel_batches
    from .exceptions import UsageError
    from .journal import replay
    from .outdir import OutputFolder, provenance_of, read_job
    job = read_job(out)
    provenance = provenance_of(job)
    if provenance is None or not provenance.endpoint:
        raise UsageError(f"{out}'s job.json does not say where its batches were sent; nothing was cancelled")
    open_chunks = {k: c for k, c in replay(OutputFolder(out).journal_path).batches.items()
                   if "collected" not in c.get("events", ()) and c.get("batch_id")}
    if not open_chunks:
        return []
    endpoint = resolve_endpoint(provenance.provider, provenance.endpoint, environ)
    return asyncio.run(cancel_batches(endpoint, 60.0, open_chunks))
