"""What each model allows: the one place for model rules (what they cost is `pricing`).

Everything here is pure: planning, validation and cost estimates call it without I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Optional

PARAMETERS = ("model", "quality", "style", "size", "response_format", "n",
              "output_format", "output_compression", "background", "moderation", "input_fidelity")
# Parameters whose values are whole numbers; the others are text.
INT_PARAMETERS = ("n", "output_compression")
# Sent with edits only: /images/generations has no such field.
EDIT_ONLY_PARAMETERS = ("input_fidelity",)
EXAMPLES = {"model": "gpt-image-1", "quality": "high", "style": "vivid", "size": "1024x1024",
            "response_format": "b64_json", "n": "2", "output_format": "webp", "output_compression": "80",
            "background": "transparent", "moderation": "low", "input_fidelity": "high"}

DALLE_RESPONSE_FORMATS = ("url", "b64_json")
GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
GPT_IMAGE_QUALITIES = ("low", "medium", "high", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
MODERATIONS = ("low", "auto")
INPUT_FIDELITIES = ("high", "low")
# The file extension each output_format is saved under.
FORMAT_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

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
    # The GPT image models' own parameters; empty: the model takes none of them.
    output_formats: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    moderations: tuple[str, ...] = ()
    input_fidelities: tuple[str, ...] = ()
    edits: bool = True            # takes /images/edits

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


def _gpt_image(name: str, custom=None, input_fidelities=INPUT_FIDELITIES) -> ModelRules:
    return ModelRules(
        name=name, sizes=GPT_IMAGE_SIZES, qualities=GPT_IMAGE_QUALITIES,
        styles=(), response_formats=(), max_n=10, max_prompt_chars=32000,
        default_size="auto", custom_size_ok=custom, output_formats=OUTPUT_FORMATS,
        backgrounds=BACKGROUNDS, moderations=MODERATIONS, input_fidelities=input_fidelities,
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
        default_size="1024x1024", edits=False,
    ),
    "gpt-image-1": _gpt_image("gpt-image-1"),
    # The SDK's edit reference: "gpt-image-1-mini supports only low. For gpt-image-2, omit this parameter."
    "gpt-image-1-mini": _gpt_image("gpt-image-1-mini", input_fidelities=("low",)),
    "gpt-image-1.5": _gpt_image("gpt-image-1.5"),
    "gpt-image-2": _gpt_image("gpt-image-2", _gpt_image_2_size_ok, input_fidelities=()),
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


def parameter_problems(params: dict, edit: bool = False) -> list[str]:
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
    rules = rules_for(params.get("model"))
    if rules is None:
        return problems
    model = rules.name
    if edit and not rules.edits:
        problems.append(f"model {model!r} does not edit images (edits: dall-e-2 or a GPT image model)")
    size = params.get("size")
    if size is not None and not rules.size_allowed(str(size)):
        problems.append(f"size {size!r} is not allowed for {model} (allowed: {rules.describe_sizes()})")
    for param, allowed, none_text in (
            ("quality", rules.qualities, ""),
            ("style", rules.styles, f"none; {model} takes no style"),
            ("response_format", rules.response_formats, f"none; {model} always returns base64"),
            ("output_format", rules.output_formats, f"none; {model} takes no output_format"),
            ("background", rules.backgrounds, f"none; {model} takes no background"),
            ("moderation", rules.moderations, f"none; {model} takes no moderation"),
            ("input_fidelity", rules.input_fidelities if edit else None, f"none; {model} takes no input_fidelity")):
        value = params.get(param)
        if value is not None and allowed is not None and value not in allowed:
            problems.append(f"{param} {value!r} is not allowed for {model} "
                            f"(allowed: {', '.join(allowed) if allowed else none_text})")
    problems += _gpt_image_problems(params, rules)
    n = params.get("n")
    if n is not None and not (isinstance(n, int) and 1 <= n <= rules.max_n):
        allowed_n = "1" if rules.max_n == 1 else f"1 to {rules.max_n}"
        problems.append(f"n {n!r} is not allowed for {model} (allowed: {allowed_n})")
    return problems


def _gpt_image_problems(params: dict, rules: ModelRules) -> list[str]:
    """The rules between the GPT image parameters: compression and transparency need a format."""
    problems = []
    fmt = params.get("output_format") or "png"        # the API's default
    compression = params.get("output_compression")
    if compression is not None:
        if not rules.output_formats:
            problems.append(f"output_compression {compression!r} is not allowed for {rules.name} "
                            f"(allowed: none; {rules.name} takes no output_compression)")
        elif not (isinstance(compression, int) and 0 <= compression <= 100):
            problems.append(f"output_compression {compression!r} is not allowed (allowed: a whole number 0 to 100)")
        elif fmt not in ("jpeg", "webp"):
            problems.append(f"output_compression {compression!r} needs output_format jpeg or webp, "
                            f"not {fmt}")
    if params.get("background") == "transparent" and rules.output_formats and fmt not in ("png", "webp"):
        problems.append(f"background 'transparent' needs output_format png or webp, not {fmt}")
    return problems


def prompt_problem(prompt: object, model: Optional[str]) -> Optional[str]:
    if prompt is None or not isinstance(prompt, str) or not prompt.strip():
        return "prompt is missing or blank"
    rules = rules_for(model)
    if rules and len(prompt) > rules.max_prompt_chars:
        return (f"prompt is {len(prompt)} characters; {rules.name} allows at most "
                f"{rules.max_prompt_chars}")
    return None


# ---- gpt-image-2.6 (issue 24, branch outputs): to be ported into the catalog ------------------
# The minimal rules the outputs branch needs until the catalog (batchgen/data/models.json) lands:
# gpt-image-2.6-flare/-sunburst take output_format svg and gif, and a markup image on edits.
VECTOR_ANIMATED_FORMATS = ("svg", "gif")
FORMAT_EXTENSIONS.update(svg="svg", gif="gif")
MARKUP_MODELS = ("gpt-image-2.6-flare", "gpt-image-2.6-sunburst")
for _name in MARKUP_MODELS:
    MODELS[_name] = replace(_gpt_image(_name, _gpt_image_2_size_ok, input_fidelities=()),
                            output_formats=OUTPUT_FORMATS + VECTOR_ANIMATED_FORMATS)


def markup_problem(model: Optional[str]) -> Optional[str]:
    """Why an edit with a markup image cannot go to this model (None: it can, or the model is
    unknown and sent unchecked)."""
    rules = rules_for(model)
    if rules is None or rules.name in MARKUP_MODELS:
        return None
    return (f"markup: model {rules.name!r} takes no markup image "
            f"(markup-guided edits: {', '.join(MARKUP_MODELS)})")
