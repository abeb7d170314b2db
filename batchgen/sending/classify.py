"""What an error means for a run: the one place that decides retry, fail or stop.

Which codes stop a run (auth, quota) and what to advise is each provider's word, in providers.
"""
from __future__ import annotations

import enum

from batchgen.exceptions import ApiError, InvalidInput, RequestError
from batchgen.rules.providers import AUTH_CODES, QUOTA_CODES, get


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


# Codes of a task that failed upstream (the Tasks API's answer, with no HTTP status of its own)
# that mean the server, not the request, failed: sent again.
SERVER_FAULT_CODES = frozenset({"api_error", "server_error", "timeout", "internal_error", "upstream_error",
                                "service_unavailable", "bad_gateway", "gateway_timeout"})


class Decision(enum.Enum):
    RETRY = "retry"  # may succeed later: back off and send again
    FAIL = "fail"    # a refusal of this task: record the error, go on with the others
    STOP = "stop"    # nothing can succeed: stop the run, leave tasks for a rerun


def classify(error: RequestError) -> Decision:
    if isinstance(error, ApiError):
        status = error.http_status or 0
        if status == 401 or error.code in AUTH_CODES or error.code in QUOTA_CODES:
            return Decision.STOP
        if not status:
            return Decision.RETRY if error.code in SERVER_FAULT_CODES else Decision.FAIL
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
