"""Through a gateway: LiteLLM's proxy (the simulator's gateway="litellm", written from LiteLLM's
source) and OpenAI-compatible servers that answer in their own way (a small server per test).
A spent account stops the run whatever rewrote its code; a link that can never be fetched is
asked for again once, not paid for again and again; every row has a request id; a cost that
is not known is null, not 0."""
import base64
import json

import pandas as pd
import pytest
from conftest import TOKEN, make_prompts, results
from hostile import Hostile, generation, json_response, png
from simhttp import call

import batchgen
from batchgen.exceptions import ApiError, DownloadGone
from batchgen.sending.classify import Decision, classify, error_code
from batchgen.sending.client import parse_generation
from batchgen.simulator import SimulatorThread

DALLE3 = {"model": "dall-e-3", "response_format": "b64_json"}
FAST = {"backoff_base": 0.01, "max_retries": 3, "timeout": 10}
QUOTA_MESSAGE = ("litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your current quota, "
                 "please check your plan and billing details. For more information on this error, read the docs: "
                 "https://platform.openai.com/docs/guides/error-codes/api-errors.")
RATE_MESSAGE = ("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for gpt-image-2 "
                "on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 12s. You can "
                "increase your rate limit by adding a payment method at https://platform.openai.com/account/billing.")


def through(sim, csv, out, **options):
    """A run against the simulator's AceData endpoint (the default provider)."""
    options = {**FAST, "defaults": DALLE3, **options}
    return batchgen.run(str(csv), out=str(out), base_url=sim.acedata_url,
                        environ={"ACEDATA_API_TOKEN": TOKEN}, **options)


def against(server, csv, out, **options):
    """A run against a small OpenAI-compatible server of the test's."""
    options = {**FAST, "defaults": {"model": "gpt-image-2"}, **options}
    return batchgen.run(str(csv), out=str(out), provider="openai", base_url=server.base_url,
                        environ={"OPENAI_API_KEY": TOKEN}, **options)


# ---- an error read by what it says -----------------------------------------------------------

@pytest.mark.parametrize("status, code, kind, message, expected, decision", [
    # LiteLLM's proxy: the HTTP status as the code, its own type, the upstream's words
    (429, "429", "throttling_error", QUOTA_MESSAGE, "insufficient_quota", Decision.STOP),
    (429, "429", "throttling_error", RATE_MESSAGE, "too_many_requests", Decision.RETRY),
    (401, "401", "authentication_error",
     "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: sk-ab***",
     "invalid_api_key", Decision.STOP),
    (400, "400", "invalid_request_error",
     "litellm.ContentPolicyViolationError: ContentPolicyViolationError: OpenAIException - Your request was "
     "rejected as a result of our safety system.", "content_policy_violation", Decision.FAIL),
    (422, "422", "budget_exceeded", "Budget has been exceeded! Current cost: 1.02, Max budget: 1.0",
     "insufficient_quota", Decision.STOP),
    (500, "500", "internal_server_error", "litellm.InternalServerError: boom", "api_error", Decision.RETRY),
    # OpenAI itself, AceData, other servers
    (429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota", "insufficient_quota",
     Decision.STOP),
    (429, None, "insufficient_quota", "You exceeded your current quota", "insufficient_quota", Decision.STOP),
    (403, "used_up", None, "The balance of your account is used up", "used_up", Decision.STOP),
    (402, None, None, "Insufficient balance: please recharge", "insufficient_quota", Decision.STOP),
    (429, "rate_limit_exceeded", "requests", RATE_MESSAGE, "rate_limit_exceeded", Decision.RETRY),
    (400, None, "invalid_request_error", "Invalid size", "invalid_request_error", Decision.FAIL),
    (418, "teapot", None, "short and stout", "teapot", Decision.FAIL),      # unknown: the status decides
    # a code of the server's own is kept; its words still decide what it means
    (403, "forbidden", None, "Your request was rejected as a result of our safety system.", "forbidden",
     Decision.FAIL),
    (429, "insufficient_user_quota", "new_api_error", "Insufficient balance, please top up",
     "insufficient_user_quota", Decision.STOP),
    (500, "server_error", None, "Your request was rejected by the safety system", "server_error", Decision.FAIL),
    (503, "503", None, "upstream down", "api_error", Decision.RETRY),
])
def test_an_error_is_read_by_its_code_type_and_words(status, code, kind, message, expected, decision):
    found = error_code(status, code, kind, message)
    assert found == expected
    assert classify(ApiError(message, code=found, http_status=status)) is decision


def test_a_litellm_quota_answer_parses_to_a_stop_with_the_top_up_advice():
    body = {"error": {"message": QUOTA_MESSAGE, "type": "throttling_error", "param": None, "code": "429"}}
    with pytest.raises(ApiError) as caught:
        parse_generation(429, {"x-litellm-call-id": "call-1"}, json.dumps(body).encode(), provider="openai")
    assert caught.value.code == "insufficient_quota" and caught.value.trace_id == "call-1"
    assert classify(caught.value) is Decision.STOP


def test_a_spent_account_behind_the_litellm_proxy_stops_the_run_with_exit_3(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 6)
    with SimulatorThread(gateway="litellm", quota_images=2) as sim:
        summary = through(sim, csv, tmp_path / "out", concurrency=1, max_retries=8)
        requests = sim.stats.requests
    assert summary.exit_status == 3 and summary.stopped == "insufficient_quota"
    assert "top it up" in summary.stop_message
    assert summary.ok == 2 and requests == 3       # one refused answer, then nothing more is sent


# ---- the simulator's LiteLLM mode ---------------------------------------------------------------

def test_the_litellm_mode_answers_as_the_proxy_does():
    with SimulatorThread(gateway="litellm", quota_images=1, rpm_limit=600) as sim:
        ok = call(sim.openai_url, {"prompt": "a kite", "model": "gpt-image-2"})
        spent = call(sim.openai_url, {"prompt": "a kite", "model": "gpt-image-2"})
    assert ok.status == 200 and ok.headers["x-litellm-call-id"] and ok.headers["x-litellm-response-cost"] == "0.04"
    assert "x-request-id" not in ok.headers and not any(h.lower().startswith("x-ratelimit") for h in ok.headers)
    item = ok.json()["data"][0]
    assert item["url"] is None and item["b64_json"] and set(item) == {"b64_json", "revised_prompt", "url"}
    assert ok.json()["usage"]["output_tokens"] > 0 and ok.json()["safety_identifier"] is None   # null-filled
    assert spent.status == 429 and "Retry-After" not in spent.headers
    assert spent.json()["error"]["code"] == "429" and spent.json()["error"]["type"] == "throttling_error"
    assert spent.json()["error"]["message"].startswith("litellm.RateLimitError: ")
    assert "exceeded your current quota" in spent.json()["error"]["message"]


def test_through_the_litellm_mode_every_row_has_a_request_id_and_the_gateways_cost(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 3)
    with SimulatorThread(gateway="litellm") as sim:
        summary = through(sim, csv, tmp_path / "out", defaults={**DALLE3, "n": 1})
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and len(df) == 3
    assert df.trace_id.notna().all() and df.trace_id.nunique() == 3
    assert (df.gateway_cost_usd == 0.04).all() and df.est_cost_usd.notna().all()
    assert df.input_tokens.isna().all() and df.output_tokens.isna().all()     # zeros: not reported


def test_pacing_holds_when_the_gateway_strips_the_rate_limit_headers(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 60)
    with SimulatorThread(gateway="litellm", rpm_limit=600, latency=0.2) as sim:
        summary = through(sim, csv, tmp_path / "out", max_retries=2)
        stats = sim.stats
    assert summary.exit_status == 0 and summary.ok == 60
    # no Retry-After, no x-ratelimit-*: the limit is learned from which requests got a 429,
    # and once it is, the run keeps to it rather than being refused at every turn
    assert summary.pace["limit_per_s"] is not None and summary.pace["rate_limited"] == stats.rate_limited["rpm"]
    assert stats.rate_limited["rpm"] < stats.requests // 3


# ---- data: URLs and links that can never be fetched --------------------------------------------

def test_data_url_answers_are_images(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 2)
    with SimulatorThread(data_urls=True) as sim:
        summary = through(sim, csv, tmp_path / "out", defaults={**DALLE3, "response_format": "url"})
        requests = sim.stats.requests
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and requests == 2
    assert df.image_url.isna().all() and (df.width == 1024).all()
    assert all((tmp_path / "out" / p).stat().st_size == b for p, b in zip(df.image_path, df.bytes))


@pytest.mark.parametrize("url, message", [
    ("ftp://example.invalid/a.png", "non-http"),
    ("data:text/html;base64,PGgxPmhpPC9oMT4=", "not a base64 image"),
    ("data:image/png;base64,%%%%", "not valid base64"),
])
def test_a_link_that_can_never_be_fetched_is_asked_for_once_more_then_is_the_error(tmp_path, url, message):
    csv = make_prompts(tmp_path / "p.csv", 1)
    with Hostile(lambda request, body, count: json_response(generation(image={"b64_json": None, "url": url}))) \
            as server:
        summary = against(server, csv, tmp_path / "out", max_retries=8)
        asked = server.requests
    df = results(tmp_path / "out")
    assert summary.exit_status == 1 and asked == 2
    assert df.error_code.tolist() == ["download_failed"] and df.attempts.tolist() == [2]
    assert message in df.error_message[0]


def test_a_404_on_a_link_just_given_is_asked_for_once_more(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 2)
    with SimulatorThread(expired_link=1.0) as sim:
        summary = through(sim, csv, tmp_path / "out", defaults={**DALLE3, "response_format": "url"}, max_retries=8)
        requests = sim.stats.requests
    df = results(tmp_path / "out")
    assert summary.exit_status == 1 and requests == 4
    assert df.error_code.tolist() == ["download_failed"] * 2 and df.attempts.tolist() == [2, 2]


def test_a_data_url_past_the_size_cap_is_refused_before_it_is_decoded():
    from batchgen.sending.client import decode_data_url
    text = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert decode_data_url(text) == png()
    with pytest.raises(DownloadGone, match="larger than 10 bytes"):
        decode_data_url(text, max_bytes=10)


# ---- ids and costs from any server ------------------------------------------------------------

@pytest.mark.parametrize("headers, body, expected", [
    ({"x-request-id": "req_1", "x-litellm-call-id": "call_1"}, {}, "req_1"),
    ({"llm_provider-x-request-id": "req_2", "x-litellm-call-id": "call_2"}, {}, "req_2"),
    ({"x-litellm-call-id": "call_3"}, {}, "call_3"),
    ({}, {"id": "gen_4"}, "gen_4"),
    ({"x-litellm-call-id": "call_5"}, {"trace_id": "ace_5"}, "ace_5"),
])
def test_a_request_id_is_kept_from_whatever_the_answer_carries(headers, body, expected):
    raw = json.dumps(generation(**body)).encode()
    assert parse_generation(200, headers, raw).trace_id == expected


@pytest.mark.parametrize("header, expected", [("0.04", 0.04), ("nan", None), ("-1", None), ("lots", None),
                                              ("1e308", None)])
def test_the_gateways_cost_is_a_bounded_number(header, expected):
    raw = json.dumps(generation()).encode()
    assert parse_generation(200, {"x-litellm-response-cost": header}, raw).gateway_cost_usd == expected


def test_a_cost_batchgen_cannot_estimate_is_unknown_not_zero(tmp_path, cli):
    csv = make_prompts(tmp_path / "p.csv", 2)
    answer = generation(usage={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})
    with Hostile(lambda request, body, count: json_response(answer)) as server:
        summary = against(server, csv, tmp_path / "out", defaults={"model": "acme-image-1"})
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and summary.est_cost_usd is None
    assert df.est_cost_usd.isna().all() and df.input_tokens.isna().all()
    lines = [json.loads(line) for line in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert [line["cost_usd"] for line in lines if line.get("status") == "ok"] == [None, None]
    from batchgen.cli.main import format_summary
    assert "estimated cost of the images: unknown" in format_summary(summary)
    assert cli("report", tmp_path / "out").exit_code == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "estimated cost unknown" in page and "$0.00" not in page


def test_an_error_billed_at_an_unknown_price_has_a_null_cost(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 1)
    answer = generation(image={"b64_json": None, "url": "ftp://nowhere/x.png"})
    with Hostile(lambda request, body, count: json_response(answer)) as server:
        against(server, csv, tmp_path / "out", defaults={"model": "acme-image-1"})
    df = results(tmp_path / "out")
    assert df.error_code.tolist() == ["download_failed"] and df.est_cost_usd.isna().all()


def test_an_error_nothing_was_billed_for_costs_zero(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 1)
    refusal = {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": None}}
    with Hostile(lambda request, body, count: json_response(refusal, status=400)) as server:
        against(server, csv, tmp_path / "out", defaults={"model": "acme-image-1"})
    df = results(tmp_path / "out")
    assert df.error_code.tolist() == ["invalid_request_error"] and df.est_cost_usd.tolist() == [0.0]


def test_a_run_shows_results_with_pandas_nullable_costs(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 1)
    with SimulatorThread(gateway="litellm") as sim:
        through(sim, csv, tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert str(df.gateway_cost_usd.dtype) == "float64" and df.gateway_cost_usd[0] == 0.04


# ---- the Batch API reads the same answer the same way ------------------------------------------

class Outcomes:
    """The recorder a backend writes to: the final records, in order."""

    def __init__(self):
        self.records = []

    def finished(self, record):
        self.records.append(record)

    def is_final(self, task_id):
        return any(r["task_id"] == task_id for r in self.records)


def batch_outcomes(tmp_path, image: dict, resubmitted: bool) -> tuple:
    """What the Batch backend makes of one output line whose answer holds `image`: (the tasks
    it sends again, the records it writes)."""
    import asyncio
    from types import SimpleNamespace

    from batchgen.keeping.store import ImageStore
    from batchgen.rules.providers import Endpoint
    from batchgen.sending.backends import Budget, StopSwitch
    from batchgen.sending.backends.batch import BatchBackend, HeldIds, TasksById

    task = SimpleNamespace(task_id="0123456789abcdef", prompt="a kite", params={"model": "gpt-image-2"},
                           images_expected=1, edit=None)
    line = json.dumps({"custom_id": task.task_id, "response": {
        "status_code": 200, "body": generation(image={"b64_json": None, **image})}}).encode()
    outcomes, again = Outcomes(), {}

    async def collect():
        endpoint = Endpoint("http://127.0.0.1:9/v1/images/generations", TOKEN, "openai")
        backend = BatchBackend(SimpleNamespace(timeout=10), endpoint, ImageStore(tmp_path), outcomes,
                               Budget(None, mode="batch"), StopSwitch())
        async with backend:
            backend._tasks = TasksById([task])
            if resubmitted:
                backend._resubmitted.add(task.task_id)
            await backend._take_line(line, "batch_1", HeldIds([[task.task_id]]), again)

    asyncio.run(collect())
    return list(again.values()), outcomes.records


def test_a_batch_answer_with_a_data_url_is_an_image(tmp_path):
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    again, records = batch_outcomes(tmp_path, {"url": url}, resubmitted=False)
    assert again == [] and [r["status"] for r in records] == ["ok"]
    assert records[0]["images"][0]["image_url"] is None and records[0]["images"][0]["width"] == 8


def test_a_batch_answer_whose_link_can_never_be_fetched_is_asked_once_more_then_is_download_failed(tmp_path):
    again, records = batch_outcomes(tmp_path, {"url": "ftp://example.invalid/a.png"}, resubmitted=False)
    assert [t.task_id for t in again] == ["0123456789abcdef"] and records == []
    again, records = batch_outcomes(tmp_path, {"url": "ftp://example.invalid/a.png"}, resubmitted=True)
    assert again == [] and [r["error_code"] for r in records] == ["download_failed"]   # as in live mode


def test_a_photo_sized_data_url_is_an_image_too(tmp_path):
    csv = make_prompts(tmp_path / "p.csv", 1)
    with SimulatorThread(data_urls=True, photo=True) as sim:
        summary = through(sim, csv, tmp_path / "out", defaults={**DALLE3, "response_format": "url"})
    df = results(tmp_path / "out")
    assert summary.exit_status == 0 and df.bytes[0] > 1 << 20 and df.image_url.isna().all()
