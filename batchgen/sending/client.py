"""One request to an Images Generations endpoint: build it, send it, parse either dialect.

This is the only module that knows aiohttp. Every aiohttp exception is translated into a
batchgen RequestError by `translate_exception`, at this one boundary.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Optional, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp

from batchgen._version import __version__
from batchgen.exceptions import (
    ApiError,
    BadResponse,
    ConnectionFailed,
    DownloadFailed,
    NotJson,
    RequestError,
    RequestTimeout,
    Unreachable,
)
from batchgen.rules.providers import Endpoint, parse_error_body
from batchgen.sending.classify import fallback_code
from batchgen.sending.limits import RateLimitHeaders, parse_ratelimit_headers, parse_retry_after
from batchgen.util import fastjson

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# A generation's body holds its images as base64 (4/3 of their bytes) plus a little JSON.
MAX_RESPONSE_BYTES_PER_IMAGE = MAX_DOWNLOAD_BYTES * 3 // 2
MAX_REDIRECTS = 5
# What is kept of a server's texts: enough for any real value, bounded for a hostile one.
MAX_TEXT_CHARS = 32_000
MAX_ID_CHARS = 256
MAX_URL_CHARS = 16_384
MAX_CREATED = 2 ** 40          # seconds since 1970: year 36,812
MAX_TOKENS = 10 ** 12
USAGE_FIELDS = ("input_tokens", "output_tokens", "total_tokens")
# Flattened from usage.input_tokens_details: image input tokens cost more than text ones.
USAGE_DETAILS = {"image_input_tokens": ("input_tokens_details", "image_tokens")}
# A surrogate code point in a str is always a lone one (JSON's pairs decode to one character):
# it cannot be written as UTF-8, so pyarrow and the journal would choke on it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def build_body(prompt: str, params: dict) -> dict:
    """The request body: the prompt and the parameters that are set (a plan's params hold
    only those: the known ones, then --param's)."""
    body = {"prompt": prompt}
    for key, value in params.items():
        if value is not None:
            body[key] = value
    return body


def form_fields(prompt: str, params: dict) -> list:
    """An edit's multipart text fields, as the official SDK sends them: every value as text
    (JSON for what is not a str or a number)."""
    fields = [("prompt", prompt)]
    for key, value in build_body(prompt, params).items():
        if key != "prompt":
            fields.append((key, value if isinstance(value, str) else json.dumps(value)))
    return fields


class BodyEncoder:
    """build_body as the JSON bytes that are sent. Tasks of one sweep point share one params
    dict, so the parameters are encoded once per dict and only the prompt once per task."""

    def __init__(self) -> None:
        self._tails: dict = {}     # id(params) -> (params, encoded tail); holding params keeps the id unique

    def __call__(self, prompt: str, params: dict) -> bytes:
        cached = self._tails.get(id(params))
        if cached is None or cached[0] is not params:
            rest = json.dumps(build_body("", params))[len('{"prompt": ""'):]
            cached = self._tails[id(params)] = (params, rest.encode())
        return b'{"prompt": ' + json.dumps(prompt).encode() + cached[1]


@dataclass
class GeneratedImage:
    data: Optional[bytes]          # decoded bytes (b64_json), or None in url mode
    url: Optional[str]
    revised_prompt: Optional[str]


@dataclass
class Generation:
    images: list[GeneratedImage]
    created: Optional[int]
    trace_id: Optional[str]
    http_status: int
    usage: Optional[dict]
    ratelimit: Optional[RateLimitHeaders]


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret and text else text


# ---- server values, typed and bounded before anything else sees them ---------------------

def server_text(value: object, secret: str = "", limit: int = MAX_TEXT_CHARS) -> Optional[str]:
    """A text from a server as one we may keep: a str, at most `limit` characters, encodable
    as UTF-8 (a lone surrogate becomes U+FFFD), without the token. Anything else: None."""
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        value = value[:limit]
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    return redact(value, secret)


def server_id(value: object, secret: str = "") -> Optional[str]:
    """An identifier (a trace id): a text, or a whole number written as one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)[:MAX_ID_CHARS]
    return server_text(value, secret, MAX_ID_CHARS) or None


def server_int(value: object, low: int, high: int) -> Optional[int]:
    """A whole number in [low, high]: an int, a float with no fraction, or digits as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value) < 20:
        value = int(value)
    if isinstance(value, int) and low <= value <= high:
        return value
    return None


def server_usage(value: object) -> Optional[dict]:
    """The token counts of a response's `usage`, the ones that are whole numbers."""
    if not isinstance(value, dict):
        return None
    usage = {k: server_int(value.get(k), 0, MAX_TOKENS) for k in USAGE_FIELDS}
    for name, (group, key) in USAGE_DETAILS.items():
        details = value.get(group)
        usage[name] = server_int(details.get(key), 0, MAX_TOKENS) if isinstance(details, dict) else None
    usage = {k: v for k, v in usage.items() if v is not None}
    return usage or None


# aiohttp's exceptions, most specific first. A test walks aiohttp's hierarchy and fails if
# any class is not matched here.
_TRANSLATIONS: list[tuple[type, type, str]] = [
    (aiohttp.ServerTimeoutError, RequestTimeout, "the server did not answer in time"),
    (aiohttp.ConnectionTimeoutError, RequestTimeout, "connecting timed out"),
    (aiohttp.SocketTimeoutError, RequestTimeout, "the connection went silent"),
    (aiohttp.ClientPayloadError, BadResponse, "the response body was cut short or malformed"),
    (aiohttp.ContentTypeError, BadResponse, "unexpected content type"),
    (aiohttp.InvalidURL, ConnectionFailed, "invalid URL"),
    (getattr(aiohttp, "NonHttpUrlClientError", aiohttp.InvalidURL), ConnectionFailed, "not an http(s) URL"),
    (getattr(aiohttp, "RedirectClientError", aiohttp.InvalidURL), ConnectionFailed, "bad redirect"),
    (aiohttp.TooManyRedirects, ConnectionFailed, "too many redirects"),
    (aiohttp.WSServerHandshakeError, ConnectionFailed, "unexpected websocket handshake"),
    (aiohttp.ClientResponseError, BadResponse, "malformed HTTP response"),
    (aiohttp.ServerDisconnectedError, ConnectionFailed, "the server closed the connection"),
    (aiohttp.ClientConnectorError, Unreachable, "cannot connect"),
    (aiohttp.ClientConnectionError, ConnectionFailed, "connection failed"),
    (getattr(aiohttp, "UploadAbortedError", aiohttp.ClientConnectionError), ConnectionFailed,
     "sending the request body was aborted"),
    (asyncio.TimeoutError, RequestTimeout, "timed out"),
]


def _mapping_for(exc: BaseException):
    for aiohttp_type, ours, summary in _TRANSLATIONS:
        if isinstance(exc, aiohttp_type):
            return ours, summary
    return None


def translate_exception(exc: BaseException, secret: str = "") -> RequestError:
    """Our error for an aiohttp (or timeout) exception, its text stripped of the token."""
    ours, summary = _mapping_for(exc) or (ConnectionFailed, "HTTP client error")
    detail = redact(str(exc), secret)
    return ours(f"{summary}: {detail}" if detail and detail != summary else summary)


if sys.version_info >= (3, 11):
    def _b64decode(text: str) -> bytes:
        """Strict base64 (a stray character is an error, not skipped), without the ASCII copy
        and the checks base64.b64decode adds around the same C function."""
        return binascii.a2b_base64(text, strict_mode=True)
else:  # pragma: no cover - Python 3.10
    def _b64decode(text: str) -> bytes:
        return base64.b64decode(text, validate=True)


def parse_generation(status: int, headers: Mapping[str, str], raw: bytes, secret: str = "",
                     provider: Optional[str] = None) -> Generation:
    """A response of either dialect as images, or the RequestError it amounts to."""
    try:
        payload = fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None
    return generation_from(status, headers, payload, raw, secret, provider)


def generation_from(status: int, headers: Mapping[str, str], payload: Any, raw: bytes, secret: str = "",
                    provider: Optional[str] = None) -> Generation:
    """An answer already parsed as JSON (`payload`; None: it was not JSON) as images, or the
    RequestError it amounts to. `raw` is only read to describe an answer that is not JSON."""
    header_trace = server_id(headers.get("x-request-id") or headers.get("x-trace-id"), secret)
    if status != 200 or (isinstance(payload, dict) and ("error" in payload and payload.get("error")
                                                          or payload.get("success") is False)):
        raise _api_error(status, headers, payload, raw, header_trace, secret, provider)
    if not isinstance(payload, dict):
        raise NotJson(f"HTTP 200 but the body is not a JSON object ({len(raw)} bytes)",
                          http_status=status, trace_id=header_trace)
    trace_id = server_id(payload.get("trace_id"), secret) or header_trace
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        raise BadResponse("HTTP 200 but the response has no images (no 'data' list)",
                          http_status=status, trace_id=trace_id)
    images = [_image(item, status, trace_id, secret) for item in data]
    return Generation(images=images, created=server_int(payload.get("created"), 0, MAX_CREATED),
                      trace_id=trace_id, http_status=status, usage=server_usage(payload.get("usage")),
                      ratelimit=parse_ratelimit_headers(headers))


def _image(item, status: int, trace_id, secret: str) -> GeneratedImage:
    if not isinstance(item, dict):
        raise BadResponse("an entry of 'data' is not an object", http_status=status, trace_id=trace_id)
    revised = server_text(item.get("revised_prompt"), secret)
    if isinstance(item.get("b64_json"), str):
        try:
            return GeneratedImage(_b64decode(item["b64_json"]), None, revised)
        except (binascii.Error, ValueError):
            raise BadResponse("b64_json is not valid base64", http_status=status, trace_id=trace_id) from None
    url = item.get("url")
    if isinstance(url, str) and 0 < len(url) <= MAX_URL_CHARS:
        return GeneratedImage(None, url, revised)
    raise BadResponse("an image has neither b64_json nor url", http_status=status, trace_id=trace_id)


def _api_error(status, headers, payload, raw: bytes, header_trace, secret: str,
               provider: Optional[str]) -> ApiError:
    """An error answer in any provider's dialect, or none (an HTML page from a proxy)."""
    code = message = None
    trace_id = header_trace
    if isinstance(payload, dict):
        trace_id = server_id(payload.get("trace_id"), secret) or trace_id
        code, message = parse_error_body(payload, provider)
        code = server_text(code if isinstance(code, str) else None, secret, 100)
        message = server_text(message if isinstance(message, str) else None, secret, 2000)
    if not message:
        text = raw[:200].decode("utf-8", "replace").strip()
        kind = "HTML page" if text.lower().startswith(("<!doctype", "<html")) else "body"
        message = f"HTTP {status} with a {kind} that is not an API error" + (
            f": {' '.join(text.split())[:120]}" if kind == "body" and text else "")
    # A 200 that says it failed but gives no code is the server's fault, like a 500.
    return ApiError(redact(str(message), secret),
                    code=str(code) if code else fallback_code(status if status != 200 else 500),
                    http_status=status, trace_id=trace_id,
                    retry_after=parse_retry_after(headers))


def environment_proxies() -> dict:
    """HTTP_PROXY / HTTPS_PROXY (either case), by URL scheme, as curl and requests read them."""
    import urllib.request
    return {k: v for k, v in urllib.request.getproxies_environment().items() if k in ("http", "https")}


def proxy_for(url: str, proxies: dict) -> Optional[str]:
    """The proxy a request to `url` goes through: none for loopback (the simulator) or a host
    NO_PROXY names, else the one for its scheme. Read here, not by aiohttp's trust_env, which
    would also take credentials from ~/.netrc."""
    import urllib.request
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not proxies.get(parts.scheme) or host == "localhost" or host == "::1" or host.startswith("127."):
        return None
    # proxy_bypass_environment: in urllib.request since Python 3.x but undocumented, so not in typeshed
    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return None
    return proxies[parts.scheme]


async def _read_capped(resp, limit: int) -> bytes:
    """The body, or BadResponse past `limit` bytes. A compressed body's size is known only
    as it is inflated (a small gzip can hold gigabytes), so it is read piece by piece."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise BadResponse(f"the response is {declared} bytes, more than the {limit} allowed",
                          http_status=resp.status)
    if declared is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BadResponse(f"the response is more than the {limit} bytes allowed", http_status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


C = TypeVar("C", bound="ImagesClient")


class ImagesClient:
    """An aiohttp session to one endpoint, with at most `concurrency` connections."""

    def __init__(self, endpoint: Endpoint, concurrency: int, timeout: float):
        self.endpoint = endpoint
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30))
        self._concurrency = concurrency
        self.encode_body = BodyEncoder()
        self._session: Optional[aiohttp.ClientSession] = None
        self._headers = {"Authorization": f"Bearer {endpoint.token}",
                         "Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": f"batchgen/{__version__}"}
        self._proxies = environment_proxies()
        self._proxy = proxy_for(endpoint.url, self._proxies)

    async def __aenter__(self: C) -> C:
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._open_session().close()

    def _open_session(self) -> aiohttp.ClientSession:
        """The session __aenter__ opened: the client is used as `async with`."""
        assert self._session is not None, "use the client as `async with client:`"
        return self._session

    async def generate(self, body: Any, images_expected: int = 1, headers: Optional[dict] = None) -> Generation:
        """POST one generation (a body from BodyEncoder; or an edit's form, with its headers);
        returns images or raises a RequestError."""
        limit = MAX_RESPONSE_BYTES_PER_IMAGE * max(1, images_expected)
        status, answer_headers, raw = await self._post(self.endpoint.url, body, headers or self._headers, limit)
        return parse_generation(status, answer_headers, raw, self.endpoint.token, self.endpoint.provider)

    async def _post(self, url: str, body: Any, headers: dict, limit: int) -> tuple:
        """(status, headers, body) of one POST, or the RequestError it amounts to."""
        try:
            async with self._open_session().post(url, data=body, headers=headers,
                                                 allow_redirects=False, proxy=self._proxy) as resp:
                return resp.status, resp.headers, await _read_capped(resp, limit)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise translate_exception(exc, self.endpoint.token) from None

    # -- AceData's callback mode and Tasks API --

    async def submit_task(self, body: bytes) -> Submitted:
        """POST one generation carrying callback_url and trace_id (see with_task_fields): the
        server's task id at once, or a RequestError."""
        status, headers, raw = await self._post(self.endpoint.url, body, self._headers, MAX_TASK_ANSWER_BYTES)
        return parse_submitted(status, headers, raw, self.endpoint.token, self.endpoint.provider)

    async def submit_edit_task(self, prompt: str, params: dict, files: list, callback_url: str,
                               trace_id: str) -> Submitted:
        """An edit (as `edit` sends it) carrying callback_url and trace_id: its task id at once."""
        fields = form_fields(prompt, params) + [("callback_url", callback_url), ("trace_id", trace_id)]
        form, headers = self._edit_form(fields, files)
        status, answer_headers, raw = await self._post(self.endpoint.url, form, headers, MAX_TASK_ANSWER_BYTES)
        return parse_submitted(status, answer_headers, raw, self.endpoint.token, self.endpoint.provider)

    async def find_tasks(self, by: str, values: list) -> AsyncIterator[list]:
        """The tasks (RemoteTask) whose `by` ("ids" or "trace_ids") is one of `values`, from
        the Tasks API's retrieve_batch (free: not billed), a page at a time as they come: a
        finished task holds its images, so the caller keeps a page, not all of them."""
        url = self.endpoint.root + TASKS_PATH
        for start in range(0, len(values), TASKS_PER_CALL):
            asked = values[start:start + TASKS_PER_CALL]
            offset = 0
            for _ in range(MAX_TASK_PAGES):
                query = {"action": "retrieve_batch", by: asked, "limit": TASKS_PER_CALL, "offset": offset}
                status, headers, raw = await self._post(url, json.dumps(query).encode(), self._headers,
                                                        MAX_RESPONSE_BYTES_PER_IMAGE * TASKS_PER_CALL)
                items, count = parse_task_page(status, headers, raw, self.endpoint.token, self.endpoint.provider)
                if items:
                    yield items
                offset += TASKS_PER_CALL
                if not items or offset >= count:
                    break

    async def edit(self, prompt: str, params: dict, files: list, images_expected: int = 1) -> Generation:
        """POST one edit as multipart/form-data, as the official SDK sends it. `files`:
        (field, file name, bytes, content type); several images go as `image[]`."""
        form, headers = self._edit_form(form_fields(prompt, params), files)
        return await self.generate(form, images_expected, headers)

    def _edit_form(self, fields: list, files: list) -> tuple:
        form = aiohttp.FormData()
        for name, value in fields:
            form.add_field(name, value)
        several = sum(1 for f in files if f[0] == "image") > 1
        for field_name, filename, data, content_type in files:
            name = "image[]" if field_name == "image" and several else field_name
            form.add_field(name, data, filename=filename, content_type=content_type)
        # aiohttp sets the multipart Content-Type (with its boundary) itself.
        return form, {k: v for k, v in self._headers.items() if k != "Content-Type"}

    async def download(self, url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
        """Fetch an image link at once (they expire): http(s) only, no auth, size-capped."""
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if urlsplit(url).scheme not in ("http", "https"):
                    raise DownloadFailed(f"refusing to download from a non-http(s) URL ({urlsplit(url).scheme}:)")
                async with self._open_session().get(url, allow_redirects=False,
                                             proxy=proxy_for(url, self._proxies)) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise DownloadFailed(f"image download answered HTTP {resp.status}", http_status=resp.status)
                    if (resp.content_length or 0) > max_bytes:
                        raise DownloadFailed(f"image larger than {max_bytes} bytes")
                    chunks, size = [], 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadFailed(f"image larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            raise DownloadFailed("too many redirects")
        except DownloadFailed:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            err = translate_exception(exc, self.endpoint.token)
            raise DownloadFailed(f"image download failed: {err.message}") from None


# ---- AceData's callback mode: a task id at once, the outcome from the Tasks API ----------

TASKS_PATH = "/tasks"           # beside …/images/generations under the API root: …/openai/tasks
# Tasks asked for in one call: a finished task's answer holds its images (a 4K PNG is tens of
# MB as base64), so a page stays small enough to hold in memory; the calls are free.
TASKS_PER_CALL = 25
MAX_TASK_PAGES = 20             # pages of one query: a trace id names a task or two, not thousands
MAX_TASK_ANSWER_BYTES = 1 << 20


@dataclass
class Submitted:
    task_id: str
    ratelimit: Optional[RateLimitHeaders]


@dataclass
class RemoteTask:
    """A task as the Tasks API describes it, typed: unfinished, or its images, or its error."""
    id: str
    trace_id: Optional[str]
    finished: bool
    generation: Optional[Generation] = None
    error: Optional[RequestError] = None


def with_task_fields(body: bytes, callback_url: str, trace_id: str) -> bytes:
    """A generation's JSON body (BodyEncoder's) with AceData's callback_url and trace_id."""
    return (body.rstrip()[:-1] + b', "callback_url": ' + json.dumps(callback_url).encode()
            + b', "trace_id": ' + json.dumps(trace_id).encode() + b"}")


def parse_submitted(status: int, headers: Mapping[str, str], raw: bytes, secret: str = "",
                    provider: Optional[str] = None) -> Submitted:
    payload = _json_or_none(raw)
    header_trace = server_id(headers.get("x-request-id") or headers.get("x-trace-id"), secret)
    if status != 200 or not isinstance(payload, dict) or payload.get("error") or payload.get("success") is False:
        if status == 200 and not isinstance(payload, dict):
            raise NotJson(f"HTTP 200 but the body is not a JSON object ({len(raw)} bytes)", http_status=status,
                          trace_id=header_trace)
        raise _api_error(status, headers, payload, raw, header_trace, secret, provider)
    task_id = server_id(payload.get("task_id"), secret)
    if not task_id:
        raise BadResponse("HTTP 200 but the answer to a callback request has no task_id", http_status=status,
                          trace_id=header_trace)
    return Submitted(task_id, parse_ratelimit_headers(headers))


def parse_task_page(status: int, headers: Mapping[str, str], raw: bytes, secret: str = "",
                    provider: Optional[str] = None) -> tuple:
    """([RemoteTask], how many match in all) of a retrieve_batch answer; `{}` is none."""
    payload = _json_or_none(raw)
    if status != 200 or not isinstance(payload, dict) or payload.get("error") or payload.get("success") is False:
        raise _api_error(status if status != 200 else 500, headers, payload, raw, None, secret, provider)
    items = payload.get("items")
    if not isinstance(items, list):
        return [], 0
    tasks = [t for t in (parse_task(item, secret, provider) for item in items) if t is not None]
    return tasks, server_int(payload.get("count"), 0, 10 ** 9) or 0


def parse_task(item: object, secret: str = "", provider: Optional[str] = None) -> Optional[RemoteTask]:
    """One task of the Tasks API, or None for an entry that is not one."""
    if not isinstance(item, dict):
        return None
    task_id = server_id(item.get("id"), secret)
    if not task_id:
        return None
    trace_id = server_id(item.get("trace_id"), secret)
    response = item.get("response")
    if not isinstance(response, dict) or not response:
        return RemoteTask(task_id, trace_id, finished=False)
    try:
        generation = generation_from(200, {}, response, b"", secret, provider)
    except RequestError as error:
        error.http_status = None        # the task failed upstream; no HTTP answer of ours said so
        return RemoteTask(task_id, trace_id, finished=True, error=error)
    generation.trace_id = trace_id
    return RemoteTask(task_id, trace_id, finished=True, generation=generation)


# ---- OpenAI's Batch API ---------------------------------------------------------------------

BATCH_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BATCH_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"}) | BATCH_TERMINAL
MAX_BATCH_LINE_BYTES = MAX_RESPONSE_BYTES_PER_IMAGE * 10


@dataclass
class BatchInfo:
    """A batch object, typed: what batchgen reads of it."""
    id: str
    status: str
    output_file_id: Optional[str]
    error_file_id: Optional[str]
    total: int
    completed: int
    failed: int
    metadata: dict
    errors: list            # [(code, message)] of a batch that failed validation


def parse_batch(payload: object, secret: str = "") -> BatchInfo:
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise BadResponse("the Batch API answered without a batch object")
    status = payload.get("status")
    if status not in BATCH_STATUSES:
        raise BadResponse(f"the Batch API answered an unknown batch status {server_text(status, secret, 40)!r}")
    counts = payload.get("request_counts")
    if not isinstance(counts, dict):
        counts = {}
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    errors = []
    listed = payload.get("errors")
    listed_data = listed.get("data") if isinstance(listed, dict) else None
    for item in (listed_data if isinstance(listed_data, list) else []):
        if isinstance(item, dict):
            errors.append((server_text(item.get("code"), secret, 100) or "batch_failed",
                           server_text(item.get("message"), secret, 2000) or "the batch failed validation"))
    return BatchInfo(
        id=server_id(payload["id"], secret) or "", status=status,
        output_file_id=server_id(payload.get("output_file_id"), secret),
        error_file_id=server_id(payload.get("error_file_id"), secret),
        total=server_int(counts.get("total"), 0, 10 ** 9) or 0,
        completed=server_int(counts.get("completed"), 0, 10 ** 9) or 0,
        failed=server_int(counts.get("failed"), 0, 10 ** 9) or 0,
        metadata={k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)},
        errors=errors)


class BatchClient(ImagesClient):
    """The Files and Batches endpoints of an OpenAI-style API root (…/v1)."""

    def __init__(self, endpoint: Endpoint, timeout: float):
        super().__init__(endpoint, concurrency=4, timeout=timeout)
        self.root = endpoint.root
        self._auth = {"Authorization": f"Bearer {endpoint.token}", "User-Agent": f"batchgen/{__version__}"}

    async def _json(self, method: str, path: str, **kwargs) -> dict:
        try:
            async with self._open_session().request(method, self.root + path, headers=self._auth,
                                             allow_redirects=False, proxy=self._proxy, **kwargs) as resp:
                raw = await _read_capped(resp, 16 << 20)
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise translate_exception(exc, self.endpoint.token) from None
        try:
            payload = fastjson.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            payload = None
        if status >= 400 or not isinstance(payload, dict) or payload.get("error"):
            raise _api_error(status if status >= 400 else 500, headers, payload, raw, None,
                             self.endpoint.token, self.endpoint.provider)
        return payload

    async def upload_batch_file(self, name: str, data: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=name, content_type="application/jsonl")
        payload = await self._json("POST", "/files", data=form)
        file_id = server_id(payload.get("id"), self.endpoint.token)
        if not file_id:
            raise BadResponse("the Files API answered without a file id")
        return file_id

    async def create_batch(self, input_file_id: str, endpoint_path: str, metadata: dict) -> BatchInfo:
        body = {"input_file_id": input_file_id, "endpoint": endpoint_path, "completion_window": "24h",
                "metadata": metadata}
        return parse_batch(await self._json("POST", "/batches", json=body), self.endpoint.token)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        return parse_batch(await self._json("GET", f"/batches/{batch_id}"), self.endpoint.token)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        return parse_batch(await self._json("POST", f"/batches/{batch_id}/cancel"), self.endpoint.token)

    async def find_batch(self, metadata_key: str, value: str, max_pages: int = 20) -> Optional[BatchInfo]:
        """The newest batch of the account whose metadata[key] is `value`, if any."""
        after = None
        for _ in range(max_pages):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
            items = page.get("data")
            if not isinstance(items, list):
                items = []
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("metadata"), dict) \
                        and item["metadata"].get(metadata_key) == value:
                    return parse_batch(item, self.endpoint.token)
            if not page.get("has_more") or not items:
                return None
            after = server_id(items[-1].get("id") if isinstance(items[-1], dict) else None)
            if not after:
                return None
        return None

    async def file_lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The lines of a (large) file, as they arrive: never the whole file in memory."""
        try:
            async with self._open_session().get(f"{self.root}/files/{file_id}/content", headers=self._auth,
                                         allow_redirects=False, proxy=self._proxy,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as resp:
                if resp.status >= 400:
                    raw = await _read_capped(resp, 1 << 20)
                    raise _api_error(resp.status, resp.headers, _json_or_none(raw), raw, None,
                                     self.endpoint.token, self.endpoint.provider)
                pending = b""
                async for chunk in resp.content.iter_chunked(1 << 20):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
                    if len(pending) > MAX_BATCH_LINE_BYTES:
                        raise BadResponse("a line of the batch's file is larger than any answer can be")
                if pending.strip():
                    yield pending
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise translate_exception(exc, self.endpoint.token) from None


def _json_or_none(raw: bytes):
    try:
        return fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
