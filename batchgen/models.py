"""What each model allows, and what it costs: the one place for model rules.

Everything here is pure: planning, validation and cost estimates call it without I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

PARAMETERS = ("model", "quality", "style", "size", "response_format", "n")

DALLE_RESPONSE_FORMATS = ("url", "b64_json")
GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
GPT_IMAGE_QUALITIES = ("low", "medium", "high", "auto")

_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class ModelRules:
    name: str
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]
    styles: tuple[str, ...]  # empty: the model takes no style
    response_formats: tuple[str, ...]  # empty: always base64, never sent
    max_n: int
    max_prompt_chars: int
    default_size: str
    # gpt-image-2 takes sizes beyond its list; this says whether one is allowed.
    custom_size_ok: Optional[Callable[[int, int], bool]] = None

    def size_allowed(self, size: str) -> bool:
        if size in self.sizes:
            return True
        m = _SIZE_RE.match(size)
        return bool(m and self.custom_size_ok and self.custom_size_ok(int(m[1]), int(m[2])))

    def describe_sizes(self) -> str:
        text = ", ".join(self.sizes)
        if self.custom_size_ok:
            text += ", or any WIDTHxHEIGHT with both sides divisible by 16, aspect 1:3 to 3:1, at most 3840x2160"
        return text


def _gpt_image_2_size_ok(width: int, height: int) -> bool:
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        return False
    if max(width, height) > 3 * min(width, height):
        return False
    return max(width, height) <= 3840 and min(width, height) <= 2160


def _gpt_image(name: str, custom=None) -> ModelRules:
    return ModelRules(
        name=name, sizes=GPT_IMAGE_SIZES, qualities=GPT_IMAGE_QUALITIES,
        styles=(), response_formats=(), max_n=10, max_prompt_chars=32000,
        default_size="auto", custom_size_ok=custom,
    )


MODELS: dict[str, ModelRules] = {
    "dall-e-2": ModelRules(
        name="dall-e-2", sizes=("256x256", "512x512", "1024x1024"),
        qualities=("standard",), styles=(), response_formats=DALLE_RESPONSE_FORMATS,
        max_n=10, max_prompt_chars=1000, default_size="1024x1024",
    ),
    "dall-e-3": ModelRules(
        name="dall-e-3", sizes=("1024x1024", "1792x1024", "1024x1792"),
        qualities=("standard", "hd"), styles=("vivid", "natural"),
        response_formats=DALLE_RESPONSE_FORMATS, max_n=1, max_prompt_chars=4000,
        default_size="1024x1024",
    ),
    "gpt-image-1": _gpt_image("gpt-image-1"),
    "gpt-image-1-mini": _gpt_image("gpt-image-1-mini"),
    "gpt-image-1.5": _gpt_image("gpt-image-1.5"),
    "gpt-image-2": _gpt_image("gpt-image-2", _gpt_image_2_size_ok),
}

# What the API uses when a request names no model.
API_DEFAULT_MODEL = "dall-e-2"


def rules_for(model: Optional[str]) -> Optional[ModelRules]:
    """The rules for a model, or None for one we do not know (passed through unchecked)."""
    name = model or API_DEFAULT_MODEL
    if name in MODELS:
        return MODELS[name]
    # Dated snapshots ("gpt-image-2-2026-04-21") follow their base model's rules.
    for known in sorted(MODELS, key=len, reverse=True):
        if name.startswith(known + "-") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", name[len(known) + 1:]):
            return MODELS[known]
    return None


def batch_allowed(model: Optional[str]) -> bool:
    """Whether OpenAI's Batch API takes this model for images: the GPT image models (a model
    batchgen does not know is let through, as in live mode)."""
    rules = rules_for(model)
    return rules is None and model is not None or (rules is not None and rules.name.startswith("gpt-image"))


# The Batch API's price: half the live one.
BATCH_PRICE_FACTOR = 0.5


def parameter_problems(params: dict) -> list[str]:
    """Why a request with these parameters would be refused (empty list: allowed).

    `params` holds only the parameters that are set; a missing one takes the API default.
    Each problem names the parameter, the value and what is allowed, so it can be shown
    to a user as is.
    """
    rules = rules_for(params.get("model"))
    if rules is None:
        return []
    problems = []
    model = rules.name
    size = params.get("size")
    if size is not None and not rules.size_allowed(str(size)):
        problems.append(f"size {size!r} is not allowed for {model} (allowed: {rules.describe_sizes()})")
    quality = params.get("quality")
    if quality is not None and quality not in rules.qualities:
        problems.append(f"quality {quality!r} is not allowed for {model} (allowed: {', '.join(rules.qualities)})")
    style = params.get("style")
    if style is not None and style not in rules.styles:
        allowed = ", ".join(rules.styles) if rules.styles else f"none; {model} takes no style"
        problems.append(f"style {style!r} is not allowed for {model} (allowed: {allowed})")
    response_format = params.get("response_format")
    if response_format is not None and response_format not in rules.response_formats:
        allowed = (", ".join(rules.response_formats) if rules.response_formats
                   else f"none; {model} always returns base64")
        problems.append(f"response_format {response_format!r} is not allowed for {model} (allowed: {allowed})")
    n = params.get("n")
    if n is not None and not (isinstance(n, int) and 1 <= n <= rules.max_n):
        allowed = "1" if rules.max_n == 1 else f"1 to {rules.max_n}"
        problems.append(f"n {n!r} is not allowed for {model} (allowed: {allowed})")
    return problems


def prompt_problem(prompt, model: Optional[str]) -> Optional[str]:
    if prompt is None or not isinstance(prompt, str) or not prompt.strip():
        return "prompt is missing or blank"
    rules = rules_for(model)
    if rules and len(prompt) > rules.max_prompt_chars:
        return (f"prompt is {len(prompt)} characters; {rules.name} allows at most "
                f"{rules.max_prompt_chars}")
    return None


# Price per image in USD, from OpenAI's published prices. Keyed by (model, quality, size);
# quality/size None means the API default for that model.
_DALLE3 = {("standard", "1024x1024"): 0.04, ("standard", "1792x1024"): 0.08,
           ("standard", "1024x1792"): 0.08, ("hd", "1024x1024"): 0.08,
           ("hd", "1792x1024"): 0.12, ("hd", "1024x1792"): 0.12}
_DALLE2 = {"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.020}
_GPT_IMAGE_1 = {("low", "square"): 0.011, ("medium", "square"): 0.042, ("high", "square"): 0.167,
                ("low", "wide"): 0.016, ("medium", "wide"): 0.063, ("high", "wide"): 0.25}


def price_per_image(model: Optional[str], quality: Optional[str], size: Optional[str]) -> Optional[float]:
    """Estimated USD per image, or None when we have no price for this combination."""
    rules = rules_for(model)
    if rules is None:
        return None
    size = size or rules.default_size
    if rules.name == "dall-e-3":
        return _DALLE3.get((quality or "standard", size))
    if rules.name == "dall-e-2":
        return _DALLE2.get(size)
    if rules.name == "gpt-image-1":
        # "auto" lets the API choose; estimate it at the top price so a budget is never too low.
        q = "high" if quality in (None, "auto") else quality
        shape = "square" if size == "1024x1024" else "wide"
        if size == "auto":
            shape = "wide"
        return _GPT_IMAGE_1.get((q, shape))
    return None


def estimate_cost(params: dict, mode: str = "live") -> Optional[float]:
    price = price_per_image(params.get("model"), params.get("quality"), params.get("size"))
    if price is None:
        return None
    return price * int(params.get("n") or 1) * (BATCH_PRICE_FACTOR if mode == "batch" else 1.0)
