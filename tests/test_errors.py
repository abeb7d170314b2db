"""Error parsing of both dialects and classification, without a server."""
import asyncio
import base64
import json

import aiohttp
import pytest
from multidict import CIMultiDict

from batchgen import exceptions
from batchgen.exceptions import ApiError, BadResponse, RequestTimeout, UsageError
from batchgen.rules.providers import endpoint_url, resolve_endpoint
from batchgen.sending.classify import Decision, classify, fallback_code
from batchgen.sending.client import (
    _TRANSLATIONS,
    BodyEncoder,
    _mapping_for,
    build_body,
    parse_generation,
    translate_exception,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()


def body(obj):
    return json.dumps(obj).encode()


def test_parses_an_openai_error():
    with pytest.raises(ApiError) as e:
        parse_generation(400, {"x-request-id": "req_1"}, body(
            {"error": {"message": "Your request was rejected", "type": "image_generation_user_error",
                       "param": None, "code": "content_policy_violation"}}))
    assert (e.value.code, e.value.http_status, e.value.trace_id) == ("content_policy_violation", 400, "req_1")
    assert classify(e.value) is Decision.FAIL


def test_parses_an_acedata_error_whichever_provider_is_set():
    with pytest.raises(ApiError) as e:
        parse_generation(401, {}, body({"success": False, "error": {"code": "invalid_token", "message": "bad token"},
                                        "trace_id": "t-9"}))
    assert (e.value.code, e.value.message, e.value.trace_id) == ("invalid_token", "bad token", "t-9")
    assert classify(e.value) is Decision.STOP


def test_an_html_503_is_a_retryable_api_error():
    with pytest.raises(ApiError) as e:
        parse_generation(503, CIMultiDict({"Retry-After": "7"}),
                         b"<html><body>Service Temporarily Unavailable</body></html>")
    assert e.value.code == "api_error" and e.value.retry_after == 7
    assert "HTML page" in e.value.message
    assert classify(e.value) is Decision.RETRY


def test_a_429_carries_the_limits_its_headers_state():
    with pytest.raises(ApiError) as e:
        parse_generation(429, CIMultiDict({"Retry-After": "1", "x-ratelimit-limit-requests": "600",
                                           "x-ratelimit-remaining-requests": "0"}),
                         body({"error": {"message": "Rate limit reached", "type": "requests",
                                         "code": "rate_limit_exceeded"}}))
    assert (e.value.ratelimit.limit, e.value.ratelimit.remaining) == (600, 0)
    with pytest.raises(ApiError) as e:
        parse_generation(429, {}, body({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}))
    assert e.value.ratelimit is None


@pytest.mark.parametrize("raw, words", [
    (b'{"created": 1, "data": [{"b64_json": "', "not a JSON object"),
    (b"<html>ok</html>", "not a JSON object"),
    (body({"created": 1, "data": [{"b64_json": "not base64!!"}]}), "not valid base64"),
    (body({"created": 1, "data": []}), "no images"),
    (body({"created": 1, "data": [{"other": 1}]}), "neither b64_json nor url"),
])
def test_garbage_200s_are_bad_responses(raw, words):
    with pytest.raises(BadResponse, match=words):
        parse_generation(200, {}, raw)


def test_parses_images_revised_prompt_and_usage():
    g = parse_generation(200, {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                               "x-ratelimit-reset-requests": "1s"},
                         body({"created": 5, "data": [{"b64_json": PNG, "revised_prompt": "r"}, {"url": "http://h/i.png"}],
                               "usage": {"total_tokens": 10}}))
    assert g.images[0].data.startswith(b"\x89PNG") and g.images[0].revised_prompt == "r"
    assert g.images[1].url == "http://h/i.png" and g.images[1].data is None
    assert g.created == 5 and g.usage == {"total_tokens": 10}
    assert (g.ratelimit.limit, g.ratelimit.remaining) == (60, 59)


def test_the_token_is_redacted_from_error_text():
    with pytest.raises(ApiError) as e:
        parse_generation(401, {}, body({"error": {"message": "token sk-secret-123 is invalid", "type": "x",
                                                  "param": None, "code": "invalid_api_key"}}), secret="sk-secret-123")
    assert "sk-secret-123" not in e.value.message


@pytest.mark.parametrize("status, code, decision", [
    (429, "rate_limit_exceeded", Decision.RETRY), (429, "insufficient_quota", Decision.STOP),
    (403, "used_up", Decision.STOP), (403, "forbidden", Decision.FAIL), (400, "invalid_value", Decision.FAIL),
    (500, "api_error", Decision.RETRY), (502, None, Decision.RETRY), (408, None, Decision.RETRY),
    (409, None, Decision.RETRY), (401, "whatever", Decision.STOP), (404, None, Decision.FAIL),
])
def test_classification(status, code, decision):
    assert classify(ApiError("m", code=code or fallback_code(status), http_status=status)) is decision


def test_local_failures_are_retried():
    for error in (exceptions.RequestTimeout("t"), exceptions.ConnectionFailed("c"), exceptions.BadResponse("b"),
                  exceptions.DownloadFailed("d")):
        assert classify(error) is Decision.RETRY


def _all_subclasses(cls):
    yield cls
    for sub in cls.__subclasses__():
        yield from _all_subclasses(sub)


def test_every_aiohttp_exception_is_translated_at_the_client_boundary():
    unmapped = [c.__name__ for c in _all_subclasses(aiohttp.ClientError)
                if c is not aiohttp.ClientError and c.__module__.startswith("aiohttp")
                and _mapping_for(c.__new__(c)) is None]
    assert unmapped == []
    assert isinstance(translate_exception(aiohttp.ServerTimeoutError("x")), RequestTimeout)
    assert isinstance(translate_exception(asyncio.TimeoutError()), RequestTimeout)
    assert isinstance(translate_exception(aiohttp.ServerDisconnectedError()), exceptions.ConnectionFailed)
    assert isinstance(translate_exception(aiohttp.ClientPayloadError("cut")), BadResponse)
    assert all(issubclass(ours, exceptions.RequestError) for _, ours, _ in _TRANSLATIONS)


def test_only_set_parameters_go_into_the_body():
    assert build_body("otter", {"model": "gpt-image-2", "size": "1024x1024"}) == {
        "prompt": "otter", "model": "gpt-image-2", "size": "1024x1024"}


def test_the_bytes_sent_are_the_body_whatever_the_prompt_and_parameters():
    encode = BodyEncoder()
    shared = {"model": "dall-e-3", "quality": "hd", "style": None, "size": "1024x1024", "n": 1}
    cases = [("otter", shared), ('a "quoted" \\ back\nslash', shared), ("日本の猫 🐈", shared),
             ("", {}), ("fox", {"model": "dall-e-3", "n": 4, "response_format": "b64_json"})]
    for prompt, params in cases:
        sent = encode(prompt, params)
        assert isinstance(sent, bytes)
        assert json.loads(sent) == build_body(prompt, params)
        assert list(json.loads(sent))[0] == "prompt"
    # The parameters' part is cached per dict: a new dict with other values is not mistaken for it.
    assert json.loads(encode("x", {"model": "gpt-image-2"})) == {"prompt": "x", "model": "gpt-image-2"}


def test_endpoints_and_tokens_from_the_environment():
    env = {"ACEDATA_API_TOKEN": "t1", "OPENAI_API_KEY": "k1", "OPENAI_BASE_URL": "http://h:1/v1"}
    assert resolve_endpoint("acedata", None, env).url == "https://api.acedata.cloud/openai/images/generations"
    assert resolve_endpoint("openai", None, env).url == "http://h:1/v1/images/generations"
    assert resolve_endpoint("openai", None, {"OPENAI_API_KEY": "k"}).url == "https://api.openai.com/v1/images/generations"
    assert endpoint_url("http://127.0.0.1:5/openai/images/generations/") == "http://127.0.0.1:5/openai/images/generations"
    assert "t1" not in repr(resolve_endpoint("acedata", None, env))
    with pytest.raises(UsageError, match="ACEDATA_API_TOKEN.*--simulate"):
        resolve_endpoint("acedata", None, {})
    with pytest.raises(UsageError, match="http"):
        resolve_endpoint("acedata", "ftp://x", env)
