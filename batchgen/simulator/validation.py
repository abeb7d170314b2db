"""Request validation as the real API does it, and the error type both dialects render.

The model rules come from the descriptions in OpenAI's request schema
(spec/openai-images-generations.schema.json), OpenAI's model and deprecation pages and AceData's
model list (as of 2026-12), written here on their own, not read from the client's catalog, so
that a misunderstanding in the client shows up as a refusal here.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Model:
    name: str
    family: str                 # "dall-e" or "gpt-image"
    sizes: tuple
    qualities: tuple
    styles: tuple
    max_n: int
    max_prompt: int
    default_size: str
    custom_sizes: bool = False  # gpt-image-2: any WxH within limits
    fidelities: tuple = ()      # input_fidelity values its edits take (none: refused)
    output_formats: tuple = ("png", "jpeg", "webp")
    markup: bool = False        # its edits take a markup image (gpt-image-2.6)
    complexities: tuple = ()    # gpt-image-2.6: how much it plans before rendering


_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_GPT_QUALITIES = ("low", "medium", "high", "auto")


def _gpt(name: str, custom: bool = False, fidelities: tuple = ("high", "low"), qualities: tuple = _GPT_QUALITIES,
         complexities: tuple = ()) -> Model:
    return Model(name, "gpt-image", _GPT_SIZES, qualities, (), 10, 32000, "auto", custom,
                 fidelities=fidelities, complexities=complexities)


# gpt-image-2.5 (2026-09-08) adds two qualities; gpt-image-2.6 (2026-11-04) adds complexity.
_QUALITIES_25 = ("low", "medium", "high", "xhigh", "max", "auto")
_COMPLEXITIES = ("low", "medium", "high")


MODELS = {
    # "auto" is the schema's default quality for every model and means "standard" for DALL-E.
    "dall-e-2": Model("dall-e-2", "dall-e", ("256x256", "512x512", "1024x1024"),
                      ("standard", "auto"), (), 10, 1000, "1024x1024"),
    "dall-e-3": Model("dall-e-3", "dall-e", ("1024x1024", "1792x1024", "1024x1792"),
                      ("standard", "hd", "auto"), ("vivid", "natural"), 1, 4000, "1024x1024"),
    # input_fidelity (edits), from the openai package's ImageEditParams: "gpt-image-1-mini
    # supports only low. For gpt-image-2, omit this parameter."
    "gpt-image-1": _gpt("gpt-image-1"),
    "gpt-image-1-mini": _gpt("gpt-image-1-mini", fidelities=("low",)),
    "gpt-image-1.5": _gpt("gpt-image-1.5"),
    "gpt-image-2": _gpt("gpt-image-2", custom=True, fidelities=()),
    "gpt-image-2-2026-04-21": _gpt("gpt-image-2-2026-04-21", custom=True, fidelities=()),
    "gpt-image-2.5-flare": _gpt("gpt-image-2.5-flare", custom=True, fidelities=(), qualities=_QUALITIES_25),
    "gpt-image-2.5-sunburst": _gpt("gpt-image-2.5-sunburst", custom=True, fidelities=(), qualities=_QUALITIES_25),
    "gpt-image-2.6-flare": _gpt("gpt-image-2.6-flare", custom=True, fidelities=(), qualities=_QUALITIES_25,
                                complexities=_COMPLEXITIES),
    "gpt-image-2.6-sunburst": _gpt("gpt-image-2.6-sunburst", custom=True, fidelities=(), qualities=_QUALITIES_25,
                                   complexities=_COMPLEXITIES),
    # AceData's gpt-image-2 routes and Google's models through AceData: model, prompt, size only.
    "gpt-image-2:official": _gpt("gpt-image-2:official", custom=True, fidelities=()),
    "gpt-image-2:reverse": _gpt("gpt-image-2:reverse", custom=True, fidelities=()),
    "nano-banana": Model("nano-banana", "nano", (), (), (), 1, 32000, "1024x1024"),
    "nano-banana-2": Model("nano-banana-2", "nano", (), (), (), 1, 32000, "1024x1024"),
    "nano-banana-pro": Model("nano-banana-pro", "nano", (), (), (), 1, 32000, "1024x1024"),
}
# gpt-image-2.6 (2026-11-04): SVG and animated GIF output, markup-guided edits.
for _name in ("gpt-image-2.6-flare", "gpt-image-2.6-sunburst"):
    MODELS[_name] = dataclasses.replace(MODELS[_name], markup=True,
                                        output_formats=("png", "jpeg", "webp", "svg", "gif"))

# Who serves what, December 2026. OpenAI's deprecations page: DALL-E 2 and 3 shut down
# 2026-05-12, gpt-image-1 2026-10-23, gpt-image-1-mini, gpt-image-1.5 and chatgpt-image-latest
# 2026-12-01. AceData still serves dall-e-3 and gpt-image-1, not the others OpenAI retired.
OPENAI_DIALECT, ACEDATA_DIALECT = "openai", "acedata"
SERVED = {
    OPENAI_DIALECT: frozenset({"gpt-image-2", "gpt-image-2-2026-04-21", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst",
                               "gpt-image-2.6-flare", "gpt-image-2.6-sunburst"}),
    ACEDATA_DIALECT: frozenset({"dall-e-3", "gpt-image-1", "gpt-image-2", "gpt-image-2:official",
                                "gpt-image-2:reverse", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst",
                                "nano-banana", "nano-banana-2", "nano-banana-pro"}),
}
RETIRED = {"dall-e-2": "2026-05-12", "dall-e-3": "2026-05-12", "gpt-image-1": "2026-10-23",
           "gpt-image-1-mini": "2026-12-01", "gpt-image-1.5": "2026-12-01", "chatgpt-image-latest": "2026-12-01"}
# What a body without `model` makes: OpenAI's schema says dall-e-2 (gpt-image-1 with a GPT-only
# field); AceData's guide is DALL-E 3's.
_DIALECT_DEFAULT = {ACEDATA_DIALECT: "dall-e-3"}

_GPT_ONLY_FIELDS = ("output_format", "output_compression", "background", "moderation",
                    "stream", "partial_images", "input_fidelity")


@dataclass(frozen=True)
class Endpoint:
    """What one endpoint (and body form) takes: its fields and models, and the model it
    assumes when the body names none (None: dall-e-2 unless a GPT-only field is used)."""
    name: str
    fields: frozenset
    dall_e: tuple                 # the DALL·E models it takes (every GPT image model is taken)
    default_model: Optional[str] = None


_COMMON_FIELDS = frozenset({
    "prompt", "model", "n", "quality", "response_format", "output_format", "output_compression",
    "stream", "partial_images", "size", "moderation", "background", "user", "complexity",
})
GENERATIONS = Endpoint("/v1/images/generations", _COMMON_FIELDS | {"style"}, ("dall-e-2", "dall-e-3"))
# Edits as the official SDK sends them (multipart/form-data; the files are `image`, `image[]`,
# `mask`) and as the API's JSON body (EditImageBodyJsonParam: `images`, `mask` as references;
# GPT image models only, gpt-image-1.5 when no model is named).
EDITS_MULTIPART = Endpoint("/v1/images/edits", _COMMON_FIELDS | {"input_fidelity", "image", "mask", "markup"},
                           ("dall-e-2",))
EDITS_JSON = Endpoint("/v1/images/edits", _COMMON_FIELDS | {"input_fidelity", "images", "mask", "markup"},
                      (), "gpt-image-1.5")
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,5})x([1-9][0-9]{0,5})$")
_MAX_EDGE = 3840
_MAX_PIXELS = 3840 * 2160


class ApiError(Exception):
    """One error answer, renderable in either dialect."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None,
                 ace_code: str = "bad_request", ace_status: Optional[int] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.ace_code = ace_code
        self.ace_status = ace_status or status
        self.headers = headers or {}


def bad(message: str, *, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


@dataclass
class ImageRequest:
    model: Model
    prompt: str
    n: int
    width: int
    height: int
    size: str            # "WxH" as generated (auto resolved)
    quality: str
    style: Optional[str]
    response_format: str  # "url" or "b64_json"
    output_format: str    # "png" / "jpeg" / "webp" (gpt-image-2.6: also "svg" / "gif")
    compression: int
    background: str       # "transparent" or "opaque"
    inputs: tuple = ()    # edits: the input images (edits.InputImage), the first one edited
    mask: Any = None      # edits: the mask (an InputImage) or None
    markup: Any = None    # edits (gpt-image-2.6): the markup image (an InputImage) or None
    input_fidelity: Optional[str] = None
    callback_url: Optional[str] = None   # AceData callback mode (tasks.py)
    trace_id: Optional[str] = None
    complexity: Optional[str] = None


def auth_error(authorization: str, token: str) -> Optional[ApiError]:
    """The 401 for an Authorization header that is not "Bearer <token>", else None."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() == "bearer" and given.strip() == token:
        return None
    given = given.strip()
    if not given:
        msg = ("You didn't provide an API key. Provide it in an Authorization header "
               "using Bearer auth (Authorization: Bearer YOUR_KEY).")
    else:
        shown = given[:3] + "*" * 4 + given[-4:] if len(given) > 8 else "*" * len(given)
        msg = f"Incorrect API key provided: {shown}. The token is invalid or wrong."
    return ApiError(401, msg, code="invalid_api_key", ace_code="invalid_token")


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise bad("We could not parse the JSON body of your request. The API expects a "
                  "JSON object (Content-Type: application/json).", code=None) from None


def check_policy(prompt: str, word: str, ace_403: bool) -> None:
    if word and word.lower() in prompt.lower():
        raise ApiError(
            400, "Your request was rejected as a result of our safety system. Your prompt "
            "may contain text that is not allowed by our safety system.",
            type="image_generation_user_error", code="content_policy_violation",
            ace_code="forbidden" if ace_403 else "content_policy_violation",
            ace_status=403 if ace_403 else 400)


def check_quota(used: int, n: int, quota: Optional[int]) -> None:
    if quota is not None and used + n > quota:
        raise ApiError(
            429, "You exceeded your current quota, please check your plan and billing "
            "details.", type="insufficient_quota", code="insufficient_quota",
            ace_code="used_up", ace_status=403)


def _quote_list(values) -> str:
    items = [f"'{v}'" for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _typed(body: dict, name: str, kind, kind_name: str):
    value = body.get(name)
    if value is None:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        got = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object"}.get(type(value), "another type")
        raise bad(f"Invalid type for '{name}': expected {kind_name}, but got {got} instead.",
                  param=name, code="invalid_type")
    return value


def _choice(value: Optional[str], name: str, allowed, model: Model) -> None:
    if value is not None and value not in allowed:
        raise bad(f"Invalid value: '{value}'. Supported values for '{name}' with model "
                  f"'{model.name}' are: {_quote_list(allowed)}.", param=name)


def check_fields(body: Any, endpoint: Endpoint = GENERATIONS) -> None:
    """A JSON object whose every field the endpoint knows, or the 400 OpenAI answers."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(k for k in body if k not in endpoint.fields)
    if unknown:
        raise bad(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")


def parse_request(body: Any, endpoint: Endpoint = GENERATIONS, dialect: str = OPENAI_DIALECT) -> ImageRequest:
    """Validate one decoded request body as the real API does; raise ApiError if refused.

    The checks run in a fixed order, so that a body with several faults always meets the same
    first refusal.  For edits, this checks the parameters; ``edits`` checks the images."""
    check_fields(body, endpoint)
    prompt = _prompt(body)
    model = _model(body, endpoint, dialect)
    _check_family_fields(body, model)
    _check_prompt_length(prompt, model)
    n = _count(body, model)
    width, height = _size(body, model)
    quality = _quality(body, model)
    style = _style(body, model)
    response_format = _response_format(body, model)
    output_format, compression, background = _output(body, model)
    _check_rest(body, model)
    return ImageRequest(model, prompt, n, width, height, f"{width}x{height}", quality, style,
                        response_format, output_format, compression, background,
                        input_fidelity=_fidelity(body, model), complexity=_complexity(body, model))


def _prompt(body: dict) -> str:
    if body.get("prompt") is None:
        raise bad("Missing required parameter: 'prompt'.", param="prompt",
                  code="missing_required_parameter")
    prompt = _typed(body, "prompt", str, "a string")
    if prompt == "":
        raise bad("Invalid 'prompt': empty string. Expected a string with minimum length 1, "
                  "but got an empty string instead.", param="prompt", code="empty_string")
    return prompt


def _model(body: dict, endpoint: Endpoint, dialect: str = OPENAI_DIALECT) -> Model:
    model_name = _typed(body, "model", str, "a string") or endpoint.default_model or _DIALECT_DEFAULT.get(dialect)
    if model_name is None:
        # The schema: dall-e-2 unless a parameter only the GPT image models take is used.
        uses_gpt = any(body.get(k) is not None for k in _GPT_ONLY_FIELDS)
        model_name = "gpt-image-1" if uses_gpt else "dall-e-2"
    served = SERVED.get(dialect, SERVED[OPENAI_DIALECT])
    if model_name in RETIRED and model_name not in served:
        # As OpenAI answers a model past its shutdown date.
        raise ApiError(404, f"The model '{model_name}' has been deprecated and was shut down on "
                       f"{RETIRED[model_name]}; learn more at https://platform.openai.com/docs/deprecations.",
                       code="model_not_found", param="model", ace_code="model_not_found")
    model = MODELS.get(model_name) if model_name in served else None
    if model is None:
        raise ApiError(400, f"The model '{model_name}' does not exist or you do not have access "
                       f"to it. Supported image models: {_quote_list(sorted(served))}.",
                       code="model_not_found", param="model", ace_code="model_not_found")
    if model.family == "dall-e" and model.name not in endpoint.dall_e:
        taken = [*endpoint.dall_e, *(m for m in sorted(served) if MODELS[m].family != "dall-e")]
        raise bad(f"Invalid value: '{model.name}'. Supported models for {endpoint.name} in this "
                  f"form are: {_quote_list(taken)}.", param="model")
    return model


def _check_family_fields(body: dict, model: Model) -> None:
    if model.family == "nano":
        for k in sorted(body):
            if k not in ("model", "prompt", "size") and body[k] is not None:
                raise bad(f"Unknown parameter: '{k}'. Model '{model.name}' takes model, prompt and size only.",
                          param=k, code="unknown_parameter")
        return
    if body.get("complexity") is not None and not model.complexities:
        raise bad(f"Unknown parameter: 'complexity'. It is only supported for gpt-image-2.6 models, not "
                  f"'{model.name}'.", param="complexity", code="unknown_parameter")
    if model.family == "gpt-image":
        if body.get("response_format") is not None:
            raise bad(f"Unknown parameter: 'response_format'. Model '{model.name}' always returns "
                      "base64-encoded images (b64_json).", param="response_format",
                      code="unknown_parameter")
        return
    for k in _GPT_ONLY_FIELDS:
        if body.get(k) is not None:
            raise bad(f"Unknown parameter: '{k}'. It is only supported for the GPT image "
                      f"models, not '{model.name}'.", param=k, code="unknown_parameter")


def _check_prompt_length(prompt: str, model: Model) -> None:
    if len(prompt) > model.max_prompt:
        raise bad(f"Invalid 'prompt': string too long. Expected a string with maximum length "
                  f"{model.max_prompt}, but got a string with length {len(prompt)} instead.",
                  param="prompt", code="string_above_max_length")


def _count(body: dict, model: Model) -> int:
    n = _typed(body, "n", int, "an integer")
    n = 1 if n is None else n
    if n < 1:
        raise bad(f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got "
                  f"{n} instead.", param="n", code="integer_below_min_value")
    if n > 10:
        raise bad(f"Invalid 'n': integer above maximum value. Expected a value <= 10, but got "
                  f"{n} instead.", param="n", code="integer_above_max_value")
    if n > model.max_n:
        raise bad(f"You must provide n=1 for model '{model.name}'.", param="n")
    return n


def _size(body: dict, model: Model) -> tuple[int, int]:
    """(width, height); "auto" is generated at 1024x1024."""
    size = _typed(body, "size", str, "a string") or model.default_size
    if model.family == "nano":
        # Google's models take an aspect ratio or WxH through AceData; the simulator makes WxH.
        m = _SIZE_RE.match(size)
        return (int(m[1]), int(m[2])) if m and int(m[1]) <= _MAX_EDGE and int(m[2]) <= _MAX_EDGE else (1024, 1024)
    if size not in model.sizes:
        _check_custom_size(size, model)
    if size == "auto":
        return 1024, 1024
    w, h = size.split("x")
    return int(w), int(h)


def _check_custom_size(size: str, model: Model) -> None:
    m = _SIZE_RE.match(size)
    problem = None if m else "it is not 'auto' nor of the form WIDTHxHEIGHT"
    if m and model.custom_sizes:
        problem = _gpt2_size_problem(int(m[1]), int(m[2]))
    if not model.custom_sizes or problem:
        extra = (f" Model '{model.name}' also accepts any WIDTHxHEIGHT whose sides are "
                 f"multiples of 16, with an aspect ratio between 1:3 and 3:1, at most "
                 f"3840x2160; here {problem}." if model.custom_sizes else "")
        raise bad(f"Invalid value: '{size}'. Supported values for 'size' with model "
                  f"'{model.name}' are: {_quote_list(model.sizes)}.{extra}", param="size")


def _gpt2_size_problem(w: int, h: int) -> Optional[str]:
    if w % 16 or h % 16:
        return "width and height must both be multiples of 16"
    if max(w, h) > 3 * min(w, h):
        return "the aspect ratio must be between 1:3 and 3:1"
    if max(w, h) > _MAX_EDGE:
        return f"the longest edge must be at most {_MAX_EDGE} pixels"
    if w * h > _MAX_PIXELS:
        return f"the image must have at most {_MAX_PIXELS} pixels (3840x2160)"
    return None


def _quality(body: dict, model: Model) -> str:
    quality = _typed(body, "quality", str, "a string")
    _choice(quality, "quality", model.qualities, model)
    if quality is None or quality == "auto":
        quality = "standard" if model.family != "gpt-image" else "medium"
    return quality


def _style(body: dict, model: Model) -> Optional[str]:
    style = _typed(body, "style", str, "a string")
    if style is not None:
        if not model.styles:
            raise bad(f"Unknown parameter: 'style'. It is only supported for dall-e-3, not "
                      f"'{model.name}'.", param="style", code="unknown_parameter")
        _choice(style, "style", model.styles, model)
    elif model.styles:
        style = "vivid"
    return style


def _response_format(body: dict, model: Model) -> str:
    if model.family == "nano":
        return "url"        # AceData hands Google's images out as links
    gpt = model.family == "gpt-image"
    response_format = _typed(body, "response_format", str, "a string")
    if not gpt:
        _choice(response_format, "response_format", ("url", "b64_json"), model)
    return "b64_json" if gpt else (response_format or "url")


def _output(body: dict, model: Model) -> tuple[str, int, str]:
    """(output_format, compression, background: "transparent" or "opaque")."""
    output_format = _typed(body, "output_format", str, "a string") or "png"
    _choice(output_format, "output_format", model.output_formats, model)
    compression = _typed(body, "output_compression", int, "an integer")
    if compression is not None and not 0 <= compression <= 100:
        raise bad(f"Invalid 'output_compression': expected a value between 0 and 100, but got "
                  f"{compression} instead.", param="output_compression")
    if compression is not None and output_format not in ("jpeg", "webp"):
        raise bad("'output_compression' is only supported with output_format 'jpeg' or 'webp', "
                  f"not '{output_format}'.", param="output_compression")
    compression = 100 if compression is None else compression
    background = _typed(body, "background", str, "a string")
    _choice(background, "background", ("transparent", "opaque", "auto"), model)
    if background == "transparent" and output_format == "jpeg":
        raise bad("Transparent background requires output_format 'png' or 'webp', not 'jpeg'.",
                  param="background")
    background = "transparent" if background == "transparent" else "opaque"
    return output_format, compression, background


def _check_rest(body: dict, model: Model) -> None:
    """Fields that change nothing in the answer but are still checked: moderation, stream,
    partial_images, user."""
    _choice(_typed(body, "moderation", str, "a string"), "moderation", ("low", "auto"), model)
    if _typed(body, "stream", bool, "a boolean"):
        raise bad("Streaming responses are not supported by the batchgen simulator; send "
                  "stream=false.", param="stream", code="unsupported_value")
    partial = _typed(body, "partial_images", int, "an integer")
    if partial is not None and not 0 <= partial <= 3:
        raise bad(f"Invalid 'partial_images': expected a value between 0 and 3, but got "
                  f"{partial} instead.", param="partial_images")
    _typed(body, "user", str, "a string")


def _complexity(body: dict, model: Model) -> Optional[str]:
    complexity = _typed(body, "complexity", str, "a string")
    _choice(complexity, "complexity", model.complexities, model)
    return complexity


def _fidelity(body: dict, model: Model) -> Optional[str]:
    """input_fidelity (edits only; the generations endpoint refuses it as unknown)."""
    fidelity = _typed(body, "input_fidelity", str, "a string")
    if fidelity is not None and not model.fidelities:
        raise bad(f"Unsupported parameter: 'input_fidelity' is not supported with model "
                  f"'{model.name}'; omit it.", param="input_fidelity", code="unsupported_parameter")
    _choice(fidelity, "input_fidelity", model.fidelities, model)
    return fidelity
