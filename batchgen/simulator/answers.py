"""The JSON bodies of both dialects: a generation's success document and the error shapes.

AceData wraps OpenAI's answer: a success adds ``success``, ``task_id`` and ``trace_id``; an
error is ``{"success": false, "error": {"code", "message"}, "trace_id"}`` with AceData's own
codes and, for some errors, its own status.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .validation import ApiError, ImageRequest

ACEDATA = "acedata"
OPENAI = "openai"

# Placeholder for a b64_json value in the JSON skeleton (unguessable, so no prompt contains it).
MARK = f"@@b64-{uuid.uuid4().hex}-"


def revised_prompt(prompt: str, style: Optional[str]) -> str:
    base = prompt.strip().rstrip(".")
    mood = ("rendered in a natural, understated style with soft daylight and true-to-life colours"
            if style == "natural" else
            "rendered as a vivid, dramatic, highly detailed digital illustration with rich "
            "colours and cinematic lighting")
    return f"{base}, {mood}; the composition is balanced, the main subject is in sharp focus " \
           f"and the background is gently blurred."


def edit_note(req: "ImageRequest") -> str:
    """An edit's revised_prompt: it names the first input image by its sha256's first 16 hex
    digits, so a test can tell which input an answer edits."""
    extra = []
    if len(req.inputs) > 1:
        more_images = len(req.inputs) - 1
        extra.append(f"+{more_images} more image{'s' if more_images > 1 else ''}")
    if req.mask is not None:
        extra.append(f"mask {req.mask.short}")
    if req.markup is not None:
        extra.append(f"markup {req.markup.short}")
    more = f" ({', '.join(extra)})" if extra else ""
    return f"edit of {req.inputs[0].short}{more}: {req.prompt}"


def usage(req: "ImageRequest") -> dict:
    """Deterministic token counts: output from OpenAI's published per-image counts for
    gpt-image-1 (1024x1024 low/medium/high = 272/1056/4160, scaled by area: 1536x1024 =
    408/1584/6240), text input a token per 4 characters, image input per input image (a markup image counts as
    one). The 2.5/2.6
    qualities xhigh and max publish no counts: the simulator's own, twice and four times high's;
    gpt-image-2.6's complexity plans in text tokens (its own: 0, 512, 2048 an image)."""
    per_image = {"low": 272, "medium": 1056, "high": 4160, "xhigh": 8320, "max": 16640}[req.quality]
    images = int(per_image * (req.width * req.height) / (1024 * 1024)) * req.n
    planned = {None: 0, "low": 0, "medium": 512, "high": 2048}[req.complexity] * req.n
    output = images + planned
    text = max(1, math.ceil(len(req.prompt) / 4))
    seen = (*req.inputs, req.markup) if req.markup is not None else req.inputs
    image = sum(image_input_tokens(im.width, im.height, req.input_fidelity) for im in seen)
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": images, "text_tokens": planned},
        "total_tokens": text + image + output,
    }


def image_input_tokens(width: int, height: int, fidelity: Optional[str]) -> int:
    """OpenAI's tile count for image inputs (fit in 2048x2048, shortest side to 768, 65 + 129
    per 512-pixel tile), plus the published extra of high input fidelity (4160 square,
    6240 otherwise)."""
    w, h = max(width, 1), max(height, 1)
    scale = min(1.0, 2048 / max(w, h))
    scale *= min(1.0, 768 / (min(w, h) * scale))
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    extra = (4160 if w == h else 6240) if fidelity == "high" else 0
    return 65 + 129 * tiles + extra


def success_body(dialect: str, req: "ImageRequest", data: list, blobs: list[bytes]) -> bytes:
    """The 200 body; ``data`` holds MARK placeholders where ``blobs`` (base64 texts) go."""
    doc: dict = {}
    if dialect == ACEDATA:
        doc["success"] = True
        doc["task_id"] = str(uuid.uuid4())
        doc["trace_id"] = str(uuid.uuid4())
    doc["created"] = int(time.time())
    doc["data"] = data
    if req.model.family == "gpt-image":
        doc["background"] = req.background
        doc["output_format"] = req.output_format
        doc["quality"] = req.quality
        doc["size"] = req.size
        doc["usage"] = usage(req)
    body = json.dumps(doc).encode()
    return _splice(body, blobs) if blobs else body


def _splice(body: bytes, blobs: list[bytes]) -> bytes:
    # Big base64 texts skip json.dumps: only the small skeleton is serialised, and the final
    # body is joined once.
    parts: list[bytes] = []
    pos = 0
    for i, blob in enumerate(blobs):
        marker = f"{MARK}{i}\"".encode()
        at = body.index(marker, pos)
        parts += (body[pos:at], blob, b'"')
        pos = at + len(marker)
    parts.append(body[pos:])
    return b"".join(parts)


def error_answer(dialect: str, err: "ApiError") -> tuple[int, bytes]:
    """(status, body) of an error in the dialect."""
    doc: dict[str, object]
    if dialect == OPENAI:
        status = err.status
        doc = {"error": {"message": err.message, "type": err.type, "param": err.param,
                         "code": err.code}}
    else:
        status = err.ace_status
        doc = {"success": False, "error": {"code": err.ace_code, "message": err.message},
               "trace_id": str(uuid.uuid4())}
    return status, json.dumps(doc).encode()
