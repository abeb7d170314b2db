"""What each model allows and which provider serves it: the one place for model rules, read from
the catalog `batchgen/data/models.json` (what they cost is `pricing`, over the same file).

The catalog holds each model's rules (`specs`) and, per provider, the models it serves with
their status (live, deprecated with a shutdown date, shut down) and replacement; `--models
FILE` lays a user's file of the same shape over it. Apart from reading that file (`load`),
everything here is pure: planning, validation and cost estimates call it without I/O.
"""
from __future__ import annotations

import datetime
import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from batchgen.exceptions import UsageError

PARAMETERS = ("model", "quality", "style", "size", "response_format", "n",
              "output_format", "output_compression", "background", "moderation", "input_fidelity",
              "complexity")
# Parameters whose values are whole numbers; the others are text.
INT_PARAMETERS = ("n", "output_compression")
# Sent with edits only: /images/generations has no such field.
EDIT_ONLY_PARAMETERS = ("input_fidelity",)
EXAMPLES = {"model": "gpt-image-2", "quality": "high", "style": "vivid", "size": "1024x1024",
            "response_format": "b64_json", "n": "2", "output_format": "webp", "output_compression": "80",
            "background": "transparent", "moderation": "low", "input_fidelity": "high",
            "complexity": "medium"}

# The file extension each output_format is saved under.
FORMAT_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "svg": "svg", "gif": "gif"}

LIVE, DEPRECATED, SHUT_DOWN = "live", "deprecated", "shut_down"     # a model's status at a provider
STATUSES = (LIVE, DEPRECATED, SHUT_DOWN)
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class CustomSizes:
    """The sizes beyond a model's list that it takes (gpt-image-2.x: any WIDTHxHEIGHT within these)."""
    multiple_of: int
    max_edge: int
    max_ratio: float
    max_pixels: int
    min_pixels: int = 0

    def allows(self, width: int, height: int) -> bool:
        if width <= 0 or height <= 0 or width % self.multiple_of or height % self.multiple_of:
            return False
        return (max(width, height) <= self.max_edge and max(width, height) <= self.max_ratio * min(width, height)
                and self.min_pixels <= width * height <= self.max_pixels)

    def describe(self) -> str:
        ratio = f"{self.max_ratio:g}"
        low = f", at least {self.min_pixels:,} pixels" if self.min_pixels else ""
        return (f"any WIDTHxHEIGHT with both sides multiples of {self.multiple_of}, aspect 1:{ratio} to {ratio}:1, "
                f"the longer side at most {self.max_edge}, at most {self.max_pixels:,} pixels{low}")


@dataclass(frozen=True)
class ModelRules:
    name: str
    sizes: Optional[tuple[str, ...]]    # None: the provider documents none, size is not checked
    qualities: tuple[str, ...]          # empty: the model takes no quality
    styles: tuple[str, ...]             # empty: the model takes no style
    response_formats: tuple[str, ...]   # empty: always base64, never sent
    max_n: int
    max_prompt_chars: int
    default_size: Optional[str]
    custom: Optional[CustomSizes] = None
    # The GPT image models' own parameters; empty: the model takes none of them.
    output_formats: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    moderations: tuple[str, ...] = ()
    input_fidelities: tuple[str, ...] = ()
    complexities: tuple[str, ...] = ()
    edits: bool = True            # takes /images/edits
    markup: bool = False          # takes markup-guided edits
    snapshots: tuple[str, ...] = ()
    source: str = ""
    checked: str = ""

    def size_allowed(self, size: str) -> bool:
        if self.sizes is None or size in self.sizes:
            return True
        m = _SIZE_RE.match(size)
        return bool(m and self.custom and self.custom.allows(int(m[1]), int(m[2])))

    def describe_sizes(self) -> str:
        text = ", ".join(self.sizes or ())
        if self.custom:
            text += ", or " + self.custom.describe()
        return text

    @property
    def gpt_image(self) -> bool:
        """Takes the GPT image parameters (and so OpenAI's Batch API)."""
        return bool(self.output_formats)

    def allowed(self) -> dict:
        """parameter -> the values it takes (the ones this model takes at all), for `batchgen models`."""
        values: dict = {}
        if self.sizes is not None:
            values["size"] = list(self.sizes) + (["WIDTHxHEIGHT"] if self.custom else [])
        for param, allowed in (("quality", self.qualities), ("style", self.styles),
                               ("response_format", self.response_formats),
                               ("output_format", self.output_formats), ("background", self.backgrounds),
                               ("moderation", self.moderations), ("input_fidelity", self.input_fidelities),
                               ("complexity", self.complexities)):
            if allowed:
                values[param] = list(allowed)
        if self.output_formats:
            values["output_compression"] = "0-100 (jpeg, webp)"
        values["n"] = "1" if self.max_n == 1 else f"1-{self.max_n}"
        return values


@dataclass(frozen=True)
class Listing:
    """A model as one provider serves it."""
    name: str
    provider: str
    status: str                   # as the catalog says; see `status_on`
    rules: ModelRules
    shutdown: Optional[str] = None
    replacement: Optional[str] = None
    since: Optional[str] = None

    def status_on(self, today: str) -> str:
        """A deprecated model whose shutdown date has come is shut down."""
        if self.status == DEPRECATED and self.shutdown and self.shutdown <= today:
            return SHUT_DOWN
        return self.status


@dataclass(frozen=True)
class Lineup:
    provider: str
    default_model: Optional[str]
    default_source: str
    source: str
    checked: str
    models: dict                  # name -> Listing


@dataclass(frozen=True)
class Catalog:
    specs: dict                   # spec name -> ModelRules
    lineups: dict                 # provider -> Lineup
    batch_discount: float
    image_output_tokens: dict     # quality -> size -> tokens
    prices: dict                  # spec name -> the raw price entry (pricing reads it)
    source: str                   # "built-in" or "built-in + FILE"

    def lineup(self, provider: Optional[str]) -> Optional[Lineup]:
        return self.lineups.get(provider or "")

    def default_model(self, provider: Optional[str]) -> Optional[str]:
        lineup = self.lineup(provider or "openai")
        return lineup.default_model if lineup else None

    def listing(self, model: Optional[str], provider: Optional[str]) -> Optional[Listing]:
        lineup = self.lineup(provider)
        if lineup is None:
            return None
        name = model or lineup.default_model
        if name in lineup.models:
            return lineup.models[name]
        base = self._snapshot_base(name)
        return lineup.models.get(base) if base else None

    def rules_for(self, model: Optional[str], provider: Optional[str] = None) -> Optional[ModelRules]:
        """The rules for a model (as `provider` serves it, when given), or None for one the
        catalog does not know (sent unchecked)."""
        name = model or self.default_model(provider)
        if name is None:
            return None
        listing = self.listing(name, provider)
        if listing is not None:
            return listing.rules
        if name in self.specs:
            return self.specs[name]
        for lineup in self.lineups.values():
            if name in lineup.models:
                return lineup.models[name].rules
        base = self._snapshot_base(name)
        return self.rules_for(base, provider) if base else None

    def _snapshot_base(self, name: Optional[str]) -> Optional[str]:
        """The model a snapshot ("gpt-image-2-2026-04-21") follows, or None."""
        if not name:
            return None
        for spec in self.specs.values():
            if name in spec.snapshots:
                return spec.name
        m = re.fullmatch(r"(.+)-(\d{4}-\d{2}-\d{2})", name)
        return m[1] if m and (m[1] in self.specs or any(m[1] in lu.models for lu in self.lineups.values())) else None

    def names(self, provider: Optional[str] = None) -> list:
        """Every model name the catalog knows (for `provider`: the ones it lists), snapshots too."""
        lineups = [self.lineups[provider]] if provider in self.lineups else list(self.lineups.values())
        found = {n for lu in lineups for n in lu.models}
        if provider is None:
            found.update(self.specs)
        found.update(s for spec in self.specs.values() for s in spec.snapshots
                     if provider is None or spec.name in found)
        return sorted(found)

    def live(self, provider: Optional[str], today: Optional[str] = None) -> list:
        lineup = self.lineup(provider)
        today = today or _today()
        return [n for n, m in (lineup.models.items() if lineup else ()) if m.status_on(today) == LIVE]


def _today() -> str:
    return datetime.date.today().isoformat()


# ---- checks ------------------------------------------------------------------------------

def rules_for(model: Optional[str], provider: Optional[str] = None,
              catalog: Optional[Catalog] = None) -> Optional[ModelRules]:
    """The rules for a model, or None for one we do not know (passed through unchecked)."""
    return (catalog or load()).rules_for(model, provider)


def batch_allowed(model: Optional[str], catalog: Optional[Catalog] = None, provider: Optional[str] = None) -> bool:
    """Whether OpenAI's Batch API takes this model for images: the GPT image models (a model
    batchgen does not know is let through, as in live mode)."""
    rules = rules_for(model, provider, catalog)
    return rules is None and model is not None or (rules is not None and rules.gpt_image)


def parameter_problems(params: dict, edit: bool = False, provider: Optional[str] = None,
                       catalog: Optional[Catalog] = None) -> list[str]:
    """Why a request with these parameters would be refused (empty list: allowed).

    `params` holds only the parameters that are set; a missing one takes the API default.
    `edit`: the request is an edit (/images/edits), which takes input_fidelity too.
    Each problem starts with the parameter's name and says the value and what is allowed,
    so it can be shown to a user as is.
    """
    if not edit:
        problems = [f"{p} {params[p]!r} applies to edits only (give the rows an image column)"
                    for p in EDIT_ONLY_PARAMETERS if params.get(p) is not None]
    else:
        problems = []
    rules = rules_for(params.get("model"), provider, catalog)
    if rules is None:
        return problems
    model = params.get("model") or rules.name
    if edit and not rules.edits:
        problems.append(f"model {model!r} does not edit images (edits: a GPT image model)")
    size = params.get("size")
    if size is not None and not rules.size_allowed(str(size)):
        problems.append(f"size {size!r} is not allowed for {model} (allowed: {rules.describe_sizes()})")
    for param, allowed in (
            ("quality", rules.qualities),
            ("style", rules.styles),
            ("response_format", rules.response_formats),
            ("output_format", rules.output_formats),
            ("background", rules.backgrounds),
            ("moderation", rules.moderations),
            ("input_fidelity", rules.input_fidelities if edit else None),
            ("complexity", rules.complexities)):
        value = params.get(param)
        if value is not None and allowed is not None and value not in allowed:
            none_text = (f"none; {model} always returns base64" if param == "response_format"
                         else f"none; {model} takes no {param}")
            problems.append(f"{param} {value!r} is not allowed for {model} "
                            f"(allowed: {', '.join(allowed) if allowed else none_text})")
    problems += _gpt_image_problems(params, rules, model)
    n = params.get("n")
    if n is not None and not (isinstance(n, int) and 1 <= n <= rules.max_n):
        allowed_n = "1" if rules.max_n == 1 else f"1 to {rules.max_n}"
        problems.append(f"n {n!r} is not allowed for {model} (allowed: {allowed_n})")
    return problems


def _gpt_image_problems(params: dict, rules: ModelRules, model: str) -> list[str]:
    """The rules between the GPT image parameters: compression and transparency need a format."""
    problems = []
    fmt = params.get("output_format") or "png"        # the API's default
    compression = params.get("output_compression")
    if compression is not None:
        if not rules.output_formats:
            problems.append(f"output_compression {compression!r} is not allowed for {model} "
                            f"(allowed: none; {model} takes no output_compression)")
        elif not (isinstance(compression, int) and 0 <= compression <= 100):
            problems.append(f"output_compression {compression!r} is not allowed (allowed: a whole number 0 to 100)")
        elif fmt not in ("jpeg", "webp"):
            problems.append(f"output_compression {compression!r} needs output_format jpeg or webp, "
                            f"not {fmt}")
    if params.get("background") == "transparent" and rules.output_formats and fmt not in ("png", "webp"):
        problems.append(f"background 'transparent' needs output_format png or webp, not {fmt}")
    return problems


def prompt_problem(prompt: object, model: Optional[str], provider: Optional[str] = None,
                   catalog: Optional[Catalog] = None) -> Optional[str]:
    if prompt is None or not isinstance(prompt, str) or not prompt.strip():
        return "prompt is missing or blank"
    rules = rules_for(model, provider, catalog)
    if rules and len(prompt) > rules.max_prompt_chars:
        return (f"prompt is {len(prompt)} characters; {model or rules.name} allows at most "
                f"{rules.max_prompt_chars}")
    return None


def markup_problem(model: Optional[str], provider: Optional[str] = None,
                   catalog: Optional[Catalog] = None) -> Optional[str]:
    """Why an edit with a markup image cannot go to this model (None: it can, or the model is
    unknown and sent unchecked)."""
    catalog = catalog or load()
    rules = catalog.rules_for(model, provider)
    if rules is None or rules.markup:
        return None
    takers = [n for n in catalog.live(provider) if (catalog.rules_for(n, provider) or rules).markup]
    return (f"markup: model {rules.name!r} takes no markup image"
            + (f" (markup-guided edits: {', '.join(takers)})" if takers else ""))


def nearest(name: str, catalog: Catalog, provider: Optional[str] = None, count: int = 3) -> list:
    """The known models whose names are closest to `name` (live ones of `provider` first)."""
    live = catalog.live(provider)
    close = difflib.get_close_matches(name, catalog.names(provider) or catalog.names(), n=count * 2, cutoff=0.5)
    return sorted(close, key=lambda n: (n not in live, close.index(n)))[:count]


def one_edit_apart(a: str, b: str) -> bool:
    """One letter changed, added, removed, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


@dataclass
class ModelCheck:
    """What the catalog says of the models a job sends to, before anything is sent."""
    errors: list = field(default_factory=list)      # usage errors: nothing may be sent
    warnings: list = field(default_factory=list)
    default_note: Optional[str] = None              # which model the provider uses when none is given


def check_models(models: set, provider: str, catalog: Catalog, today: Optional[str] = None) -> ModelCheck:
    """`models`: the model each request names (None: the request names none). A model the
    provider has shut down, or one a letter away from a known one, is an error; a deprecated
    one a warning; the provider's default model, when some request names none, is said."""
    today = today or _today()
    found = ModelCheck()
    lineup = catalog.lineup(provider)
    if lineup is None:
        return found
    live = catalog.live(provider, today)
    live_text = ", ".join(live) or "none listed"
    for name in sorted(models, key=lambda m: (m is not None, str(m))):
        listing = catalog.listing(name, provider)
        shown = name or lineup.default_model
        if name is None:
            if lineup.default_model is None:
                found.default_note = (f"no model is given: {provider} chooses one (batchgen does not know "
                                      f"which); set --model to be sure (live: {live_text})")
                continue
            found.default_note = (f"no model is given: {provider} uses {lineup.default_model} "
                                  f"({lineup.default_source})")
        if listing is not None:
            status = listing.status_on(today)
            if status == SHUT_DOWN:
                given = f"model {name!r}" if name else f"no model is given, so {provider} would use {shown!r}, which"
                instead = f"use {listing.replacement}" if listing.replacement else "use another model"
                found.errors.append(f"{given} was shut down by {provider} on {listing.shutdown or 'an earlier date'}; "
                                    f"{instead} (set --model or the model column; live on {provider}: {live_text})")
            elif status == DEPRECATED:
                found.warnings.append(f"model {shown!r} is deprecated: {provider} shuts it down on {listing.shutdown}"
                                      + (f"; move to {listing.replacement}" if listing.replacement else ""))
            continue
        if name is None:
            continue
        if catalog.rules_for(name, provider) is not None:
            elsewhere = sorted(p for p, lu in catalog.lineups.items() if p != provider and catalog.listing(name, p))
            if elsewhere:
                found.warnings.append(f"{provider} does not list model {name!r} (batchgen knows it from "
                                      f"{', '.join(elsewhere)}): it is checked by that model's rules and sent; "
                                      f"{provider} may refuse it")
            continue
        near = [k for k in catalog.names(provider) if one_edit_apart(name.lower(), k.lower())]
        if near:
            found.errors.append(f"model {name!r} is not one {provider} serves; did you mean {near[0]!r}? "
                                f"(if {name!r} is a new model, add it with --models FILE)")
    return found


# ---- loading -------------------------------------------------------------------------------

_SPEC_KEYS = {"like", "source", "checked", "sizes", "default_size", "custom_sizes", "qualities", "styles",
              "response_formats", "output_formats", "backgrounds", "moderations", "input_fidelities",
              "complexities", "max_n", "max_prompt_chars", "edits", "markup", "snapshots", "price"}
_LISTING_KEYS = {"status", "spec", "shutdown", "replacement", "since", "source", "note"}
_TEXT_LISTS = ("sizes", "qualities", "styles", "response_formats", "output_formats", "backgrounds", "moderations",
               "input_fidelities", "complexities", "snapshots")


def _whole(value, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{where} must be a whole number ≥ {low}, not {value!r}")
    return value


def _texts(value, where: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{where} must be a list of text values, not {value!r}")
    return tuple(value)


def _merged_spec(name: str, raw: dict, source: str, seen: tuple = ()) -> dict:
    """A spec's entries with those of the spec it is `like` underneath (not its snapshots)."""
    entry = raw[name]
    base = entry.get("like")
    if base is None:
        return dict(entry)
    if base not in raw or base in seen:
        raise UsageError(f"{source}: specs.{name}.like names {base!r}, which is no spec (or a loop)")
    merged = {k: v for k, v in _merged_spec(base, raw, source, seen + (name,)).items() if k != "snapshots"}
    merged.update(entry)
    return merged


def _spec(name: str, entry: dict, source: str) -> ModelRules:
    where = f"{source}: specs.{name}"
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a spec may set "
                         f"{', '.join(sorted(_SPEC_KEYS))}")
    lists = {k: _texts(entry[k], f"{where}.{k}") for k in _TEXT_LISTS if k in entry}
    custom = entry.get("custom_sizes")
    if custom is not None:
        if not isinstance(custom, dict):
            raise UsageError(f"{where}.custom_sizes must be a table (multiple_of, max_edge, max_ratio, max_pixels)")
        custom = CustomSizes(
            multiple_of=_whole(custom.get("multiple_of", 16), f"{where}.custom_sizes.multiple_of"),
            max_edge=_whole(custom.get("max_edge"), f"{where}.custom_sizes.max_edge"),
            max_ratio=float(_whole(custom.get("max_ratio", 3), f"{where}.custom_sizes.max_ratio")),
            max_pixels=_whole(custom.get("max_pixels"), f"{where}.custom_sizes.max_pixels"),
            min_pixels=_whole(custom.get("min_pixels", 0), f"{where}.custom_sizes.min_pixels", 0))
    for flag in ("edits", "markup"):
        if flag in entry and not isinstance(entry[flag], bool):
            raise UsageError(f"{where}.{flag} must be true or false, not {entry[flag]!r}")
    return ModelRules(
        name=name, sizes=lists.get("sizes"), qualities=lists.get("qualities", ()), styles=lists.get("styles", ()),
        response_formats=lists.get("response_formats", ()),
        max_n=_whole(entry.get("max_n", 1), f"{where}.max_n"),
        max_prompt_chars=_whole(entry.get("max_prompt_chars", 32000), f"{where}.max_prompt_chars"),
        default_size=entry.get("default_size"), custom=custom,
        output_formats=lists.get("output_formats", ()), backgrounds=lists.get("backgrounds", ()),
        moderations=lists.get("moderations", ()), input_fidelities=lists.get("input_fidelities", ()),
        complexities=lists.get("complexities", ()), edits=entry.get("edits", True),
        markup=entry.get("markup", False), snapshots=lists.get("snapshots", ()),
        source=str(entry.get("source", "")), checked=str(entry.get("checked", "")))


def _listing(name: str, provider: str, entry, specs: dict, source: str) -> Listing:
    where = f"{source}: providers.{provider}.models.{name}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be a table (status, spec, shutdown, replacement)")
    unknown = set(entry) - _LISTING_KEYS
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a listing may set "
                         f"{', '.join(sorted(_LISTING_KEYS))}")
    status = entry.get("status")
    if status not in STATUSES:
        raise UsageError(f"{where}.status must be one of {', '.join(STATUSES)}, not {status!r}")
    for key in ("shutdown", "since"):
        if entry.get(key) is not None and not (isinstance(entry[key], str) and _DATE_RE.match(entry[key])):
            raise UsageError(f"{where}.{key} must be a date as YYYY-MM-DD, not {entry[key]!r}")
    if status != LIVE and not entry.get("shutdown"):
        raise UsageError(f"{where}: a {status} model needs its shutdown date (shutdown = \"YYYY-MM-DD\")")
    spec_name = entry.get("spec", name)
    if spec_name not in specs:
        raise UsageError(f"{where}.spec names {spec_name!r}, which is no spec; give the model's rules in "
                         f"specs.{spec_name}")
    return Listing(name, provider, status, specs[spec_name], entry.get("shutdown"), entry.get("replacement"),
                   entry.get("since"))


def parse_catalog(data, source: str, base: Optional[dict] = None) -> tuple[Catalog, dict]:
    """A catalog from parsed JSON laid over `base` (the raw catalog it overlays): its specs and
    each provider's listings replace or add to the base's. Returns (catalog, the merged raw data)."""
    if not isinstance(data, dict) or not isinstance(data.get("specs", {}), dict) \
            or not isinstance(data.get("providers", {}), dict):
        raise UsageError(f"{source}: a model catalog is a JSON object with \"specs\": {{model: rules}} and "
                         "\"providers\": {provider: {\"models\": {model: {\"status\": ...}}}}")
    raw = json.loads(json.dumps(base)) if base else {"specs": {}, "providers": {}}
    for key in ("batch_discount", "image_output_tokens"):
        if key in data:
            raw[key] = data[key]
    for name, entry in data.get("specs", {}).items():
        if not isinstance(entry, dict):
            raise UsageError(f"{source}: specs.{name} must be a table of the model's rules")
        raw["specs"][name] = entry
    for provider, lineup in data.get("providers", {}).items():
        if not isinstance(lineup, dict) or not isinstance(lineup.get("models", {}), dict):
            raise UsageError(f"{source}: providers.{provider} must be a table with \"models\": {{model: listing}}")
        into = raw["providers"].setdefault(provider, {"models": {}})
        into.update({k: v for k, v in lineup.items() if k != "models"})
        listed = into.setdefault("models", {})
        for name, entry in lineup.get("models", {}).items():
            # An entry names what it changes: a status and date over the built-in model's spec.
            listed[name] = {**listed[name], **entry} if isinstance(entry, dict) and name in listed else entry
    specs = {name: _spec(name, _merged_spec(name, raw["specs"], source), source) for name in raw["specs"]}
    prices = {name: _merged_spec(name, raw["specs"], source)["price"] for name in raw["specs"]
              if "price" in _merged_spec(name, raw["specs"], source)}
    lineups = {}
    for provider, lineup in raw["providers"].items():
        listings = {name: _listing(name, provider, entry, specs, source) for name, entry in lineup["models"].items()}
        lineups[provider] = Lineup(provider, lineup.get("default_model"), str(lineup.get("default_source", "")),
                                   str(lineup.get("source", "")), str(lineup.get("checked", "")), listings)
    catalog = Catalog(specs, lineups, raw.get("batch_discount", 0.5), raw.get("image_output_tokens", {}), prices,
                      source)
    return catalog, raw


def _builtin_raw() -> dict:
    return json.loads(resources.files("batchgen").joinpath("data/models.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=8)
def load(path: Optional[str] = None) -> Catalog:
    """The built-in catalog, with a --models file laid over it when `path` is given."""
    catalog, raw = parse_catalog(_builtin_raw(), "built-in models")
    if path is None:
        return catalog
    data = read_json_option(path, "--models", "JSON model catalog")
    return parse_catalog(data, str(path), raw)[0]


def read_json_option(path: str, option: str, what: str):
    """The JSON a file option (--models, --prices) names; a UsageError saying what is wrong."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{option} {path}: not a readable {what} ({e})") from None


def option_values(param: str) -> tuple:
    """Every value some model of the built-in catalog takes for `param` (the CLI's choices)."""
    field_name = {"quality": "qualities", "output_format": "output_formats", "background": "backgrounds",
                  "moderation": "moderations", "input_fidelity": "input_fidelities",
                  "complexity": "complexities"}[param]
    values: list = []
    for spec in load().specs.values():
        values += [v for v in getattr(spec, field_name) if v not in values]
    return tuple(values)
