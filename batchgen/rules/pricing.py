"""What images cost: the price table (each model's `price` in the catalog, data/models.json;
overridable with --prices FILE or --models FILE) and the sums on it.

Pure apart from reading the table's file. Two kinds of price, as OpenAI bills them:
per image (by quality and size) where it publishes one, and per token (text input, image
input, image output per million) where the bill counts tokens. An estimate before sending
uses the per-image price, or the published image-output token count at the token price; a
response's `usage` prices what was actually billed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Optional

from batchgen.exceptions import UsageError
from batchgen.rules import models as model_rules
from batchgen.rules import modes

TOKEN_KINDS = ("text_input", "cached_text_input", "image_input", "cached_image_input", "image_output")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_SQUARE = 1024 * 1024


@dataclass(frozen=True)
class ModelPrice:
    per_image: dict          # quality -> size -> USD
    tokens: dict             # kind (TOKEN_KINDS) -> USD per million tokens
    output_tokens: dict      # quality -> size -> tokens an image costs


@dataclass(frozen=True)
class PriceTable:
    models: dict             # model name -> ModelPrice
    batch_discount: float
    source: str              # "built-in" or the --prices file
    catalog: Optional[model_rules.Catalog] = None    # how a model name finds its spec's price
    provider: Optional[str] = None    # whose default model a request without one is priced as

    def _rules(self, model: Optional[str]):
        return (self.catalog or model_rules.load()).rules_for(model, self.provider)

    def for_model(self, model: Optional[str]) -> Optional[ModelPrice]:
        rules = self._rules(model)
        name = rules.name if rules else model
        return self.models.get(model) or self.models.get(name)

    def has_price(self, model: Optional[str]) -> bool:
        return self.for_model(model) is not None

    def _factor(self, mode: str) -> float:
        return modes.get(mode).price_factor(self.batch_discount)

    def per_image(self, params: dict) -> Optional[float]:
        """Estimated USD for one image of a request with these parameters (live price), or None."""
        price = self.for_model(params.get("model"))
        if price is None:
            return None
        rules = self._rules(params.get("model"))
        quality = params.get("quality")
        if quality is None and rules is not None and "standard" in rules.qualities:
            quality = "standard"          # DALL·E's default
        size = params.get("size") or (rules.default_size if rules else None)
        if quality in (None, "auto"):
            # "auto" lets the API choose: estimate the top quality so a budget is never too low.
            quality = _dearest(price.per_image or price.output_tokens)
        if size in (None, "auto"):
            size = _largest(price.per_image.get(quality) or price.output_tokens.get(quality) or {})
        if quality is None or size is None:
            return None
        by_size = price.per_image.get(quality)
        if by_size and size in by_size:
            return by_size[size]
        tokens = _output_tokens(price.output_tokens.get(quality) or {}, size)
        if tokens is None or "image_output" not in price.tokens:
            return None
        return tokens * price.tokens["image_output"] / 1e6

    def estimate(self, params: dict, mode: str = "live") -> Optional[float]:
        """Estimated USD for a request (all its n images), or None when there is no price."""
        each = self.per_image(params)
        if each is None:
            return None
        return each * int(params.get("n") or 1) * self._factor(mode)

    def from_usage(self, model: Optional[str], usage, mode: str = "live") -> Optional[float]:
        """USD for what a response's `usage` says was billed, or None (no usage, no token price)."""
        price = self.for_model(model)
        if price is None or not isinstance(usage, dict) or not price.tokens:
            return None
        output = usage.get("output_tokens")
        if not isinstance(output, int):
            return None
        entered = _count(usage.get("input_tokens"))
        image_in = min(_count(usage.get("image_input_tokens")), entered)
        cost = ((entered - image_in) * price.tokens.get("text_input", 0.0)
                + image_in * price.tokens.get("image_input", 0.0)
                + output * price.tokens.get("image_output", 0.0)) / 1e6
        return cost * self._factor(mode)


def billed(record: dict) -> Optional[float]:
    """What a journal record says its answers were billed (USD), or None when it says nothing
    usable: a record from before batchgen priced answers, or a value that is no cost."""
    return usd(record.get("cost_usd"))


def usd(cost: object) -> Optional[float]:
    """A kept cost in USD (a finite number ≥ 0), or None."""
    if type(cost) is float:     # the usual case, read on every outcome (NaN fails both tests)
        return cost if 0.0 <= cost < math.inf else None
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
        return float(cost)
    return None


def _dearest(table: dict) -> Optional[str]:
    for quality in ("high", "hd", "medium", "standard", "low"):
        if quality in table:
            return quality
    return next(iter(table), None)


def _largest(by_size: dict) -> Optional[str]:
    sizes = [s for s in by_size if _SIZE_RE.match(s)]
    return max(sizes, key=lambda s: (_area(s), by_size[s]), default=None)


def _area(size: str) -> int:
    m = _SIZE_RE.match(size)
    return int(m[1]) * int(m[2]) if m else 0


def _output_tokens(by_size: dict, size: str) -> Optional[float]:
    """The published token count for a size; for another size (gpt-image-2 takes any), the
    square's count scaled by the area."""
    if size in by_size:
        return by_size[size]
    square = by_size.get("1024x1024")
    area = _area(size)
    return square * area / _SQUARE if square and area else None


# ---- loading ------------------------------------------------------------------------------

def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{where} must be a number ≥ 0, not {value!r}")
    return float(value)


def _grid(value, where: str) -> dict:
    """quality -> size -> number, checked."""
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table of quality -> size -> number")
    grid = {}
    for quality, sizes in value.items():
        if not isinstance(sizes, dict):
            raise UsageError(f"{where}.{quality} must be a table of size -> number")
        grid[quality] = {size: _number(v, f"{where}.{quality}.{size}") for size, v in sizes.items()}
    return grid


def _model_price(entry, where: str, shared_tokens: dict) -> ModelPrice:
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be a table (per_image, tokens_usd_per_million, ...)")
    tokens = entry.get("tokens_usd_per_million", {})
    if not isinstance(tokens, dict) or set(tokens) - set(TOKEN_KINDS):
        raise UsageError(f"{where}.tokens_usd_per_million may set {', '.join(TOKEN_KINDS)} only")
    return ModelPrice(
        per_image=_grid(entry.get("per_image", {}), f"{where}.per_image"),
        tokens={k: _number(v, f"{where}.tokens_usd_per_million.{k}") for k, v in tokens.items()},
        output_tokens=_grid(entry.get("image_output_tokens", shared_tokens), f"{where}.image_output_tokens"))


def _count(value: object) -> int:
    """A usage field's token count; 0 when it is not a whole number."""
    return value if isinstance(value, int) else 0


def parse_table(data, source: str, base: Optional[PriceTable] = None,
                catalog: Optional[model_rules.Catalog] = None) -> PriceTable:
    """A price table from parsed JSON; its models replace or add to `base`'s."""
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise UsageError(f"{source}: a price file is a JSON object with \"models\": {{model: prices}}")
    shared = _grid(data.get("image_output_tokens", {}), f"{source}: image_output_tokens")
    if base is not None and not shared:
        shared = next((p.output_tokens for p in base.models.values() if p.output_tokens), {})
    models = dict(base.models) if base else {}
    for name, entry in data.get("models", {}).items():
        models[name] = _model_price(entry, f"{source}: models.{name}", shared)
    discount = data.get("batch_discount", base.batch_discount if base else 0.5)
    discount = _number(discount, f"{source}: batch_discount")
    return PriceTable(models, discount, source, catalog or (base.catalog if base else None),
                      base.provider if base else None)


@functools.lru_cache(maxsize=8)
def load(path: Optional[str] = None, models_path: Optional[str] = None, provider: Optional[str] = None) -> PriceTable:
    """The catalog's prices (the built-in one, or with a --models file over it), with a --prices
    file's models over them when `path` is given; a request without a model is priced as
    `provider`'s default model."""
    catalog = model_rules.load(models_path)
    table = parse_table({"batch_discount": catalog.batch_discount, "image_output_tokens": catalog.image_output_tokens,
                         "models": catalog.prices}, catalog.source + " (prices)", catalog=catalog)
    table = dataclasses.replace(table, provider=provider)
    if path is None:
        return table
    return parse_table(model_rules.read_json_option(path, "--prices", "JSON price file"), str(path), table)
