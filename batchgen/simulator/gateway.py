"""The simulator as seen through LiteLLM's proxy (SimConfig.gateway = "litellm"): the same
answers, as the proxy hands them on. Written from LiteLLM's source (litellm/exceptions.py,
litellm/proxy/_types.py's ProxyException and the proxy's exception handler, its image
endpoint and custom headers, litellm_core_utils/llm_response_utils/get_headers.py):

- An error is {"error": {"message", "type", "param", "code"}} with the HTTP status, as text,
  for `code`; the message is "litellm.<Exception>: <Exception>: OpenAIException - ", the
  upstream's words and the router's note of the model group. A 429 is a RateLimitError whatever it meant upstream, type
  "throttling_error": a spent account reads like a rate limit except for its words.
- Headers: Retry-After, retry-after-ms, x-ratelimit-* and x-request-id of the upstream are not
  handed on (the image endpoint sets only its own); every answer has x-litellm-call-id (1.82.6
  sends it with 200s only; later releases with errors too), a 200 x-litellm-response-cost as
  well (1.82.6 only for a model it has a price for).

Checked against the real proxy (1.82.6, tests/test_litellm_proxy.py) in front of the simulator.
- A 200's body is the OpenAI SDK's ImagesResponse as dumped: every field there, null where the
  upstream sent none, and a usage of zeros for a model that reports none (DALL·E).
"""
from __future__ import annotations

import json
import uuid
from typing import Awaitable, Callable

from aiohttp import web

GATEWAYS = ("", "litellm")

# LiteLLM's exception, and the `type` it answers with, for an upstream's HTTP status.
_EXCEPTIONS = {
    400: ("BadRequestError", "invalid_request_error"),
    401: ("AuthenticationError", "authentication_error"),
    403: ("PermissionDeniedError", "permission_error"),
    404: ("NotFoundError", "invalid_request_error"),
    408: ("Timeout", "invalid_request_error"),
    422: ("UnprocessableEntityError", "invalid_request_error"),
    429: ("RateLimitError", "throttling_error"),
    500: ("InternalServerError", "internal_server_error"),
    502: ("BadGatewayError", "internal_server_error"),
    503: ("ServiceUnavailableError", "internal_server_error"),
}
_ZERO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
               "output_tokens": 0, "total_tokens": 0}
_RESPONSE_FIELDS = ("background", "output_format", "quality", "safety_identifier", "size", "svg_usage")
_ITEM_FIELDS = ("b64_json", "revised_prompt", "url")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def litellm_middleware(paths: tuple, cost_per_image: float):
    """An aiohttp middleware that answers the generation `paths` as LiteLLM's proxy would."""

    @web.middleware
    async def litellm(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path not in paths or not isinstance(response, web.Response):
            return response
        transport = request.transport
        if transport is None or transport.is_closing():
            return response          # a hang-up: nothing reaches the client either way
        return rewrite(response, cost_per_image)

    return litellm


def rewrite(response: web.Response, cost_per_image: float) -> web.Response:
    raw = bytes(response.body) if isinstance(response.body, (bytes, bytearray)) else b""
    headers = {"x-litellm-call-id": str(uuid.uuid4()), "x-litellm-version": "1.82.6",
               "x-litellm-model-id": "sim"}
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if response.status == 200 and isinstance(doc, dict) and isinstance(doc.get("data"), list) \
            and doc.get("success") is not False and not doc.get("error"):
        body = _images_response(doc)
        headers["x-litellm-response-cost"] = repr(cost_per_image * len(body["data"]))
        return web.json_response(body, headers=headers)
    if response.status == 200:
        # The SDK could not read the upstream's 200: LiteLLM answers an APIError of its own.
        return _error(500, "APIError", "internal_server_error",
                      "OpenAIException - the response could not be parsed", headers)
    exception, kind = _EXCEPTIONS.get(response.status, ("APIError", "internal_server_error"
                                                       if response.status >= 500 else "invalid_request_error"))
    upstream = _upstream_error(doc, raw)
    if response.status == 400 and upstream.get("code") == "content_policy_violation":
        exception = "ContentPolicyViolationError"
    return _error(response.status, exception, kind,
                  f"OpenAIException - {upstream.get('message') or ''}. Received Model Group=sim\n"
                  "Available Model Group Fallbacks=None", headers)


def _images_response(doc: dict) -> dict:
    body: dict = {"created": doc.get("created")}
    body.update({name: doc.get(name) for name in _RESPONSE_FIELDS})
    body["data"] = [{name: item.get(name) for name in _ITEM_FIELDS} if isinstance(item, dict) else item
                    for item in doc["data"]]
    body["usage"] = doc.get("usage") or _ZERO_USAGE
    return body


def _upstream_error(doc: object, raw: bytes) -> dict:
    """The upstream's code and message, from either dialect's error body or a page of text."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        return {"code": err.get("code"), "message": err.get("message")}
    text = raw[:300].decode("utf-8", "replace")
    return {"code": None, "message": " ".join(text.split())}


def _error(status: int, exception: str, kind: str, detail: str, headers: dict) -> web.Response:
    message = f"litellm.{exception}: {exception}: {detail}"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": str(status)}},
                             status=status, headers=headers)
