"""gpt-image-2.6's SVG and animated GIF outputs and its markup-guided edits: saved under their
real type and checked (an SVG parsed safely, a GIF walked to its trailer), shown by the report
only through <img>, drawn on the contact sheet, exported with their extensions and content
types; a markup column sent on /images/edits. Real HTTP against the simulator, or against a
small server in the test for the answers the simulator never gives."""
import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import TOKEN, results
from hostile import Hostile, generation, json_response
from PIL import Image
from simhttp import assert_openai_error, call, data_url, multipart, png

import batchgen
from batchgen.exceptions import BadResponse
from batchgen.keeping.imagecheck import MAX_SVG_BYTES, gif_info, svg_size
from batchgen.simulator import SimConfig, SimulatorThread

FLARE = {"model": "gpt-image-2.6-flare", "quality": "low", "size": "1024x1024"}
PROMPTS = ["a lighthouse on a cliff", "a red fox in snow"]


def openai_run(base_url, source, out, **options):
    return batchgen.run(str(source), out=str(out), provider="openai", base_url=base_url,
                        environ={"OPENAI_API_KEY": TOKEN}, progress=False, **options)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(path, index=False)
    return path


def gif(colours=((220, 20, 20), (20, 20, 220), (20, 200, 20)), size=(48, 32)) -> bytes:
    frames = [Image.new("RGB", size, c).convert("P") for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


SCRIPTED_SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 150" '
                b'onload="alert(1)"><script>alert(document.cookie)</script>'
                b'<rect width="300" height="150" fill="#c33"/></svg>')


def serving(image: bytes) -> Hostile:
    """A server that answers every generation with these image bytes."""
    return Hostile(lambda request, body, count: json_response(
        generation(image={"b64_json": base64.b64encode(image).decode()})))


# ---- saved under their real type ---------------------------------------------------------------

def test_svg_and_gif_outputs_are_saved_as_svg_and_gif_with_their_size_and_frames(fresh_sim, prompts, tmp_path):
    out = tmp_path / "out"
    summary = openai_run(fresh_sim.openai_base_url, prompts, out, defaults=FLARE,
                         sweep=[("output_format", ["svg", "gif", "png"])])
    assert summary.exit_status == 0 and summary.ok == 6
    df = results(out)
    for row in df.itertuples():
        data = (out / row.image_path).read_bytes()
        assert row.image_path.endswith("." + row.output_format)
        assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.bytes
        assert (row.width, row.height) == (1024, 1024)
        if row.output_format == "gif":
            assert data.startswith(b"GIF89a") and row.frames == Image.open(io.BytesIO(data)).n_frames > 1
        else:
            assert pd.isna(row.frames)
        if row.output_format == "svg":
            assert b"<svg" in data
    assert fresh_sim.stats["params"]["output_format"] == 6


def test_svg_and_gif_come_back_from_the_batch_api_checked_and_typed_alike(prompts, tmp_path):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=0.2)) as sim:
        summary = openai_run(sim.openai_base_url, prompts, out, defaults=FLARE, mode="batch", poll_interval=0.1,
                             sweep=[("output_format", ["svg", "gif"])])
    assert summary.ok == 4
    df = results(out)
    assert sorted(Path(p).suffix for p in df.image_path) == [".gif", ".gif", ".svg", ".svg"]
    assert len(df.frames.dropna()) == 2 and df.frames.dropna().gt(1).all() and set(df["mode"]) == {"batch"}


def test_svg_or_gif_for_a_model_that_does_not_make_them_is_refused_before_sending(prompts, cli):
    r = cli("plan", prompts, "--provider", "openai", "--model", "gpt-image-2", "--output-format", "svg")
    assert r.exit_code == 2 and "output_format 'svg' is not allowed for gpt-image-2" in r.output
    r = cli("plan", prompts, "--provider", "openai", "--model", "gpt-image-2.6-sunburst", "--output-format", "gif")
    assert r.exit_code == 0, r.output


def test_the_simulator_refuses_svg_from_a_model_without_it(fresh_sim):
    answer = call(fresh_sim.openai_base_url + "/images/generations",
                  {"model": "gpt-image-2", "prompt": "p", "output_format": "svg"})
    assert_openai_error(answer, 400, code="invalid_value", param="output_format")


# ---- an SVG is checked as XML, safely -----------------------------------------------------------

@pytest.mark.parametrize("svg, size", [
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480px"/>', (640, 480)),
    (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 150"/>', (300, 150)),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="50%" viewBox="0,0,64,32"/>', (64, 32)),
    (b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- made --><svg width="12.6"><g/></svg>', (13, None)),
])
def test_an_svgs_size_comes_from_its_attributes_else_its_viewbox(svg, size):
    assert svg_size(svg) == size


def test_an_svg_with_a_script_is_kept_and_the_report_shows_it_only_as_an_img(tmp_path, prompts):
    from batchgen.showing.report import write_report
    out = tmp_path / "out"
    with serving(SCRIPTED_SVG) as server:
        summary = openai_run(server.base_url, prompts, out, defaults={**FLARE, "output_format": "svg"})
    assert summary.exit_status == 0
    df = results(out)
    assert all(p.endswith(".svg") for p in df.image_path)
    assert list(df.width) == [300, 300] and list(df.height) == [150, 150]      # from its viewBox
    page = write_report(out).read_text()
    figures = re.findall(r"<figure.*?</figure>", page, re.S)
    assert len(figures) == 2
    for figure in figures:
        src = re.search(r'<img src="data:image/svg\+xml;base64,([^"]+)"', figure)
        assert src and base64.b64decode(src[1]) == SCRIPTED_SVG       # the picture, shown as an image
        assert "<a " not in figure                                      # never opened as a page
    # No way for the SVG's markup to run: not inline, not in an object, embed or iframe.
    for tag in ("<svg", "<script", "<object", "<embed", "<iframe", "onload"):
        assert tag not in page.lower(), tag
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', page)[1]
    assert "default-src &#x27;none&#x27;" in csp and "script-src" not in csp     # scripts forbidden too


def test_a_big_svg_is_pointed_at_by_an_img_not_embedded(tmp_path, prompts):
    from batchgen.showing.report import SVG_EMBED_BYTES, write_report
    big = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><!-- '
           + b"x" * SVG_EMBED_BYTES + b" --></svg>")
    out = tmp_path / "out"
    with serving(big) as server:
        assert openai_run(server.base_url, prompts, out, defaults={**FLARE, "output_format": "svg"}).ok == 2
    page = write_report(out).read_text()
    paths = sorted(results(out).image_path)
    assert sorted(re.findall(r'<img src="(images/[^"]+\.svg)"', page)) == paths
    assert f'href="{paths[0]}"' not in page and len(page) < SVG_EMBED_BYTES


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
                  + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(8))
                  + b']><svg xmlns="http://www.w3.org/2000/svg">&i;</svg>')


@pytest.mark.parametrize("name, data, why", [
    ("malformed", b'<svg xmlns="http://www.w3.org/2000/svg"><rect></svg>', "not well-formed XML"),
    ("not svg", b'<?xml version="1.0"?><html><body>hi</body></html>', "root element is <html>, not <svg>"),
    ("oversized", b'<svg xmlns="http://www.w3.org/2000/svg">' + b" " * MAX_SVG_BYTES + b"</svg>",
     "over batchgen's limit"),
    ("billion laughs", BILLION_LAUGHS, "internal subset"),
    ("nested without end", b"<svg>" + b"<g>" * 2000 + b"</g>" * 2000 + b"</svg>", "nest more than"),
    ("truncated gif", gif()[:-40], "cut short"),
    ("gif without trailer", gif()[:-1], "no trailer"),
])
def test_a_bad_svg_or_gif_is_a_bad_response_and_nothing_is_kept(tmp_path, name, data, why):
    out = tmp_path / "out"
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["one"]}).to_csv(csv, index=False)
    with serving(data) as server:
        summary = openai_run(server.base_url, csv, out, defaults=FLARE, max_retries=0)
    df = results(out)
    assert summary.exit_status == 1 and df.error_code[0] == "bad_response"
    assert why in df.error_message[0]
    assert not [p for p in (out / "images").rglob("*") if p.is_file()]


@pytest.mark.parametrize("doctype, kept", [
    ('<!DOCTYPE svg [<!ENTITY x SYSTEM "file://{secret}">]>', False),       # refused: it declares one
    ('<!DOCTYPE svg SYSTEM "file://{secret}">', True),                      # kept: the DTD is never read
])
def test_an_external_entity_or_dtd_is_never_read(tmp_path, prompts, doctype, kept):
    secret = tmp_path / "secret.txt"
    secret.write_text('<!ENTITY x "TOP-SECRET-VALUE">')
    xxe = (f'<?xml version="1.0"?>{doctype.format(secret=secret)}'
           f'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><text>&x;</text></svg>').encode()
    out = tmp_path / "out"
    with serving(xxe) as server:
        summary = openai_run(server.base_url, prompts, out, defaults=FLARE, max_retries=0)
    df = results(out)
    if kept:
        assert summary.exit_status == 0 and (out / df.image_path[0]).read_bytes() == xxe
    else:
        assert summary.exit_status == 1 and set(df.error_code) == {"bad_response"}
        assert all("internal subset" in m for m in df.error_message)
    from batchgen.showing.report import write_report
    write_report(out)
    written = "".join(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert "TOP-SECRET-VALUE" not in written


def test_the_svg_1_1_doctype_that_many_tools_write_is_accepted():
    svg = (b'<?xml version="1.0" standalone="no"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
           b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
           b'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10"/></svg>')
    assert svg_size(svg) == (20, 10)


# ---- a GIF is walked, its frames counted ----------------------------------------------------------

def test_a_gifs_frames_are_counted_from_its_blocks():
    assert gif_info(gif()) == (48, 32, 3)
    assert gif_info(gif(colours=((1, 2, 3),))) == (48, 32, 1)
    with pytest.raises(BadResponse, match="cut short"):
        gif_info(gif()[:30])
    with pytest.raises(BadResponse, match="header"):
        gif_info(b"GIF89a\x01")


# ---- the contact sheet, and exports ---------------------------------------------------------------

def test_the_contact_sheet_draws_a_gifs_first_frame_and_an_svg_placeholder(tmp_path, prompts):
    from batchgen.showing.report import THUMB_SHEET, make_thumbnails, write_report
    red_first = gif(colours=((220, 20, 20), (20, 20, 220)), size=(64, 64))
    out = tmp_path / "out"
    with serving(red_first) as server:
        openai_run(server.base_url, prompts, out, defaults={**FLARE, "output_format": "gif"})
    df = results(out)
    assert list(df.frames) == [2, 2]
    page = write_report(out).read_text()
    assert page.count("animated GIF, 2 frames") == 2
    thumb, small = make_thumbnails(out / df.image_path[0])
    r, g, b = small.convert("RGB").getpixel((small.width // 2, small.height // 2))
    assert r > 180 and g < 60 and b < 60                    # the first frame: red, not blue
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    assert any(px[0] > 180 and px[2] < 60 for px in sheet.get_flattened_data())

    svg = tmp_path / "x.svg"
    svg.write_bytes(SCRIPTED_SVG)
    thumb, small = make_thumbnails(svg)
    assert thumb.uri.startswith("data:image/svg+xml;base64,") and (thumb.width, thumb.height) == (256, 128)
    assert small.size == (THUMB_SHEET, THUMB_SHEET // 2)
    colours = {c for _, c in small.convert("RGB").getcolors(1 << 16)}
    assert (226, 230, 235) in colours and len(colours) > 2     # a grey tile with its label
    svg.write_bytes(BILLION_LAUGHS)
    assert make_thumbnails(svg) is None                          # shown as unreadable, never parsed open


def _tar_members(dest: Path) -> dict:
    with tarfile.open(next((dest / "data").glob("*/*.tar"))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_exports_carry_svg_and_gif_with_their_content_types(fresh_sim, prompts, tmp_path):
    import pyarrow.parquet as pq

    from batchgen.showing.exports import export
    out = tmp_path / "out"
    openai_run(fresh_sim.openai_base_url, prompts, out, defaults=FLARE,
               sweep=[("output_format", ["svg", "gif", "jpeg"])])
    export(out, "webdataset", tmp_path / "wds")
    members = _tar_members(tmp_path / "wds")
    # Several formats in one export: every sample's image has one name (datasets reads samples
    # alike), holding the bytes as made; each row's content_type says what they are.
    assert {n.rsplit(".", 1)[1] for n in members if not n.endswith(".json")} == {"png"}
    for name, data in members.items():
        if name.endswith(".json"):
            row = json.loads(data)
            ext = Path(row["image_path"]).suffix
            assert row["content_type"] == {".svg": "image/svg+xml", ".gif": "image/gif", ".jpg": "image/jpeg"}[ext]
            assert members[name[:-len(".json")] + ".png"] == (out / row["image_path"]).read_bytes()
    export(out, "parquet", tmp_path / "pq")
    table = pq.read_table(next((tmp_path / "pq/data").glob("*"))).to_pandas()
    by_type = dict(zip(table.content_type, table.image))
    assert by_type["image/svg+xml"].lstrip().startswith(b"<?xml") and by_type["image/gif"].startswith(b"GIF8")
    assert set(table.content_type) == {"image/svg+xml", "image/gif", "image/jpeg"}


@pytest.mark.parametrize("output_format", ["svg", "gif"])
def test_an_export_of_one_format_keeps_its_extension(fresh_sim, prompts, tmp_path, output_format):
    from batchgen.showing.exports import export
    out = tmp_path / "out"
    openai_run(fresh_sim.openai_base_url, prompts, out, defaults={**FLARE, "output_format": output_format})
    export(out, "webdataset", tmp_path / "wds")
    members = _tar_members(tmp_path / "wds")
    assert {n.rsplit(".", 1)[1] for n in members} == {output_format, "json"}


# ---- markup-guided edits ------------------------------------------------------------------------

@pytest.fixture
def markup_table(tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "room.png").write_bytes(png(color=(200, 200, 200)))
    (pictures / "circled.png").write_bytes(png(color=(250, 10, 10)))
    source = tmp_path / "edits.csv"
    pd.DataFrame({"prompt": ["paint the circled wall blue", "add a window", "add a lamp"],
                  "image": ["pictures/room.png"] * 3,
                  "markup": ["pictures/circled.png", None, "pictures/missing.png"]}).to_csv(source, index=False)
    return source


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_markup_results(out, tmp_path):
    df = results(out).set_index("prompt")
    room, circled = sha(tmp_path / "pictures/room.png"), sha(tmp_path / "pictures/circled.png")
    # The simulator names the markup it was sent in its revised_prompt.
    assert df.revised_prompt["paint the circled wall blue"].startswith(f"edit of {room[:16]} (markup {circled[:16]})")
    assert df.markup_sha256["paint the circled wall blue"] == circled
    assert df.markup_image["paint the circled wall blue"] == "pictures/circled.png"   # as the table named it
    assert df.revised_prompt["add a window"] == f"edit of {room[:16]}: add a window"
    assert pd.isna(df.markup_sha256["add a window"])
    assert df.error_code["add a lamp"] == "invalid_params" and "markup image" in df.error_message["add a lamp"]
    return df


def test_a_markup_column_is_sent_with_each_edit_as_multipart(fresh_sim, markup_table, tmp_path):
    out = tmp_path / "out"
    summary = openai_run(fresh_sim.openai_base_url, markup_table, out, defaults=FLARE)
    assert summary.ok == 2 and summary.errors == 1
    check_markup_results(out, tmp_path)
    assert fresh_sim.stats["by_path"] == {"/v1/images/edits": 2}


def test_the_report_shows_an_edits_markup_beside_its_input(fresh_sim, markup_table, tmp_path):
    from batchgen.showing.report import write_report
    out = tmp_path / "out"
    openai_run(fresh_sim.openai_base_url, markup_table, out, defaults=FLARE)
    page = write_report(out).read_text()
    heads = dict(re.findall(r'<span class="text">([^<]*)</span>(.*?)</th>', page, re.S))
    assert heads["paint the circled wall blue"].count("<img") == 2
    assert 'alt="markup image pictures/circled.png"' in heads["paint the circled wall blue"]
    assert heads["add a window"].count("<img") == 1 and "markup" not in heads["add a window"]


def test_a_markup_column_goes_through_the_batch_api_as_json(markup_table, tmp_path):
    out = tmp_path / "out"
    with SimulatorThread(SimConfig(batch_seconds=0.2)) as sim:
        summary = openai_run(sim.openai_base_url, markup_table, out, defaults=FLARE, mode="batch",
                             poll_interval=0.1)
    assert summary.ok == 2
    assert set(check_markup_results(out, tmp_path)["mode"]) == {"batch"}


def test_the_markup_is_part_of_the_task_id_and_edits_without_it_keep_theirs(markup_table, tmp_path):
    from batchgen.commands import prepare

    def ids(**options):
        _, _, plan = prepare(str(markup_table), {"defaults": FLARE, **options})
        return [t.task_id for t in plan.tasks]

    with_markup = ids()
    table = pd.read_csv(markup_table)
    table.drop(columns="markup").to_csv(tmp_path / "plain.csv", index=False)
    _, _, plain = prepare(str(tmp_path / "plain.csv"), {"defaults": FLARE})
    plain_ids = [t.task_id for t in plain.tasks]
    assert with_markup[1] == plain_ids[1]          # no markup in the row: the id it had before
    assert with_markup[0] != plain_ids[0]
    (tmp_path / "pictures/circled.png").write_bytes(png(color=(10, 250, 10)))
    assert ids()[0] != with_markup[0]              # other markup bytes: another task
    assert ids()[1] == with_markup[1]


def test_markup_for_a_model_without_it_is_that_rows_invalid_params(fresh_sim, markup_table, tmp_path):
    out = tmp_path / "out"
    openai_run(fresh_sim.openai_base_url, markup_table, out, defaults={**FLARE, "model": "gpt-image-2"})
    df = results(out).set_index("prompt")
    assert df.error_code["paint the circled wall blue"] == "invalid_params"
    assert "takes no markup image" in df.error_message["paint the circled wall blue"]
    assert df.status["add a window"] == "ok"        # its row has no markup
    assert fresh_sim.stats["by_path"] == {"/v1/images/edits": 1}


def test_markup_column_option_names_the_column_and_a_wrong_name_is_a_usage_error(markup_table, tmp_path, cli):
    table = pd.read_csv(markup_table).rename(columns={"markup": "drawn"})
    table.to_csv(tmp_path / "drawn.csv", index=False)
    r = cli("plan", tmp_path / "drawn.csv", "--provider", "openai", "--model", "gpt-image-2.6-flare",
            "--markup-column", "drawn", "--json")
    assert r.exit_code == 0, r.output
    r = cli("plan", tmp_path / "drawn.csv", "--provider", "openai", "--model", "gpt-image-2.6-flare",
            "--markup-column", "sketch")
    assert r.exit_code == 2 and "--markup-column 'sketch'" in r.output


def test_the_simulator_takes_markup_from_2_6_models_only(fresh_sim):
    room, circled = png(color=(200, 200, 200)), png(color=(250, 10, 10))
    raw, ctype = multipart({"model": "gpt-image-2", "prompt": "p"},
                           [("image", "room.png", room), ("markup", "m.png", circled)])
    answer = call(fresh_sim.base_url + "/v1/images/edits", raw=raw, content_type=ctype)
    assert_openai_error(answer, 400, code="unsupported_parameter", param="markup")
    body = {"model": "gpt-image-2.6-sunburst", "prompt": "p", "images": [{"image_url": data_url(room)}],
            "markup": {"image_url": data_url(circled)}}
    answer = call(fresh_sim.base_url + "/v1/images/edits", body)
    assert answer.status == 200
    assert f"markup {hashlib.sha256(circled).hexdigest()[:16]}" in answer.json()["data"][0]["revised_prompt"]
    without = call(fresh_sim.base_url + "/v1/images/edits", {k: v for k, v in body.items() if k != "markup"})
    usage, usage_without = answer.json()["usage"], without.json()["usage"]
    assert usage["input_tokens_details"]["image_tokens"] == 2 * usage_without["input_tokens_details"]["image_tokens"]
