"""The built-in fake Images API: both dialects, real images, repeatable faults.

It serves, on a loopback port:

    POST /openai/images/generations   AceData dialect
    POST /v1/images/generations       OpenAI dialect (``OpenAI(base_url=".../v1")`` works)
    POST /openai/images/edits, /v1/images/edits   image edits in both dialects, each as multipart
                                      (the SDK's ``images.edit``) or JSON (``images`` references)
    GET  /files/<id>.<ext>            images handed out as ``url`` (kept in memory, TTL)
    POST /v1/files, GET /v1/files/<id>[/content]             the Files API, for batches
    POST /v1/batches, GET /v1/batches[/<id>], POST .../cancel  OpenAI's Batch API (images)
    POST /openai/tasks                AceData's Tasks API (retrieve, retrieve_batch); a generation
                                      or edit with a ``callback_url`` answers a task id at once
    GET  /_sim/stats                  counters as JSON (with, for benchmarks, the peak of
                                      generation requests in flight, the 429s by limit, a
                                      per-second timeline of successes; see SimStats) and the
                                      limits now in force
    POST /_sim/reset                  zero the counters (``?all=1``: also quota, fault memory, the
                                      rate limits as configured (full buckets, the rpm schedule
                                      anew), files and batches)
    GET, POST /_sim/limit             the key's limits now; POST {"rpm": 300, "ipm": .., "tpm": ..}
                                      changes them mid-run (null removes one)

The latency (``SimConfig.latency``, with ``latency_spread`` and ``latency_jitter``) delays only the
answers that stand for upstream work (a 200, a content-policy refusal, a 500); a 401, a rate
limit's 429 or an invalid request is answered at once, as real gateways do.  The rate limits
(``rpm_limit``, ``ipm_limit``, ``tpm_limit``, ``rpm_schedule``; see rate.py) belong to the one key
the simulator accepts: runs sharing one simulator process share them, as runs sharing a key do.

This package imports nothing from the rest of batchgen on purpose: it is written from the
APIs' own documentation (OpenAI's request schema is spec/openai-images-generations.schema.json),
so that a misunderstanding in the client cannot hide by being mirrored here.

    validation  what each model and endpoint accepts, parse_request, the error type both
                dialects render
    edits       the edits endpoint: both body forms read, the input images checked per model
    inputs      an input image: sniffed by magic bytes, measured; JSON image references resolved
    images      PNG/JPEG/WebP images per prompt, made cheaply and cached
    files       the images handed out as ``url``
    faults      which faults a request meets (repeatable per seed), and the spoiled answers
    rate        the key's limits (requests, images, tokens per minute), their token buckets,
                x-ratelimit-* headers and 429s, the Retry-After styles, the rpm schedule
    config      SimConfig and SimStats (``stats.params`` counts the body fields that reached
                the server, refused or not)
    answers     the JSON bodies of both dialects
    uploads     the Files API's files (batch inputs, outputs, errors)
    batches     the Batch API: validation, lazy timing, running lines through the live code
    tasks       AceData's callback mode and Tasks API; the executions per trace id
    server      the routes, make_app, start_simulator, SimulatorThread
"""
from __future__ import annotations

from .config import SimConfig, SimStats
from .faults import FAULTS, POST_FAULTS, PRE_FAULTS
from .rate import go_duration
from .server import (
                     ACEDATA_EDITS_PATH,
                     ACEDATA_PATH,
                     FILES_PATH,
                     LIMIT_PATH,
                     OPENAI_EDITS_PATH,
                     OPENAI_PATH,
                     RESET_PATH,
                     STATS_PATH,
                     Simulator,
                     SimulatorThread,
                     make_app,
                     start_simulator,
)
from .validation import MODELS, parse_request

__all__ = [
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "make_app",
    "start_simulator",
    "go_duration",
    "parse_request",
    "MODELS",
    "FAULTS",
    "PRE_FAULTS",
    "POST_FAULTS",
    "ACEDATA_PATH",
    "OPENAI_PATH",
    "ACEDATA_EDITS_PATH",
    "OPENAI_EDITS_PATH",
    "FILES_PATH",
    "STATS_PATH",
    "RESET_PATH",
    "LIMIT_PATH",
]
