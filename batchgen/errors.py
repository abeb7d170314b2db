"""batchgen's exceptions, and the one place that decides what an error means for a run.

    BatchgenError
    ├── UsageError          bad usage or bad input: exit 2, nothing sent
    │   ├── JobMismatch     OUT belongs to another job, or holds simulated results for a real run
    │   └── FolderBusy      another run holds OUT
    └── RequestError        one request did not give images (carries a result error code)
        ├── RequestTimeout           code "timeout"
        ├── ConnectionFailed         code "connection_error"
        ├── BadResponse              code "bad_response"
        ├── DownloadFailed           code "download_failed"
        └── ApiError                 the API answered with an error; code is the API's own

The client turns every aiohttp exception into one of these, so nothing above it knows aiohttp.
"""
from __future__ import annotations

import enum
from typing import Optional

# Exit statuses of `batchgen` (the README's "Exit status"): all ok; some task errors; bad usage or input,
# nothing sent; stopped early, resumable.
EXIT_OK, EXIT_TASK_ERRORS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


class BatchgenError(Exception):
    """Base of every error batchgen raises on purpose."""


class UsageError(BatchgenError):
    """Bad usage or bad input, found before anything is sent (exit status 2)."""


class JobMismatch(UsageError):
    """The output folder holds another job's run, or simulated results for a real run (or
    the reverse)."""


class FolderBusy(UsageError):
    """Another batchgen run holds the output folder's lock."""


class RequestError(BatchgenError):
    code = "request_error"

    def __init__(self, message: str, *, code: Optional[str] = None, http_status: Optional[int] = None,
                 trace_id: Optional[str] = None, retry_after: Optional[float] = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.http_status = http_status
        self.trace_id = trace_id
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said.
        self.retry_after = retry_after


class RequestTimeout(RequestError):
    code = "timeout"


class ConnectionFailed(RequestError):
    code = "connection_error"


class BadResponse(RequestError):
    code = "bad_response"


class DownloadFailed(RequestError):
    code = "download_failed"


class ApiError(RequestError):
    code = "api_error"


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


class Decision(enum.Enum):
    RETRY = "retry"  # may succeed later: back off and send again
    FAIL = "fail"    # a refusal of this task: record the error, go on with the others
    STOP = "stop"    # nothing can succeed: stop the run, leave tasks for a rerun


def _stop_codes():
    # Imported here: providers imports this module's UsageError.
    from .providers import AUTH_CODES, QUOTA_CODES
    return AUTH_CODES, QUOTA_CODES


def classify(error: RequestError) -> Decision:
    if isinstance(error, ApiError):
        status = error.http_status or 0
        auth, quota = _stop_codes()
        if status == 401 or error.code in auth or error.code in quota:
            return Decision.STOP
        if status in (408, 409, 429) or status >= 500:
            return Decision.RETRY
        return Decision.FAIL
    # Timeouts, dropped connections, garbage bodies and dead links can all work next time.
    return Decision.RETRY


def is_rate_limited(error: RequestError) -> bool:
    return (isinstance(error, ApiError) and error.http_status == 429
            and error.code not in _stop_codes()[1])


def stop_advice(error: RequestError, provider: str) -> str:
    """What the user should fix after a STOP error."""
    from .providers import get
    return get(provider).stop_advice(error.code)
