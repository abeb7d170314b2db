"""What the simulator is told (SimConfig) and what it counts (SimStats)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .faults import FAULTS
from .rate import RETRY_AFTER_STYLES


@dataclass
class SimConfig:
    """Every knob of the simulator.  Probabilities are in [0, 1]; all default to 0."""

    token: str = "sim-token"
    latency: float = 0.0            # seconds from a generation request's arrival to its answer
    latency_jitter: float = 0.0     # plus uniform(0, latency_jitter)
    seed: int = 0
    fail_429: float = 0.0
    retry_after: float = 1.0        # Retry-After (seconds) sent with fail_429
    retry_after_date: bool = False  # send Retry-After as an HTTP date instead (and no retry-after-ms)
    fail_500: float = 0.0
    fail_503_html: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    hang_seconds: float = 3600.0
    truncate: float = 0.0
    bad_json: float = 0.0
    bad_b64: float = 0.0
    not_image: float = 0.0
    expired_link: float = 0.0
    policy_word: str = "forbidden-fruit"
    acedata_moderation_403: bool = False
    rpm_limit: Optional[float] = None
    ratelimit_headers: bool = True  # send x-ratelimit-* with the limit (OpenAI does; some proxies do not)
    # How rpm_limit's 429s state their wait: "exact" (fractional Retry-After + retry-after-ms),
    # "seconds" (whole seconds, rounded up: "Retry-After: 1") or "date" (an HTTP date); the
    # coarse two send no retry-after-ms.  fail_429 answers follow retry_after/retry_after_date.
    rate_limit_retry_after: str = "exact"
    quota_images: Optional[int] = None
    url_ttl: float = 3600.0
    photo: bool = False
    # The Batch API (/v1/files, /v1/batches; see batches.py): a batch completes batch_seconds
    # after its creation (0: at once); the faults are drawn once per batch (line errors per line).
    batch_seconds: float = 2.0
    batch_expire: float = 0.0           # a batch expires with half its lines run
    batch_fail_validation: float = 0.0  # a valid batch fails validation (token_limit_exceeded)
    batch_line_errors: float = 0.0      # a line answers 500 server_error instead of running
    # Memory bounds, so a long benchmark cannot grow without end; generous for tests.
    max_files: int = 10000              # images kept for url downloads (oldest dropped first)
    max_file_bytes: int = 512 * 2**20   # and at most this many bytes of them
    cache_bytes: int = 256 * 2**20      # encoded-image LRU budget

    def __post_init__(self) -> None:
        for name in FAULTS + ("batch_expire", "batch_fail_validation", "batch_line_errors"):
            p = getattr(self, name)
            if not (0.0 <= float(p) <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], not {p!r}")
        if self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("latency and latency_jitter must be >= 0")
        if not self.batch_seconds >= 0:
            raise ValueError(f"batch_seconds must be >= 0, not {self.batch_seconds!r}")
        if self.rpm_limit is not None and self.rpm_limit <= 0:
            raise ValueError("rpm_limit must be > 0 (or None for no limit)")
        if self.rate_limit_retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"rate_limit_retry_after must be one of {', '.join(RETRY_AFTER_STYLES)}, "
                             f"not {self.rate_limit_retry_after!r}")
        if self.quota_images is not None and self.quota_images < 0:
            raise ValueError("quota_images must be >= 0 (or None for no quota)")


@dataclass
class SimStats:
    """Counters.  Dict keys are strings (HTTP statuses as "200", plus "drop" and "hang")."""

    requests: int = 0                                   # generation requests received
    by_path: dict = field(default_factory=dict)         # path -> requests
    by_status: dict = field(default_factory=dict)       # "200"/"400"/.../"drop"/"hang" -> count
    by_model: dict = field(default_factory=dict)        # model of valid requests -> count
    params: dict = field(default_factory=dict)          # body field -> requests carrying it (valid or not)
    input_images: int = 0                               # input images received by edits
    images: int = 0                                     # images in 200 generation answers
    downloads: int = 0                                  # GET /files answered 200
    download_misses: int = 0                            # GET /files answered 404
    faults: dict = field(default_factory=dict)          # fault name -> times injected
    files_uploaded: int = 0                             # POST /v1/files answered 200
    batches_created: int = 0                            # POST /v1/batches answered 200
    batch_executions: dict = field(default_factory=dict)  # custom_id -> times a batch line ran

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "by_model": dict(self.by_model),
            "params": dict(self.params),
            "input_images": self.input_images,
            "images": self.images,
            "downloads": self.downloads,
            "download_misses": self.download_misses,
            "faults": dict(self.faults),
            "files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
            "batch_executions": dict(self.batch_executions),
        }

    def copy(self) -> "SimStats":
        return SimStats(**self.as_dict())

    def reset(self) -> None:
        self.requests = self.images = self.downloads = self.download_misses = self.input_images = 0
        self.params.clear()
        self.by_path.clear()
        self.by_status.clear()
        self.by_model.clear()
        self.faults.clear()
        self.files_uploaded = self.batches_created = 0
        self.batch_executions.clear()

    def __getitem__(self, key: str) -> Any:  # stats["requests"] works too
        return getattr(self, key)


def bump(d: dict, key: str, k: int = 1) -> None:
    d[key] = d.get(key, 0) + k
