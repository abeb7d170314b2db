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

# The server does not know the model (or no longer serves it): every task of it would fail alike.
MODEL_CODES = frozenset({"model_not_found", "model_not_available", "invalid_model"})


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


# What an answer means beyond its status, by the codes and words of rules.providers.
QUOTA, AUTH, POLICY = "quota", "auth", "policy"
_MEANINGS = ((QUOTA, QUOTA_CODES, QUOTA_PHRASES, QUOTA_CODE), (AUTH, AUTH_CODES, AUTH_PHRASES, AUTH_CODE),
             (POLICY, POLICY_CODES, POLICY_PHRASES, POLICY_CODE))


def meaning(*said: Optional[str]) -> Optional[str]:
    """QUOTA, AUTH or POLICY when an answer's code, type or message says so (a known code, or
    the words the APIs and gateways use: a gateway may rewrite the code, not the upstream's
    words), else None."""
    for name, codes, _, _ in _MEANINGS:
        if any(text in codes for text in said if text):
            return name
    words = " ".join(text for text in said if text).lower()
    for name, _, phrases, _ in _MEANINGS:
        if any(phrase in words for phrase in phrases):
            return name
    return None


def error_code(http_status: int, code: Optional[str], kind: Optional[str], message: Optional[str]) -> str:
    """The result code of an error answer: the API's own code when it gives one; else (none, or
    a number: LiteLLM's proxy puts the HTTP status there) the name of what its type or words
    say (insufficient_quota, invalid_api_key, content_policy_violation), else its type where it
    has no code at all, else the HTTP status's."""
    code = code.strip() if isinstance(code, str) else None
    kind = kind.strip() if isinstance(kind, str) else None
    if code and not code.isdigit():
        return code
    said = meaning(kind, message)
    if said is not None:
        return next(named for name, _, _, named in _MEANINGS if name == said)
    if kind and not code:
        return kind
    return fallback_code(http_status if http_status != 200 else 500)
# Codes of a task that failed upstream (the Tasks API's answer, with no HTTP status of its own)
# that mean the server, not the request, failed: sent again.
SERVER_FAULT_CODES = frozenset({"api_error", "server_error", "timeout", "internal_error", "upstream_error",
                                "service_unavailable", "bad_gateway", "gateway_timeout"})


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
        said = meaning(error.code, error.message)
        if status == 401 or said in (AUTH, QUOTA):
            return Decision.STOP
        if error.code in MODEL_CODES and status != 429 and status < 500:
            return Decision.STOP
        if said == POLICY:
            return Decision.FAIL
        if not status:
            return Decision.RETRY if error.code in SERVER_FAULT_CODES else Decision.FAIL
        if status in (408, 409, 429) or status >= 500:
            return Decision.RETRY
        return Decision.FAIL
    if isinstance(error, InvalidInput):
        return Decision.FAIL
    # Timeouts, dropped connections, garbage bodies and dead links can all work next time.
    return Decision.RETRY


# Refusals of one task's content, which say nothing of its model.
_TASK_CODES = frozenset({"content_policy_violation", "moderation_blocked", "forbidden", "invalid_params",
                         "image_generation_user_error"})
# The same refusal on this many first requests of a model, before any of them succeeds: the
# model is what the server refuses (a proxy that words model_not_found its own way).
MODEL_REFUSALS_TO_STOP = 3
# What ModelRefusals.refused says of a refusal.
OWN = "own"        # the task's own: record it
HELD = "held"      # it may be the model's: held undecided until the model is
MODEL = "model"    # the model is refused: the run stops, and its held tasks are left to send


class ModelRefusals:
    """Per model, until the server has accepted one of its requests: the refusals that may be
    the model's rather than their task's are held, undecided, and counted while alike. Once
    the model is accepted, those held are ordinary refusals (each its task's outcome); once it
    is refused alike MODEL_REFUSALS_TO_STOP times, the run stops and none of them was the
    task's: they are left to send, as a wrong endpoint leaves its first refusals. Held rather
    than sent again, so that one task refused three times is not taken for its model."""

    def __init__(self) -> None:
        self._accepted: set = set()
        self._refused: dict = {}      # model -> ((status, code), count)
        self._held: dict = {}         # model -> [what the caller holds: one item a refusal]
        self._stopped: set = set()

    def accepted(self, model: Optional[str]) -> list:
        """The model took a request: its held refusals, now each its task's outcome."""
        if model in self._accepted:
            return []       # nothing is held of an accepted model (refused() holds none)
        self._accepted.add(model)
        self._refused.pop(model, None)
        return self._held.pop(model, [])

    def refused(self, model: Optional[str], error: RequestError, item: object) -> str:
        """A task's final refusal (its retries, if any, spent): OWN, HELD (`item` is kept), or
        MODEL (the refusals that stop the run come in at once: this one, and those in flight
        at the stop)."""
        if not isinstance(error, ApiError) or model in self._accepted:
            return OWN
        status = error.http_status or 0
        if status not in (400, 404, 422) or error.code in _TASK_CODES \
                or meaning(error.code, error.message) == POLICY:
            return OWN
        if model in self._stopped:
            return MODEL
        key = (status, error.code)
        seen, count = self._refused.get(model, (None, 0))
        count = count + 1 if seen == key else 1
        self._refused[model] = (key, count)
        if count >= MODEL_REFUSALS_TO_STOP:
            self._stopped.add(model)
            return MODEL
        self._held.setdefault(model, []).append(item)
        return HELD

    def released(self, model: Optional[str]) -> list:
        """The held items of a model the server refuses."""
        return self._held.pop(model, [])

    def undecided(self) -> list:
        """What is still held (the run ends): every model's held items."""
        held = [item for items in self._held.values() for item in items]
        self._held.clear()
        return held


def is_rate_limited(error: RequestError) -> bool:
    return (isinstance(error, ApiError) and error.http_status == 429
            and meaning(error.code, error.message) != QUOTA)


def stop_advice(error: RequestError, provider: str, model: Optional[str] = None,
                catalog_path: Optional[str] = None) -> str:
    """What the user should fix after a STOP error (`model`: the one the refused task named)."""
    if error.code in MODEL_CODES:
        return model_advice(provider, model, catalog_path)
    return get(provider).stop_advice(meaning(error.code, error.message) == QUOTA)


def model_advice(provider: str, model: Optional[str], catalog_path: Optional[str] = None) -> str:
    """What to do when the server does not take a model: the nearest ones batchgen knows."""
    from batchgen.rules import models
    catalog = models.load(catalog_path)
    name = model or catalog.default_model(provider) or "the default model"
    near = [m for m in models.nearest(name, catalog, provider) if m != name]
    close = f"; the nearest batchgen knows: {', '.join(near)}" if near else ""
    return (f"{provider} does not serve model {name!r}{close}. Set --model (or the model column) to one it "
            f"serves (`batchgen models --provider {provider}` lists them), then run the same command again")
