"""Prices: the built-in table, a --prices file over it, estimates and costs from usage."""
import json

import pytest

from batchgen.exceptions import UsageError
from batchgen.rules import pricing


@pytest.fixture
def prices():
    return pricing.load()


@pytest.mark.parametrize("params, price", [
    ({"model": "dall-e-3"}, 0.04),
    ({"model": "dall-e-3", "quality": "hd", "size": "1024x1792"}, 0.12),
    ({"model": "dall-e-3", "quality": "standard", "size": "1792x1024"}, 0.08),
    ({"model": "dall-e-2", "size": "256x256", "n": 3}, 0.048),
    ({"model": "gpt-image-1", "quality": "low", "size": "1024x1024"}, 0.011),
    ({"model": "gpt-image-1", "quality": "medium", "size": "1536x1024"}, 0.063),
    ({"model": "gpt-image-1", "quality": "high", "size": "1024x1536"}, 0.25),
    ({"model": "gpt-image-1"}, 0.25),                     # auto quality and size: the dearest
    ({"model": "gpt-image-1-mini", "quality": "low", "size": "1024x1024", "n": 2}, 0.010),
    ({"model": "gpt-image-1.5", "quality": "medium", "size": "1024x1024"}, 0.034),
    ({"model": "gpt-image-1-2025-04-15", "quality": "low", "size": "1024x1024"}, 0.011),   # a snapshot
])
def test_estimates_from_the_published_per_image_prices(prices, params, price):
    assert prices.estimate(params) == pytest.approx(price)


def test_the_batch_api_costs_half(prices):
    params = {"model": "gpt-image-1", "quality": "low", "size": "1024x1024"}
    assert prices.estimate(params, "batch") == pytest.approx(0.0055)


def test_no_price_for_an_unknown_model_or_one_without_a_published_price(prices):
    assert prices.estimate({"model": "flux-pro"}) is None
    # gpt-image-2.5's xhigh has no published token count; nano-banana no published price
    assert prices.estimate({"model": "gpt-image-2.5-flare", "quality": "xhigh", "size": "1024x1024"}) is None
    assert not prices.has_price("nano-banana")


def test_cost_from_usage_prices_each_kind_of_token(prices):
    usage = {"input_tokens": 1000, "image_input_tokens": 400, "output_tokens": 4160, "total_tokens": 5160}
    # gpt-image-1: text input $5/M, image input $10/M, image output $40/M
    expected = (600 * 5 + 400 * 10 + 4160 * 40) / 1e6
    assert prices.from_usage("gpt-image-1", usage) == pytest.approx(expected)
    assert prices.from_usage("gpt-image-1", usage, "batch") == pytest.approx(expected / 2)
    assert prices.from_usage("gpt-image-1", None) is None
    assert prices.from_usage("dall-e-3", usage) is None        # billed per image, not per token


def test_a_price_file_adds_a_token_priced_model(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"nano-banana": {
        "tokens_usd_per_million": {"text_input": 5, "image_input": 8, "image_output": 30}}}}))
    table = pricing.load(str(path))
    # the published output-token counts: 272 for a low 1024x1024 image
    assert table.estimate({"model": "nano-banana", "quality": "low", "size": "1024x1024"}) == \
        pytest.approx(272 * 30 / 1e6)
    # a size of its own: the square's count scaled by the area
    assert table.estimate({"model": "gpt-image-2", "quality": "low", "size": "2048x1024"}) == \
        pytest.approx(544 * 30 / 1e6)
    # the built-in prices stay
    assert table.estimate({"model": "dall-e-3"}) == pytest.approx(0.04)


@pytest.mark.parametrize("content, words", [
    ("{not json", "not a readable JSON"),
    ('{"models": {"m": {"per_image": {"low": {"1024x1024": -1}}}}}', "must be a number ≥ 0"),
    ('{"models": {"m": {"tokens_usd_per_million": {"audio": 1}}}}', "may set text_input"),
    ('[1, 2]', "a price file is a JSON object"),
])
def test_a_bad_price_file_is_a_usage_error_that_says_what_is_wrong(tmp_path, content, words):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=words):
        pricing.load(str(path))


def test_a_missing_price_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        pricing.load(str(tmp_path / "nope.json"))


def test_what_a_record_says_it_was_billed():
    assert pricing.billed({"cost_usd": 0.5}) == 0.5
    assert pricing.billed({"status": "ok"}) is None
    for garbage in (-1, float("nan"), float("inf"), True, "0.5"):
        assert pricing.billed({"cost_usd": garbage}) is None
