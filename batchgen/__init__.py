"""batchgen: a table of prompts in, an image dataset out, through an OpenAI-compatible Images API.

    >>> import batchgen
    >>> summary = batchgen.run("jobs/otter_sweep.toml", simulate=True)
    >>> df = summary.results()

`run`, `plan`, `export` and `Summary` load the pipeline when first used, so `import batchgen.simulator` or
`import batchgen.sending.client` stays light.
"""
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from batchgen._version import __version__
from batchgen.api import plan, run
from batchgen.exceptions import (
    ApiError,
    BadResponse,
    BatchgenError,
    ConnectionFailed,
    DownloadFailed,
    ExportFailed,
    FolderBusy,
    JobMismatch,
    RequestError,
    RequestTimeout,
    UsageError,
)

if TYPE_CHECKING:
    import os

    import pandas

    from batchgen.showing.exports import ExportSummary


def export(out: "Union[str, os.PathLike[str]]", format: str, to: "Union[str, os.PathLike[str]]", *,
           shard_size: Optional[int] = None, include_errors: bool = False,
           storage_options: Optional[Mapping] = None) -> "ExportSummary":
    """Export the run in OUT to `to` (a folder or an fsspec URL) as 'webdataset' or 'parquet';
    returns an ExportSummary. `shard_size`: samples per shard (default 2,000). See
    batchgen.showing.exports.export."""
    from batchgen.showing.exports import export as _export
    return _export(out, format, to, shard_size=shard_size, include_errors=include_errors,
                   storage_options=storage_options)


def read_results(out: "Union[str, os.PathLike[str]]") -> "pandas.DataFrame":
    """OUT/results.parquet as a pandas DataFrame."""
    from batchgen.keeping.results import read_results as _read
    return _read(out)


def __getattr__(name: str) -> Any:
    if name == "Summary":
        from batchgen.runner import Summary
        return Summary
    raise AttributeError(f"module 'batchgen' has no attribute {name!r}")


__all__ = ["run", "plan", "export", "Summary", "read_results", "BatchgenError", "UsageError", "JobMismatch",
           "FolderBusy", "RequestError", "RequestTimeout", "ConnectionFailed", "BadResponse",
           "DownloadFailed", "ApiError", "ExportFailed", "__version__"]
