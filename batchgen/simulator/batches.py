"""OpenAI's Batch API for images, from OpenAI's documents (the Batch guide and the batch, file
and request-output objects of the API reference), not from the client.

    POST /v1/batches              {"input_file_id", "endpoint", "completion_window": "24h", "metadata"}
    GET  /v1/batches              newest first: ?limit=N (1..100, default 20) &after=<batch id>
    GET  /v1/batches/{id}         the batch object
    POST /v1/batches/{id}/cancel  cancelling, then cancelled at the next read

plus the Files API of ``uploads`` (the JSONL in, the output and error files out).  Every route
takes the generations endpoint's Bearer token and answers its error shape.

Time is computed, never scheduled: a batch is due ``SimConfig.batch_seconds`` after its creation
and each read (retrieve, list, cancel) brings it up to date from the elapsed fraction f:

    f < 0.1          validating     (a batch that fails validation is ``failed`` from f = 0.1)
    0.1 <= f < 0.9   in_progress    the first floor(total * (f - 0.1) / 0.8) lines have run
    0.9 <= f < 1     finalizing     every line has run
    f >= 1           completed      the output and error files exist

Lines run in a shuffled order (seeded by the config's seed, the file and the endpoint) as that
count grows, and only then: each runs once, through the code of the live endpoint
(``_SimState._accept``, or ``_accept_edit`` for an edits batch, whose lines hold the JSON edit body
with ``images`` as ``image_url`` references; and ``_success_body``), so a line gets the very
answer a request with its body would get — quota and the policy word included, the live endpoint's
injected faults and rate limit not.  Their answers are revealed only in the output and error files
of a finished batch.
``stats.batch_executions`` counts runs per custom_id (across batches), ``stats.batches_created``
and ``stats.files_uploaded`` the creations.

Faults, drawn once per batch: ``batch_fail_validation`` (failed with a ``token_limit_exceeded``
error, OpenAI's usual refusal of a valid file), ``batch_expire`` (half the lines run; at f = 1 the
batch is ``expired`` and the rest are ``batch_expired`` lines in the error file), and per line
``batch_line_errors`` (a 500 ``server_error`` answer instead of running).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web

from .answers import OPENAI, error_answer, usage
from .config import bump
from .edits import json_form
from .faults import server_error
from .uploads import StoredFile, Uploads, read_upload
from .validation import MODELS, ApiError, auth_error, bad, decode_json

if TYPE_CHECKING:
    from .server import _SimState

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
ENDPOINTS = (GENERATIONS, EDITS)
FILES_ROUTE = "/v1/files"
BATCHES_ROUTE = "/v1/batches"
COMPLETION_WINDOWS = ("24h",)
WINDOW_SECONDS = 24 * 3600
MAX_LINES = 50_000
MAX_ERRORS = 100               # validation errors listed at most in a failed batch
MAX_METADATA = 16
VALIDATED, FINALIZING = 0.1, 0.9   # fractions of batch_seconds where those phases begin
_YIELD_EVERY = 32              # lines run between yields to the event loop

EXPIRED_ERROR = {"code": "batch_expired",
                 "message": "This request could not be executed before the completion window expired."}
CANCELLED_ERROR = {"code": "batch_cancelled",
                   "message": "This request was not executed because the batch was cancelled."}
_TERMINAL = ("completed", "failed", "expired", "cancelled")
_CREATE_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata",
                            "output_expires_after"})


def _line_error(code: str, message: str, line: Optional[int] = None,
                param: Optional[str] = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


class Line:
    """One request of a batch, as validated."""

    __slots__ = ("number", "custom_id", "body", "fails")

    def __init__(self, number: int, custom_id: str, body: bytes):
        self.number = number          # 1-based line number in the input file
        self.custom_id = custom_id
        self.body = body              # the request body, as JSON
        self.fails = False            # batch_line_errors: a 500 instead of running


def check_input(stored: Optional[StoredFile], file_id: str, endpoint: str
                ) -> tuple[list, Optional[list], Optional[str]]:
    """(lines, errors, model) of an input file: errors is None when the batch may run.

    The checks: the file exists with purpose batch, holds 1..MAX_LINES requests, and each line is
    a JSON object with a unique string custom_id, method POST, the batch's endpoint as url, an
    object body whose model is a GPT image model (the Batch API does not take DALL·E for images;
    a body without model would mean dall-e-2), the same model on every line."""
    if stored is None:
        return [], [_line_error("invalid_file", f"No such File object: {file_id}",
                                param="input_file_id")], None
    if stored.purpose != "batch":
        return [], [_line_error("invalid_file_purpose",
                                f"The input file must have purpose 'batch', not '{stored.purpose}'.",
                                param="input_file_id")], None
    raw_lines = stored.data.split(b"\n")
    count = sum(1 for raw in raw_lines if raw.strip())
    if count == 0:
        return [], [_line_error("empty_file", "The batch input file is empty.")], None
    if count > MAX_LINES:
        return [], [_line_error("too_many_requests_in_file",
                                f"The batch input file holds {count} requests; a batch may hold "
                                f"at most {MAX_LINES}.")], None
    lines: list = []
    errors: list = []
    seen: set = set()
    model: Optional[str] = None
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except ValueError:  # UnicodeDecodeError too
            doc = None
        problem, name = _check_line(doc, number, endpoint, seen, model)
        if problem is not None:
            if len(errors) < MAX_ERRORS:
                errors.append(problem)
            continue
        model = model or name
        seen.add(doc["custom_id"])
        lines.append(Line(number, doc["custom_id"], json.dumps(doc["body"]).encode()))
    return lines, (errors or None), model


def _check_line(doc: Any, number: int, endpoint: str, seen: set,
                model: Optional[str]) -> tuple[Optional[dict], Optional[str]]:
    """(the line's first problem or None, its model)."""
    if not isinstance(doc, dict):
        return _line_error("invalid_json_line", "This line is not parseable as valid JSON "
                           "(each line must hold one JSON object).", number), None
    for name, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        value = doc.get(name)
        if value is None:
            return _line_error("missing_required_parameter",
                               f"Missing required parameter: '{name}'.", number, name), None
        if not isinstance(value, kind) or (kind is str and value == ""):
            return _line_error("invalid_type", f"Invalid type for '{name}': expected "
                               f"{'an object' if kind is dict else 'a non-empty string'}.",
                               number, name), None
    if doc["custom_id"] in seen:
        return _line_error("duplicate_custom_id", "The custom_id for this request is a duplicate "
                           "of another request. The custom_id parameter must be unique for each "
                           "request in a batch.", number, "custom_id"), None
    if doc["method"] != "POST":
        return _line_error("invalid_method", f"Invalid method '{doc['method']}': every request "
                           f"of a batch is a POST.", number, "method"), None
    if doc["url"] != endpoint:
        return _line_error("invalid_url", f"The URL provided for this request ('{doc['url']}') "
                           f"does not match the batch endpoint '{endpoint}'.", number, "url"), None
    name = doc["body"].get("model")
    if name is None:
        return _line_error("missing_required_parameter", "Missing 'model' in the body: the "
                           "images endpoints would use dall-e-2, which the Batch API does not "
                           "take. Set a GPT image model (gpt-image-1, gpt-image-1-mini, "
                           "gpt-image-1.5, gpt-image-2).", number, "body.model"), None
    known = MODELS.get(name) if isinstance(name, str) else None
    if known is None:
        return _line_error("model_not_found", f"The model '{name}' does not exist or you do not "
                           f"have access to it.", number, "body.model"), None
    if known.family != "gpt-image":
        return _line_error("model_not_supported", f"The model '{name}' is not supported by the "
                           f"Batch API for {endpoint}: use a GPT image model (gpt-image-1, "
                           f"gpt-image-1-mini, gpt-image-1.5, gpt-image-2).", number,
                           "body.model"), None
    if model is not None and name != model:
        return _line_error("mismatched_model", f"The model '{name}' does not match the model "
                           f"'{model}' of the batch's other requests: a batch holds requests to "
                           f"one model.", number, "body.model"), None
    return None, name


class Batch:
    """One batch: what was validated and decided at its creation, and how far it has run."""

    def __init__(self, endpoint: str, input_file_id: str, metadata: Optional[dict], seconds: float,
                 lines: list, errors: Optional[list], model: Optional[str], expire: bool):
        self.id = f"batch_{uuid.uuid4().hex}"
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        self.metadata = metadata
        self.seconds = seconds
        self.created = time.time()
        self.started = time.monotonic()
        self.lines = lines                # in the order they run (shuffled)
        self.errors = errors              # validation errors (shown once failed), or None
        self.model = model
        self.expire = expire
        self.status = "validating"
        self.stamps: dict = {}            # "in_progress_at" ... -> unix seconds
        self.outcomes: list = []          # (line, status, body, request_id) of the lines run
        self.completed = self.failed = 0  # of the lines run (then of all, once finished)
        self.usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.output_file_id: Optional[str] = None
        self.error_file_id: Optional[str] = None
        self.cancel_pending = False
        self.lock = asyncio.Lock()

    @property
    def final(self) -> bool:
        return self.status in _TERMINAL

    def fraction(self, now: float) -> float:
        return math.inf if self.seconds <= 0 else (now - self.started) / self.seconds

    def at(self, fraction: float) -> int:
        """The unix time at which that fraction of batch_seconds has passed."""
        return int(self.created + fraction * self.seconds)

    def stamp(self, name: str, when: int) -> None:
        self.stamps.setdefault(name, when)

    def due(self, fraction: float) -> int:
        """How many lines have run by that fraction."""
        total = len(self.lines)
        if fraction >= FINALIZING:
            done = total
        else:
            done = max(0, math.floor(total * (fraction - VALIDATED) / (FINALIZING - VALIDATED)))
        return min(done, total // 2) if self.expire else min(done, total)

    def as_object(self) -> dict:
        """The batch object, with the fields of the openai package's Batch."""
        shown = self.status not in ("validating", "failed")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": ({"object": "list", "data": list(self.errors)}
                       if self.status == "failed" and self.errors else None),
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "in_progress_at": self.stamps.get("in_progress_at"),
            "expires_at": int(self.created) + WINDOW_SECONDS,
            "finalizing_at": self.stamps.get("finalizing_at"),
            "completed_at": self.stamps.get("completed_at"),
            "failed_at": self.stamps.get("failed_at"),
            "expired_at": self.stamps.get("expired_at"),
            "cancelling_at": self.stamps.get("cancelling_at"),
            "cancelled_at": self.stamps.get("cancelled_at"),
            "request_counts": {"total": len(self.lines) if shown else 0,
                               "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "usage": {"input_tokens": self.usage["input_tokens"],
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": self.usage["output_tokens"],
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": self.usage["total_tokens"]},
        }


def _result_line(custom_id: str, status: int, body: bytes, request_id: str) -> bytes:
    """One line of an output or error file for a request that ran (body spliced in as is)."""
    head = json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id})[:-1]
    return b"".join((head.encode(), b', "response": {"status_code": ', str(status).encode(),
                     b', "request_id": ', json.dumps(request_id).encode(), b', "body": ', body,
                     b'}, "error": null}\n'))


def _unrun_line(custom_id: str, error: Optional[dict]) -> bytes:
    return (json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                        "response": None, "error": error}) + "\n").encode()


class BatchApi:
    """The Files and Batch routes of one simulator, and the files and batches it holds."""

    def __init__(self, state: "_SimState"):
        self.state = state
        self.uploads = Uploads()
        self.batches: dict = {}       # id -> Batch, in creation order
        self.seen: dict = {}          # digest of (endpoint, input) -> batches made from it

    def forget(self) -> None:
        """Drop every file and batch (``POST /_sim/reset?all=1``)."""
        self.uploads.forget()
        self.batches.clear()
        self.seen.clear()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(FILES_ROUTE, self.upload)
        router.add_get(FILES_ROUTE + "/{file_id}", self.file_object)
        router.add_get(FILES_ROUTE + "/{file_id}/content", self.file_content)
        router.add_post(BATCHES_ROUTE, self.create)
        router.add_get(BATCHES_ROUTE, self.list_batches)
        router.add_get(BATCHES_ROUTE + "/{batch_id}", self.retrieve)
        router.add_post(BATCHES_ROUTE + "/{batch_id}/cancel", self.cancel)

    # --- the handlers: each checks the token, then answers JSON or the OpenAI error shape ---

    async def _guarded(self, request: web.Request, work) -> web.Response:
        state = self.state
        refused = auth_error(request.headers.get("Authorization", ""), state.config.token)
        if refused is not None:
            await request.release()
            return state._error(OPENAI, refused, None)
        try:
            return await work()
        except ApiError as err:
            return state._error(OPENAI, err, None)

    def _json(self, doc: dict) -> web.Response:
        return self.state._respond(OPENAI, 200, json.dumps(doc).encode())

    async def upload(self, request: web.Request) -> web.Response:
        async def work():
            purpose, filename, data = await read_upload(request)
            stored = self.uploads.add(filename, purpose, data)
            self.state.stats.files_uploaded += 1
            return self._json(stored.as_object())
        return await self._guarded(request, work)

    async def file_object(self, request: web.Request) -> web.Response:
        async def work():
            return self._json(self.uploads.find(request.match_info["file_id"]).as_object())
        return await self._guarded(request, work)

    async def file_content(self, request: web.Request) -> web.Response:
        async def work():
            stored = self.uploads.find(request.match_info["file_id"])
            return self.state._respond(OPENAI, 200, stored.data, content_type="application/octet-stream")
        return await self._guarded(request, work)

    async def create(self, request: web.Request) -> web.Response:
        async def work():
            doc = decode_json(await request.read())
            endpoint, file_id, metadata = _create_params(doc)
            batch = self._new_batch(endpoint, file_id, metadata)
            self.batches[batch.id] = batch
            self.state.stats.batches_created += 1
            await self._advance(batch, request)
            return self._json(batch.as_object())
        return await self._guarded(request, work)

    async def retrieve(self, request: web.Request) -> web.Response:
        async def work():
            batch = self._find(request.match_info["batch_id"])
            await self._advance(batch, request)
            return self._json(batch.as_object())
        return await self._guarded(request, work)

    async def list_batches(self, request: web.Request) -> web.Response:
        async def work():
            limit = _limit(request.query.get("limit"))
            newest_first = list(reversed(self.batches.values()))
            start = 0
            after = request.query.get("after")
            if after:
                ids = [b.id for b in newest_first]
                if after not in ids:
                    raise bad(f"Invalid 'after': no batch with id '{after}'.", param="after")
                start = ids.index(after) + 1
            page = newest_first[start:start + limit]
            for batch in page:
                await self._advance(batch, request)
            data = [b.as_object() for b in page]
            return self._json({"object": "list", "data": data,
                               "first_id": data[0]["id"] if data else None,
                               "last_id": data[-1]["id"] if data else None,
                               "has_more": start + limit < len(newest_first)})
        return await self._guarded(request, work)

    async def cancel(self, request: web.Request) -> web.Response:
        async def work():
            batch = self._find(request.match_info["batch_id"])
            await self._advance(batch, request)   # what has run by now stays run
            async with batch.lock:
                if batch.status in ("completed", "failed", "expired"):
                    raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
                if batch.status not in ("cancelling", "cancelled"):
                    batch.status = "cancelling"
                    batch.stamp("cancelling_at", int(time.time()))
                    batch.cancel_pending = True
            return self._json(batch.as_object())
        return await self._guarded(request, work)

    def _find(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    # --- making, advancing and finishing a batch ---

    def _new_batch(self, endpoint: str, file_id: str, metadata: Optional[dict]) -> Batch:
        cfg, stats = self.state.config, self.state.stats
        stored = self.uploads.get(file_id)
        digest = hashlib.sha256(endpoint.encode() + b"\n" + (stored.data if stored else b"")).hexdigest()
        count = self.seen.get(digest, 0)
        self.seen[digest] = count + 1
        rng = random.Random(f"batch:{cfg.seed}:{digest}:{count}")
        fail = rng.random() < cfg.batch_fail_validation
        expire = rng.random() < cfg.batch_expire
        lines, errors, model = check_input(stored, file_id, endpoint)
        if errors is None and fail:
            bump(stats.faults, "batch_fail_validation")
            errors = [_line_error("token_limit_exceeded", f"Enqueued token limit reached for "
                                  f"{model}. Please try submitting an equivalent batch later.")]
        if errors is not None:
            lines, expire = [], False
        for line in lines:   # drawn in input order, then the running order is shuffled
            line.fails = rng.random() < cfg.batch_line_errors
        rng.shuffle(lines)
        if expire:
            bump(stats.faults, "batch_expire")
        return Batch(endpoint, file_id, metadata, cfg.batch_seconds, lines, errors, model, expire)

    async def _advance(self, batch: Batch, request: web.Request) -> None:
        """Bring the batch up to the present: its status, the lines due by now run (once)."""
        async with batch.lock:
            if batch.final:
                return
            if batch.cancel_pending:       # the read after the cancel
                self._finish(batch, "cancelled", "cancelled_at", int(time.time()), CANCELLED_ERROR)
                return
            now = time.monotonic()
            fraction = batch.fraction(now)
            if fraction < VALIDATED:
                return
            if batch.errors is not None:
                batch.status = "failed"
                batch.stamp("failed_at", batch.at(VALIDATED))
                return
            batch.status = "in_progress"
            batch.stamp("in_progress_at", batch.at(VALIDATED))
            await self._run(batch, batch.due(fraction), request)
            if fraction >= 1.0:
                if batch.expire:
                    self._finish(batch, "expired", "expired_at", batch.at(1.0), EXPIRED_ERROR)
                else:
                    batch.stamp("finalizing_at", batch.at(FINALIZING))
                    self._finish(batch, "completed", "completed_at", batch.at(1.0), None)
            elif fraction >= FINALIZING and not batch.expire:
                batch.status = "finalizing"
                batch.stamp("finalizing_at", batch.at(FINALIZING))

    async def _run(self, batch: Batch, due: int, request: web.Request) -> None:
        while len(batch.outcomes) < due:
            line = batch.lines[len(batch.outcomes)]
            status, body = self._execute(batch, line, request)
            batch.outcomes.append((line, status, body, f"req_{uuid.uuid4().hex}"))
            if 200 <= status < 300:
                batch.completed += 1
            else:
                batch.failed += 1
            if len(batch.outcomes) % _YIELD_EVERY == 0:
                await asyncio.sleep(0)   # other requests go on; the batch's lock is held

    def _execute(self, batch: Batch, line: Line, request: web.Request) -> tuple[int, bytes]:
        """(status, body) of one line, as the live endpoint answers its body."""
        state = self.state
        if line.fails:
            bump(state.stats.faults, "batch_line_errors")
            return error_answer(OPENAI, server_error())
        bump(state.stats.batch_executions, line.custom_id)
        try:
            if batch.endpoint == EDITS:
                req = state._accept_edit(json_form(decode_json(line.body), state.fetch))
            else:
                req = state._accept(line.body)
            body = state._success_body(request, OPENAI, req, None)
        except ApiError as err:
            return error_answer(OPENAI, err)
        spent = usage(req)
        for key in batch.usage:
            batch.usage[key] += spent[key]
        return 200, body

    def _finish(self, batch: Batch, status: str, stamp: str, when: int,
                unrun_error: Optional[dict]) -> None:
        """Write the output and error files (in running order) and end the batch."""
        output: list = []
        errors: list = []
        for line, code, body, request_id in batch.outcomes:
            (output if 200 <= code < 300 else errors).append(
                _result_line(line.custom_id, code, body, request_id))
        for line in batch.lines[len(batch.outcomes):]:
            errors.append(_unrun_line(line.custom_id, unrun_error))
            batch.failed += 1
        if output:
            batch.output_file_id = self.uploads.add(f"{batch.id}_output.jsonl", "batch_output",
                                                    b"".join(output)).id
        if errors:
            batch.error_file_id = self.uploads.add(f"{batch.id}_error.jsonl", "batch_output",
                                                   b"".join(errors)).id
        batch.outcomes = []   # the files hold the answers now
        batch.cancel_pending = False
        batch.status = status
        batch.stamp(stamp, when)


def _create_params(doc: Any) -> tuple[str, str, Optional[dict]]:
    """(endpoint, input_file_id, metadata) of a create request, or the 400 OpenAI answers."""
    if not isinstance(doc, dict):
        raise bad("The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(k for k in doc if k not in _CREATE_FIELDS)
    if unknown:
        raise bad(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if doc.get(name) is None:
            raise bad(f"Missing required parameter: '{name}'.", param=name,
                      code="missing_required_parameter")
        if not isinstance(doc[name], str):
            raise bad(f"Invalid type for '{name}': expected a string.", param=name,
                      code="invalid_type")
    if doc["endpoint"] not in ENDPOINTS:
        raise bad(f"Invalid value: '{doc['endpoint']}'. Supported values for 'endpoint' in the "
                  f"batchgen simulator are: '{GENERATIONS}' and '{EDITS}'.", param="endpoint")
    if doc["completion_window"] not in COMPLETION_WINDOWS:
        raise bad(f"Invalid value: '{doc['completion_window']}'. Supported values for "
                  f"'completion_window' are: '24h'.", param="completion_window")
    return doc["endpoint"], doc["input_file_id"], _metadata(doc.get("metadata"))


def _metadata(metadata: Any) -> Optional[dict]:
    """At most 16 pairs of strings: keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad("Invalid type for 'metadata': expected an object.", param="metadata",
                  code="invalid_type")
    if len(metadata) > MAX_METADATA:
        raise bad(f"Invalid 'metadata': too many properties. Expected an object with at most "
                  f"{MAX_METADATA} properties, but got {len(metadata)} instead.", param="metadata",
                  code="object_above_max_properties")
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad(f"Invalid 'metadata': key '{key[:64]}...' is longer than 64 characters.",
                      param="metadata", code="string_above_max_length")
        if not isinstance(value, str):
            raise bad(f"Invalid type for 'metadata.{key}': expected a string.", param="metadata",
                      code="invalid_type")
        if len(value) > 512:
            raise bad(f"Invalid 'metadata.{key}': string too long. Expected at most 512 "
                      f"characters, but got {len(value)}.", param="metadata",
                      code="string_above_max_length")
    return dict(metadata)


def _limit(text: Optional[str]) -> int:
    if text is None:
        return 20
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise bad(f"Invalid 'limit': expected an integer from 1 to 100, but got '{text}'.",
                  param="limit")
    return limit
