"""The built-in simulator itself, over real HTTP on loopback (no mocks).

Each test talks to a SimulatorThread with urllib (or aiohttp where the kind of disconnect
matters), and checks what a client would see: statuses, headers, both error shapes, images
that decode at the requested size, faults, limits, counters, and the official openai SDK.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import io
import json
import sys

import aiohttp
import pytest
from PIL import Image, UnidentifiedImageError
from simhttp import TOKEN, Answer, assert_openai_error, call, decode, simulate_process

from batchgen.simulator import SimConfig, SimulatorThread, go_duration, start_simulator


def gen(sim, dialect: str, body=None, **kw) -> Answer:
    url = sim.acedata_url if dialect == "acedata" else sim.openai_base_url + "/images/generations"
    return call(url, body, **kw)


# OpenAI's dialect serves the gpt-image-2.x models only (December 2026); a body without a model
# means dall-e-2 there, which is shut down: each body names its model.
G2 = {"prompt": "x", "model": "gpt-image-2"}
LOW = {**G2, "quality": "low"}      # the smallest answer OpenAI's dialect makes


def pixels(im: Image.Image) -> bytes:
    return im.convert("RGB").tobytes()


def assert_acedata_error(ans: Answer, status: int, code: str):
    assert ans.status == status, ans.body
    doc = ans.json()
    assert doc["success"] is False and doc["error"]["code"] == code and doc["error"]["message"]
    assert len(doc["trace_id"]) == 36


# ---- success in both dialects ------------------------------------------------------------

def test_urls_and_port(sim):
    assert sim.port > 0
    assert sim.acedata_url == f"http://127.0.0.1:{sim.port}/openai/images/generations"
    assert sim.openai_base_url == f"http://127.0.0.1:{sim.port}/v1"


def test_openai_b64_size_and_prompt_dependent_pixels(fresh):
    images = []
    for prompt in ("a red fox in snow", "a blue whale at dawn"):
        ans = gen(fresh, "openai", {**LOW, "prompt": prompt, "size": "1024x640"})
        assert ans.status == 200 and ans.headers["x-request-id"]
        doc = ans.json()
        assert isinstance(doc["created"], int) and len(doc["data"]) == 1
        assert "revised_prompt" not in doc["data"][0] and "usage" in doc
        im = decode(doc["data"][0]["b64_json"])
        assert im.format == "PNG" and im.size == (1024, 640)
        images.append(pixels(im))
    assert images[0] != images[1]
    again = gen(fresh, "openai", {**LOW, "prompt": "a red fox in snow", "size": "1024x640"}).json()
    assert pixels(decode(again["data"][0]["b64_json"])) == images[0]  # deterministic


def test_acedata_url_default_and_download(fresh):
    ans = gen(fresh, "acedata", {"model": "dall-e-3", "prompt": "A cute baby sea otter", "size": "1792x1024"})
    assert ans.status == 200
    doc = ans.json()
    assert doc["success"] is True and len(doc["task_id"]) == 36 and len(doc["trace_id"]) == 36
    item = doc["data"][0]
    assert item["url"].startswith(f"http://127.0.0.1:{fresh.port}/files/") and item["url"].endswith(".png")
    assert item["revised_prompt"].startswith("A cute baby sea otter") and len(item["revised_prompt"]) > 60
    got = call(item["url"], token=None)
    assert got.status == 200 and got.headers["Content-Type"] == "image/png"
    im = Image.open(io.BytesIO(got.body))
    assert im.size == (1792, 1024)
    assert fresh.stats.downloads == 1
    assert call(item["url"].replace("/files/", "/files/x"), token=None).status == 404


def test_dall_e_3_revised_prompt_b64(fresh):
    doc = gen(fresh, "acedata", {"model": "dall-e-3", "prompt": "a lighthouse", "quality": "hd",
                                "style": "natural", "response_format": "b64_json"}).json()
    item = doc["data"][0]
    assert decode(item["b64_json"]).size == (1024, 1024)
    assert "lighthouse" in item["revised_prompt"] and item["revised_prompt"] != "a lighthouse"


def test_n_images_differ(fresh):
    doc = gen(fresh, "acedata", {"model": "gpt-image-1", "prompt": "three cats", "n": 3, "quality": "low"}).json()
    images = [pixels(decode(d["b64_json"])) for d in doc["data"]]
    assert len(images) == 3 and len(set(images)) == 3
    assert fresh.stats.images == 3


def test_a_sweep_shows_a_difference_style_and_quality_change_the_pixels(fresh):
    def image(**params):
        body = {"model": "dall-e-3", "prompt": "a lighthouse", "response_format": "b64_json", **params}
        return pixels(decode(gen(fresh, "acedata", body).json()["data"][0]["b64_json"]))
    looks = {image(style=s, quality=q) for s in ("vivid", "natural") for q in ("standard", "hd")}
    assert len(looks) == 4
    assert image(style="vivid", quality="standard") == image(style="vivid", quality="standard")


@pytest.mark.parametrize("dialect", ["openai", "acedata"])
def test_gpt_image_usage_and_fields(fresh, dialect):
    ans = gen(fresh, dialect, {"model": "gpt-image-2", "prompt": "a robot", "size": "1536x1024", "quality": "low"})
    assert ans.status == 200
    doc = ans.json()
    assert "url" not in doc["data"][0] and "revised_prompt" not in doc["data"][0]
    assert decode(doc["data"][0]["b64_json"]).size == (1536, 1024)
    assert (doc["size"], doc["quality"], doc["output_format"], doc["background"]) == \
        ("1536x1024", "low", "png", "opaque")
    usage = doc["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_gpt_image_output_formats_and_auto_size(fresh, fmt, pil):
    doc = gen(fresh, "openai", {"model": "gpt-image-2.5-flare", "prompt": "a vase", "output_format": fmt}).json()
    im = decode(doc["data"][0]["b64_json"])
    assert im.format == pil and im.size == (1024, 1024) and doc["size"] == "1024x1024"


MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}


@pytest.mark.parametrize("fmt,background", [("png", "opaque"), ("png", "transparent"), ("jpeg", "opaque"),
                                            ("webp", "opaque"), ("webp", "transparent")])
def test_each_format_is_really_that_format_at_the_size_asked(fresh, fmt, background):
    doc = gen(fresh, "openai", {"model": "gpt-image-2.5-sunburst", "prompt": "a kite", "size": "1024x1536",
                                "output_format": fmt, "background": background}).json()
    raw = base64.b64decode(doc["data"][0]["b64_json"])
    assert raw.startswith(MAGIC[fmt]) and (fmt != "webp" or raw[8:12] == b"WEBP")
    im = decode(doc["data"][0]["b64_json"])
    assert im.size == (1024, 1536) and (doc["output_format"], doc["background"]) == (fmt, background)
    alpha = im.convert("RGBA").getextrema()[3]
    assert (alpha[0] == 0) == (background == "transparent")   # some pixels see-through, or none


def test_output_compression_changes_the_bytes(fresh):
    def size(level):
        body = {"model": "gpt-image-2", "prompt": "a kite", "output_format": "jpeg", "output_compression": level}
        return len(base64.b64decode(gen(fresh, "openai", body).json()["data"][0]["b64_json"]))
    assert size(10) < size(90)


@pytest.mark.parametrize("size,expected", [("1024x1024", (272, 1056, 4160)), ("1536x1024", (408, 1584, 6240)),
                                           ("1024x1536", (408, 1584, 6240))])
def test_usage_output_tokens_are_openais_published_counts(fresh, size, expected):
    got = tuple(gen(fresh, "openai", {"model": "gpt-image-2", "prompt": "x", "size": size, "quality": q}
                    ).json()["usage"]["output_tokens"] for q in ("low", "medium", "high"))
    assert got == expected


def test_stats_show_which_params_reached_the_server_refused_or_not(fresh):
    gen(fresh, "openai", {"model": "gpt-image-2", "prompt": "x", "user": "u-1", "moderation": "low"})
    assert_openai_error(gen(fresh, "openai", {**G2, "seed": 3}), 400, code="unknown_parameter",
                        param="seed")
    assert fresh.stats.params == {"model": 2, "prompt": 2, "user": 1, "moderation": 1, "seed": 1}


def test_gpt_image_2_custom_size_and_transparent(fresh):
    doc = gen(fresh, "openai", {"model": "gpt-image-2", "prompt": "a logo", "size": "512x1536",
                                "background": "transparent"}).json()
    im = decode(doc["data"][0]["b64_json"])
    assert im.size == (512, 1536) and doc["background"] == "transparent"
    assert im.convert("RGBA").getextrema()[3][0] == 0  # some pixels are transparent


def test_no_model_means_gpt_image_1_when_a_gpt_only_field_is_used_which_is_shut_down(fresh):
    ans = gen(fresh, "openai", {"prompt": "x", "output_format": "webp"})
    assert_openai_error(ans, 404, code="model_not_found", param="model")
    assert "'gpt-image-1'" in ans.json()["error"]["message"]


def test_photo_mode_is_big_and_varies(fresh):
    with SimulatorThread(photo=True) as sim:
        docs = [gen(sim, "openai", {"model": "gpt-image-2", "prompt": p}).json() for p in ("a", "b")]
    raw = [base64.b64decode(d["data"][0]["b64_json"]) for d in docs]
    assert all(len(r) > 3_000_000 for r in raw)
    ims = [Image.open(io.BytesIO(r)) for r in raw]
    assert ims[0].size == (1024, 1024) and pixels(ims[0]) != pixels(ims[1])


def test_start_simulator_in_the_callers_loop_with_latency():
    async def main():
        sim = await start_simulator(SimConfig(latency=0.01, latency_jitter=0.01))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
                async with session.post(sim.openai_base_url + "/images/generations",
                                        json={**LOW, "size": "1024x640"}) as resp:
                    doc = await resp.json()
            return resp.status, decode(doc["data"][0]["b64_json"]).size, sim.stats.requests
        finally:
            await sim.close()

    assert asyncio.run(main()) == (200, (1024, 640), 1)


# ---- validation ----------------------------------------------------------------------------

INVALID = [
    ({"model": "gpt-image-2"}, "prompt", "missing_required_parameter"),
    ({"prompt": "", "model": "gpt-image-2"}, "prompt", "empty_string"),
    ({"prompt": 5, "model": "gpt-image-2"}, "prompt", "invalid_type"),
    ({**G2, "prompt": "x" * 32001}, "prompt", "string_above_max_length"),
    ({**G2, "n": 11}, "n", "integer_above_max_value"),
    ({**G2, "n": 0}, "n", "integer_below_min_value"),
    ({**G2, "size": "1792x1000"}, "size", "invalid_value"),
    ({**G2, "quality": "hd"}, "quality", "invalid_value"),
    ({**G2, "quality": "xhigh"}, "quality", "invalid_value"),
    ({**G2, "style": "vivid"}, "style", "unknown_parameter"),
    ({**G2, "complexity": "high"}, "complexity", "unknown_parameter"),
    ({**G2, "model": "gpt-image-2.6-flare", "complexity": "extreme"}, "complexity", "invalid_value"),
    ({**G2, "response_format": "b64_json"}, "response_format", "unknown_parameter"),
    ({**G2, "output_format": "gif"}, "output_format", "invalid_value"),
    ({**G2, "size": "1000x1000"}, "size", "invalid_value"),
    ({**G2, "size": "3840x1024"}, "size", "invalid_value"),
    ({**G2, "size": "3840x2176"}, "size", "invalid_value"),
    ({**G2, "seed": 3}, "seed", "unknown_parameter"),
    ({**G2, "output_format": "jpeg", "background": "transparent"}, "background", "invalid_value"),
    ({**G2, "output_format": "png", "output_compression": 50}, "output_compression", "invalid_value"),
    ({**G2, "output_compression": 50}, "output_compression", "invalid_value"),
    ({**G2, "output_format": "webp", "output_compression": 101}, "output_compression", "invalid_value"),
    ({**G2, "output_format": "jpeg", "output_compression": "50"}, "output_compression", "invalid_type"),
    ({**G2, "background": "clear"}, "background", "invalid_value"),
    ({**G2, "moderation": "none"}, "moderation", "invalid_value"),
    ({**G2, "input_fidelity": "high"}, "input_fidelity", "unknown_parameter"),
    ({"prompt": "x", "model": "dall-e-9"}, "model", "model_not_found"),
]
# AceData still serves DALL-E 3 and gpt-image-1: their own refusals, in its dialect.
ACEDATA_INVALID = [
    ({"prompt": "x" * 4001}, "prompt"),                       # no model: AceData's dall-e-3
    ({"prompt": "x", "model": "dall-e-3", "n": 2}, "n"),
    ({"prompt": "x", "model": "dall-e-3", "size": "512x512"}, "size"),
    ({"prompt": "x", "model": "dall-e-3", "quality": "low"}, "quality"),
    ({"prompt": "x", "model": "dall-e-3", "style": "moody"}, "style"),
    ({"prompt": "x", "model": "dall-e-3", "response_format": "png"}, "response_format"),
    ({"prompt": "x", "model": "dall-e-3", "output_format": "png"}, "output_format"),
    ({"prompt": "x", "model": "dall-e-3", "output_compression": 50}, "output_compression"),
    ({"prompt": "x", "model": "dall-e-3", "background": "opaque"}, "background"),
    ({"prompt": "x", "model": "dall-e-3", "moderation": "low"}, "moderation"),
    ({"prompt": "x", "model": "gpt-image-1", "size": "1536x864"}, "size"),
    ({"prompt": "x", "model": "nano-banana", "quality": "high"}, "quality"),
]


@pytest.mark.parametrize("body,param,code", INVALID)
def test_validation_openai_shape(fresh, body, param, code):
    assert_openai_error(gen(fresh, "openai", body), 400, code=code, param=param)


@pytest.mark.parametrize("body,param", ACEDATA_INVALID + [(b, p) for b, p, _ in INVALID[::4]])
def test_validation_acedata_shape(fresh, body, param):
    ans = gen(fresh, "acedata", body)
    assert_acedata_error(ans, 400, "model_not_found" if body.get("model") == "dall-e-9" else "bad_request")
    assert param in ans.json()["error"]["message"]


def test_retired_models_are_refused_as_openai_refuses_them(fresh):
    for body in ({"prompt": "x"}, {"prompt": "x", "model": "dall-e-3"}, {"prompt": "x", "model": "gpt-image-1.5"}):
        ans = gen(fresh, "openai", body)
        assert_openai_error(ans, 404, code="model_not_found", param="model")
        assert "shut down on 2026-" in ans.json()["error"]["message"]
    # AceData serves neither dall-e-2 nor gpt-image-2.6
    for model in ("dall-e-2", "gpt-image-2.6-flare"):
        assert_acedata_error(gen(fresh, "acedata", {"prompt": "x", "model": model}), 404 if model == "dall-e-2"
                             else 400, "model_not_found")


def test_invalid_json_body(fresh):
    assert_openai_error(gen(fresh, "openai", raw=b"{not json"), 400, code=None)
    assert_acedata_error(gen(fresh, "acedata", raw=b"[1, 2"), 400, "bad_request")
    assert fresh.stats.by_status == {"400": 2}


def test_gpt_image_2_accepts_large_custom_sizes(fresh):
    for size in ("1536x864", "2160x3840"):
        doc = gen(fresh, "openai", {"model": "gpt-image-2-2026-04-21", "prompt": "x", "size": size}).json()
        assert doc["size"] == size


# ---- auth ------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["wrong-token", None])
def test_bad_token_both_dialects(fresh, token):
    body = {"prompt": "x"}
    assert_openai_error(gen(fresh, "openai", body, token=token), 401, code="invalid_api_key")
    assert_acedata_error(gen(fresh, "acedata", body, token=token), 401, "invalid_token")
    assert fresh.stats.by_status == {"401": 2} and fresh.stats.images == 0


# ---- faults at probability 1 -----------------------------------------------------------------

def test_fail_429_retry_after_seconds():
    with SimulatorThread(fail_429=1.0, retry_after=2.5) as sim:
        ans = gen(sim, "openai", LOW)
        assert_openai_error(ans, 429, code="rate_limit_exceeded", type="requests")
        assert ans.headers["Retry-After"] == "2.5" and ans.headers["retry-after-ms"] == "2500"
        ace = gen(sim, "acedata", {"prompt": "x"})
        assert_acedata_error(ace, 429, "too_many_requests")
        assert sim.stats.faults == {"fail_429": 2}


def test_fail_429_retry_after_date():
    with SimulatorThread(fail_429=1.0, retry_after=30, retry_after_date=True) as sim:
        ans = gen(sim, "acedata", {"prompt": "x"})
        assert ans.status == 429 and "retry-after-ms" not in ans.headers
        when = email.utils.parsedate_to_datetime(ans.headers["Retry-After"])
        date = email.utils.parsedate_to_datetime(ans.headers["Date"])
        assert 25 <= (when - date).total_seconds() <= 35


def test_fail_500_both_dialects():
    with SimulatorThread(fail_500=1.0) as sim:
        assert_openai_error(gen(sim, "openai", LOW), 500, code="api_error", type="server_error")
        assert_acedata_error(gen(sim, "acedata", {"prompt": "x"}), 500, "api_error")


def test_fail_503_html():
    with SimulatorThread(fail_503_html=1.0) as sim:
        ans = gen(sim, "acedata", {"prompt": "x"})
        assert ans.status == 503 and ans.headers["Content-Type"].startswith("text/html")
        assert b"Service Temporarily Unavailable" in ans.body
        with pytest.raises(ValueError):
            ans.json()


def test_drop_is_a_server_disconnect():
    async def attempt(url):
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"prompt": "x"},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                return resp.status

    with SimulatorThread(drop=1.0) as sim:
        for url in (sim.acedata_url, sim.openai_base_url + "/images/generations"):
            with pytest.raises(aiohttp.ServerDisconnectedError):
                asyncio.run(attempt(url))
        assert sim.stats.by_status == {"drop": 2}


def test_hang_never_answers_and_shutdown_is_prompt():
    sim = SimulatorThread(hang=1.0).start()
    try:
        with pytest.raises(OSError):  # socket timeout (TimeoutError / URLError)
            gen(sim, "openai", LOW, timeout=0.2)
        assert sim.stats.by_status == {"hang": 1}
    finally:
        sim.stop()  # wakes the hanging handler; must not wait out hang_seconds


def test_hang_then_504_when_hang_seconds_pass():
    with SimulatorThread(hang=1.0, hang_seconds=0.01) as sim:
        assert_acedata_error(gen(sim, "acedata", {"prompt": "x"}), 504, "timeout")


@pytest.mark.parametrize("fault", ["truncate", "bad_json"])
def test_unparseable_200(fault):
    with SimulatorThread(**{fault: 1.0}) as sim:
        for dialect in ("openai", "acedata"):
            ans = gen(sim, dialect, LOW)
            assert ans.status == 200 and ans.headers["Content-Type"].startswith("application/json")
            with pytest.raises(ValueError):
                ans.json()


def test_bad_b64():
    with SimulatorThread(bad_b64=1.0) as sim:
        b64 = gen(sim, "openai", {"model": "gpt-image-2", "prompt": "x"}).json()["data"][0]["b64_json"]
    with pytest.raises(binascii.Error):
        base64.b64decode(b64, validate=True)
    with pytest.raises(binascii.Error):
        base64.b64decode(b64)


def test_not_image_b64_and_url():
    with SimulatorThread(not_image=1.0) as sim:
        b64 = gen(sim, "acedata", {"prompt": "x", "response_format": "b64_json"}).json()["data"][0]["b64_json"]
        with pytest.raises(UnidentifiedImageError):
            decode(b64)
        url = gen(sim, "acedata", {"prompt": "x"}).json()["data"][0]["url"]
        got = call(url, token=None)
        assert got.status == 200
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(got.body))


def test_expired_link_fault_and_ttl():
    with SimulatorThread(expired_link=1.0) as sim:
        url = gen(sim, "acedata", {"prompt": "x"}).json()["data"][0]["url"]
        assert call(url, token=None).status == 404
        assert sim.stats.download_misses == 1 and sim.stats.faults == {"expired_link": 1}
    with SimulatorThread(url_ttl=0.0) as sim:  # expires at once
        url = gen(sim, "acedata", {"prompt": "x"}).json()["data"][0]["url"]
        assert call(url, token=None).status == 404


@pytest.mark.parametrize("dialect,status,code", [("openai", 400, "content_policy_violation"),
                                                 ("acedata", 400, "content_policy_violation")])
def test_policy_word(fresh, dialect, status, code):
    ans = gen(fresh, dialect, {**LOW, "prompt": "a basket of Forbidden-Fruit"})
    if dialect == "openai":
        assert_openai_error(ans, 400, code=code, type="image_generation_user_error")
    else:
        assert_acedata_error(ans, status, code)


def test_policy_word_acedata_403():
    with SimulatorThread(policy_word="nope", acedata_moderation_403=True) as sim:
        assert_acedata_error(gen(sim, "acedata", {"prompt": "say nope"}), 403, "forbidden")
        assert gen(sim, "acedata", {"prompt": "forbidden-fruit"}).status == 200


# ---- repeatable fault decisions --------------------------------------------------------------

def _statuses(sim, bodies):
    return {json.dumps(b): gen(sim, "openai", b).status for b in bodies}


def test_seed_repeatable_whatever_the_order():
    bodies = [{**LOW, "prompt": f"prompt {i}"} for i in range(40)]
    with SimulatorThread(seed=7, fail_500=0.5) as sim:
        first = _statuses(sim, bodies)
    with SimulatorThread(seed=7, fail_500=0.5) as sim:
        second = _statuses(sim, bodies[::-1])
    with SimulatorThread(seed=8, fail_500=0.5) as sim:
        other = _statuses(sim, bodies)
    assert first == second
    assert set(first.values()) == {200, 500}
    assert other != first


def test_retry_of_same_body_draws_again():
    body = {"prompt": "retry me", "response_format": "b64_json"}
    runs = []
    for _ in range(2):
        with SimulatorThread(seed=1, fail_500=0.5) as sim:
            runs.append([gen(sim, "acedata", body).status for _ in range(12)])
    assert runs[0] == runs[1] and set(runs[0]) == {200, 500}


# ---- server-side limits ----------------------------------------------------------------------

def test_rpm_limit_headers_and_429():
    with SimulatorThread(rpm_limit=1) as sim:
        ok = gen(sim, "openai", LOW)
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "1"
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"
        assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
        limited = gen(sim, "openai", LOW)
        assert_openai_error(limited, 429, code="rate_limit_exceeded", type="requests")
        wait = float(limited.headers["Retry-After"])
        assert 0 < wait <= 60 and int(limited.headers["retry-after-ms"]) == pytest.approx(wait * 1000, abs=1)
        assert "x-ratelimit-limit-requests" in limited.headers
        assert_acedata_error(gen(sim, "acedata", {"prompt": "x"}), 429, "too_many_requests")
        assert sim.stats.images == 1


def test_rpm_limit_without_headers_still_limits():
    with SimulatorThread(rpm_limit=1, ratelimit_headers=False) as sim:
        ok = gen(sim, "openai", LOW)
        assert ok.status == 200 and "x-ratelimit-limit-requests" not in ok.headers
        limited = gen(sim, "openai", LOW)
        assert limited.status == 429 and "x-ratelimit-remaining-requests" not in limited.headers
        assert float(limited.headers["Retry-After"]) > 0


def test_rpm_limit_retry_after_exact_is_the_default_and_fractional():
    with SimulatorThread(rpm_limit=60, ratelimit_headers=False) as sim:   # 1/s, a burst of 1
        assert sim.config.rate_limit_retry_after == "exact"
        assert gen(sim, "openai", LOW).status == 200
        limited = gen(sim, "openai", LOW)
        assert limited.status == 429
        wait = float(limited.headers["Retry-After"])
        assert 0 < wait <= 1 and int(limited.headers["retry-after-ms"]) == pytest.approx(wait * 1000, abs=1)


def test_rpm_limit_retry_after_in_whole_seconds():
    with SimulatorThread(rpm_limit=60, ratelimit_headers=False, rate_limit_retry_after="seconds") as sim:
        assert gen(sim, "openai", LOW).status == 200
        for dialect in ("openai", "acedata"):
            ans = gen(sim, dialect, LOW)
            assert ans.status == 429
            assert ans.headers["Retry-After"] == "1" and "retry-after-ms" not in ans.headers
            assert "x-ratelimit-limit-requests" not in ans.headers
        assert sim.stats.faults == {"rpm_limit": 2}


def test_retry_after_styles_round_a_short_wait_up_to_whole_seconds(monkeypatch):
    # A bucket that frees its next slot in 50 ms says "1" (or the next whole second's date).
    from batchgen.simulator import rate
    assert rate.retry_after_headers(0.05, "seconds") == {"Retry-After": "1"}
    assert rate.retry_after_headers(1.2, "seconds") == {"Retry-After": "2"}
    assert rate.retry_after_headers(0.05, "exact") == {"Retry-After": "0.05", "retry-after-ms": "50"}
    monkeypatch.setattr(rate.time, "time", lambda: 1_000_000.3)
    assert rate.retry_after_headers(0.05, "date") == {
        "Retry-After": email.utils.formatdate(1_000_001, usegmt=True)}
    with pytest.raises(ValueError):
        rate.retry_after_headers(0.05, "minutes")


def test_rpm_limit_retry_after_as_an_http_date():
    with SimulatorThread(rpm_limit=60, ratelimit_headers=False, rate_limit_retry_after="date") as sim:
        assert gen(sim, "acedata", {"prompt": "x"}).status == 200
        limited = gen(sim, "acedata", {"prompt": "x"})
        assert_acedata_error(limited, 429, "too_many_requests")
        assert "retry-after-ms" not in limited.headers
        when = email.utils.parsedate_to_datetime(limited.headers["Retry-After"])
        date = email.utils.parsedate_to_datetime(limited.headers["Date"])
        # whole seconds, rounded up: the next slot (within 1 s) is no later than the date
        assert when.microsecond == 0 and 0 <= (when - date).total_seconds() <= 2


def test_rpm_limit_retry_after_style_is_checked():
    with pytest.raises(ValueError, match="rate_limit_retry_after"):
        SimConfig(rpm_limit=60, rate_limit_retry_after="minutes")


def test_rate_bucket_refills_continuously_with_one_second_of_burst(monkeypatch):
    from batchgen.simulator import rate
    clock = [100.0]
    monkeypatch.setattr(rate.time, "monotonic", lambda: clock[0])
    bucket = rate.RateBucket(1200)                         # 20/s
    assert [bucket.take() for _ in range(20)] == [0.0] * 20  # one second's burst
    assert bucket.take() == pytest.approx(0.05)            # then one slot every 50 ms
    clock[0] += 0.05
    assert bucket.take() == 0.0 and bucket.take() > 0      # a slot refilled, not a second's worth
    clock[0] += 0.2
    assert [bucket.take() for _ in range(4)] == [0.0] * 4 and bucket.take() > 0
    clock[0] += 60                                         # idle time saves up one second only
    assert [bucket.take() for _ in range(20)] == [0.0] * 20 and bucket.take() > 0


def test_go_duration_format():
    assert [go_duration(s) for s in (0, 0.12, 1, 1.5, 360, 3723)] == ["0s", "120ms", "1s", "1.5s", "6m0s", "1h2m3s"]


def test_quota_images():
    with SimulatorThread(quota_images=3) as sim:
        assert gen(sim, "openai", {**LOW, "n": 2}).status == 200
        assert_openai_error(gen(sim, "openai", {**LOW, "n": 2}), 429,
                            code="insufficient_quota", type="insufficient_quota")
        assert gen(sim, "acedata", {"prompt": "x"}).status == 200
        assert_acedata_error(gen(sim, "acedata", {"prompt": "x"}), 403, "used_up")
        assert sim.stats.images == 3


# ---- counters ---------------------------------------------------------------------------------

def test_stats_in_process_and_over_http(fresh):
    gen(fresh, "openai", {**LOW, "prompt": "a"})
    gen(fresh, "acedata", {"prompt": "b", "model": "gpt-image-1", "quality": "low", "n": 2})
    gen(fresh, "acedata", {"prompt": ""})
    stats = fresh.stats
    assert stats.requests == 3 and stats["requests"] == 3
    assert stats.by_path == {"/v1/images/generations": 1, "/openai/images/generations": 2}
    assert stats.by_status == {"200": 2, "400": 1}
    assert stats.images == 3 and stats.by_model == {"gpt-image-2": 1, "gpt-image-1": 1}
    over_http = call(f"http://127.0.0.1:{fresh.port}/_sim/stats", token=None).json()
    assert over_http["requests"] == 3 and over_http["by_status"] == {"200": 2, "400": 1}
    assert call(f"http://127.0.0.1:{fresh.port}/_sim/reset", raw=b"", token=None).status == 200
    assert fresh.stats.requests == 0 and fresh.stats.by_path == {}
    fresh.reset_stats()
    assert call(f"http://127.0.0.1:{fresh.port}/_sim/stats", token=None).json()["images"] == 0


def test_config_checks_probabilities():
    with pytest.raises(ValueError):
        SimConfig(drop=1.5)


# ---- the official openai SDK -----------------------------------------------------------------

def test_openai_sdk(sim):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.NotFoundError) as retired:     # shut down on OpenAI since 2026-05-12
        client.images.generate(model="dall-e-3", prompt="A cute baby sea otter", response_format="b64_json")
    assert retired.value.code == "model_not_found"
    gpt = client.images.generate(model="gpt-image-2", prompt="A red bicycle", size="1024x1536", quality="low")
    assert decode(gpt.data[0].b64_json).size == (1024, 1536)
    assert gpt.usage.total_tokens > 0 and gpt.size == "1024x1536"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="gpt-image-2", prompt="x", response_format="url")
    bad = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.images.generate(model="gpt-image-2", prompt="x")
    assert info.value.code == "invalid_api_key"


# ---- the command --------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_rate_limit_retry_after_flag():
    with simulate_process("--rpm-limit", "60", "--no-ratelimit-headers",
                          "--rate-limit-retry-after", "seconds") as served:
        assert call(served.acedata_url, {"prompt": "x"}).status == 200
        limited = call(served.acedata_url, {"prompt": "x"})
        assert limited.status == 429 and limited.headers["Retry-After"] == "1"
        assert "retry-after-ms" not in limited.headers
    assert served.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_prints_two_urls_and_stops_quietly_on_sigint():
    with simulate_process("--fail-500", "1", "--token", "t0k") as served:
        acedata = served.acedata_url
        assert acedata.startswith("http://127.0.0.1:") and acedata.endswith("/openai/images/generations")
        assert served.base_url == acedata.replace("/openai/images/generations", "/v1")
        assert_acedata_error(call(acedata, {"prompt": "x"}, token="t0k"), 500, "api_error")
    # the token to use, and nothing else
    assert served.returncode == 0 and served.out == "" and served.err.startswith("token: t0k ") \
        and served.err.count("\n") == 1
