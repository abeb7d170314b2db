"""batchgen: a table of prompts in, an image dataset out, through an OpenAI-compatible Images API.

    >>> import batchgen
    >>> summary = batchgen.run("jobs/otter_sweep.toml", simulate=True)
    >>> df = batchgen.read_results(summary.out)
"""
__version__ = "0.1.0"

from .errors import (ApiError, BadResponse, BatchgenError, ConnectionFailed, DownloadFailed,  # noqa: E402
                     JobMismatch, RequestError, RequestTimeout, TransportError, UsageError)
from .runner import Summary, run  # noqa: E402


def read_results(out):
    """OUT/results.parquet as a pandas DataFrame."""
    from .results import read_results as _read
    return _read(out)


__all__ = ["run", "Summary", "read_results", "BatchgenError", "UsageError", "JobMismatch",
           "RequestError", "TransportError", "RequestTimeout", "ConnectionFailed", "BadResponse",
           "DownloadFailed", "ApiError", "__version__"]
