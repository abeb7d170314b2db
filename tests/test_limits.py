"""Retry-After parsing, rate-limit headers and the backoff policy (pure)."""
import random
from email.utils import formatdate

from batchgen.limits import RetryPolicy, parse_ratelimit_headers, parse_retry_after


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


def test_the_pacer_learns_a_rate_from_429s_and_one_burst_cuts_it_once():
    import time
    from batchgen.limits import AdaptivePacer
    pacer = AdaptivePacer()
    assert pacer.rate is None  # no limit known: no pacing at all
    for _ in range(12):
        pacer.on_success()
    sent = time.monotonic()
    pacer.on_rate_limited(retry_after=2.0, sent_at=sent)
    assert pacer.rate == 12.0  # what was succeeding in the last second
    assert pacer._cooldown_until >= sent + 2.0  # one cool-down, shared by every worker
    pacer.on_rate_limited(retry_after=2.0, sent_at=sent)  # same burst: no second cut
    assert pacer.rate == 12.0
    pacer.on_rate_limited(retry_after=None, sent_at=time.monotonic() + 1)
    assert pacer.rate == 12.0 * AdaptivePacer.DECREASE
    before = pacer.rate
    for _ in range(20):
        pacer.on_success()
    assert pacer.rate > before  # additive increase while requests succeed


def test_the_pacer_follows_the_servers_stated_limit_before_any_429():
    from batchgen.limits import AdaptivePacer, RateLimitHeaders
    pacer = AdaptivePacer()
    pacer.on_success(RateLimitHeaders(limit=1200, remaining=500))
    assert pacer.rate == 20.0
    pacer.on_success(RateLimitHeaders(limit=1200, remaining=0))
    assert pacer._cooldown_until > 0  # nothing left: wait for the next slot


def test_rpm_spacing_counts_n_images_as_n():
    from batchgen.limits import Spacer
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
