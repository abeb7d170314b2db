"""The Files API as the Batch API uses it: JSONL inputs uploaded with purpose ``batch``, and the
output and error files that batches write (purpose ``batch_output``).

    POST /v1/files               multipart/form-data: ``purpose`` = batch, ``file`` = the JSONL
    GET  /v1/files/{id}          the file object
    GET  /v1/files/{id}/content  its bytes

Everything is kept in memory until ``POST /_sim/reset?all=1`` (fine for tests; nothing bounds it).
An upload is read as a stream and refused as soon as it passes MAX_UPLOAD_BYTES, so the
application's small ``client_max_size`` (which only bounds whole-body reads) does not apply.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Optional

from aiohttp import BodyPartReader, web

from .validation import ApiError, bad

# OpenAI: a batch input file may be up to 200 MB ("larger than the 209715200 maximum").
MAX_UPLOAD_BYTES = 200 * 2**20
PURPOSES = ("batch",)            # the only purpose the simulator takes
FILE_TTL = 30 * 86400            # batch files expire 30 days after their creation
_SMALL_FIELD = 4096              # bytes read at most from a non-file form field


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str        # "batch" (uploaded) or "batch_output" (written by a batch)
    data: bytes
    created_at: int

    def as_object(self) -> dict:
        """The file object, with the fields of the openai package's FileObject."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.created_at + FILE_TTL,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class Uploads:
    """The files by id."""

    def __init__(self) -> None:
        self.files: dict = {}

    def add(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> Optional[StoredFile]:
        return self.files.get(file_id)

    def find(self, file_id: str) -> StoredFile:
        """The file, or the 404 OpenAI answers for an unknown id."""
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def forget(self) -> None:
        self.files.clear()


async def read_upload(request: web.Request) -> tuple[str, str, bytes]:
    """(purpose, filename, data) of a ``POST /v1/files``, or ApiError (400) for what OpenAI
    refuses: no multipart body, no file or purpose, a purpose other than batch, a file name
    not ending in .jsonl, a file over MAX_UPLOAD_BYTES."""
    if not request.content_type.startswith("multipart/"):
        raise bad("The request must be multipart/form-data with the fields 'purpose' and 'file'.",
                  code=None)
    purpose = filename = data = None
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or part.name not in ("purpose", "file"):
                await part.release()    # other fields (expires_after[...]) are taken and ignored
            elif part.name == "purpose":
                purpose = (await _read_capped(part, _SMALL_FIELD, "purpose")).decode("utf-8", "replace")
            else:
                filename = part.filename or ""
                data = await _read_capped(part, MAX_UPLOAD_BYTES, "file")
    except ApiError:
        raise
    except (ValueError, RuntimeError, AssertionError, UnicodeError) as exc:  # a malformed body
        raise bad(f"Could not parse the multipart/form-data body: {exc}", code=None) from exc
    if data is None:
        raise bad("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    assert filename is not None     # read with the file's data
    if purpose is None:
        raise bad("Missing required parameter: 'purpose'.", param="purpose",
                  code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise bad(f"Invalid value for 'purpose': '{purpose}'. The batchgen simulator accepts "
                  f"only 'batch'.", param="purpose")
    if not filename.endswith(".jsonl"):
        raise bad("Invalid file format for Batch API. Must be .jsonl", param="file",
                  code="invalid_file_format")
    return purpose, filename, data


async def _read_capped(part: BodyPartReader, limit: int, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await part.read_chunk(2**16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise bad(f"File is too large: '{name}' may be at most {limit} bytes for purpose "
                      f"'batch'.", param=name, code="file_too_large")
        chunks.append(chunk)
