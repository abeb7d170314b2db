"""Model rules and prices: what each model allows, without a server."""
import pytest

from batchgen.rules import models


def test_dall_e_3_allows_its_documented_parameters():
    assert models.parameter_problems({"model": "dall-e-3", "size": "1792x1024", "quality": "hd",
                                      "style": "natural", "n": 1, "response_format": "url"}) == []


@pytest.mark.parametrize("params, word", [
    ({"model": "dall-e-3", "size": "512x512"}, "size"),
    ({"model": "dall-e-3", "quality": "high"}, "quality"),
    ({"model": "dall-e-3", "n": 2}, "n"),
    ({"model": "dall-e-2", "style": "vivid"}, "style"),
    ({"model": "dall-e-2", "quality": "hd"}, "quality"),
    ({"model": "gpt-image-1", "response_format": "url"}, "response_format"),
    ({"model": "gpt-image-1", "size": "1792x1024"}, "size"),
    ({"model": "gpt-image-1-mini", "quality": "standard"}, "quality"),
    ({"size": "1792x1024"}, "size"),  # no model: the API's default, dall-e-2
])
def test_refuses_what_the_model_does_not_allow_and_names_it(params, word):
    problems = models.parameter_problems(params)
    assert len(problems) == 1
    assert problems[0].startswith(word + " ")
    assert "allowed:" in problems[0]


def test_gpt_image_2_takes_custom_sizes_within_its_limits():
    ok = {"model": "gpt-image-2"}
    assert models.parameter_problems({**ok, "size": "1536x864"}) == []
    assert models.parameter_problems({**ok, "size": "3840x2160"}) == []
    assert models.parameter_problems({**ok, "size": "1000x1000"})       # not divisible by 16
    assert models.parameter_problems({**ok, "size": "3840x1024"})       # wider than 3:1
    assert models.parameter_problems({**ok, "size": "4096x2304"})       # above 3840x2160
    assert models.parameter_problems({"model": "gpt-image-2-2026-04-21", "size": "1536x864"}) == []
    assert models.parameter_problems({"model": "gpt-image-1", "size": "1536x864"})


def test_unknown_models_pass_unchecked():
    assert models.rules_for("flux-pro") is None
    assert models.parameter_problems({"model": "flux-pro", "size": "7x7", "style": "odd"}) == []


def test_prompt_limits_per_model():
    assert models.prompt_problem("", "dall-e-3") == "prompt is missing or blank"
    assert models.prompt_problem("   ", "dall-e-3") == "prompt is missing or blank"
    assert models.prompt_problem(None, "dall-e-3") == "prompt is missing or blank"
    assert models.prompt_problem("x" * 4000, "dall-e-3") is None
    assert "at most 4000" in models.prompt_problem("x" * 4001, "dall-e-3")
    assert "at most 1000" in models.prompt_problem("x" * 1001, "dall-e-2")
    assert models.prompt_problem("x" * 32000, "gpt-image-1") is None


@pytest.mark.parametrize("params, word", [
    ({"model": "dall-e-3", "output_format": "webp"}, "output_format"),
    ({"model": "dall-e-2", "background": "transparent"}, "background"),
    ({"model": "dall-e-3", "moderation": "low"}, "moderation"),
    ({"model": "dall-e-3", "output_compression": 50}, "output_compression"),
    ({"model": "gpt-image-1", "output_format": "gif"}, "output_format"),
    ({"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"}, "background"),
    ({"model": "gpt-image-1", "output_compression": 80}, "output_compression"),          # png
    ({"model": "gpt-image-1", "output_compression": 101, "output_format": "webp"}, "output_compression"),
    ({"model": "gpt-image-1", "input_fidelity": "high"}, "input_fidelity"),               # not an edit
])
def test_gpt_image_parameters_are_refused_where_the_api_refuses_them(params, word):
    problems = models.parameter_problems(params)
    assert len(problems) == 1 and problems[0].startswith(word), problems


def test_gpt_image_parameters_the_api_takes():
    assert models.parameter_problems({"model": "gpt-image-1", "output_format": "webp", "output_compression": 80,
                                      "background": "transparent", "moderation": "low"}) == []
    assert models.parameter_problems({"model": "gpt-image-2", "output_format": "jpeg",
                                      "background": "opaque"}) == []
    assert models.parameter_problems({"model": "gpt-image-1", "input_fidelity": "high"}, edit=True) == []
    # gpt-image-1-mini takes only low; gpt-image-2 none (the SDK's edit reference)
    assert models.parameter_problems({"model": "gpt-image-1-mini", "input_fidelity": "low"}, edit=True) == []
    assert models.parameter_problems({"model": "gpt-image-1-mini", "input_fidelity": "high"}, edit=True)
    assert models.parameter_problems({"model": "gpt-image-2", "input_fidelity": "low"}, edit=True)
