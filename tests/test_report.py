"""The sweep comparison report: OUT/report.html and OUT/contact_sheet.png.

Pure tests build the page from a fabricated results table; the end-to-end tests make a real
run against the built-in simulator and open the page in headless Chromium.
"""
import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import batchgen
from batchgen.exceptions import UsageError
from batchgen.keeping.results import SCHEMA
from batchgen.showing import report

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
POLICY_WORD = "forbidden-fruit"
A = "quality=standard,style=vivid"
B = "quality=hd,style=vivid"
CHROMIUM = "/usr/bin/chromium"


# ---- a small DOM, from the standard library's parser --------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def find_all(self, tag=None, cls=None):
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and (cls is None or cls in child.classes()):
                    found.append(child)
                found.extend(child.find_all(tag, cls))
        return found


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text):
    builder = _Builder()
    builder.feed(text)
    builder.close()
    return builder.root


def grid(dom):
    (table,) = dom.find_all("table", "grid")
    return table


def column_headers(dom):
    """The sweep point of each column, from the first grid row's cells."""
    return [td.attrs.get("data-point") for td in grid_rows(dom)[0].find_all("td")]


def header_rows(dom):
    """Each header row's cells but the corner, as (text, columns spanned)."""
    thead = grid(dom).find_all("thead")[0]
    return [[("".join(th.text().split()), int(th.attrs.get("colspan", 1)))
             for th in tr.find_all("th") if "corner" not in th.classes()]
            for tr in thead.find_all("tr")]


def layout_of(df, job=None, **placement):
    return report.make_layout(report.sweep_points(job, df), **placement)


def grid_rows(dom):
    return grid(dom).find_all("tbody")[0].find_all("tr")


def assert_no_script(text, dom):
    assert "<script" not in text.lower()
    assert not dom.find_all("script")
    for node in dom.find_all():
        assert not any(name.lower().startswith("on") for name in node.attrs), (node.tag, node.attrs)


# ---- a fabricated run ---------------------------------------------------------------------

def _row(task_id, row_index, prompt, point, status, **kw):
    quality = "hd" if point == B else "standard"
    return {"task_id": task_id, "row_index": row_index, "prompt": prompt, "model": "dall-e-3",
            "quality": quality, "style": "vivid", "size": "1024x1024", "response_format": "b64_json",
            "n": kw.pop("n", 1), "status": status, "sweep_point": point, "attempts": 1, **kw}


def fabricated_rows():
    """3 prompts x 2 sweep points: the hostile prompt ok twice (one cost unknown), a normal prompt
    with n=2 at A and an error at B, and a prompt refused at both points."""
    return [
        _row("t0a", 0, HOSTILE, A, "ok", image_index=0, image_path="images/t0a_0.png",
             revised_prompt=HOSTILE + " rendered vividly", latency_s=1.0, est_cost_usd=0.04),
        _row("t0b", 0, HOSTILE, B, "ok", image_index=0, image_path="images/t0b_0.png",
             revised_prompt="short", latency_s=2.0, est_cost_usd=None),
        _row("t1a", 1, "A lighthouse at sunset", A, "ok", n=2, image_index=0,
             image_path="images/t1a_0.png", revised_prompt="a lighthouse, one", latency_s=3.0,
             est_cost_usd=0.04),
        _row("t1a", 1, "A lighthouse at sunset", A, "ok", n=2, image_index=1,
             image_path="images/t1a_1.png", revised_prompt="a lighthouse, two", latency_s=3.0,
             est_cost_usd=0.04),
        _row("t1b", 1, "A lighthouse at sunset", B, "error", error_code="rate_limit_exceeded",
             error_message="Slow <b>down</b> & retry", latency_s=0.5, est_cost_usd=0.0, http_status=429),
        _row("t2a", 2, "A forbidden-fruit on a table", A, "error", error_code="content_policy_violation",
             error_message="Your request was rejected", latency_s=0.1, est_cost_usd=0.0, http_status=400),
        _row("t2b", 2, "A forbidden-fruit on a table", B, "error", error_code="content_policy_violation",
             error_message="Your request was rejected", latency_s=0.2, est_cost_usd=0.0, http_status=400),
    ]


def fabricated_df(rows=None):
    return pa.Table.from_pylist(rows or fabricated_rows(), schema=SCHEMA).to_pandas()


def write_fabricated_out(out, rows=None, points=({"quality": "standard", "style": "vivid"},
                                                 {"quality": "hd", "style": "vivid"})):
    rows = rows or fabricated_rows()
    (out / "images").mkdir(parents=True)
    for i, row in enumerate(rows):
        if row["status"] == "ok":
            colour = ((i * 70) % 256, (i * 130) % 256, 200)
            Image.new("RGB", (64, 48), colour).save(out / row["image_path"])
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "results.parquet")
    (out / "job.json").write_text(json.dumps({"sweep_points": list(points),
                                              "job": {"defaults": {"model": "dall-e-3"}}}))
    return out


# ---- pure tests: the page from data --------------------------------------------------------

def test_grid_has_a_column_per_sweep_point_and_a_row_per_prompt():
    df = fabricated_df()
    text = report.build_html(df, layout_of(df))
    dom = parse(text)
    assert column_headers(dom) == [A, B]
    # One header row per axis; style has the fewest values, so it changes fastest.
    assert header_rows(dom) == [[("quality=standard", 1), ("quality=hd", 1)],
                                [("style=vivid", 1), ("style=vivid", 1)]]
    rows = grid_rows(dom)
    assert len(rows) == 3
    prompts = [" ".join(r.find_all("th", "prompt")[0].text().split()) for r in rows]
    assert prompts[0].endswith(HOSTILE) and prompts[1].endswith("A lighthouse at sunset")
    assert all(len(r.find_all("td")) == 2 for r in rows)


def test_columns_follow_the_jobs_sweep_order_not_the_tables():
    df = fabricated_df().iloc[::-1]
    job = {"sweep_points": [{"quality": "standard", "style": "vivid"}, {"quality": "hd", "style": "vivid"}]}
    assert report.column_labels(job, df) == [A, B]
    assert report.column_labels(None, df) == [B, A]          # no job.json: order of appearance
    # A point of the job with no results yet still gets its (empty) column.
    job["sweep_points"].append({"quality": "hd", "style": "natural"})
    assert report.column_labels(job, df) == [A, B, "quality=hd,style=natural"]


def test_hostile_text_is_escaped_everywhere_and_nothing_can_run():
    rows = fabricated_rows()
    rows[4]["error_message"] = HOSTILE
    evil_label = '<script>alert(1)</script>=x'
    rows[5]["sweep_point"] = evil_label
    df = fabricated_df(rows)
    text = report.build_html(df, layout_of(df))
    assert column_headers(parse(text)) == [A, B, evil_label]
    dom = parse(text)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "<img src=x" not in text and 'onerror="window' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert_no_script(text, dom)
    # The hostile prompt reads back as text: in the row header, the caption and the error box.
    page_text = dom.text()
    assert page_text.count(HOSTILE) >= 3
    # Only our own thumbnails are images: the hostile <img> became text.
    assert len(dom.find_all("img")) == 4
    # And a policy forbids scripts even if something slipped through.
    (csp,) = [m for m in dom.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"] and "script-src" not in csp.attrs["content"]


def test_cells_show_images_with_revised_prompts_and_errors_as_errors():
    df = fabricated_df()
    dom = parse(report.build_html(df, layout_of(df)))
    rows = grid_rows(dom)
    cells = [r.find_all("td") for r in rows]
    # row 0: one image per point, with its revised prompt below and on hover.
    (fig,) = cells[0][0].find_all("figure")
    (details,) = fig.find_all("details", "rp")
    assert details.find_all("summary")[0].text() == HOSTILE + " rendered vividly"
    (link,) = fig.find_all("a")
    assert link.attrs["href"] == "images/t0a_0.png"
    assert link.attrs["title"] == HOSTILE + " rendered vividly"
    # row 1: n=2 shows both images; the failed point shows its error, and no image.
    assert [a.attrs["href"] for a in cells[1][0].find_all("a")] == ["images/t1a_0.png", "images/t1a_1.png"]
    (err,) = cells[1][1].find_all("div", "error")
    assert err.find_all("span", "code")[0].text() == "rate_limit_exceeded"
    assert err.find_all("span", "msg")[0].text() == "Slow <b>down</b> & retry"
    assert not cells[1][1].find_all("img")
    # row 2: refused at both points.
    for cell in cells[2]:
        assert [e.find_all("span", "code")[0].text() for e in cell.find_all("div", "error")] == \
            ["content_policy_violation"]
        assert not cell.find_all("img")
    assert len(dom.find_all("div", "error")) == 3
    assert len(dom.find_all("img")) == 4


def test_thumbnails_are_embedded_when_given_and_unreadable_files_are_said_so():
    uris = {"images/t0a_0.png": report.Thumb("data:image/jpeg;base64,AAAA", 256, 192), "images/t0b_0.png": None,
            "images/t1a_0.png": report.Thumb("data:image/jpeg;base64,BBBB", 256, 146),
            "images/t1a_1.png": report.Thumb("data:image/jpeg;base64,CCCC", 146, 256)}
    df = fabricated_df()
    dom = parse(report.build_html(df, layout_of(df), uris))
    assert [(img.attrs["src"], img.attrs["width"], img.attrs["height"]) for img in dom.find_all("img")] == [
        ("data:image/jpeg;base64,AAAA", "256", "192"), ("data:image/jpeg;base64,BBBB", "256", "146"),
        ("data:image/jpeg;base64,CCCC", "146", "256")]
    (missing,) = dom.find_all("div", "missing")
    assert "images/t0b_0.png" in missing.text()


def test_an_image_path_outside_the_folder_is_not_linked():
    rows = fabricated_rows()
    rows[0]["image_path"] = "../../etc/passwd"
    rows[1]["image_path"] = "/etc/passwd"
    df = fabricated_df(rows)
    text = report.build_html(df, layout_of(df))
    assert 'href="../' not in text and 'href="/etc' not in text
    assert len(parse(text).find_all("div", "missing")) == 2


def test_per_point_statistics():
    stats = report.point_stats(fabricated_df(), [A, B])
    a, b, total = stats
    assert (a["label"], a["tasks"], a["ok"], a["errors"], a["images"]) == (A, 3, 2, 1, 3)
    assert a["error_codes"] == [("content_policy_violation", 1)]
    # Latency of the tasks that succeeded (a task with two images counts once): 1.0 and 3.0.
    assert a["p50_s"] == pytest.approx(2.0) and a["p95_s"] == pytest.approx(2.9)
    assert a["cost_usd"] == pytest.approx(0.12) and a["cost_unknown"] == 0
    revised = [HOSTILE + " rendered vividly", "a lighthouse, one", "a lighthouse, two"]
    assert a["revised_len"] == pytest.approx(np.mean([len(r) for r in revised]))

    assert (b["tasks"], b["ok"], b["errors"], b["images"]) == (3, 1, 2, 1)
    assert b["error_codes"] == [("content_policy_violation", 1), ("rate_limit_exceeded", 1)]
    assert b["p50_s"] == b["p95_s"] == pytest.approx(2.0)
    assert b["cost_usd"] is None                  # its only image has no known price
    assert b["revised_len"] == 5

    assert total["label"] is None
    assert (total["tasks"], total["ok"], total["errors"], total["images"]) == (6, 3, 3, 4)
    assert total["error_codes"] == [("content_policy_violation", 2), ("rate_limit_exceeded", 1)]
    assert total["cost_usd"] == pytest.approx(0.12) and total["cost_unknown"] == 1


def test_percentiles_match_numpy():
    latencies = [0.5 + 0.37 * i ** 1.5 for i in range(23)]
    rows = [_row(f"t{i}", i, f"p{i}", A, "ok", image_index=0, image_path=f"images/{i}.png",
                 latency_s=lat, est_cost_usd=0.04) for i, lat in enumerate(latencies)]
    (a, _total) = report.point_stats(fabricated_df(rows), [A])
    assert a["p50_s"] == pytest.approx(np.percentile(latencies, 50))
    assert a["p95_s"] == pytest.approx(np.percentile(latencies, 95))
    assert a["cost_usd"] == pytest.approx(0.04 * 23)


def test_an_empty_results_table_still_gives_a_page_and_a_sheet():
    df = pa.Table.from_pylist([], schema=SCHEMA).to_pandas()
    job = {"sweep_points": [{"quality": "standard", "style": "vivid"}]}
    dom = parse(report.build_html(df, layout_of(df, job)))
    assert header_rows(dom) == [[("style=vivid", 1)], [("quality=standard", 1)]] and grid_rows(dom) == []
    sheet = report.build_contact_sheet(df, [A], {})
    assert sheet.width > 0 and sheet.height > 0


def test_statistics_table_in_the_page():
    df = fabricated_df()
    dom = parse(report.build_html(df, layout_of(df)))
    (table,) = dom.find_all("table", "stats")
    body = table.find_all("tbody")[0].find_all("tr")
    cells = [[" ".join(td.text().split()) for td in tr.find_all("td")] for tr in body]
    assert [c[0] for c in cells] == ["quality=standard, style=vivid", "quality=hd, style=vivid", "all points"]
    assert cells[0][1:5] == ["3", "2", "1", "3"]
    assert cells[0][5] == "content_policy_violation × 1"
    assert cells[0][6:9] == ["2 s", "2.9 s", "$0.12"]
    assert cells[1][8] == "unknown"
    assert cells[2][8] == "$0.12 + unknown (1 image)"


# ---- the layout: which axes run across, which split the rows -------------------------------

def sweep(**axes):
    """Sweep points as job.json holds them (the product, last axis fastest)."""
    import itertools
    names = list(axes)
    points = [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
    return report.sweep_points({"sweep_points": points}, pd.DataFrame())


OTTER = {"quality": ["standard", "hd"], "style": ["vivid", "natural"], "size": ["1024x1024", "1792x1024"]}


def test_by_default_the_axis_with_the_fewest_values_changes_fastest():
    layout = report.make_layout(sweep(a=["1", "2", "3"], b=["x", "y"], c=["p", "q", "r", "s"]))
    assert [a.name for a in layout.cols] == ["c", "a", "b"] and layout.rows == []
    assert layout.col_keys[:3] == [("p", "1", "x"), ("p", "1", "y"), ("p", "2", "x")]
    assert len(layout.col_keys) == 24 and layout.row_keys == [()]
    # A tie: the earlier sweep axis changes faster, so standard and hd of one style sit together.
    layout = report.make_layout(sweep(**OTTER))
    assert [a.name for a in layout.cols] == ["size", "style", "quality"]
    assert layout.labels[:2] == ["quality=standard,style=vivid,size=1024x1024",
                                 "quality=hd,style=vivid,size=1024x1024"]


def test_cols_and_rows_place_the_axes():
    points = sweep(**OTTER)
    layout = report.make_layout(points, cols="size,quality")          # the rest split the rows
    assert ([a.name for a in layout.cols], [a.name for a in layout.rows]) == (["size", "quality"], ["style"])
    assert layout.row_keys == [("vivid",), ("natural",)]
    assert layout.label_at[(("1024x1024", "hd"), ("natural",))] == "quality=hd,style=natural,size=1024x1024"
    layout = report.make_layout(points, rows="size")                  # the rest are columns, as by default
    assert ([a.name for a in layout.cols], [a.name for a in layout.rows]) == (["style", "quality"], ["size"])
    layout = report.make_layout(points, cols=["quality"], rows=["style"])
    assert ([a.name for a in layout.cols], [a.name for a in layout.rows]) == (["quality"], ["style", "size"])
    assert len(layout.labels) == 8 == len(set(layout.labels))


@pytest.mark.parametrize("placement, message", [
    ({"cols": "qualty"}, "'qualty' is not a sweep axis of this run; its axes are quality, style, size"),
    ({"cols": "quality", "rows": "quality"}, "--cols and --rows both name 'quality'"),
    ({"rows": "size,size"}, "--rows names an axis twice"),
])
def test_a_bad_axis_name_says_which_axes_there_are(placement, message):
    with pytest.raises(UsageError, match=message):
        report.make_layout(sweep(**OTTER), **placement)


def test_without_a_sweep_there_is_nothing_to_place():
    assert report.make_layout({"all": {}}).labels == ["all"]
    with pytest.raises(UsageError, match="no sweep axes"):
        report.make_layout({"all": {}}, cols="quality")


def test_points_that_share_no_axes_are_each_a_column():
    df = fabricated_df()
    df.loc[df["task_id"] == "t2b", "sweep_point"] = "model=dall-e-3"
    layout = layout_of(df)
    assert [a.name for a in layout.cols] == [None] and layout.labels == [A, B, "model=dall-e-3"]
    dom = parse(report.build_html(df, layout))
    assert header_rows(dom) == [[(A, 1), (B, 1), ("model=dall-e-3", 1)]]


def test_a_row_axis_gives_each_prompt_a_row_per_value():
    df = fabricated_df()
    dom = parse(report.build_html(df, layout_of(df, cols="style", rows="quality")))
    rows = grid_rows(dom)
    assert len(rows) == 6
    assert [r.find_all("th", "prompt")[0].attrs.get("rowspan") for r in rows[::2]] == ["2"] * 3
    assert not any(r.find_all("th", "prompt") for r in rows[1::2])
    assert [" ".join(r.find_all("th", "point")[0].text().split()) for r in rows[:2]] == \
        ["quality=standard", "quality=hd"]
    assert [r.find_all("td")[0].attrs["data-point"] for r in rows[:2]] == [A, B]


# ---- the words that differ ------------------------------------------------------------------

def test_differing_words():
    assert report.differing_words(["A red cat, asleep.", "a blue cat asleep"]) == {"red", "blue"}
    assert report.differing_words(["Same words", "same words!"]) == set()
    assert report.differing_words(["only one text"]) == set()
    assert report.differing_words(["a b", "a c", "a b c"]) == {"b", "c"}


def test_words_that_differ_within_a_row_are_marked_and_stay_escaped():
    df = fabricated_df()
    rows = grid_rows(parse(report.build_html(df, layout_of(df))))
    # Row 1: two images at one point (its other point failed): "one" and "two" differ.
    assert [m.text() for m in rows[1].find_all("mark")] == ["one", "two"]
    # Row 0: the hostile revised prompt against "short": every word differs, and is text.
    first = rows[0].find_all("td")[0].find_all("summary")[0]
    assert first.text() == HOSTILE + " rendered vividly"
    assert "".join(m.text() for m in first.find_all("mark")) == "".join((HOSTILE + " rendered vividly").split())
    assert not first.find_all("script") and not first.find_all("img")
    # Row 2 has no revised prompts: nothing is marked.
    assert not rows[2].find_all("mark")


# ---- write_report: files in, files out ----------------------------------------------------

def test_write_report_without_results_says_to_run_first(tmp_path):
    with pytest.raises(UsageError, match="batchgen run"):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_report_without_results_exits_2(tmp_path):
    from click.testing import CliRunner

    from batchgen.cli.main import main
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "batchgen run" in result.output


def test_write_report_from_files(tmp_path):
    out = write_fabricated_out(tmp_path / "out")
    path = report.write_report(out)
    assert path == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "images", "job.json",
                                                    "report.html", "results.parquet"]
    text = path.read_text(encoding="utf-8")
    dom = parse(text)
    assert_no_script(text, dom)
    imgs = dom.find_all("img")
    assert len(imgs) == 4
    for img in imgs:
        prefix = "data:image/jpeg;base64,"
        assert img.attrs["src"].startswith(prefix)
        thumb = Image.open(io.BytesIO(base64.b64decode(img.attrs["src"][len(prefix):])))
        # A 64x48 image is embedded as it is (never enlarged) and shown 256 px wide, in its shape.
        assert thumb.format == "JPEG" and thumb.size == (64, 48)
        assert (img.attrs["width"], img.attrs["height"]) == ("256", "192")
        assert img.parent.tag == "a" and (out / img.parent.attrs["href"]).is_file()
    with Image.open(out / "contact_sheet.png") as sheet:
        width, height = sheet.size
    # 2 columns and 3 rows of thumbnails, plus labels; nothing absurd.
    assert 2 * 48 < width < 2 * (report.THUMB_SHEET + 40) + 400
    assert 3 * 48 < height < 3 * (report.THUMB_SHEET + 40) + 200


def test_missing_image_file_is_reported_not_fatal(tmp_path):
    out = write_fabricated_out(tmp_path / "out")
    (out / "images" / "t0a_0.png").unlink()
    (out / "images" / "t0b_0.png").write_bytes(b"not an image")
    dom = parse(report.write_report(out).read_text(encoding="utf-8"))
    assert len(dom.find_all("img")) == 2
    assert len(dom.find_all("div", "missing")) == 2
    Image.open(out / "contact_sheet.png").verify()


def test_thumbnails_of_png_jpeg_and_webp_keep_their_shape(tmp_path):
    rows = fabricated_rows()
    paths = {"images/t0a_0.png": (640, 360, "PNG"), "images/t0b_0.webp": (360, 640, "WEBP"),
             "images/t1a_0.jpg": (900, 600, "JPEG"), "images/t1a_1.jpeg": (400, 400, "JPEG")}
    for row, path in zip([r for r in rows if r["status"] == "ok"], paths):
        row["image_path"] = path
    out = write_fabricated_out(tmp_path / "out", rows)
    for path, (w, h, fmt) in paths.items():
        mode = "RGBA" if fmt == "PNG" else "RGB"       # a transparent PNG is laid on white
        Image.new(mode, (w, h), (200, 60, 20, 128) if mode == "RGBA" else (20, 60, 200)).save(out / path, fmt)
    dom = parse(report.write_report(out, thumb=300).read_text(encoding="utf-8"))
    shown = {}
    for img in dom.find_all("img"):
        data = base64.b64decode(img.attrs["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as thumb:
            shown[img.parent.attrs["href"]] = ((img.attrs["width"], img.attrs["height"]), thumb.size)
    assert shown == {"images/t0a_0.png": (("300", "169"), (300, 169)),
                     "images/t0b_0.webp": (("169", "300"), (169, 300)),
                     "images/t1a_0.jpg": (("300", "200"), (300, 200)),
                     "images/t1a_1.jpeg": (("300", "300"), (300, 300))}


def test_cli_report_options(cli, tmp_path):
    out = write_fabricated_out(tmp_path / "out")
    done = cli("report", out, "--cols", "style", "--rows", "quality", "--per-page", "1", "--thumb", "128")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.glob("report*.html")) == ["report-2.html", "report-3.html", "report.html"]
    dom = parse((out / "report.html").read_text(encoding="utf-8"))
    assert len(grid_rows(dom)) == 2 and {img.attrs["width"] for img in dom.find_all("img")} == {"128"}
    for args, message in [(("--cols", "colour"),
                           "'colour' is not a sweep axis of this run; its axes are quality, style"),
                          (("--per-page", "0"), "--per-page 0: give a whole number of prompts, 1 or more"),
                          (("--thumb", "10"), "--thumb 10: give the thumbnails' long side in pixels, 64 to 2048")]:
        done = cli("report", out, *args)
        assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output


def big_run(out, prompts=60):
    """`prompts` prompts x 8 sweep points, one in seven an error."""
    points = [{"quality": q, "style": s, "size": z} for q in ("standard", "hd") for s in ("vivid", "natural")
              for z in ("1024x1024", "1792x1024")]
    labels = [",".join(f"{k}={v}" for k, v in p.items()) for p in points]
    rows = []
    for i in range(prompts):
        for j, label in enumerate(labels):
            if (i + j) % 7 == 0:
                rows.append(_row(f"t{i}_{j}", i, f"prompt {i} " + "word " * 40, label, "error",
                                 error_code="content_policy_violation", error_message="no", latency_s=0.1))
            else:
                rows.append(_row(f"t{i}_{j}", i, f"prompt {i} " + "word " * 40, label, "ok", image_index=0,
                                 image_path=f"images/{i}_{j}.png", revised_prompt="r" * i,
                                 latency_s=1 + i / 10, est_cost_usd=0.08))
    return write_fabricated_out(out, rows, points), rows


def page_links(dom):
    (nav, *_) = dom.find_all("nav", "pages")
    return [a.attrs["href"] for a in nav.find_all("a")]


def test_every_prompt_is_on_one_page_and_each_page_stands_alone(tmp_path):
    out, rows = big_run(tmp_path / "out")
    assert report.write_report(out, per_page=25) == out / "report.html"
    names = ["report.html", "report-2.html", "report-3.html"]
    assert sorted(p.name for p in out.glob("report*.html")) == sorted(names)
    seen = []
    for number, name in enumerate(names, 1):
        text = (out / name).read_text(encoding="utf-8")
        dom = parse(text)
        assert_no_script(text, dom)
        seen += [int(tr.attrs["id"].split("-")[1]) for tr in grid_rows(dom)]
        # Self-contained: images are embedded; links go to the full images, the sheet and other pages only.
        assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in dom.find_all("img"))
        hrefs = {a.attrs["href"] for a in dom.find_all("a")}
        assert all((out / h).is_file() for h in hrefs), hrefs
        assert len(dom.find_all("img")) == sum(
            1 for r in rows if r["status"] == "ok" and 25 * (number - 1) <= r["row_index"] < 25 * number)
        # The statistics, on the first page only, count every row.
        stats = dom.find_all("table", "stats")
        if number == 1:
            total = stats[0].find_all("tr", "total")[0]
            assert [td.text() for td in total.find_all("td")][1] == "480"
            assert page_links(dom) == ["report-2.html", "report-3.html", "report-2.html"]  # pages, then "next"
        else:
            assert not stats and "report.html" in page_links(dom)
            assert f"prompts {25 * (number - 1) + 1}–{min(60, 25 * number)} of 60" in text
    assert seen == list(range(60))
    # The contact sheet shows the first page's prompts.
    with Image.open(out / "contact_sheet.png") as sheet:
        width, height = sheet.size
    assert width <= report.SHEET_MAX_W and height <= report.SHEET_MAX_H
    assert width >= 8 * 48 and height >= 25 * 48

    # Fewer pages next time: the pages of the earlier report go.
    report.write_report(out)
    assert sorted(p.name for p in out.glob("report*.html")) == ["report-2.html", "report.html"]
    assert len(grid_rows(parse((out / "report.html").read_text(encoding="utf-8")))) == report.PER_PAGE


def test_a_later_page_links_its_neighbours_and_both_ends():
    nav = parse(report._nav_html(report.Page(number=10, count=40, first=450, prompts=2000)))
    assert page_links(nav) == ["report-9.html", "report.html", *[f"report-{n}.html" for n in (7, 8, 9, 11, 12, 13)],
                               "report-40.html", "report-11.html"]
    assert [s.text() for s in nav.find_all("span", "current")] == ["10"]


# ---- a real run against the simulator, and the page in a real browser ---------------------

@pytest.fixture(scope="module")
def real_out(tmp_path_factory):
    from batchgen.simulator import SimulatorThread
    base = tmp_path_factory.mktemp("report_run")
    csv = base / "prompts.csv"
    pd.DataFrame({"prompt": [HOSTILE, "A lighthouse at sunset, oil painting",
                             f"A {POLICY_WORD} on a silver plate"]}).to_csv(csv, index=False)
    out = base / "out"
    with SimulatorThread() as sim:
        summary = batchgen.run(str(csv), out=str(out), base_url=sim.acedata_url,
                               defaults={"model": "dall-e-3", "response_format": "b64_json"},
                               sweep=[("quality", ["standard", "hd"]), ("style", ["vivid", "natural"])],
                               environ={"ACEDATA_API_TOKEN": "sim-token"})
    assert summary.ok == 8 and summary.errors == 4
    report.write_report(out)
    return out


# Both axes have two values: the earlier one, quality, changes fastest across the columns.
REAL_LABELS = ["quality=standard,style=vivid", "quality=hd,style=vivid",
               "quality=standard,style=natural", "quality=hd,style=natural"]


def test_report_of_a_real_run(real_out):
    text = (real_out / "report.html").read_text(encoding="utf-8")
    dom = parse(text)
    assert_no_script(text, dom)
    assert column_headers(dom) == REAL_LABELS
    rows = grid_rows(dom)
    assert len(rows) == 3
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    df = pd.read_parquet(real_out / "results.parquet")
    assert len(dom.find_all("img")) == int((df["status"] == "ok").sum()) == 8
    # The policy word's row is an error in every column, with the API's code.
    policy_row = rows[2]
    assert POLICY_WORD in policy_row.find_all("th")[0].text()
    for cell in policy_row.find_all("td"):
        assert not cell.find_all("img")
        (err,) = cell.find_all("div", "error")
        assert err.find_all("span", "code")[0].text() == "content_policy_violation"
    for row in rows[:2]:
        for cell in row.find_all("td"):
            (a,) = cell.find_all("a")
            assert (real_out / a.attrs["href"]).is_file()
            assert cell.find_all("summary")[0].text()          # the revised prompt, below
    # Per point: one error each, est. cost $0.08 (standard) / $0.16 (hd) for two images.
    stats_rows = dom.find_all("table", "stats")[0].find_all("tbody")[0].find_all("tr")
    costs = [tr.find_all("td")[8].text() for tr in stats_rows]
    assert costs == ["$0.08", "$0.16", "$0.08", "$0.16", "$0.48"]      # in the grid's order
    with Image.open(real_out / "contact_sheet.png") as sheet:
        width, height = sheet.size
    assert 4 * report.THUMB_SHEET < width < 4 * report.THUMB_SHEET + 400
    assert 3 * report.THUMB_SHEET < height < 3 * report.THUMB_SHEET + 200


def _chromium(*args, tmp_path):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (Debian package `chromium`; .ci/install-chromium "
                    "installs it); the report's browser test needs it")
    return CHROMIUM


def test_report_in_headless_chromium(real_out, chromium, tmp_path):
    page = (real_out / "report.html").resolve().as_uri()
    done = _chromium("--dump-dom", page, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dom_text = done.stdout
    dom = parse(dom_text)
    df = pd.read_parquet(real_out / "results.parquet")
    imgs = dom.find_all("img")
    # Exactly our thumbnails: the hostile <img onerror> is text, not an element.
    assert len(imgs) == int((df["status"] == "ok").sum()) == 8
    assert all(img.attrs["src"].startswith("data:image/") for img in imgs)
    # The hostile prompt is shown as text, and no script element exists (none was ever added).
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in dom_text
    assert HOSTILE in dom.text()
    assert_no_script(dom_text, dom)
    assert len(grid_rows(dom)) == 3 and len(column_headers(dom)) == 4

    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1400,1000", page, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        im.load()
        # Not a blank page: the thumbnails put colour on it.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 50
    keep_screenshot(shot, "report.png")


def keep_screenshot(shot, name):
    """A copy of a screenshot in $BATCHGEN_REPORT_SCREENSHOTS, to look at (the tests judge geometry)."""
    folder = os.environ.get("BATCHGEN_REPORT_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(shot, os.path.join(folder, name))


# The page forbids scripts; to measure its layout, a copy without the policy gets this probe,
# which writes the boxes Chromium laid out into the DOM that --dump-dom prints.
PROBE = """<script>
addEventListener("load", () => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const details = [...document.querySelectorAll("details.rp")].map(d => {
    const s = d.querySelector("summary"), closed = [s.clientHeight, s.scrollHeight];
    d.open = true;
    const opened = [s.clientHeight, s.scrollHeight];
    d.open = false;
    return {closed, opened, chars: s.textContent.length};
  });
  const geometry = {
    viewport: [innerWidth, innerHeight], scrollWidth: document.documentElement.scrollWidth,
    heads: [...document.querySelectorAll("table.grid thead tr")].map(tr => [...tr.children].map(th =>
      ({text: th.textContent, corner: th.classList.contains("corner"), box: box(th)}))),
    cells: [...document.querySelectorAll("table.grid td.cell")].map(td => ({point: td.dataset.point,
      row: td.parentElement.id, box: box(td), imgs: [...td.querySelectorAll("img")].map(box)})),
    details};
  const pre = document.createElement("pre");
  pre.id = "geometry";
  pre.textContent = JSON.stringify(geometry);
  document.body.appendChild(pre);
});
</script>"""


def layout_in_chromium(page, tmp_path, width=1400, height=1000):
    """The page's layout in a `width` px window: grid header cells, grid cells and their images
    (boxes as [left, top, right, bottom] CSS px from the top of the page), revised prompts' heights."""
    import re
    text = page.read_text(encoding="utf-8")
    text, policies = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    assert policies == 1
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = _chromium("--dump-dom", f"--window-size={width},{height}", probe.as_uri(), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (pre,) = [n for n in parse(done.stdout).find_all("pre") if n.attrs.get("id") == "geometry"]
    return json.loads(pre.text())


def screenshot(page, tmp_path, width=1400, height=1000):
    shot = tmp_path / "shot.png"
    done = _chromium(f"--screenshot={shot}", f"--window-size={width},{height}", page.as_uri(), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (width, height)
    return shot, im


def test_every_point_of_a_two_axis_sweep_sits_side_by_side_at_1400_px(real_out, chromium, tmp_path):
    geo = layout_in_chromium(real_out / "report.html", tmp_path)
    width = geo["viewport"][0]
    assert width == 1400 and geo["scrollWidth"] <= width            # nothing to scroll sideways
    first = [c for c in geo["cells"] if c["row"] == "row-0"]
    assert [c["point"] for c in first] == REAL_LABELS
    lefts = [c["box"][0] for c in first]
    assert lefts == sorted(lefts) and all(c["box"][2] <= width for c in first)
    # Every image of the rows that succeeded is on screen, 256 px on its long side.
    shot, im = screenshot(real_out / "report.html", tmp_path)
    keep_screenshot(shot, "two_axes.png")
    background = im.getpixel((5, im.height - 5))
    imgs = [b for c in geo["cells"] if c["row"] in ("row-0", "row-1") for b in c["imgs"]]
    assert len(imgs) == 8
    for left, top, right, bottom in imgs:
        assert 0 <= left and right <= width and max(right - left, bottom - top) == pytest.approx(256)
    # ... and drawn there in the screenshot: the first row's four thumbnails are pictures, not background.
    row0 = [b for c in first for b in c["imgs"]]
    assert row0 and all(b[1] + 64 < im.height for b in row0), "the first row of images is below the fold"
    for left, top, right, bottom in row0:
        region = im.crop((int(left) + 2, int(top) + 2, int(right) - 2, min(int(bottom), im.height) - 2))
        colours = region.getcolors(maxcolors=1 << 16) or ()
        assert len(colours) > 50 and max(colours)[1] != background


def test_the_three_axis_sample_sweep_has_one_header_row_per_axis(cli, chromium, tmp_path):
    out = tmp_path / "otter"
    job = os.path.join(os.path.dirname(__file__), "..", "jobs", "otter_sweep.toml")
    assert cli("run", job, "--simulate", "--out", out, "--no-progress").exit_code == 0
    assert cli("report", out).exit_code == 0
    geo = layout_in_chromium(out / "report.html", tmp_path)
    heads = [[th for th in row if not th["corner"]] for row in geo["heads"]]
    # Outermost first: all three axes have two values, so the later sweep axis is the outer one.
    assert [[" ".join(th["text"].split()) for th in row] for row in heads] == [
        ["size=1024x1024", "size=1792x1024"],
        ["style=vivid", "style=natural"] * 2,
        ["quality=standard", "quality=hd"] * 4]
    first = [c for c in geo["cells"] if c["row"] == "row-0"]
    assert [c["point"] for c in first] == [f"quality={q},style={s},size={z}" for z in ("1024x1024", "1792x1024")
                                           for s in ("vivid", "natural") for q in ("standard", "hd")]
    # Each header cell spans exactly the columns below it: the leaves sit over the cells.
    leaves = heads[-1]
    for th, cell in zip(leaves, first):
        assert th["box"][0] == pytest.approx(cell["box"][0], abs=1)
        assert th["box"][2] == pytest.approx(cell["box"][2], abs=1)
    for row in heads[:-1]:
        span = len(leaves) // len(row)
        for i, th in enumerate(row):
            assert th["box"][0] == pytest.approx(leaves[i * span]["box"][0], abs=1)
            assert th["box"][2] == pytest.approx(leaves[(i + 1) * span - 1]["box"][2], abs=1)
    # Wide images keep their shape: 1792x1024 is shown 256 x 146.
    for cell in first:
        ((left, top, right, bottom),) = cell["imgs"]
        expected = (256, 146) if "1792x1024" in cell["point"] else (256, 256)
        assert (round(right - left), round(bottom - top)) == expected
    # A revised prompt shows four lines, and all of itself once opened.
    assert geo["details"]
    for d in geo["details"]:
        (closed_h, closed_full), (open_h, open_full) = d["closed"], d["opened"]
        assert closed_full > closed_h              # the simulator's revised prompts are longer than 4 lines
        assert open_h >= open_full and open_h > closed_h
    shot, _ = screenshot(out / "report.html", tmp_path, height=1400)
    keep_screenshot(shot, "three_axes.png")


def test_the_report_says_when_its_images_come_from_the_simulator(cli, fresh_sim, prompts_csv, tmp_path):
    simulated, real = tmp_path / "simulated", tmp_path / "real"
    assert cli("run", prompts_csv, "--out", simulated, "--simulate", "--no-progress").exit_code == 0
    assert cli("run", prompts_csv, "--out", real, "--base-url", fresh_sim.acedata_url, "--no-progress").exit_code == 0
    for out in (simulated, real):
        assert cli("report", out).exit_code == 0
    page = (simulated / "report.html").read_text()
    assert "built-in simulator" in page and "placeholders" in page
    page = (real / "report.html").read_text()
    assert "simulator" not in page and f"acedata (live) at {fresh_sim.acedata_url}" in page


def test_the_report_compares_the_current_inputs_rows_only(cli, fresh_sim, tmp_path):
    out = tmp_path / "out"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    pd.DataFrame({"prompt": ["an otter", "a lighthouse"]}).to_csv(first, index=False)
    pd.DataFrame({"prompt": ["a lighthouse"]}).to_csv(second, index=False)
    args = ("--out", out, "--base-url", fresh_sim.acedata_url, "--no-progress")
    assert cli("run", first, *args).exit_code == 0
    assert cli("run", second, *args).exit_code == 0
    assert cli("report", out).exit_code == 0
    page = (out / "report.html").read_text()
    assert "a lighthouse" in page and "an otter" not in page


def test_the_contact_sheet_says_itself_that_its_images_are_simulated():
    def warm_pixels(simulated: bool) -> int:
        rows = [{**r, "simulated": simulated} for r in fabricated_rows()]
        sheet = report.build_contact_sheet(fabricated_df(rows), [A, B], {}).convert("RGB")
        corner = sheet.crop((0, 0, 200, 30))
        pixels = corner.tobytes()
        return sum(1 for i in range(0, len(pixels), 3)
                   if pixels[i] > 120 and pixels[i + 1] < 110 and pixels[i + 2] < 60)
    assert warm_pixels(True) > 20
    assert warm_pixels(False) == 0


# ---- the table read a batch at a time --------------------------------------------------------

def _report_files(out):
    """Every file the report writes, by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.name == "contact_sheet.png" or p.name.startswith("report")}


def _rewritten(src, dest, table, **write):
    """A copy of the output folder `src` at `dest` whose results.parquet holds `table`."""
    shutil.copytree(src, dest)
    for p in dest.iterdir():
        if p.name == "contact_sheet.png" or p.name.startswith("report"):
            p.unlink()
    pq.write_table(table, dest / "results.parquet", **write)
    return dest


@pytest.fixture(scope="module")
def paged_run(tmp_path_factory):
    """A --simulate run of 13 prompts (two refused by the policy word) x 2 sweep points, 2 images
    a task, and the table it wrote."""
    from click.testing import CliRunner

    from batchgen.cli.main import main
    base = tmp_path_factory.mktemp("paged_run")
    csv = base / "prompts.csv"
    prompts = [f"prompt {i}: " + (POLICY_WORD if i in (3, 10) else "a harbour at dawn") for i in range(13)]
    pd.DataFrame({"prompt": prompts}).to_csv(csv, index=False)
    out = base / "one" / "out"
    done = CliRunner().invoke(main, ["run", str(csv), "--out", str(out), "--simulate", "--model", "gpt-image-2",
                                     "--n", "2", "--quality", "low",
                                     "--sweep", "size=1024x1024,1536x1024", "--no-progress"])
    assert done.exit_code == 1, done.output          # the refused prompts' tasks are errors
    return out, pq.read_table(out / "results.parquet")


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_the_report_is_the_same_whatever_the_row_groups_and_the_order(paged_run, tmp_path, monkeypatch, order):
    out, table = paged_run
    one = _rewritten(out, tmp_path / "one" / "out", table)                  # one row group
    if order == "shuffled":         # as another tool might write it: the report sorts by row
        table = table.take(np.random.default_rng(5).permutation(table.num_rows))
    many = _rewritten(out, tmp_path / "many" / "out", table, row_group_size=3)
    assert pq.ParquetFile(one / "results.parquet").metadata.num_row_groups == 1
    assert pq.ParquetFile(many / "results.parquet").metadata.num_row_groups == -(-table.num_rows // 3)
    report.write_report(one, per_page=4)
    monkeypatch.setattr(report, "BATCH_ROWS", 5)     # batches that end inside pages and row groups
    report.write_report(many, per_page=4)
    expected = _report_files(one)
    assert sorted(expected) == ["contact_sheet.png", "report-2.html", "report-3.html", "report-4.html",
                                "report.html"]
    assert _report_files(many) == expected


def test_the_report_of_a_run_says_what_the_run_made(paged_run, tmp_path, monkeypatch):
    """The golden figures of paged_run: 13 prompts x 2 points = 26 tasks; the two refused
    prompts' 4 tasks are errors; 22 tasks ok of 2 images each; gpt-image-2 low, billed by its
    answers' usage: 272 output tokens an image at 1024x1024 and 408 at 1536x1024 (the simulator's
    count, by area), $30 per 1M, and the prompt's text tokens at $5 per 1M."""
    out, table = paged_run
    out = _rewritten(out, tmp_path / "out", table, row_group_size=7)
    monkeypatch.setattr(report, "BATCH_ROWS", 6)
    report.write_report(out, per_page=4)
    first = parse((out / "report.html").read_text(encoding="utf-8"))
    meta = [p.text() for p in first.find_all("p", "meta")]
    assert "13 prompts × 2 sweep points: 26 tasks, 22 ok, 4 with errors, 44 images, estimated cost $0.45" in meta
    stats = [[" ".join(td.text().split()) for td in tr.find_all("td")]
             for tr in first.find_all("table", "stats")[0].find_all("tbody")[0].find_all("tr")]
    assert [s[:6] for s in stats] == [
        ["size=1024x1024", "13", "11", "2", "22", "content_policy_violation × 2"],
        ["size=1536x1024", "13", "11", "2", "22", "content_policy_violation × 2"],
        ["all points", "26", "22", "4", "44", "content_policy_violation × 4"]]
    # 11 tasks x (2 x 272 tokens x $30/1M + the prompt's 7 text tokens x $5/1M) = $0.1799; 2 x 408 at 1536x1024
    assert [s[8] for s in stats] == ["$0.18", "$0.27", "$0.45"]
    # Prompts in row order, 4 a page; the refused ones are an error in both columns.
    pages = {}
    for number, name in enumerate(["report.html", "report-2.html", "report-3.html", "report-4.html"], 1):
        dom = parse((out / name).read_text(encoding="utf-8"))
        pages[number] = [int(tr.attrs["id"].split("-")[1]) for tr in grid_rows(dom)]
        for tr in grid_rows(dom):
            row = int(tr.attrs["id"].split("-")[1])
            assert tr.find_all("th")[0].text().endswith(f"prompt {row}: " + (
                POLICY_WORD if row in (3, 10) else "a harbour at dawn"))
            errors = [c for c in tr.find_all("td") if c.find_all("div", "error")]
            assert len(errors) == (2 if row in (3, 10) else 0)
            assert len(tr.find_all("img")) == (0 if row in (3, 10) else 4)
    assert pages == {1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9, 10, 11], 4: [12]}


def test_a_page_is_handed_on_once_its_rows_are_read_not_at_the_end(tmp_path, monkeypatch):
    """In a table sorted by row, as a run writes it, the pages come out as the reading goes:
    what is held is a batch and a page, not the table."""
    out, rows = big_run(tmp_path / "out")       # 60 prompts x 8 points, a row each, in row order
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "results.parquet", row_group_size=50)
    monkeypatch.setattr(report, "BATCH_ROWS", 16)
    with report.ResultsBatches(out / "results.parquet", out) as results:
        tally, lowest = report.first_reading(results)
        read = []
        reading = results.batches

        def counted(columns):
            for df, n in reading(columns):
                read.append(n)
                yield df, n
        results.batches = counted
        handed = [(number, list(dict.fromkeys(part["row_index"])), read[-1])
                  for number, part in report._page_parts(results, tally.prompt_keys, 5, lowest)]
    assert [(n, keys) for n, keys, _ in handed] == [(n, list(range(5 * n - 5, 5 * n))) for n in range(1, 13)]
    for number, _keys, rows_read in handed[:-1]:
        # A page's 40 rows end at row 40 * number; it is handed on within a batch of that.
        assert 40 * number <= rows_read < 40 * number + 16
