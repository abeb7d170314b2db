"""The command line: parses, calls the library, prints. Nothing else lives here."""
from __future__ import annotations

import errno
import json
import logging
import sys

import click

from batchgen.exceptions import EXIT_STOPPED, EXIT_USAGE, UsageError
from batchgen.rules import modes
from batchgen.rules.models import PARAMETERS, option_values
from batchgen.rules.providers import DEFAULT_PROVIDER, PROVIDERS
from batchgen.rules.providers import NAMES as PROVIDER_NAMES
from batchgen.showing.exports import DEFAULT_SHARD_SIZE
from batchgen.showing.exports import FORMATS as EXPORT_FORMATS


def _providers_help() -> str:
    def one(p):
        variables = ", ".join(v for v in (p.token_variable, p.base_url_variable) if v)
        return f"{p.name} ({variables}{', default' if p.name == DEFAULT_PROVIDER else ''})"
    return " or ".join(one(p) for p in PROVIDERS.values())


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def job_options(f):
    """Options shared by `run` and `plan`."""
    options = [
        click.option("--out", help="Output folder (default: the job file's `out`, else runs/<name>; with --simulate, "
                                         "simulated/<name> beside it)."),
        click.option("--prompt-column", help="Column holding the prompt (default: prompt)."),
        click.option("--model", help="Model for rows without a model column/cell (e.g. gpt-image-2, dall-e-3 on "
                                     "acedata; `batchgen models` lists them)."),
        click.option("--quality", help="Default quality (dall-e-3: standard|hd; GPT image: low|medium|high|auto; "
                                       "gpt-image-2.5/2.6 also xhigh|max)."),
        click.option("--style", help="Default style (dall-e-3 only: vivid|natural)."),
        click.option("--size", help="Default size, e.g. 1024x1024."),
        click.option("--response-format", type=click.Choice(["url", "b64_json"]),
                     help="dall-e only; GPT image models always return base64."),
        click.option("--n", "n", type=click.IntRange(1, 10), help="Images per request (dall-e-3: 1)."),
        click.option("--output-format", type=click.Choice(option_values("output_format")),
                     help="GPT image models: the images' file format (default png; webp and jpeg are far smaller; "
                          "gpt-image-2.6: also svg and animated gif)."),
        click.option("--output-compression", type=click.IntRange(0, 100),
                     help="GPT image models, jpeg/webp: compression level 0-100 (default 100)."),
        click.option("--background", type=click.Choice(option_values("background")),
                     help="GPT image models: transparent needs --output-format png or webp."),
        click.option("--moderation", type=click.Choice(option_values("moderation")),
                     help="GPT image models: low filters less than the default, auto."),
        click.option("--input-fidelity", type=click.Choice(option_values("input_fidelity")),
                     help="Edits: how closely to keep the input's features "
                          "(gpt-image-1 on acedata; the 2.x models take none)."),
        click.option("--complexity", type=click.Choice(option_values("complexity")),
                     help="gpt-image-2.6: how much the model plans before rendering."),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Send a parameter batchgen does not know, as is (repeatable; VALUE as JSON when "
                          "it reads as JSON). Recorded in results' extra_params."),
        click.option("--image-column", help="Edits: the column of input images (default: image, when present); "
                                            "paths relative to the input file, or URLs; several: a|b."),
        click.option("--mask-column", help="Edits: the column of PNG masks (default: mask, when present)."),
        click.option("--markup-column", help="Edits: the column of markup images, the picture drawn over with "
                                             "what to change (gpt-image-2.6; default: markup, when present)."),
        click.option("--prices", type=click.Path(dir_okay=False),
                     help="A JSON price table over the built-in one (for a model batchgen has no price for)."),
        click.option("--models", "models", type=click.Path(dir_okay=False),
                     help="A JSON model catalog over the built-in one (data/models.json's shape): new models, "
                          "statuses, rules, prices."),
        click.option("--sweep", multiple=True, metavar="AXIS=V1,V2",
                     help="Sweep a parameter (repeatable; the product of all axes). "
                          "E.g. --sweep quality=standard,hd --sweep style=vivid,natural"),
        click.option("--provider", type=click.Choice(PROVIDER_NAMES),
                     help="API dialect and token variable: " + _providers_help() + "."),
        click.option("--mode", type=click.Choice(modes.NAMES),
                     help="How to send: live (one request per task, as fast as the API allows; default) or "
                          "batch (OpenAI's Batch API: half the price, results within 24 h; --provider openai)."),
        click.option("--base-url", help="Endpoint (…/images/generations) or SDK-style base URL (…/v1)."),
        click.option("--limit", type=click.IntRange(min=0), help="Only the first N input rows."),
        click.option("--encoding", help="Text encoding of a CSV/JSONL that is not UTF-8 (e.g. cp1252)."),
        click.option("--rpm", type=click.FloatRange(min=0, min_open=True),
                     help="Requests per minute never to exceed. A request for n images counts n "
                          "(OpenAI limits images per minute too)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class _Concurrency(click.ParamType):
    name = "auto|N"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither 'auto' nor a whole number ≥ 1 (e.g. --concurrency 64)", param, ctx)
        return number


def _overrides(kw: dict) -> dict:
    from batchgen.planning.settings import parse_sweep
    defaults = {k: kw.pop(k) for k in PARAMETERS}
    kw["defaults"] = {k: v for k, v in defaults.items() if v is not None}
    kw["sweep"] = parse_sweep(list(kw.pop("sweep") or ()))
    return kw


class _Commands(click.Group):
    """Lists each command with its whole first sentence (click cuts it to fit 80 columns)."""

    def format_commands(self, ctx, formatter):
        rows = [(name, command.get_short_help_str(limit=sys.maxsize))
                for name, command in ((n, self.get_command(ctx, n)) for n in self.list_commands(ctx))
                if command is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _json_option(what: str):
    return click.option("--json", "as_json", is_flag=True,
                        help=f"Print {what} as one JSON object on stdout (keys: see the README).")


def _print_json(doc: dict) -> None:
    _say(json.dumps(doc, ensure_ascii=False))


# What stopped standard output, once: a reader that left (EPIPE: said nothing, as `head`
# expects) or a full disk (ENOSPC: said on stderr, and the command does not exit 0).
_STDOUT_LOST: list = []


def _say(text: str) -> None:
    """Print on standard output; a stdout that cannot take it is no traceback."""
    try:
        click.echo(text)
    except OSError as e:
        _stdout_failed(e)


def _stdout_failed(e: OSError) -> None:
    if _STDOUT_LOST:
        return
    _STDOUT_LOST.append(e)
    if e.errno != errno.EPIPE:
        try:
            click.echo(f"error: cannot write to standard output ({e.strerror or e}); what this command "
                       "printed there is incomplete", err=True)
        except (OSError, ValueError):
            pass


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="batchgen")
def main():
    """Turn a table of prompts into an image dataset through an OpenAI-compatible Images API."""
    from batchgen.util.logs import install_stderr
    install_stderr()


def entry() -> None:
    """The `batchgen` command and `python -m batchgen`: main(), then a quick exit.

    Everything a command writes is closed (and fsynced where it matters) before main()
    returns, so the interpreter's teardown — unloading pyarrow and aiohttp, a noticeable part
    of every short command — protects nothing: flush the standard streams and leave. An unexpected
    exception still takes the normal way out, with its traceback."""
    import os
    code: str | int | None
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    elif not isinstance(code, int):     # sys.exit("message"): print it, exit 1, as Python does
        click.echo(str(code), err=True)
        code = 1
    logging.shutdown()
    try:
        sys.stdout.flush()
    except OSError as e:
        _stdout_failed(e)
    except ValueError:   # closed
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if _STDOUT_LOST and _STDOUT_LOST[0].errno != errno.EPIPE and code == 0:
        code = 1
    os._exit(code)


@main.command()
@click.argument("source")
@job_options
@click.option("--concurrency", type=_Concurrency(),
              help="Requests in flight at once: 'auto' (the default: as many as the rate the server allows "
                   "needs at the latency it answers with) or a fixed number.")
@click.option("--max-concurrency", type=click.IntRange(min=1),
              help="The most requests in flight that --concurrency auto may reach (default 1000; less where "
                   "the open-file limit is lower).")
@click.option("--max-retries", type=click.IntRange(min=0),
              help="Retries per task after 5xx, timeouts, dropped connections and bad responses (default 8). "
                   "429s wait as the server asks, on a budget of their own.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds per request (default 300).")
@click.option("--retry-failed", is_flag=True, default=None,
              help="Send again the tasks whose last outcome was an error.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True),
              help="Stop launching once the estimated spend would pass USD.")
@click.option("--max-wait", type=click.FloatRange(min=0, min_open=True),
              help="Longest pause a server may ask for (Retry-After) before the run stops to be rerun later "
                   "(default 600 s).")
@click.option("--simulate", is_flag=True, default=None, help="Run against the built-in simulator (no token needed).")
@click.option("--batch-size", type=int, default=None,
              help="Batch mode: requests per batch, 1 to 50,000 (default 1,000). GPT images come back as "
                   "base64 inside the batch's output file, 1 to 3 MB each: 1,000 keeps a file to a few GB, "
                   "which a laptop downloads and a failed download repeats quickly.")
@click.option("--no-wait", is_flag=True, default=None,
              help="Batch or async mode: submit, collect what already finished, and exit 4 while the rest runs on the "
                   "server; run the same command again to collect (exit 0 once everything is collected).")
@click.option("--resubmit-lost", is_flag=True, default=None,
              help="Batch mode: send again the tasks of a batch the server no longer knows (404, an unknown "
                   "status, its output file gone). This can pay twice if that batch still runs elsewhere.")
@click.option("--poll-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Batch mode: the longest pause between two looks at the batches (default 60 s; it starts at 1 s).")
@click.option("--callback-url", default=None,
              help="Async mode: where AceData POSTs each task's outcome, for your own use (default: an address "
                   "that receives nothing); batchgen collects the outcomes from the Tasks API either way.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_json_option("the run's summary")
@click.option("-v", "--verbose", is_flag=True,
              help="A line on stderr per attempt, rate-limit pause and stop (format: see the README).")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Append those lines to this file (with or without -v).")
def run(source, no_progress, as_json, verbose, log_file, **kw):
    """Generate images for every task of SOURCE (a job file .toml, or a .csv/.parquet/.jsonl).

    Rerun the same command on the same --out to resume: finished tasks are not sent again.
    """
    from batchgen import commands
    try:
        summary = commands.run(source, progress=not no_progress, verbose=verbose, log_file=log_file,
                          **_overrides(kw))
    except UsageError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        # Only outside the send loop (start-up, the final write); in it, Ctrl-C is handled gracefully.
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(EXIT_STOPPED)
    if as_json:
        _print_json(summary.as_json())
    else:
        _say(format_summary(summary))
    sys.exit(summary.exit_status)


def format_summary(s) -> str:
    return str(s)


@main.command()
@click.argument("source")
@job_options
@_json_option("the counts and costs")
def plan(source, as_json, **kw):
    """Validate SOURCE and count its tasks and estimated cost; sends nothing.

    When --out (or the job file's `out`) holds a run of this job, also what it has done and
    what is left to send and to spend.
    """
    from batchgen.commands import plan as plan_job
    from batchgen.planning.summary import format_plan
    try:
        config, summary = plan_job(source, _overrides(kw))
    except UsageError as e:
        _fail(str(e))
    if as_json:
        _print_json(summary.as_json())
    else:
        _say(format_plan(summary, config.rpm, config.mode))


@main.command()
@click.argument("out")
@_json_option("the progress")
def status(out, as_json):
    """Progress of the run in OUT, from its journal (works while it runs).

    Says whether the run is going, finished, or stopped (and why); a rate and an ETA only
    while it is going.
    """
    from batchgen.showing.status import format_status, read_status
    try:
        found = read_status(out)
    except UsageError as e:
        _fail(str(e))
    if as_json:
        _print_json(found.as_json())
    else:
        _say(format_status(found))


@main.command()
@click.argument("out")
def cancel(out):
    """Cancel OUT's unfinished batches on OpenAI's Batch API (what they finished stays; a rerun
    collects it and submits the rest)."""
    from batchgen.commands import cancel as cancel_batches
    try:
        cancelled = cancel_batches(out)
    except UsageError as e:
        _fail(str(e))
    if not cancelled:
        click.echo(f"{out} has no unfinished batches")
    for batch_id, status in cancelled:
        click.echo(f"{batch_id}: {status}")
    if any(status.startswith("not cancelled") for _, status in cancelled):
        click.echo("some batches were not cancelled (see above): fix what the server said and run "
                   "`batchgen cancel` again", err=True)
        sys.exit(EXIT_STOPPED)


@main.command()
@click.argument("out")
@click.option("--cols", metavar="AXIS[,AXIS]",
              help="Sweep axes side by side, the top header row first (default: every axis not in --rows; "
                   "the one with the fewest values changes fastest).")
@click.option("--rows", metavar="AXIS[,AXIS]",
              help="Sweep axes that split each prompt's row (default: none; with --cols, the axes it leaves out).")
@click.option("--per-page", type=int, metavar="N",
              help="Prompts per page (default 50): report.html, report-2.html, ...")
@click.option("--thumb", type=int, metavar="PX", help="Thumbnails' long side in pixels (default 256).")
@click.option("--current-job", is_flag=True,
              help="Only the tasks the folder's last job asked for (default: every point the folder holds, "
                   "earlier jobs' too).")
def report(out, **options):
    """Write OUT/report.html, the sweep comparison gallery."""
    from batchgen.showing.report import write_report
    try:
        path = write_report(out, **options)
    except UsageError as e:
        _fail(str(e))
    written = [path] + [p for p in (path.with_name("contact_sheet.png"),) if p.is_file()]
    click.echo("wrote " + " and ".join(map(str, written)))


@main.command()
@click.argument("out", required=False)
@click.option("--format", "format_", type=click.Choice(EXPORT_FORMATS),
              help="webdataset: tar shards of KEY.png|jpg|webp + KEY.json; parquet: the image bytes in "
                   "column `image` beside the result columns.")
@click.option("--to", "dest", metavar="DEST",
              help="A folder, or an fsspec URL (s3://bucket/prefix, gs://…, hf://datasets/…; "
                   "pip install 'batchgen[s3]' for s3://).")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Samples per shard (tar or Parquet file).")
@click.option("--include-errors", is_flag=True, help="Parquet: the rows of failed tasks too (no image).")
@click.option("--verify", "verify_dest", metavar="DEST",
              help="Check that DEST is one whole export (its manifest against its shards: names, sizes, row "
                   "counts, sha256); writes nothing. Exit 0 whole, 1 not whole (run the export again), "
                   "2 not an export.")
def export(out, format_, dest, shard_size, include_errors, verify_dest):
    """Export OUT's images and result rows to DEST as a dataset (with a README.md card).

    Exporting again to the same DEST replaces the earlier export; a DEST holding anything else
    is refused. `batchgen export --verify DEST` checks an export."""
    from batchgen.exceptions import EXIT_TASK_ERRORS, ExportFailed
    if verify_dest is not None:
        if out is not None or format_ is not None or dest is not None:
            _fail("--verify DEST checks an export and takes nothing else: batchgen export --verify DEST")
        from batchgen.showing.exports import verify
        try:
            verdict = verify(verify_dest)
        except UsageError as e:
            _fail(str(e))
        except ExportFailed as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_STOPPED)
        if verdict.whole:
            click.echo(f"{verdict.dest} is one whole {verdict.format} export: {verdict.images} image(s) in "
                       f"{verdict.shards} shard(s), each as its manifest records")
            return
        click.echo(f"{verdict.dest} is not one whole export:", err=True)
        for problem in verdict.problems:
            click.echo(f"- {problem}", err=True)
        sys.exit(EXIT_TASK_ERRORS)
    missing = [name for name, value in (("OUT", out), ("--format", format_), ("--to", dest)) if value is None]
    if missing:
        _fail(f"export needs {', '.join(missing)}: batchgen export OUT --format webdataset|parquet --to DEST "
              "(or batchgen export --verify DEST)")
    from batchgen.showing.exports import export as export_run
    try:
        s = export_run(out, format_, dest, shard_size=shard_size, include_errors=include_errors)
    except UsageError as e:
        _fail(str(e))
    except ExportFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_STOPPED)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same export again to finish it", err=True)
        sys.exit(EXIT_STOPPED)
    errors = f" and {s.error_rows} error row(s)" if s.error_rows else ""
    click.echo(f"exported {s.images} image(s){errors} in {len(s.shards)} {s.format} shard(s) to {s.dest}"
               + (f"; removed {len(s.removed)} shard(s) of the earlier export" if s.removed else ""))


@main.command("models")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), help="Only this provider's models.")
@click.option("--models", "models_file", type=click.Path(dir_okay=False),
              help="A JSON model catalog over the built-in one.")
@_json_option("the catalog")
def models_command(provider, models_file, as_json):
    """The model catalog: live models with their parameters and prices, deprecated ones with
    their dates, shut-down ones with their replacements."""
    from batchgen.commands import list_models
    try:
        listed = list_models(provider, models_file)
    except UsageError as e:
        _fail(str(e))
    if as_json:
        _print_json(listed)
    else:
        click.echo(format_models(listed))


def format_models(listed: dict) -> str:
    lines = []
    for provider, lineup in listed["providers"].items():
        default = lineup["default_model"] or "chosen by the provider"
        if any(m["model"] == default and m["status"] == "shut_down" for m in lineup["models"]):
            default += ", shut down: give a model"
        lines.append(f"{provider} (checked {lineup['checked']}; with no model given: {default})")
        for m in lineup["models"]:
            if m["status"] == "shut_down":
                to = f"; use {m['replacement']}" if m["replacement"] else ""
                lines.append(f"  {m['model']:<24} shut down {m['shutdown']}{to}")
                continue
            when = f" until {m['shutdown']}" if m["status"] == "deprecated" else ""
            to = f", move to {m['replacement']}" if m["status"] == "deprecated" and m["replacement"] else ""
            lines.append(f"  {m['model']:<24} {m['status']}{when}{to}")
            lines.append(f"      sizes: {m['sizes']}")
            params = "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}"
                               for k, v in m["parameters"].items() if k != "size")
            lines.append(f"      {params}; prompt ≤ {m['max_prompt_chars']:,} chars; "
                         f"edits: {'yes' if m['edits'] else 'no'}{' (markup too)' if m['markup'] else ''}")
            tokens = m["tokens_usd_per_million"]
            each = {q: v for q, v in (m["usd_per_image_1024"] or {}).items() if v is not None}
            if tokens or each:
                price = ", ".join(f"{k.replace('_', ' ')} ${v:g}" for k, v in (tokens or {}).items())
                per = ", ".join(f"{q or 'each'} ${v:.3f}" for q, v in each.items())
                lines.append("      price: " + "; ".join(
                    t for t in (price and f"per 1M tokens: {price}", per and f"per 1024x1024 image: {per}") if t))
            else:
                lines.append("      price: unknown (give one with --prices FILE)")
    return "\n".join(lines)


def _register_simulate():
    from batchgen.cli.simulate import simulate
    main.add_command(simulate)


_register_simulate()
