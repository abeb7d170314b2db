"""`batchgen simulate`: serve the built-in simulator on 127.0.0.1 until Ctrl-C.

On start it prints exactly two lines on stdout, the two base URLs:

    http://127.0.0.1:P/openai/images/generations    (AceData dialect)
    http://127.0.0.1:P/v1                           (OpenAI dialect)

and nothing else (benchmarks parse it); the token to use, and how, goes to stderr.
SIGINT/SIGTERM stop it with exit status 0.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import click

_PROB = click.FloatRange(0.0, 1.0)


def _prob(flag: str, what: str):
    return click.option(flag, type=_PROB, default=0.0, show_default=True,
                        help=f"Probability of {what}.")


@click.command("simulate")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--token", default="sim-token", show_default=True,
              help="The only bearer token accepted.")
@click.option("--latency", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Seconds from a generation request's arrival to its answer (the work is done "
                   "within them), for answers that stand for upstream work: a 200, a content-policy "
                   "refusal, a 500. A 401, a rate limit's 429, an invalid request's 400 come at once.")
@click.option("--latency-spread", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Relative spread of the latency: times a uniform random 1-F..1+F (0.2: +-20%).")
@click.option("--latency-jitter", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Plus a uniform random 0..S seconds.")
@click.option("--latency-on-refusals", is_flag=True,
              help="Give every answer the latency, 429s and 401s included (the old, unrealistic "
                   "model).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the fault decisions (same seed and requests: same faults).")
@_prob("--fail-429", "a 429 rate-limit answer")
@click.option("--retry-after", type=click.FloatRange(0.0), default=1.0, show_default=True,
              help="Retry-After seconds sent with --fail-429 answers.")
@click.option("--retry-after-date", is_flag=True,
              help="Send --fail-429's Retry-After as an HTTP date (and no retry-after-ms).")
@_prob("--fail-500", "a 500 api_error answer")
@_prob("--fail-503-html", "a 503 with an HTML body, as from a proxy")
@_prob("--drop", "closing the connection without an answer")
@_prob("--hang", "never answering (for --hang-seconds)")
@click.option("--hang-seconds", type=click.FloatRange(0.0), default=3600.0, show_default=True,
              help="How long a hanging request waits before a 504.")
@_prob("--truncate", "a 200 whose JSON body is cut short")
@_prob("--bad-json", "a 200 whose body is not JSON")
@_prob("--bad-b64", "a 200 whose b64_json is not valid base64")
@_prob("--not-image", "a 200 whose image decodes but is not an image")
@_prob("--expired-link", "a url whose download answers 404")
@click.option("--policy-word", default="forbidden-fruit", show_default=True,
              help="Prompts containing this word are refused (content_policy_violation).")
@click.option("--acedata-moderation-403", is_flag=True,
              help="AceData dialect: refuse such prompts with 403 forbidden instead of 400.")
@click.option("--rpm-limit", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="The key's limit in requests per minute (a token bucket, 1 s of burst; 429 "
                   "beyond it, at once). One key: runs sharing this process share the limit.")
@click.option("--ipm-limit", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="The key's limit in images per minute (a request for n images takes n; "
                   "x-ratelimit-*-images headers).")
@click.option("--tpm-limit", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="The key's limit in output tokens per minute (a request for n images takes n x "
                   "--tokens-per-image; x-ratelimit-*-tokens headers).")
@click.option("--tokens-per-image", type=click.FloatRange(min=0.0, min_open=True), default=1056.0,
              show_default=True,
              help="What one image costs under --tpm-limit, whatever the model, size and quality "
                   "(1056: gpt-image-1 1024x1024 medium).")
@click.option("--rpm-schedule", default="", metavar="S:RPM,...",
              help="Change the rpm limit during the run: at S seconds after the first generation "
                   "request, RPM (e.g. '10:300,20:600' halves 600 at 10 s, restores it at 20 s). "
                   "POST /_sim/limit {\"rpm\": N, \"ipm\": N, \"tpm\": N} changes limits at any "
                   "time (null removes one).")
@click.option("--no-ratelimit-headers", "ratelimit_headers", is_flag=True, flag_value=False, default=True,
              help="Send no x-ratelimit-* headers: clients must learn the limits from 429s.")
@click.option("--rate-limit-retry-after", type=click.Choice(["exact", "seconds", "date", "none"]),
              default="exact", show_default=True,
              help="How the limits' 429s state their wait: exact (fractional Retry-After and "
                   "retry-after-ms), seconds (whole seconds rounded up, 'Retry-After: 1'), date "
                   "(an HTTP date) or none (no Retry-After at all); only exact sends retry-after-ms.")
@click.option("--quota-images", type=click.IntRange(0), default=None,
              help="After this many images, answer insufficient_quota / used_up.")
@click.option("--gateway", type=click.Choice(["litellm"]), default=None,
              help="Answer as through LiteLLM's proxy: its error shapes, x-litellm-call-id and "
                   "x-litellm-response-cost instead of the upstream's headers, null-filled bodies.")
@click.option("--data-urls", is_flag=True,
              help="Answer response_format=url with data:image/...;base64, URLs, as some gateways do.")
@click.option("--url-ttl", type=click.FloatRange(0.0), default=3600.0, show_default=True,
              help="Seconds an image url stays downloadable.")
@click.option("--photo", is_flag=True,
              help="Serve incompressible noise images (a 1024x1024 PNG is about 3 MB).")
@click.option("--batch-seconds", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="Batch API: seconds from a batch's creation to its completion (0: at once).")
@_prob("--batch-expire", "a batch expiring with half its lines run")
@_prob("--batch-fail-validation", "a valid batch failing validation")
@_prob("--batch-line-errors", "a batch line answering 500 instead of running")
@_prob("--task-fail", "an AceData callback task failing upstream (drawn once per trace id)")
@click.option("--sync-time-limit", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="A gateway's limit: a synchronous answer slower than this many seconds is a 504 at "
                   "the limit, while the generation completes and is billed. Callback mode (AceData's "
                   "callback_url) is not limited.")
def simulate(port: int, rpm_schedule: str, **options) -> None:
    """Serve the built-in fake Images API on 127.0.0.1 until Ctrl-C.

    Prints the AceData endpoint and the OpenAI base URL, one per line, on stdout, and the
    token they accept on stderr.

    For benchmarks: GET /_sim/stats (counters; the peak of generation requests in flight,
    429s by limit, a per-second timeline of successes), POST /_sim/reset (?all=1: the limits
    as configured, too), GET/POST /_sim/limit (the limits now; change them mid-run).
    """
    try:
        from batchgen.simulator import SimConfig
        options["gateway"] = options["gateway"] or ""
        config = SimConfig(rpm_schedule=_schedule(rpm_schedule), **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        asyncio.run(_serve(config, port))
    except KeyboardInterrupt:  # SIGINT before the handlers were installed, or on Windows
        pass
    except OSError as exc:
        click.echo(f"batchgen simulate: cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        sys.exit(2)


def _schedule(text: str) -> tuple:
    """'10:300,20:600' -> ((10.0, 300.0), (20.0, 600.0))."""
    steps = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        seconds, sep, rpm = part.partition(":")
        try:
            if not sep:
                raise ValueError
            steps.append((float(seconds), float(rpm)))
        except ValueError:
            raise ValueError(f"--rpm-schedule: each step is SECONDS:RPM, not {part!r}") from None
    return tuple(steps)


async def _serve(config, port: int) -> None:
    from batchgen.simulator import start_simulator
    sim = await start_simulator(config, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows: Ctrl-C raises instead
            pass
    try:
        sys.stdout.write(f"{sim.acedata_url}\n{sim.openai_base_url}\n")
        sys.stdout.flush()
        sys.stderr.write(f"token: {config.token} (export ACEDATA_API_TOKEN={config.token}, or "
                         f"OPENAI_API_KEY={config.token} with --provider openai; --base-url: a URL above)\n")
        sys.stderr.flush()
        await stop.wait()
    finally:
        await sim.close()
