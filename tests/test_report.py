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
from batchgen import report
from batchgen.exceptions import UsageError
from batchgen.results import SCHEMA

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
    thead = grid(dom).find_all("thead")[0]
    return ["".join(th.text().split()) for th in thead.find_all("th")][1:]


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
    text = report.build_html(df, [A, B])
    dom = parse(text)
    assert column_headers(dom) == [A, B]
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
    text = report.build_html(fabricated_df(rows), [A, B, evil_label])
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
    dom = parse(report.build_html(fabricated_df(), [A, B]))
    rows = grid_rows(dom)
    cells = [r.find_all("td") for r in rows]
    # row 0: one image per point, with its revised prompt below and on hover.
    (fig,) = cells[0][0].find_all("figure")
    assert fig.find_all("figcaption")[0].text() == HOSTILE + " rendered vividly"
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
    uris = {"images/t0a_0.png": "data:image/jpeg;base64,AAAA", "images/t0b_0.png": None,
            "images/t1a_0.png": "data:image/jpeg;base64,BBBB", "images/t1a_1.png": "data:image/jpeg;base64,CCCC"}
    dom = parse(report.build_html(fabricated_df(), [A, B], uris))
    assert [img.attrs["src"] for img in dom.find_all("img")] == [
        "data:image/jpeg;base64,AAAA", "data:image/jpeg;base64,BBBB", "data:image/jpeg;base64,CCCC"]
    (missing,) = dom.find_all("div", "missing")
    assert "images/t0b_0.png" in missing.text()


def test_an_image_path_outside_the_folder_is_not_linked():
    rows = fabricated_rows()
    rows[0]["image_path"] = "../../etc/passwd"
    rows[1]["image_path"] = "/etc/passwd"
    text = report.build_html(fabricated_df(rows), [A, B])
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
    dom = parse(report.build_html(df, [A]))
    assert column_headers(dom) == [A] and grid_rows(dom) == []
    sheet = report.build_contact_sheet(df, [A], {})
    assert sheet.width > 0 and sheet.height > 0


def test_statistics_table_in_the_page():
    dom = parse(report.build_html(fabricated_df(), [A, B]))
    (table,) = dom.find_all("table", "stats")
    body = table.find_all("tbody")[0].find_all("tr")
    cells = [[" ".join(td.text().split()) for td in tr.find_all("td")] for tr in body]
    assert [c[0] for c in cells] == ["quality=standard, style=vivid", "quality=hd, style=vivid", "all points"]
    assert cells[0][1:5] == ["3", "2", "1", "3"]
    assert cells[0][5] == "content_policy_violation × 1"
    assert cells[0][6:9] == ["2 s", "2.9 s", "$0.12"]
    assert cells[1][8] == "unknown"
    assert cells[2][8] == "$0.12 + unknown (1 image)"


# ---- write_report: files in, files out ----------------------------------------------------

def test_write_report_without_results_says_to_run_first(tmp_path):
    with pytest.raises(UsageError, match="batchgen run"):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_report_without_results_exits_2(tmp_path):
    from click.testing import CliRunner
    from batchgen.cli import main
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
        assert thumb.format == "JPEG" and max(thumb.size) <= report.THUMB_HTML
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


def test_big_run_is_capped_and_says_so(tmp_path):
    points = [{"quality": q, "style": s, "size": z} for q in ("standard", "hd") for s in ("vivid", "natural")
              for z in ("1024x1024", "1792x1024")]
    labels = [",".join(f"{k}={v}" for k, v in p.items()) for p in points]
    rows = []
    for i in range(60):
        for j, label in enumerate(labels):
            if (i + j) % 7 == 0:
                rows.append(_row(f"t{i}_{j}", i, f"prompt {i} " + "word " * 40, label, "error",
                                 error_code="content_policy_violation", error_message="no", latency_s=0.1))
            else:
                rows.append(_row(f"t{i}_{j}", i, f"prompt {i} " + "word " * 40, label, "ok", image_index=0,
                                 image_path=f"images/{i}_{j}.png", revised_prompt="r" * i,
                                 latency_s=1 + i / 10, est_cost_usd=0.08))
    out = write_fabricated_out(tmp_path / "out", rows, points)
    text = report.write_report(out).read_text(encoding="utf-8")
    dom = parse(text)
    assert len(column_headers(dom)) == 8
    assert len(grid_rows(dom)) == report.MAX_PROMPTS
    assert f"first {report.MAX_PROMPTS} of 60 prompts" in text
    shown_ok = sum(1 for r in rows if r["status"] == "ok" and r["row_index"] < report.MAX_PROMPTS)
    assert len(dom.find_all("img")) == shown_ok
    # The statistics still count every row.
    stats_total = dom.find_all("table", "stats")[0].find_all("tr", "total")[0]
    assert [td.text() for td in stats_total.find_all("td")][1] == "480"
    with Image.open(out / "contact_sheet.png") as sheet:
        width, height = sheet.size
    assert width <= report.SHEET_MAX_W and height <= report.SHEET_MAX_H
    assert width >= 8 * 48 and height >= report.MAX_PROMPTS * 48


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


REAL_LABELS = ["quality=standard,style=vivid", "quality=standard,style=natural",
               "quality=hd,style=vivid", "quality=hd,style=natural"]


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
            assert cell.find_all("figcaption")[0].text()       # the revised prompt, below
    # Per point: one error each, est. cost $0.08 (standard) / $0.16 (hd) for two images.
    stats_rows = dom.find_all("table", "stats")[0].find_all("tbody")[0].find_all("tr")
    costs = [tr.find_all("td")[8].text() for tr in stats_rows]
    assert costs == ["$0.08", "$0.08", "$0.16", "$0.16", "$0.48"]
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
    keep = os.environ.get("BATCHGEN_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


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
