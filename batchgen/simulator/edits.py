"""Image edits, ``POST /v1/images/edits`` (and ``/openai/images/edits``), in both body forms.

    multipart/form-data   as the official SDK sends ``client.images.edit(image=..., mask=...)``:
                          the files ``image`` (or ``image[]``, once per image) and ``mask``, every
                          other parameter a text field ("2", "false" typed as the JSON form's)
    application/json      the API's JSON body (and a Batch API line's): ``"images": [{"image_url":
                          "data:image/png;base64,..."}, ...]``, ``"mask": {"image_url": ...}``;
                          GPT image models only, gpt-image-1.5 when no model is named

gpt-image-2.6 also takes a ``markup`` image (the file ``markup``; in JSON ``"markup": {"image_url":
...}``): the picture drawn over with what to change; any other model refuses it.

Images are recognised by their bytes (magic), never by file name or declared type.  An http(s)
``image_url`` is fetched only from this simulator's own ``/files/`` (it has no network); any other
is answered as the API answers a link it cannot download.

How an answer names the input it edits: every ``data`` item carries ``revised_prompt`` reading
``edit of <sha16>: <prompt>`` (``edit of <sha16> (+2 more images, mask <sha16>): ...``), where
<sha16> is the first 16 hex digits of the sha256 of the first input image's bytes; the pixels
depend on those bytes too.  ``usage.input_tokens_details.image_tokens`` counts the input images.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from aiohttp import BodyPartReader, web

from .inputs import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_MASK_BYTES, Fetch, InputImage, inspect, resolve_reference, too_big
from .validation import (
    EDITS_JSON,
    EDITS_MULTIPART,
    ApiError,
    ImageRequest,
    bad,
    check_fields,
    decode_json,
    parse_request,
)

_IMAGE_PARTS = ("image", "image[]")
_INT_FIELDS = ("n", "output_compression", "partial_images")
_TEXT_FIELD_BYTES = 256 * 1024          # a 32000-character prompt fits
MAX_JSON_BYTES = 2 * MAX_IMAGES * MAX_IMAGE_BYTES   # base64 of 16 images at the limit, and more


@dataclass
class EditForm:
    """An edit request as read: its parameters (typed as in JSON) and its images."""
    fields: dict
    images: list            # InputImage, in the order sent
    mask: Optional[InputImage]
    json: bool              # the JSON body (EDITS_JSON rules) rather than multipart
    markup: Optional[InputImage] = None

    def key(self) -> bytes:
        """What identifies the request whatever its multipart boundary (for the fault dice)."""
        return json.dumps([self.fields, [i.sha256 for i in self.images],
                           self.mask.sha256 if self.mask else None, self.json]
                          + ([self.markup.sha256] if self.markup else []),
                          sort_keys=True).encode()


async def read_edit(request: web.Request, fetch: Fetch) -> EditForm:
    """The edit in a live request, in whichever form its Content-Type says."""
    if request.content_type.startswith("multipart/"):
        return await _read_multipart(request)
    if request.content_type in ("application/json", ""):
        return json_form(decode_json(await _read_capped(request.content, MAX_JSON_BYTES, None)),
                         fetch)
    raise bad(f"Unsupported Content-Type '{request.content_type}': send multipart/form-data "
              f"(files 'image' and 'mask') or application/json ('images' as image_url "
              f"references).", code="unsupported_content_type")


def json_form(doc: Any, fetch: Fetch) -> EditForm:
    """The edit in a decoded JSON body (a live request's or a batch line's)."""
    check_fields(doc, EDITS_JSON)
    refs = doc.get("images")
    if refs is None:
        raise bad("Missing required parameter: 'images'.", param="images",
                  code="missing_required_parameter")
    if not isinstance(refs, list):
        raise bad("Invalid type for 'images': expected an array of image references.",
                  param="images", code="invalid_type")
    _check_count(len(refs), "images")
    images = [resolve_reference(r, f"images[{i}]", fetch, MAX_IMAGE_BYTES) for i, r in enumerate(refs)]
    mask = doc.get("mask")
    mask = None if mask is None else resolve_reference(mask, "mask", fetch, MAX_MASK_BYTES)
    markup = doc.get("markup")
    markup = None if markup is None else resolve_reference(markup, "markup", fetch, MAX_IMAGE_BYTES)
    fields = {k: v for k, v in doc.items() if k not in ("images", "mask", "markup")}
    return EditForm(fields, images, mask, True, markup)


async def _read_multipart(request: web.Request) -> EditForm:
    fields: dict = {}
    images: list = []
    mask = markup = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                await part.release()   # a nested multipart: not a form field
            elif part.name in _IMAGE_PARTS:
                _check_count(len(images) + 1, "image")
                field = "image" if part.name == "image" and not images else f"image[{len(images)}]"
                images.append(inspect(await _read_capped(part, MAX_IMAGE_BYTES, field), field))
            elif part.name == "mask":
                mask = inspect(await _read_capped(part, MAX_MASK_BYTES, "mask"), "mask")
            elif part.name == "markup":
                markup = inspect(await _read_capped(part, MAX_IMAGE_BYTES, "markup"), "markup")
            else:
                text = await _read_capped(part, _TEXT_FIELD_BYTES, part.name or "field")
                fields[part.name] = _typed_text(part.name, text.decode("utf-8", "replace"))
    except ApiError:
        raise
    except (ValueError, RuntimeError, AssertionError, UnicodeError) as exc:  # a malformed body
        raise bad(f"Could not parse the multipart/form-data body: {exc}", code=None) from exc
    return EditForm(fields, images, mask, False, markup)


def _typed_text(name: Optional[str], text: str) -> Any:
    """A form field as the JSON form would carry it: numbers and booleans unquoted."""
    if name in _INT_FIELDS and text.lstrip("-").isdigit():
        return int(text)
    if name == "stream" and text in ("true", "false"):
        return text == "true"
    return text


async def _read_capped(stream, limit: int, field: Optional[str]) -> bytes:
    """Read a part (or the body) in chunks, refusing it once it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await (stream.read_chunk(2**16) if isinstance(stream, BodyPartReader)
                       else stream.read(2**16))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            if field is None:
                raise ApiError(413, f"The request body is too large (over {limit} bytes).",
                               code="request_too_large")
            raise too_big(field, limit)
        chunks.append(chunk)


def _check_count(count: int, field: str) -> None:
    if count > MAX_IMAGES:
        raise bad(f"Invalid '{field}': too many images. You can provide up to {MAX_IMAGES} "
                  f"images.", param=field, code="array_above_max_length")


def parse_edit(form: EditForm, dialect: str = "openai") -> ImageRequest:
    """Validate an edit as the API does: its parameters, then its images for the model."""
    endpoint = EDITS_JSON if form.json else EDITS_MULTIPART
    check_fields(form.fields, endpoint)
    if not form.images:
        name = "images" if form.json else "image"
        raise bad(f"Missing required parameter: '{name}'.", param=name,
                  code="missing_required_parameter")
    req = parse_request(form.fields, endpoint, dialect)
    for image in form.images:
        _check_image(image, req)
    if form.mask is not None:
        _check_mask(form.mask, form.images[0])
    elif req.model.family != "gpt-image" and not form.images[0].alpha:
        raise bad("Invalid 'image': without a mask, the image must have transparency (an alpha "
                  "channel), which marks where to edit.", param="image")
    if form.markup is not None:
        _check_markup(form.markup, req)
    return dataclasses.replace(req, inputs=tuple(form.images), mask=form.mask, markup=form.markup)


def _check_markup(markup: InputImage, req: ImageRequest) -> None:
    if not req.model.markup:
        raise bad(f"Unsupported parameter: 'markup' is not supported with model '{req.model.name}'; "
                  f"markup-guided edits need gpt-image-2.6.", param="markup",
                  code="unsupported_parameter")
    if markup.format is None:
        raise bad("Invalid 'markup': unsupported image format. The markup must be a PNG, WebP or "
                  "JPEG file.", param="markup", code="invalid_image_format")


def _check_image(image: InputImage, req: ImageRequest) -> None:
    if image.format is None:
        raise bad(f"Invalid '{image.field}': unsupported image format. Each image must be a "
                  f"PNG, WebP or JPEG file.", param=image.field, code="invalid_image_format")
    if req.model.family == "gpt-image":
        return
    # dall-e-2: one square PNG under 4 MB.
    if image.field != "image":
        raise bad(f"Model '{req.model.name}' edits exactly one image.", param=image.field)
    if image.format != "png":
        raise bad(f"Invalid 'image': model '{req.model.name}' takes a PNG file, not "
                  f"{image.format.upper()}.", param="image", code="invalid_image_format")
    if image.size > MAX_MASK_BYTES:
        raise too_big("image", MAX_MASK_BYTES)
    if image.width != image.height:
        raise bad(f"Invalid 'image': model '{req.model.name}' takes a square image, not "
                  f"{image.width}x{image.height}.", param="image")


def _check_mask(mask: InputImage, first: InputImage) -> None:
    if mask.format != "png":
        raise bad("Invalid 'mask': the mask must be a PNG file.", param="mask",
                  code="invalid_image_format")
    if not mask.alpha:
        raise bad("Invalid 'mask': the mask image is missing an alpha channel; its fully "
                  "transparent areas mark where to edit.", param="mask")
    if (mask.width, mask.height) != (first.width, first.height):
        raise bad(f"Invalid 'mask': the mask ({mask.width}x{mask.height}) must have the same "
                  f"dimensions as the image ({first.width}x{first.height}).", param="mask")
