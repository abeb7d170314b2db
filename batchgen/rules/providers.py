"""The providers batchgen can send to, in one table: token variable, default endpoint, base-URL
rules, the shape of their error bodies, and the error codes that mean "stop the run".

A new provider is one entry in PROVIDERS. Pure: the CLI's choices, job validation, the client
and `errors.classify` read it; nothing here does I/O.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from batchgen.exceptions import UsageError

GENERATIONS_PATH = "/images/generations"
EDITS_PATH = "/images/edits"


def _acedata_error(payload: dict):
    """AceData: {"success": false, "error": {"code", "message"}, "trace_id"}."""
    err = payload.get("error")
    if isinstance(err, dict):
        return err.get("code"), err.get("type"), err.get("message")
    if isinstance(err, str):
        return None, None, err
    if payload.get("success") is False:
        return None, None, payload.get("message")
    return None


def _openai_error(payload: dict):
    """OpenAI: {"error": {"message", "type", "param", "code"}}; `code` may be null. LiteLLM's
    proxy answers in this shape with the HTTP status as `code` ("429") and its own `type`."""
    err = payload.get("error")
    if isinstance(err, dict):
        return err.get("code"), err.get("type"), err.get("message")
    return None


@dataclass(frozen=True)
class Provider:
    name: str
    token_variable: str
    default_endpoint: str
    # An environment variable holding an SDK-style base URL (…/v1), as the official SDK reads it.
    base_url_variable: Optional[str]
    # (code, type, message) from a parsed error body of this dialect, or None when it is not one.
    parse_error: Callable[[dict], Optional[tuple]] = field(repr=False)
    auth_codes: frozenset = frozenset()
    quota_codes: frozenset = frozenset()

    def endpoint_on(self, base_url: str) -> str:
        """This provider's generations path on another host: the built-in simulator serves each
        provider's dialect at the path of its real endpoint."""
        return base_url.rstrip("/") + urlsplit(self.default_endpoint).path

    def stop_advice(self, quota: bool) -> str:
        """What to fix after a stop: the balance (`quota`: the answer said it is spent) or the token."""
        if quota:
            return "the account's quota or balance is used up: top it up, then run the same command again"
        return (f"the API refused the token: check {self.token_variable} (and --provider), "
                "then run the same command again")


# Codes either provider may send; a proxy forwards the other's, so both count for both.
_AUTH = frozenset({"invalid_token", "invalid_api_key", "token_expired", "no_token",
                   "unauthorized", "invalid_authentication"})
_QUOTA = frozenset({"insufficient_quota", "used_up", "billing_hard_limit_reached",
                    "insufficient_balance", "quota_exceeded"})

PROVIDERS: dict[str, Provider] = {
    "acedata": Provider(
        name="acedata", token_variable="ACEDATA_API_TOKEN",
        default_endpoint="https://api.acedata.cloud/openai/images/generations",
        base_url_variable=None, parse_error=_acedata_error,
        auth_codes=frozenset({"invalid_token", "token_expired", "no_token"}),
        quota_codes=frozenset({"used_up", "insufficient_balance"})),
    "openai": Provider(
        name="openai", token_variable="OPENAI_API_KEY",
        default_endpoint="https://api.openai.com/v1/images/generations",
        base_url_variable="OPENAI_BASE_URL", parse_error=_openai_error,
        auth_codes=frozenset({"invalid_api_key", "invalid_authentication", "unauthorized"}),
        quota_codes=frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})),
}
DEFAULT_PROVIDER = "acedata"
NAMES = tuple(PROVIDERS)
AUTH_CODES = _AUTH.union(*(p.auth_codes for p in PROVIDERS.values()))
QUOTA_CODES = _QUOTA.union(*(p.quota_codes for p in PROVIDERS.values()))
POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})

# What an error means, read from its words when its code does not say it: a gateway rewrites
# codes (LiteLLM's proxy answers a spent OpenAI account as a 429 with type "throttling_error"
# and code "429") but keeps the upstream's message. Lowercase; matched against the error's
# code, type and message together. Each phrase is one only that meaning uses: OpenAI's rate
# limit text mentions billing ("add a payment method ... /account/billing"), so "billing"
# alone is not one.
QUOTA_PHRASES = (
    "insufficient_quota", "exceeded your current quota", "check your plan and billing details",
    "billing_hard_limit", "billing hard limit", "insufficient balance", "insufficient_balance",
    "balance is insufficient", "balance is not enough", "used_up", "credit balance is too low",
    "budget_exceeded", "budget has been exceeded",        # a LiteLLM key's or team's budget
)
AUTH_PHRASES = (
    "invalid_api_key", "incorrect api key provided", "you didn't provide an api key",
    "invalid authentication", "invalid_authentication", "authenticationerror", "authentication_error",
    "invalid_token", "token_expired", "invalid proxy server token",
)
POLICY_PHRASES = (
    "content_policy_violation", "moderation_blocked", "contentpolicyviolationerror",
    "rejected as a result of our safety system", "rejected by the safety system",
)
# The code an error is recorded under when it gave none of its own (or a number) and its type
# or words said what it is.
QUOTA_CODE, AUTH_CODE, POLICY_CODE = "insufficient_quota", "invalid_api_key", "content_policy_violation"


def get(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UsageError(f"provider {name!r} is unknown; use one of {', '.join(NAMES)}") from None


def parse_error_body(payload: dict, provider: Optional[str] = None) -> tuple:
    """(code, type, message) of an error body in any provider's shape, the named provider's first."""
    order = [PROVIDERS[provider]] if provider in PROVIDERS else []
    order += [p for p in PROVIDERS.values() if p.name != provider]
    for p in order:
        found = p.parse_error(payload)
        if found and any(found):
            return found
    return None, None, payload.get("message")


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str = field(repr=False)
    provider: str

    def __repr__(self):  # never show the token, even in a traceback
        return f"Endpoint(url={self.public_url!r}, provider={self.provider!r})"

    @property
    def public_url(self) -> str:
        return public_url(self.url)

    @property
    def root(self) -> str:
        """The API root the endpoint hangs from (…/v1): where Files and Batches live."""
        for path in (GENERATIONS_PATH, EDITS_PATH):
            if self.url.endswith(path):
                return self.url[:-len(path)]
        return self.url.rstrip("/")

    def for_edits(self) -> "Endpoint":
        """The same server's edits endpoint (…/images/edits beside …/images/generations)."""
        if not self.url.endswith(GENERATIONS_PATH):
            return self
        return Endpoint(self.url[:-len(GENERATIONS_PATH)] + EDITS_PATH, self.token, self.provider)


def public_url(url: str) -> str:
    """Scheme, host, port and path: what may be written to a file or a log (no user:password@,
    no query, where a proxy's key may hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_BAD_HOST_CHARACTERS = frozenset(' \t\r\n<>"{}|\\^`')


def _shown(url: str) -> str:
    """A URL as an error message may show it: without user:password@ or a query, even when
    it does not parse."""
    try:
        return public_url(url)
    except ValueError:
        text = re.sub(r"//[^/?#]*@", "//", url)
        return text.split("?", 1)[0].split("#", 1)[0]


def endpoint_url(base: str, what: str = "--base-url") -> str:
    """The generations URL for an endpoint or an SDK-style base URL; raises UsageError, naming
    `what` (the option or variable it came from), for one that is not an http(s) URL of a host."""
    if not isinstance(base, str):
        raise UsageError(f"{what} must be a URL in text, like https://api.openai.com/v1, not {base!r}")
    base = base.strip()
    fix = "give it as http(s)://HOST[:PORT]/PATH, like https://api.openai.com/v1"
    try:
        parts = urlsplit(base)
        port = parts.port          # parsed here: out of range or not a number raises
    except ValueError as e:
        raise UsageError(f"{what} {_shown(base)!r} is not a valid URL ({e}); {fix}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{what} {_shown(base)!r} must start with http:// or https://; {fix}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{what} {_shown(base)!r} carries a user name or password; give the "
                         "URL without them and the token in the environment (ACEDATA_API_TOKEN or OPENAI_API_KEY)")
    host = parts.hostname
    if not host or _BAD_HOST_CHARACTERS.intersection(host):
        raise UsageError(f"{what} {_shown(base)!r} names no valid host; {fix}")
    if port == 0:
        raise UsageError(f"{what} {_shown(base)!r}: port 0 is not a port to connect to; {fix}")
    trimmed = base.rstrip("/")
    if trimmed.endswith(GENERATIONS_PATH):
        return trimmed
    return trimmed + GENERATIONS_PATH


def resolve_endpoint(provider: str, base_url: Optional[str], environ=None) -> Endpoint:
    """Where to send and with which token, from the options and the environment."""
    environ = os.environ if environ is None else environ
    p = get(provider)
    token = (environ.get(p.token_variable) or "").strip()
    if not token:
        raise UsageError(
            f"no API token: set {p.token_variable} in the environment (provider {p.name}), "
            "or add --simulate to run against the built-in simulator")
    if base_url:
        url = endpoint_url(base_url)
    elif p.base_url_variable and environ.get(p.base_url_variable):
        url = endpoint_url(environ[p.base_url_variable], p.base_url_variable)
    else:
        url = p.default_endpoint
    return Endpoint(url=url, token=token, provider=p.name)
