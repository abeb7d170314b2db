"""One request to an Images Generations endpoint: build it, send it, parse either dialect.

This is the only module that knows aiohttp. Every aiohttp exception is translated into a
batchgen RequestError by `translate_exception`, at this one boundary.
"""
from __future__ import annotations

import asyncio
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Optional, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import pybase64

from batchgen._version import __version__
from batchgen.exceptions import (
    ApiError,
    BadResponse,
    ConnectionFailed,
    DownloadFailed,
    DownloadGone,
    NotJson,
    RequestError,
    RequestTimeout,
    Unreachable,
)
from batchgen.rules.providers import Endpoint, parse_error_body
from batchgen.sending.classify import error_code
from batchgen.sending.limits import RateLimitHeaders, parse_ratelimit_headers, parse_retry_after
from batchgen.util import fastjson

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
INLINE_DECODE_CHARS = 1 << 20      # a data: URL longer than this is decoded in a thread
# A generation's body holds its images as base64 (4/3 of their bytes) plus a little JSON.
MAX_RESPONSE_BYTES_PER_IMAGE = MAX_DOWNLOAD_BYTES * 3 // 2
MAX_REDIRECTS = 5
# What is kept of a server's texts: enough for any real value, bounded for a hostile one.
MAX_TEXT_CHARS = 32_000
MAX_ID_CHARS = 256
MAX_URL_CHARS = 16_384
MAX_CREATED = 2 ** 40          # seconds since 1970: year 36,812
MAX_TOKENS = 10 ** 12
MAX_COST_USD = 10 ** 6         # a gateway's cost for one answer
# Where an answer names its request, the upstream's id first (what its support asks for), then
# a gateway's own: LiteLLM's proxy drops x-request-id, forwards it as llm_provider-x-request-id
# (or request-id) in some versions, and always sends its x-litellm-call-id.
TRACE_HEADERS = ("x-request-id", "request-id", "llm_provider-x-request-id", "llm_provider-request-id",
                 "x-litellm-call-id", "x-trace-id")
# What a gateway says the answer cost (USD), beside batchgen's estimate.
GATEWAY_COST_HEADER = "x-litellm-response-cost"
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
    url: Optional[str]             # a link to download, or a data: URL holding the image
    revised_prompt: Optional[str]

    @property
    def public_url(self) -> Optional[str]:
        """The link as results may keep it: not a data: URL, which is the image itself."""
        return None if self.url is None or _is_data_url(self.url) else self.url


def _is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


@dataclass
class Generation:
    images: list[GeneratedImage]
    created: Optional[int]
    trace_id: Optional[str]
    http_status: int
    usage: Optional[dict]
    ratelimit: Optional[RateLimitHeaders]
    gateway_cost_usd: Optional[float] = None


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


_REF = re.compile(r"[A-Za-z0-9_.:-]{1,256}")


def server_ref(value: object) -> Optional[str]:
    """An id batchgen puts into a URL path (a batch's, a file's): plain characters only, so a
    server cannot steer a later request elsewhere ("../", "?", "#"). Anything else: None."""
    if isinstance(value, str) and _REF.fullmatch(value) and value not in (".", ".."):
        return value
    return None


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


def server_cost(value: object) -> Optional[float]:
    """A cost in USD a server states (a number, or one as text): finite, in [0, MAX_COST_USD]."""
    if isinstance(value, str) and len(value) < 40:
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_COST_USD:
        return float(value)
    return None        # NaN fails both comparisons


def header_trace(headers: Mapping[str, str], secret: str = "") -> Optional[str]:
    """The request id an answer's headers carry, the first of TRACE_HEADERS that has one."""
    get = headers.get
    for name in TRACE_HEADERS:
        value = get(name)
        if value is not None:
            found = server_id(value, secret)
            if found:
                return found
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
    # A generation always has output tokens: counts that are all 0 report nothing (LiteLLM's
    # proxy adds such a usage to answers of models that report none, DALL·E's).
    if not any(usage.values()):
        return None
    return usage


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


def _b64decode(text: str) -> bytes:
    """Strict base64 (a stray character, a missing or excess padding is an error, not skipped).
    pybase64's SIMD decoder: every image of a b64_json answer passes here, on the event loop,
    and the standard library's takes 45 times as long (100 µs for a 33 kB PNG, 5 ms for a
    2 MB one; bench/README.md)."""
    return pybase64.b64decode(text, validate=True)


_DATA_URL = re.compile(r"data:image/[a-z0-9.+-]+(?:;[a-z0-9-]+=[^;,]*)*;base64,", re.IGNORECASE)


def decode_data_url(url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """The image of a `data:image/...;base64,` URL (some gateways answer images so), at most
    `max_bytes`; whether it is an image is checked where every image is (keeping.store)."""
    head = _DATA_URL.match(url[:200])
    if head is None:
        raise DownloadGone(f"a data: URL that is not a base64 image ({server_text(url[:40])!r}...)")
    text = url[head.end():]
    if len(text) // 4 * 3 > max_bytes + 2:
        raise DownloadGone(f"image larger than {max_bytes} bytes")
    try:
        return _b64decode(text)
    except (binascii.Error, ValueError):
        raise DownloadGone("the image's data: URL is not valid base64") from None


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
    if status != 200 or (isinstance(payload, dict) and ("error" in payload and payload.get("error")
                                                          or payload.get("success") is False)):
        raise _api_error(status, headers, payload, raw, header_trace(headers, secret), secret, provider)
    if not isinstance(payload, dict):
        raise NotJson(f"HTTP 200 but the body is not a JSON object ({len(raw)} bytes)",
                          http_status=status, trace_id=header_trace(headers, secret))
    # AceData's trace_id first, then the headers' request id; the body's own id last: an
    # OpenAI-compatible server's answer may have one (OpenAI's has none).
    trace_id = (server_id(payload.get("trace_id"), secret) or header_trace(headers, secret)
                or server_id(payload.get("id"), secret))
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        raise BadResponse("HTTP 200 but the response has no images (no 'data' list)",
                          http_status=status, trace_id=trace_id)
    images = [_image(item, status, trace_id, secret) for item in data]
    return Generation(images=images, created=server_int(payload.get("created"), 0, MAX_CREATED),
                      trace_id=trace_id, http_status=status, usage=server_usage(payload.get("usage")),
                      ratelimit=parse_ratelimit_headers(headers),
                      gateway_cost_usd=server_cost(headers.get(GATEWAY_COST_HEADER)))


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
    # A data: URL is the image itself: as long as its bytes (the response's cap bounds it).
    if isinstance(url, str) and 0 < len(url) and (len(url) <= MAX_URL_CHARS or _is_data_url(url)):
        return GeneratedImage(None, url, revised)
    raise BadResponse("an image has neither b64_json nor url", http_status=status, trace_id=trace_id)


def _api_error(status, headers, payload, raw: bytes, in_headers, secret: str,
               provider: Optional[str]) -> ApiError:
    """An error answer in any provider's dialect, or none (an HTML page from a proxy)."""
    code = err_type = message = None
    trace_id = in_headers
    if isinstance(payload, dict):
        err = payload.get("error")
        call_id = err.get("litellm_call_id") if isinstance(err, dict) else None   # LiteLLM, when set to
        trace_id = server_id(payload.get("trace_id"), secret) or trace_id or server_id(call_id, secret)
        code, err_type, message = parse_error_body(payload, provider)
        code = server_id(code, secret)      # a number too: LiteLLM's proxy sends the status
        err_type = server_text(err_type, secret, 100)
        message = server_text(message, secret, 2000)
    if not message:
        text = raw[:200].decode("utf-8", "replace").strip()
        kind = "HTML page" if text.lower().startswith(("<!doctype", "<html")) else "body"
        message = f"HTTP {status} with a {kind} that is not an API error" + (
            f": {' '.join(text.split())[:120]}" if kind == "body" and text else "")
    # A 200 that says it failed but gives no code is the server's fault, like a 500.
    return ApiError(redact(str(message), secret), code=error_code(status, code and code[:100], err_type, message),
                    http_status=status, trace_id=trace_id,
                    retry_after=parse_retry_after(headers), ratelimit=parse_ratelimit_headers(headers))


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
        """Fetch an image link at once (they expire): http(s) only, no auth, size-capped; a
        data: URL's image is decoded. DownloadGone: no retry of the download can fetch it."""
        if _is_data_url(url):
            if len(url) < INLINE_DECODE_CHARS:
                return decode_data_url(url, max_bytes)
            # A photo's worth of base64 holds the loop for milliseconds: decoded in a thread.
            return await asyncio.to_thread(decode_data_url, url, max_bytes)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if urlsplit(url).scheme not in ("http", "https"):
                    raise DownloadGone(f"refusing to download from a non-http(s) URL ({urlsplit(url).scheme}:)")
                async with self._open_session().get(url, allow_redirects=False,
                                             proxy=proxy_for(url, self._proxies)) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        # A 4xx on a link just given will not change (a 408 or 429 may).
                        gone = 400 <= resp.status < 500 and resp.status not in (408, 429)
                        raise (DownloadGone if gone else DownloadFailed)(
                            f"image download answered HTTP {resp.status}", http_status=resp.status)
                    if (resp.content_length or 0) > max_bytes:
                        raise DownloadGone(f"image larger than {max_bytes} bytes")
                    chunks, size = [], 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadGone(f"image larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            raise DownloadGone("too many redirects")
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
MAX_BATCH_ERRORS = 100
MAX_METADATA = 16
UPLOAD_BYTES_PER_S = 512 * 1024     # the slowest upload link a --timeout is stretched for
LIST_CLOCK_SKEW_S = 3600            # a batch listed this much older than its chunk may still be it
MAX_LIST_PAGES = 100_000            # 10 million batches: a list longer than any account's is a broken server


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
    created_at: Optional[int] = None    # unix seconds, as the server says
    expires_at: Optional[int] = None


def parse_batch(payload: object, secret: str = "") -> BatchInfo:
    """A batch object, typed and bounded. A status batchgen does not know is kept (as short
    text) for the backend to refuse: it is no reason to wait."""
    if not isinstance(payload, dict) or server_ref(payload.get("id")) is None:
        raise BadResponse("the Batch API answered without a batch object (or with an id batchgen will not use)")
    status = payload.get("status")
    if status not in BATCH_STATUSES:
        status = f"unknown ({server_text(status, secret, 40)!r})"
    counts = payload.get("request_counts")
    if not isinstance(counts, dict):
        counts = {}
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    errors = []
    listed = payload.get("errors")
    listed_data = listed.get("data") if isinstance(listed, dict) else None
    for item in (listed_data if isinstance(listed_data, list) else [])[:MAX_BATCH_ERRORS]:
        if isinstance(item, dict):
            errors.append((server_text(item.get("code"), secret, 100) or "batch_failed",
                           server_text(item.get("message"), secret, 2000) or "the batch failed validation"))
    return BatchInfo(
        id=payload["id"], status=status,
        output_file_id=server_ref(payload.get("output_file_id")),
        error_file_id=server_ref(payload.get("error_file_id")),
        total=server_int(counts.get("total"), 0, 10 ** 9) or 0,
        completed=server_int(counts.get("completed"), 0, 10 ** 9) or 0,
        failed=server_int(counts.get("failed"), 0, 10 ** 9) or 0,
        metadata={k: v for k, v in list(metadata.items())[:MAX_METADATA]
                  if isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512},
        errors=errors,
        created_at=server_int(payload.get("created_at"), 0, MAX_CREATED),
        expires_at=server_int(payload.get("expires_at"), 0, MAX_CREATED))


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
        # Up to 200 MB: --timeout is for one image, the upload gets as long as a slow link needs.
        total = (self.timeout.total or 0) + len(data) / UPLOAD_BYTES_PER_S
        payload = await self._json("POST", "/files", data=form,
                                   timeout=aiohttp.ClientTimeout(total=total, sock_connect=self.timeout.sock_connect))
        file_id = server_ref(payload.get("id"))
        if not file_id:
            raise BadResponse("the Files API answered without a file id (or with one batchgen will not use)")
        return file_id

    async def create_batch(self, input_file_id: str, endpoint_path: str, metadata: dict) -> BatchInfo:
        body = {"input_file_id": input_file_id, "endpoint": endpoint_path, "completion_window": "24h",
                "metadata": metadata}
        return parse_batch(await self._json("POST", "/batches", json=body), self.endpoint.token)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        return parse_batch(await self._json("GET", f"/batches/{batch_id}"), self.endpoint.token)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        return parse_batch(await self._json("POST", f"/batches/{batch_id}/cancel"), self.endpoint.token)

    async def find_batch(self, metadata_key: str, value: str,
                         created_after: Optional[float] = None) -> Optional[BatchInfo]:
        """The newest batch of the account whose metadata[key] is `value`, if any. The list is
        newest first: it is read page by page until a batch older than `created_after` (less
        the clock skew) shows one could not be it, or to its end when that time is unknown."""
        after = None
        seen: set = set()
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
            items = page.get("data")
            if not isinstance(items, list):
                items = []
            older = False
            for item in items:
                if not isinstance(item, dict):
                    continue
                if isinstance(item.get("metadata"), dict) and item["metadata"].get(metadata_key) == value:
                    return parse_batch(item, self.endpoint.token)
                created = server_int(item.get("created_at"), 0, MAX_CREATED)
                if created_after is not None and created is not None \
                        and created < created_after - LIST_CLOCK_SKEW_S:
                    older = True
            if older or page.get("has_more") is not True or not items:
                return None
            after = server_ref(items[-1].get("id") if isinstance(items[-1], dict) else None)
            if not after or after in seen or len(seen) >= MAX_LIST_PAGES:   # in a circle, or without end
                return None
            seen.add(after)

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
