"""Retry-After parsing, rate-limit headers and the backoff policy (pure)."""
import math
import random
from email.utils import formatdate

import pytest

from batchgen.sending.limits import RetryPolicy, parse_ratelimit_headers, parse_retry_after


def test_retry_after_in_seconds_as_a_date_and_in_ms():
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 118 <= parse_retry_after({"retry-after": formatdate(1_000_120, usegmt=True)}, now=1_000_000) <= 120
    assert parse_retry_after({"retry-after": formatdate(999_000, usegmt=True)}, now=1_000_000) == 0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_ratelimit_headers_give_the_limit_and_what_remains():
    h = parse_ratelimit_headers({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "0",
                                 "x-ratelimit-reset-requests": "50ms"})
    assert (h.limit, h.remaining) == (1200, 0)
    assert parse_ratelimit_headers({"x-ratelimit-limit-requests": "lots"}).limit is None
    assert parse_ratelimit_headers({}) is None


def test_full_jitter_backoff_is_capped_and_the_server_word_wins():
    policy = RetryPolicy(max_retries=5, base_s=1, cap_s=8)
    rng = random.Random(1)
    for k in range(1, 12):
        delay = policy.delay(k, None, rng)
        assert 0 <= delay <= min(8, 2 ** (k - 1))
    assert policy.delay(3, 2.5, rng) == 2.5
    assert max(policy.backoff(10, rng) for _ in range(200)) > 4  # jitter spreads up to the cap


def test_rpm_spacing_counts_n_images_as_n():
    from batchgen.sending.limits import Spacer
    spacer = Spacer(per_minute=60)  # one unit a second
    assert spacer.reserve(1, now=100.0) == 0        # the first goes at once
    assert spacer.reserve(3, now=100.0) == 1.0      # the next waits for the first's slot...
    assert spacer.reserve(1, now=100.5) == 3.5      # ...and a request for 3 images books 3 slots
    assert spacer.reserve(1, now=200.0) == 0        # idle time is not saved up as a burst


def test_the_retry_policy_keeps_two_budgets_per_task():
    policy = RetryPolicy(max_retries=2, max_rate_limited=3, base_s=1.0)
    task = policy.for_task(random.Random(1))
    # 429s wait 0 here (the pacer's shared cool-down holds every worker) and use their own budget.
    assert [task.next_wait(True, 5.0) for _ in range(4)] == [0.0, 0.0, 0.0, None]
    # Failures back off (the server's Retry-After wins), and are not spent by the 429s above.
    assert task.next_wait(False, 7.0) == 7.0
    assert 0 <= task.next_wait(False, None) <= 2.0
    assert task.next_wait(False, None) is None
    # Another task starts with both budgets whole.
    assert policy.for_task().next_wait(False, 3.0) == 3.0


def test_retry_after_says_whether_it_is_coarse():
    from batchgen.sending.limits import ServerWait
    assert parse_retry_after({"retry-after": "1"}).coarse is True           # whole seconds
    assert parse_retry_after({"retry-after": "0.05"}).coarse is False       # fractional: exact
    assert parse_retry_after({"retry-after-ms": "50", "retry-after": "1"}).coarse is False
    date = parse_retry_after({"retry-after": formatdate(1_000_001, usegmt=True)}, now=1_000_000.4)
    assert date.coarse is True and date == pytest.approx(0.6)
    assert isinstance(date, float) and isinstance(date, ServerWait)
    assert ServerWait(2.0) == 2.0 and ServerWait(2.0).coarse is False


@pytest.mark.parametrize("headers", [
    {"retry-after": "inf"}, {"retry-after": "-inf"}, {"retry-after": "nan"}, {"retry-after": "Infinity"},
    {"retry-after": "1e999"}, {"retry-after-ms": "nan"}, {"retry-after-ms": "inf"},
    {"retry-after": "Fri, 31 Dec 99999 23:59:59 GMT"}, {"retry-after": ""}, {"retry-after": "   "},
])
def test_retry_after_that_is_not_a_finite_number_is_ignored(headers):
    assert parse_retry_after(headers) is None


def test_retry_after_is_bounded():
    from batchgen.sending.limits import MAX_SERVER_WAIT_S
    assert parse_retry_after({"retry-after": "1e300"}) == MAX_SERVER_WAIT_S
    assert parse_retry_after({"retry-after-ms": "1e300"}) == MAX_SERVER_WAIT_S
    assert parse_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}) == MAX_SERVER_WAIT_S
    assert parse_retry_after({"retry-after": "-5"}) == 0
    assert parse_retry_after({"retry-after-ms": "-5"}) == 0
    # a useless retry-after-ms does not hide a good Retry-After
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "2"}) == 2
    for value in ("1e300", "-5", "0", "3", "0.25"):
        got = parse_retry_after({"retry-after": value})
        assert math.isfinite(got) and 0 <= got <= MAX_SERVER_WAIT_S


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "NaN", "0", "0.5", "-1", "-1200",
                                   "1e999", "1e300", "lots", ""])
def test_a_ratelimit_limit_that_cannot_be_paced_by_is_ignored(value):
    h = parse_ratelimit_headers({"x-ratelimit-limit-requests": value, "x-ratelimit-remaining-requests": "3"})
    assert h.limit is None and h.remaining == 3


@pytest.mark.parametrize("value, expected", [("inf", None), ("nan", None), ("1e999", None), ("1e300", None),
                                             ("-3", 0), ("0", 0), ("7.9", 7), ("x", None)])
def test_ratelimit_remaining_is_a_bounded_count(value, expected):
    h = parse_ratelimit_headers({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": value})
    assert h.limit == 1200 and h.remaining == expected


def test_the_pacer_survives_whatever_the_server_says():
    from batchgen.sending.limits import Attempt, RateFinder
    pacer = RateFinder(8)
    for value in ("inf", "nan", "0", "-60", "1e999"):
        pacer.on_success(None, parse_ratelimit_headers({"x-ratelimit-limit-requests": value,
                                                        "x-ratelimit-remaining-requests": value}))
    assert pacer.rate is None                     # nothing usable was said: no pace
    for _ in range(12):                           # a burst, so the refusals below set a pace
        pacer.sent()
    for value in ("inf", "nan", "1e999", "-1"):
        for wait in (parse_retry_after({"retry-after": value}), float(value)):  # a raw float from elsewhere too
            held, own = pacer.on_rate_limited(Attempt(0.0), wait)
            assert math.isfinite(held) and math.isfinite(own) and held >= 0 and own >= 0
    assert math.isfinite(pacer.rate) and pacer.rate > 0
    assert math.isfinite(pacer._cooldown_until) and math.isfinite(pacer._next)


# ---- the images and tokens headers (issue 27) ----

def test_ratelimit_headers_give_images_and_tokens_too():
    h = parse_ratelimit_headers({"x-ratelimit-limit-images": "600", "x-ratelimit-remaining-images": "12",
                                 "x-ratelimit-limit-tokens": "8000000", "x-ratelimit-remaining-tokens": "7990000",
                                 "x-ratelimit-reset-tokens": "6m0s"})
    assert (h.limit, h.remaining) == (None, None)          # requests not said: not made up
    assert (h.images_limit, h.images_remaining) == (600, 12)
    assert (h.tokens_limit, h.tokens_remaining) == (8_000_000, 7_990_000)
    # One kind alone is enough to say something; none at all is None.
    assert parse_ratelimit_headers({"x-ratelimit-remaining-tokens": "5"}).tokens_remaining == 5
    assert parse_ratelimit_headers({"x-ratelimit-reset-tokens": "1s"}) is None


@pytest.mark.parametrize("kind", ["images", "tokens"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "0.5", "-1", "1e999", "1e300", "lots", ""])
def test_an_images_or_tokens_limit_that_cannot_be_paced_by_is_ignored(kind, value):
    h = parse_ratelimit_headers({f"x-ratelimit-limit-{kind}": value, f"x-ratelimit-remaining-{kind}": "3",
                                 "x-ratelimit-limit-requests": "60"})
    assert getattr(h, f"{kind}_limit") is None and getattr(h, f"{kind}_remaining") == 3
    assert h.limit == 60        # a bad value of one kind spoils nothing of another


@pytest.mark.parametrize("value, expected", [("-3", 0), ("-1e12", 0), ("0", 0), ("7.9", 7), ("nan", None),
                                             ("x", None), ("1e999", None)])
def test_images_and_tokens_remaining_are_bounded_counts(value, expected):
    h = parse_ratelimit_headers({"x-ratelimit-remaining-images": value, "x-ratelimit-remaining-tokens": value})
    assert h.images_remaining == expected and h.tokens_remaining == expected


def test_tokens_run_to_millions_but_are_bounded():
    from batchgen.sending.limits import MAX_LIMIT_PER_MINUTE, MAX_TOKENS_PER_MINUTE
    huge = str(MAX_LIMIT_PER_MINUTE * 100)              # beyond the requests' bound, within the tokens'
    h = parse_ratelimit_headers({"x-ratelimit-limit-tokens": huge, "x-ratelimit-limit-images": huge,
                                 "x-ratelimit-limit-requests": huge})
    assert h.tokens_limit == MAX_LIMIT_PER_MINUTE * 100
    assert h.images_limit is None and h.limit is None
    beyond = str(MAX_TOKENS_PER_MINUTE * 10)
    assert parse_ratelimit_headers({"x-ratelimit-limit-tokens": beyond}).tokens_limit is None
    assert parse_ratelimit_headers({"x-ratelimit-remaining-tokens": beyond}).tokens_remaining is None


def test_the_binding_limit_is_the_smallest_in_requests_per_second():
    from batchgen.sending.limits import RateLimitHeaders, stated_rate
    h = RateLimitHeaders(limit=6000, remaining=None, images_limit=1200, tokens_limit=60 * 1000 * 30)
    assert stated_rate(h, images=1) == pytest.approx(20.0)            # images: 1200/min, one a request
    assert stated_rate(h, images=4) == pytest.approx(5.0)             # n=4: a quarter of the requests
    assert stated_rate(h, images=1, tokens=1000) == pytest.approx(20.0)
    assert stated_rate(h, images=1, tokens=3000) == pytest.approx(10.0)   # tokens bind
    # Until a request's tokens are known, the tokens limit is not used.
    only_tokens = RateLimitHeaders(limit=None, remaining=None, tokens_limit=60_000)
    assert stated_rate(only_tokens, tokens=None) is None
    assert stated_rate(only_tokens, tokens=1000) == pytest.approx(1.0)
    assert stated_rate(RateLimitHeaders(None, None, images_limit=60), images=0) == pytest.approx(1.0)
    assert stated_rate(RateLimitHeaders(None, 5)) is None


def test_nothing_remains_in_any_kind_is_a_wait():
    from batchgen.sending.limits import RateLimitHeaders, nothing_remains
    assert not nothing_remains(RateLimitHeaders(60, 3, 60, 3, 10_000, 9000), images=1, tokens=1000)
    assert nothing_remains(RateLimitHeaders(60, 0), images=1)
    assert nothing_remains(RateLimitHeaders(60, 3, 60, 0), images=1)
    assert nothing_remains(RateLimitHeaders(60, 3, 60, 3), images=4)       # 3 images left, 4 asked
    assert nothing_remains(RateLimitHeaders(60, 3, tokens_remaining=0))
    assert nothing_remains(RateLimitHeaders(60, 3, tokens_remaining=500), tokens=1000)
    # fewer tokens left than a request takes counts only once a request's tokens are known
    assert not nothing_remains(RateLimitHeaders(60, 3, tokens_remaining=500), tokens=None)
    assert not nothing_remains(RateLimitHeaders(None, None))
