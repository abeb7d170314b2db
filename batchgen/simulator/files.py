"""The images handed out as ``url``: kept in memory until their TTL, bounded in count and bytes."""
from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

from .images import CONTENT_TYPES

if TYPE_CHECKING:
    from .config import SimConfig


class FileStore:
    def __init__(self, config: "SimConfig"):
        self.config = config  # url_ttl and the bounds are read at each store
        self.files: OrderedDict = OrderedDict()  # name -> (bytes, content type, expires)
        self.bytes = 0

    def put(self, data: bytes, ext: str) -> str:
        """Store one image; return its file name."""
        now = time.monotonic()
        files = self.files
        while files:  # drop expired (insertion order is expiry order: one TTL for all)
            name, (blob, _, expires) = next(iter(files.items()))
            if expires > now:
                break
            files.popitem(last=False)
            self.bytes -= len(blob)
        name = f"{uuid.uuid4().hex}.{ext}"
        files[name] = (data, CONTENT_TYPES[ext], now + self.config.url_ttl)
        self.bytes += len(data)
        while len(files) > 1 and (len(files) > self.config.max_files
                                  or self.bytes > self.config.max_file_bytes):
            _, (blob, _, _) = files.popitem(last=False)
            self.bytes -= len(blob)
        return name

    def get(self, name: str) -> Optional[tuple]:
        """(bytes, content type) of a live file, else None (an expired one is dropped)."""
        entry = self.files.get(name)
        if entry is not None and entry[2] <= time.monotonic():
            blob = self.files.pop(name)[0]
            self.bytes -= len(blob)
            entry = None
        return None if entry is None else entry[:2]
