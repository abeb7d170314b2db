"""The simulator's image edits (/v1/images/edits, /openai/images/edits), over real HTTP on
loopback: multipart through the official openai SDK and by hand, the JSON body with urllib.

What a client relies on: each answer names the input it edits (revised_prompt carries the first
16 hex digits of the first input's sha256), both body forms answer the same input alike, usage
counts the input images, and every refusal is an OpenAI-shaped 400 naming the parameter.
"""
from __future__ import annotations

import hashlib
import io

import openai
import pytest
from PIL import Image
from simhttp import TOKEN, assert_openai_error, call, data_url, decode, multipart, png

from batchgen.simulator import SimulatorThread

RED, BLUE = png(color=(200, 30, 30)), png(color=(30, 30, 200))
HOLE = png(alpha=0)            # a mask: fully transparent where to edit


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def jpeg(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 10)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def sdk(sim):
    return openai.OpenAI(base_url=sim.openai_base_url, api_key=TOKEN, max_retries=0)


def edit_json(sim, body, *, acedata=False, **kw):
    path = "/openai/images/edits" if acedata else "/v1/images/edits"
    return call(sim.base_url + path, body, **kw)


def edit_form(sim, fields: dict, files, **kw):
    raw, ctype = multipart(fields, files)
    return call(sim.base_url + "/v1/images/edits", raw=raw, content_type=ctype, **kw)


def refs(*images: bytes) -> list:
    return [{"image_url": data_url(d)} for d in images]


# ---- the official SDK (multipart) ------------------------------------------------------------

def test_sdk_edit_names_its_input_and_counts_its_tokens(fresh, sdk):
    result = sdk.images.edit(image=("red.png", RED, "image/png"), prompt="add a hat",
                             model="gpt-image-2", quality="low", size="1536x1024")
    item = result.data[0]
    assert item.revised_prompt == f"edit of {sha16(RED)}: add a hat"
    assert decode(item.b64_json).size == (1536, 1024) and result.size == "1536x1024"
    usage = result.usage
    assert usage.output_tokens == 408     # gpt-image-2, 1536x1024, low
    assert usage.input_tokens_details.image_tokens > 0
    assert usage.input_tokens == usage.input_tokens_details.text_tokens + usage.input_tokens_details.image_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    stats = fresh.stats
    assert stats.by_path == {"/v1/images/edits": 1} and stats.input_images == 1 and stats.images == 1
    assert stats.params == {"prompt": 1, "model": 1, "quality": 1, "size": 1, "image": 1}


def test_sdk_several_images_and_a_mask(fresh, sdk):
    result = sdk.images.edit(image=[("red.png", RED), ("blue.png", BLUE)], mask=("m.png", HOLE),
                             prompt="merge them", model="gpt-image-2.5-sunburst", n=2,
                             output_format="webp", background="transparent")
    notes = {d.revised_prompt for d in result.data}
    assert notes == {f"edit of {sha16(RED)} (+1 more image, mask {sha16(HOLE)}): merge them"}
    images = [decode(d.b64_json) for d in result.data]
    assert [im.format for im in images] == ["WEBP", "WEBP"] and images[0].mode == "RGBA"
    assert images[0].tobytes() != images[1].tobytes()
    assert (result.output_format, result.background) == ("webp", "transparent")
    assert fresh.stats.input_images == 2


def test_high_input_fidelity_costs_input_tokens_on_the_model_that_takes_it(fresh):
    # gpt-image-1, which AceData still serves; the 2.x models take no input_fidelity
    body = {"model": "gpt-image-1", "prompt": "merge them", "quality": "low", "images": refs(RED, BLUE)}
    high = edit_json(fresh, {**body, "input_fidelity": "high"}, acedata=True).json()
    low = edit_json(fresh, {**body, "input_fidelity": "low"}, acedata=True).json()
    assert high["usage"]["input_tokens"] > low["usage"]["input_tokens"]


def test_the_pixels_depend_on_the_input(sdk):
    def edited(image):
        result = sdk.images.edit(image=("in.png", image), prompt="same prompt", model="gpt-image-2.5-flare")
        return decode(result.data[0].b64_json).tobytes()
    assert edited(RED) != edited(BLUE)
    assert edited(RED) == edited(RED)


def test_sdk_refusal_is_a_bad_request_naming_the_param(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.images.edit(image=("x.gif", b"GIF89a" + bytes(40)), prompt="p", model="gpt-image-2")
    assert info.value.code == "invalid_image_format" and info.value.param == "image"


# ---- the JSON body, both dialects -------------------------------------------------------------

def test_json_and_multipart_answer_the_same_input_alike(fresh, sdk):
    body = {"model": "gpt-image-2", "prompt": "add a hat", "quality": "low", "images": refs(RED)}
    doc = edit_json(fresh, body).json()
    via_sdk = sdk.images.edit(image=("red.png", RED), prompt="add a hat", model="gpt-image-2", quality="low")
    assert doc["data"][0]["revised_prompt"] == via_sdk.data[0].revised_prompt == f"edit of {sha16(RED)}: add a hat"
    assert decode(doc["data"][0]["b64_json"]).tobytes() == decode(via_sdk.data[0].b64_json).tobytes()
    assert doc["usage"]["input_tokens"] == via_sdk.usage.input_tokens
    ace = edit_json(fresh, body, acedata=True)
    assert ace.status == 200 and ace.json()["success"] is True
    assert ace.json()["data"][0]["revised_prompt"] == doc["data"][0]["revised_prompt"]
    assert fresh.stats.params["images"] == 2 and fresh.stats.params["image"] == 1


def test_json_mask_and_own_file_links_and_no_default_model(fresh):
    # A dall-e-3 url answer (AceData) is a link to the simulator's own files: an edit may take it.
    url = call(fresh.acedata_url, {"prompt": "a square"}).json()["data"][0]["url"]
    source = call(url, token=None).body
    body = {"prompt": "p", "images": [{"image_url": url}], "mask": {"image_url": data_url(png((1024, 1024), alpha=0))}}
    doc = edit_json(fresh, {**body, "model": "gpt-image-2"}).json()
    assert doc["data"][0]["revised_prompt"].startswith(f"edit of {sha16(source)} (mask ")
    assert fresh.stats.by_model == {"dall-e-3": 1, "gpt-image-2": 1}
    # without a model the JSON form means gpt-image-1.5, shut down on 2026-12-01
    assert_openai_error(edit_json(fresh, body), 404, code="model_not_found", param="model")


def test_faults_are_drawn_per_request_whatever_the_multipart_boundary():
    def statuses():
        with SimulatorThread(seed=5, fail_500=0.5) as sim:
            return [edit_form(sim, {"prompt": f"p{i}", "model": "gpt-image-2"},
                              {"image": ("a.png", RED)}).status for i in range(16)]
    first = statuses()
    assert first == statuses() and set(first) == {200, 500}   # each call picks a new boundary


# ---- refusals ------------------------------------------------------------------------------------

JSON_REFUSALS = [
    ({"model": "gpt-image-2", "prompt": "p"}, "images", "missing_required_parameter"),
    ({"model": "gpt-image-2", "images": refs(RED)}, "prompt", "missing_required_parameter"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "style": "vivid"}, "style", "unknown_parameter"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(*[RED] * 17)}, "images", "array_above_max_length"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(b"plain text, not an image")}, "images[0]",
     "invalid_image_format"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED, b"RIFF\0\0\0\0WEBPVP8 broken")}, "images[1]",
     "invalid_image_format"),
    ({"model": "gpt-image-2", "prompt": "p", "images": [{"image_url": "data:image/png;base64,@@"}]},
     "images[0].image_url", "invalid_image_url"),
    ({"model": "gpt-image-2", "prompt": "p", "images": [{"image_url": "https://example.com/a.png"}]},
     "images[0].image_url", "invalid_image_url"),
    ({"model": "gpt-image-2", "prompt": "p", "images": [{"file_id": "file-abc"}]}, "images[0].file_id",
     "unsupported_value"),
    ({"model": "gpt-image-2", "prompt": "p", "images": [{"file_id": "f", "image_url": data_url(RED)}]},
     "images[0]", "invalid_value"),
    ({"model": "gpt-image-2", "prompt": "p", "images": ["not an object"]}, "images[0]", "invalid_type"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "mask": {"image_url": data_url(jpeg())}},
     "mask", "invalid_image_format"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "mask": {"image_url": data_url(RED)}},
     "mask", "invalid_value"),                                  # no alpha channel
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED),
      "mask": {"image_url": data_url(png((32, 32), alpha=0))}}, "mask", "invalid_value"),   # not its size
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "input_fidelity": "low"}, "input_fidelity",
     "unsupported_parameter"),
    ({"model": "gpt-image-2.5-flare", "prompt": "p", "images": refs(RED), "input_fidelity": "high"},
     "input_fidelity", "unsupported_parameter"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "output_format": "jpeg",
      "background": "transparent"}, "background", "invalid_value"),
    ({"model": "gpt-image-2", "prompt": "p", "images": refs(RED), "output_compression": 50},
     "output_compression", "invalid_value"),
]


@pytest.mark.parametrize("body,param,code", JSON_REFUSALS)
def test_json_refusals(fresh, body, param, code):
    assert_openai_error(edit_json(fresh, body), 400, code=code, param=param)
    assert fresh.stats.images == 0


FORM_REFUSALS = [
    ({"model": "gpt-image-2"}, [("image", "a.png", RED)], "prompt", "missing_required_parameter"),
    ({"model": "gpt-image-2", "prompt": "p"}, [], "image", "missing_required_parameter"),
    ({"model": "gpt-image-2", "prompt": "p"}, [("image[]", "a.png", RED), ("image[]", "b.txt", b"text")],
     "image[1]", "invalid_image_format"),
    ({"model": "gpt-image-2", "prompt": "p", "n": "two"}, [("image", "a.png", RED)], "n", "invalid_type"),
    ({"model": "gpt-image-2", "prompt": "p", "moderation": "none"}, [("image", "a.png", RED)], "moderation",
     "invalid_value"),
    ({"model": "gpt-image-2", "prompt": "p"}, [("image", "a.txt", b"text")], "image", "invalid_image_format"),
]


@pytest.mark.parametrize("fields,files,param,code", FORM_REFUSALS)
def test_multipart_refusals(fresh, fields, files, param, code):
    assert_openai_error(edit_form(fresh, fields, files), 400, code=code, param=param)


def test_dall_e_edits_are_gone_with_the_models(fresh):
    # dall-e-2, the only DALL-E model that edited, was shut down on 2026-05-12; dall-e-3 never edited
    ans = edit_form(fresh, {"model": "dall-e-2", "prompt": "fill it"}, {"image": ("a.png", png((256, 256), alpha=0))})
    assert_openai_error(ans, 404, code="model_not_found", param="model")


def test_an_image_over_50_mb_is_refused(fresh):
    huge = b"\x89PNG\r\n\x1a\n" + bytes(50 * 2**20)
    ans = edit_form(fresh, {"model": "gpt-image-2", "prompt": "p"}, {"image": ("big.png", huge)})
    assert_openai_error(ans, 400, code="file_too_large", param="image")


def test_token_content_type_and_bad_forms(fresh):
    body = {"model": "gpt-image-2", "prompt": "p", "images": refs(RED)}
    assert_openai_error(edit_json(fresh, body, token="wrong"), 401, code="invalid_api_key")
    assert_openai_error(edit_json(fresh, None, raw=b"prompt=p", content_type="text/plain"), 400,
                        code="unsupported_content_type")
    assert_openai_error(edit_json(fresh, None, raw=b"{nope"), 400, code=None)
    assert_openai_error(edit_json(fresh, None, raw=b"--x\r\nnot a form", content_type="multipart/form-data"),
                        400, code=None)
    assert fresh.stats.images == 0 and fresh.stats.by_status == {"401": 1, "400": 3}
