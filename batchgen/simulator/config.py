"""What the simulator is told (SimConfig) and what it counts (SimStats)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .faults import FAULTS
from .gateway import GATEWAYS
from .rate import RETRY_AFTER_STYLES, TOKENS_PER_IMAGE


@dataclass
class SimConfig:
    """Every knob of the simulator.  Probabilities are in [0, 1]; all default to 0."""

    token: str = "sim-token"
    # The latency: seconds from a generation request's arrival to its answer, for the answers
    # that stand for work upstream (a 200, a content-policy refusal, a 500, the spoiled 200s).
    # Refusals at the door are answered at once, as a real gateway does: the 401, the rate
    # limits' 429s (and fail_429's), the 400s of an invalid request, insufficient_quota, the
    # proxy's 503 (a drop closes at once, a hang waits hang_seconds).  latency_on_refusals=True
    # gives every answer the latency (the simulator's behaviour before issue #27).
    latency: float = 0.0
    latency_spread: float = 0.0     # times uniform(1 - s, 1 + s): 0.2 is +-20% (s in [0, 1])
    latency_jitter: float = 0.0     # plus uniform(0, latency_jitter)
    latency_on_refusals: bool = False
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
    # The key's limits (see rate.py): requests, images (a request for n takes n) and tokens (a
    # request for n takes n * tokens_per_image) per minute, each a token bucket with one second
    # of burst; None: no such limit.  The simulator has one key, so these are that key's: runs
    # sharing one `batchgen simulate` process share them.
    rpm_limit: Optional[float] = None
    ipm_limit: Optional[float] = None
    tpm_limit: Optional[float] = None
    tokens_per_image: float = TOKENS_PER_IMAGE   # 1056: gpt-image-1 1024x1024 medium
    # rpm steps: (seconds after the first generation request, rpm), e.g. ((10, 300), (20, 600))
    # halves a 600 rpm limit at 10 s and restores it at 20 s.  POST /_sim/limit changes the
    # limits at any time too.
    rpm_schedule: tuple = ()
    ratelimit_headers: bool = True  # send x-ratelimit-* with the limits (OpenAI does; some proxies do not)
    # How the limits' 429s state their wait: "exact" (fractional Retry-After + retry-after-ms),
    # "seconds" (whole seconds, rounded up: "Retry-After: 1"), "date" (an HTTP date) or "none"
    # (no Retry-After at all); only "exact" sends retry-after-ms.  fail_429 answers follow
    # retry_after/retry_after_date.
    rate_limit_retry_after: str = "exact"
    quota_images: Optional[int] = None
    # "litellm": answer as through LiteLLM's proxy (gateway.py: its error shapes, its headers
    # instead of the upstream's, null-filled bodies, zero usage); "": as the API itself.
    gateway: str = ""
    gateway_cost_per_image: float = 0.04     # the x-litellm-response-cost of each image
    data_urls: bool = False   # answer response_format=url with data:image/...;base64, URLs (some gateways do)
    # AceData's callback mode and Tasks API (tasks.py): a callback generation fails upstream
    # (drawn once per trace id); a synchronous answer slower than sync_time_limit seconds is a
    # 504 at that limit while the generation completes and is billed (None: no limit).
    task_fail: float = 0.0
    sync_time_limit: Optional[float] = None
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
        if not 0.0 <= self.latency_spread <= 1.0:
            raise ValueError(f"latency_spread must be in [0, 1], not {self.latency_spread!r}")
        if not self.batch_seconds >= 0:
            raise ValueError(f"batch_seconds must be >= 0, not {self.batch_seconds!r}")
        for name in ("rpm_limit", "ipm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or None for no limit)")
        if not self.tokens_per_image > 0:
            raise ValueError(f"tokens_per_image must be > 0, not {self.tokens_per_image!r}")
        steps = []
        for step in self.rpm_schedule:
            try:
                seconds, rpm = (float(v) for v in step)
            except (TypeError, ValueError):
                raise ValueError(f"rpm_schedule: each step is (seconds, rpm), not {step!r}") from None
            if not (seconds >= 0 and rpm > 0):
                raise ValueError(f"rpm_schedule: a step needs seconds >= 0 and rpm > 0, not {step!r}")
            steps.append((seconds, rpm))
        self.rpm_schedule = tuple(sorted(steps))
        if self.rate_limit_retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"rate_limit_retry_after must be one of {', '.join(RETRY_AFTER_STYLES)}, "
                             f"not {self.rate_limit_retry_after!r}")
        if self.gateway not in GATEWAYS:
            raise ValueError(f"gateway must be one of {', '.join(map(repr, GATEWAYS))}, not {self.gateway!r}")
        if not 0.0 <= self.task_fail <= 1.0:
            raise ValueError(f"task_fail must be a probability in [0, 1], not {self.task_fail!r}")
        if self.sync_time_limit is not None and not self.sync_time_limit > 0:
            raise ValueError(f"sync_time_limit must be > 0 (or None for no limit), not {self.sync_time_limit!r}")
        if self.quota_images is not None and self.quota_images < 0:
            raise ValueError("quota_images must be >= 0 (or None for no quota)")


TIMELINE_SERIES = ("requests", "admitted", "ok", "limited")


@dataclass
class SimStats:
    """Counters.  Dict keys are strings (HTTP statuses as "200", plus "drop" and "hang").

    For benchmarks: ``in_flight``/``peak_in_flight`` are the generation requests (both dialects,
    generations and edits) the server holds now / held at most; ``generating``/
    ``peak_generating`` those of them admitted and in their latency (the upstream work);
    ``rate_limited`` the limits' 429s by limit ("rpm", "ipm", "tpm"); ``timeline`` per second
    since the first generation request (index i: [i, i+1) s), lists of the generation requests
    that arrived ("requests"), that the limits admitted ("admitted"), the 200s answered ("ok";
    the accepted rate over time) and the limits' 429s ("limited").  A reset zeroes the counters,
    sets the peaks to the gauges' current values and starts the timeline afresh at the next
    request."""

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
    trace_executions: dict = field(default_factory=dict)  # trace_id -> generations run under it
    tasks_created: int = 0                              # callback generations accepted
    task_lookups: int = 0                               # POST /openai/tasks answered
    in_flight: int = 0                                  # generation requests held now
    peak_in_flight: int = 0
    generating: int = 0                                 # of them, admitted and in their latency
    peak_generating: int = 0
    rate_limited: dict = field(default_factory=dict)    # "rpm"/"ipm"/"tpm" -> the limit's 429s
    timeline: dict = field(default_factory=lambda: {k: [] for k in TIMELINE_SERIES})
    timeline_start: Optional[float] = None              # monotonic time of the timeline's 0

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
            "trace_executions": dict(self.trace_executions),
            "tasks_created": self.tasks_created,
            "task_lookups": self.task_lookups,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "generating": self.generating,
            "peak_generating": self.peak_generating,
            "rate_limited": dict(self.rate_limited),
            "timeline": {k: list(v) for k, v in self.timeline.items()},
        }

    def copy(self) -> "SimStats":
        doc = self.as_dict()
        return SimStats(**doc, timeline_start=self.timeline_start)

    def reset(self) -> None:
        self.requests = self.images = self.downloads = self.download_misses = self.input_images = 0
        self.params.clear()
        self.by_path.clear()
        self.by_status.clear()
        self.by_model.clear()
        self.faults.clear()
        self.files_uploaded = self.batches_created = 0
        self.batch_executions.clear()
        self.trace_executions.clear()
        self.tasks_created = self.task_lookups = 0
        self.peak_in_flight = self.in_flight          # the gauges go on: requests still held
        self.peak_generating = self.generating
        self.rate_limited.clear()
        self.timeline = {k: [] for k in TIMELINE_SERIES}
        self.timeline_start = None

    def mark(self, series: str, now: float) -> None:
        """Count one event of a timeline series at monotonic time ``now``."""
        if self.timeline_start is None:
            self.timeline_start = now
        second = max(0, int(now - self.timeline_start))
        for values in self.timeline.values():
            if len(values) <= second:
                values.extend([0] * (second + 1 - len(values)))
        self.timeline[series][second] += 1

    def enter(self, generating: bool = False) -> None:
        """A request is held (in flight; with generating, in its latency too)."""
        if generating:
            self.generating += 1
            self.peak_generating = max(self.peak_generating, self.generating)
        else:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self, generating: bool = False) -> None:
        if generating:
            self.generating = max(0, self.generating - 1)
        else:
            self.in_flight = max(0, self.in_flight - 1)

    def __getitem__(self, key: str) -> Any:  # stats["requests"] works too
        return getattr(self, key)


def bump(d: dict, key: str, k: int = 1) -> None:
    d[key] = d.get(key, 0) + k
