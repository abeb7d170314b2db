"""Retry-After parsing, rate-limit headers and the backoff policy (pure)."""
import random
from email.utils import formatdate

from batchgen.limits import RetryPolicy, parse_duration, parse_ratelimit_headers, parse_retry_after


def test_retry_after_in_seconds_as_a_date_and_in_ms():
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 118 <= parse_retry_after({"retry-after": formatdate(1_000_120, usegmt=True)}, now=1_000_000) <= 120
    assert parse_retry_after({"retry-after": formatdate(999_000, usegmt=True)}, now=1_000_000) == 0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_openai_reset_durations():
    assert parse_duration("1s") == 1
    assert parse_duration("6m0s") == 360
    assert parse_duration("120ms") == 0.12
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("later") is None
    h = parse_ratelimit_headers({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "0",
                                 "x-ratelimit-reset-requests": "50ms"})
    assert (h.limit, h.remaining, h.reset_s) == (1200, 0, 0.05)
    assert parse_ratelimit_headers({}) is None


def test_full_jitter_backoff_is_capped_and_the_server_word_wins():
    policy = RetryPolicy(max_retries=5, base_s=1, cap_s=8)
    rng = random.Random(1)
    for k in range(1, 12):
        delay = policy.delay(k, None, rng)
        assert 0 <= delay <= min(8, 2 ** (k - 1))
    assert policy.delay(3, 2.5, rng) == 2.5
    assert max(policy.backoff(10, rng) for _ in range(200)) > 4  # jitter spreads up to the cap
