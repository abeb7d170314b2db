"""What an error means for a run: the one place that decides retry, fail or stop.

Which codes stop a run (auth, quota) and what to advise is each provider's word, in providers;
so are the words that say it when a gateway rewrote the code.
"""
from __future__ import annotations

import enum
from typing import Optional

from batchgen.exceptions import ApiError, DownloadGone, InvalidInput, RequestError
from batchgen.rules.providers import (
    AUTH_CODE,
    AUTH_CODES,
    AUTH_PHRASES,
    POLICY_CODE,
    POLICY_CODES,
    POLICY_PHRASES,
    QUOTA_CODE,
    QUOTA_CODES,
    QUOTA_PHRASES,
    get,
)


def fallback_code(http_status: int) -> str:
    """A result code for an error answer that carries none of its own (an HTML 503, say)."""
    if http_status == 401:
        return "invalid_token"
    if http_status == 403:
        return "forbidden"
    if http_status == 429:
        return "too_many_requests"
    if http_status >= 500:
        return "api_error"
    if http_status == 400:
        return "invalid_request"
    return f"http_{http_status}"


def error_code(http_status: int, code: Optional[str], kind: Optional[str], message: Optional[str]) -> str:
    """The result code of an error answer, from its code, its type and its message together:
    a quota, auth or policy answer is recognised by any of them (a gateway may have put its own
    code and type on it, or the HTTP status as its code); else the answer's own code, or its
    type where it has none; a numeric code or none at all falls back to the HTTP status."""
    code = code.strip() if isinstance(code, str) else None
    kind = kind.strip() if isinstance(kind, str) else None
    for codes, phrases, named in ((QUOTA_CODES, QUOTA_PHRASES, QUOTA_CODE),
                                  (AUTH_CODES, AUTH_PHRASES, AUTH_CODE),
                                  (POLICY_CODES, POLICY_PHRASES, POLICY_CODE)):
        if code in codes or kind in codes:
            return code if code in codes else kind  # type: ignore[return-value]
        words = " ".join(filter(None, (code, kind, message))).lower()
        if any(phrase in words for phrase in phrases):
            return named
    if code and code.isdigit():     # LiteLLM's proxy puts the HTTP status there
        return fallback_code(http_status if http_status != 200 else 500)
    return code or kind or fallback_code(http_status if http_status != 200 else 500)


class Decision(enum.Enum):
    RETRY = "retry"  # may succeed later: back off and send again
    # A paid answer whose image can never be fetched (a refused link, a 404 on a link just
    # given): one new generation may come back usable; more would pay again for the same failure.
    RETRY_ONCE = "retry_once"
    FAIL = "fail"    # a refusal of this task: record the error, go on with the others
    STOP = "stop"    # nothing can succeed: stop the run, leave tasks for a rerun


def classify(error: RequestError) -> Decision:
    if isinstance(error, DownloadGone):
        return Decision.RETRY_ONCE
    if isinstance(error, ApiError):
        status = error.http_status or 0
        if status == 401 or error.code in AUTH_CODES or error.code in QUOTA_CODES:
            return Decision.STOP
        if status in (408, 409, 429) or status >= 500:
            return Decision.RETRY
        return Decision.FAIL
    if isinstance(error, InvalidInput):
        return Decision.FAIL
    # Timeouts, dropped connections, garbage bodies and dead links can all work next time.
    return Decision.RETRY


def is_rate_limited(error: RequestError) -> bool:
    return (isinstance(error, ApiError) and error.http_status == 429
            and error.code not in QUOTA_CODES)


def stop_advice(error: RequestError, provider: str) -> str:
    """What the user should fix after a STOP error."""
    return get(provider).stop_advice(error.code)
