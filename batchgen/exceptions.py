"""batchgen's exceptions, in one hierarchy, and the exit statuses they lead to.

    BatchgenError
    ├── UsageError          bad usage or bad input: exit 2, nothing sent
    │   ├── JobMismatch     OUT belongs to another job, or holds simulated results for a real run
    │   └── FolderBusy      another run holds OUT
    ├── ExportFailed        an export's destination could not be written: exit 3, rerun to finish
    └── RequestError        one request did not give images (carries a result error code)
        ├── RequestTimeout           code "timeout"
        ├── ConnectionFailed         code "connection_error"
        │   └── Unreachable          nothing answered at the address (refused, no route, DNS)
        ├── BadResponse              code "bad_response"
        │   └── NotJson              a 200 that is not JSON (an HTML page where the API should be)
        ├── DownloadFailed           code "download_failed"
        │   └── DownloadGone         a link that can never be fetched (a refused scheme, a 4xx)
        ├── InvalidInput             code "invalid_params": an edit's input turned out unusable
        └── ApiError                 the API answered with an error; code is the API's own

The client turns every aiohttp exception into one of these, so nothing above it knows aiohttp;
`errors.classify` decides what each means for a run.
"""
from __future__ import annotations

from typing import Any, Optional

# Exit statuses of `batchgen` (the README's "Exit status"): all ok; some task errors; bad
# usage or input, nothing sent; stopped early, resumable.
EXIT_OK, EXIT_TASK_ERRORS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_STILL_RUNNING = 4  # submitted and still running on the server: run again to collect


class BatchgenError(Exception):
    """Base of every error batchgen raises on purpose."""


class UsageError(BatchgenError):
    """Bad usage or bad input, found before anything is sent (exit status 2)."""


class JobMismatch(UsageError):
    """The output folder holds another job's run, or simulated results for a real run (or
    the reverse)."""


class FolderBusy(UsageError):
    """Another batchgen run holds the output folder's lock."""


class ExportFailed(BatchgenError):
    """`batchgen export` could not write its destination (a full disk, a refused upload, no
    credentials); what it wrote is whole, and running the export again replaces it."""


class RequestError(BatchgenError):
    code = "request_error"

    def __init__(self, message: str, *, code: Optional[str] = None, http_status: Optional[int] = None,
                 trace_id: Optional[str] = None, retry_after: Optional[float] = None,
                 ratelimit: Any = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.http_status = http_status
        self.trace_id = trace_id
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said.
        self.retry_after = retry_after
        # The x-ratelimit-* counts the answer stated (sending.limits.RateLimitHeaders), if any.
        self.ratelimit = ratelimit


class RequestTimeout(RequestError):
    code = "timeout"


class ConnectionFailed(RequestError):
    code = "connection_error"


class Unreachable(ConnectionFailed):
    """Nothing answered at the endpoint's address: every request would fail the same way."""


class BadResponse(RequestError):
    code = "bad_response"


class NotJson(BadResponse):
    """A 200 whose body is not a JSON object: often a web page, where the URL is wrong."""


class DownloadFailed(RequestError):
    code = "download_failed"


class DownloadGone(DownloadFailed):
    """An image link of an answer that no retry of the download can fetch: a scheme batchgen
    refuses, a data: URL that is no image, a 4xx on a link the server just gave."""


class InvalidInput(RequestError):
    """An edit's input image could not be sent (found unreadable or not an image only when
    it was read to be sent): sending again cannot help."""
    code = "invalid_params"


class ApiError(RequestError):
    code = "api_error"
