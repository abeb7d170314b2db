"""The sweep comparison report: OUT/report.html and OUT/contact_sheet.png.

    write_report(out)            reads OUT/results.parquet and OUT/job.json, writes both files
    column_labels(job, df)       the grid's columns: the job's sweep points, in sweep order
    point_stats(df, labels)      per sweep point: counts, error codes, latency, cost, revised length
    build_html(df, labels, ...)  the page as a string, from data only (no files)
    build_contact_sheet(...)     the same grid as one Pillow image, from data and thumbnails

The page is one self-contained file: thumbnails are embedded as data: URIs, each linking to the
full-size image next to it (OUT/images/...); no network, no script. Every piece of text that
comes from the data (prompts, revised prompts, error messages, labels, paths) goes through
html.escape, and a Content-Security-Policy meta tag forbids scripts as a second line of defence.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import quote

from .exceptions import UsageError
from .outdir import read_job, safe_image_path, write_atomic

MAX_PROMPTS = 50          # rows of the grid (HTML and contact sheet); statistics cover all rows
THUMB_HTML = 256          # long side of an embedded thumbnail, px
THUMB_SHEET = 160         # long side of a contact-sheet thumbnail, px
SHEET_MAX_W = 4000        # the contact sheet never grows past this (thumbnails shrink instead)
SHEET_MAX_H = 10000
SHEET_MIN_THUMB = 32

CSP = ("default-src 'none'; img-src data: 'self' file:; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


# ---- reading ----------------------------------------------------------------------------

def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN / pd.NA-ish
    except (TypeError, ValueError):
        import pandas as pd
        return bool(pd.isna(value))


def _text(value) -> Optional[str]:
    if _missing(value):
        return None
    return str(value)


def _label(point: dict) -> str:
    from .job import point_label
    return point_label(point)


def column_labels(job: Optional[dict], df) -> list[str]:
    """The sweep points' labels in the job's sweep order, then any others the results hold."""
    labels: list[str] = []
    for point in (job or {}).get("sweep_points") or []:
        if isinstance(point, dict):
            label = _label(point)
            if label not in labels:
                labels.append(label)
    if "sweep_point" in df.columns:
        for label in df["sweep_point"].tolist():
            label = _text(label) or "all"
            if label not in labels:
                labels.append(label)
    return labels or ["all"]


def _normalised(df):
    """The results with the columns the report reads present, and sweep_point filled in."""
    df = df.copy()
    for name in ("task_id", "row_index", "prompt", "status", "revised_prompt", "image_path",
                 "image_index", "error_code", "error_message", "latency_s", "est_cost_usd"):
        if name not in df.columns:
            df[name] = None
    if "sweep_point" not in df.columns:
        df["sweep_point"] = "all"
    df["sweep_point"] = [(_text(v) or "all") for v in df["sweep_point"]]
    # A task's identity: its id when there is one, else its row and sweep point.
    df["_task"] = [(_text(t) or f"{r}|{p}") for t, r, p in zip(df["task_id"], df["row_index"], df["sweep_point"])]
    return df


def _safe_relpath(path) -> Optional[str]:
    """image_path as a relative link inside OUT, or None if it is absent or points outside."""
    return safe_image_path(_text(path))


# ---- statistics -------------------------------------------------------------------------

def point_stats(df, labels: list[str]) -> list[dict]:
    """One dict per sweep point (in `labels` order), then one for all points (label None).

    tasks / ok / errors count tasks (a task with n images is one task); images counts images;
    error_codes is [(code, count)] most frequent first; p50_s / p95_s are latencies of the tasks
    that succeeded; cost_usd sums est_cost_usd (None when every image's cost is unknown) and
    cost_unknown counts images whose cost is unknown; revised_len is the mean length in
    characters of the revised prompts (None when there are none).
    """
    df = _normalised(df)
    groups = {label: df[df["sweep_point"] == label] for label in labels}
    out = [_stats(label, groups[label]) for label in labels]
    out.append(_stats(None, df))
    return out


def _stats(label, sub) -> dict:
    tasks = sub.drop_duplicates("_task")
    ok_tasks = tasks[tasks["status"] == "ok"]
    err_tasks = tasks[tasks["status"] != "ok"]
    ok_rows = sub[sub["status"] == "ok"]
    codes = Counter((_text(c) or "unknown") for c in err_tasks["error_code"])
    latencies = [float(v) for v in ok_tasks["latency_s"] if not _missing(v)]
    costs = [None if _missing(v) else float(v) for v in ok_rows["est_cost_usd"]]
    known = [c for c in costs if c is not None]
    unknown = len(costs) - len(known)
    revised = [len(t) for t in (_text(v) for v in ok_rows["revised_prompt"]) if t]
    return {
        "label": label,
        "tasks": len(tasks),
        "ok": len(ok_tasks),
        "errors": len(err_tasks),
        "images": len(ok_rows),
        "error_codes": sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])),
        "p50_s": _percentile(latencies, 50),
        "p95_s": _percentile(latencies, 95),
        "cost_usd": (None if costs and not known else sum(known)),
        "cost_unknown": unknown,
        "revised_len": (sum(revised) / len(revised)) if revised else None,
    }


def _percentile(values: list[float], q: float) -> Optional[float]:
    """The q-th percentile with linear interpolation (numpy's and pandas' default)."""
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _fmt_seconds(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3g} s"


def _fmt_cost(stats: dict) -> str:
    cost, unknown = stats["cost_usd"], stats["cost_unknown"]
    if cost is None:
        return "unknown"
    text = f"{cost:,.3f}"
    if text.endswith("0"):
        text = text[:-1]
    text = "$" + text
    if unknown:
        text += f" + unknown ({unknown} image{'s' if unknown != 1 else ''})"
    return text


# ---- the page ---------------------------------------------------------------------------

def e(value) -> str:
    """Text for HTML, element content or attribute value alike."""
    return html.escape("" if value is None else str(value), quote=True)


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2329; background: #f6f7f9; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
p.meta { margin: 2px 0; color: #56606b; }
p.note { margin: 8px 0; padding: 6px 10px; background: #fff7d6; border: 1px solid #ecd27a;
         border-radius: 4px; display: inline-block; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table { border-collapse: separate; border-spacing: 0; background: #fff; }
table.stats { border: 1px solid #d5dae0; border-radius: 6px; overflow: hidden; }
table.stats th, table.stats td { padding: 5px 10px; border-bottom: 1px solid #e6e9ed;
       text-align: left; vertical-align: top; }
table.stats td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.stats thead th { background: #eef1f4; font-weight: 600; }
table.stats td.label { white-space: nowrap; }
table.stats td.codes span { white-space: nowrap; }
table.stats tr.total td { font-weight: 600; background: #f7f9fa; }
table.stats td.codes { font-size: 12px; }
table.grid { border: 1px solid #d5dae0; }
table.grid th, table.grid td { border-right: 1px solid #e1e5ea; border-bottom: 1px solid #e1e5ea;
       vertical-align: top; padding: 8px; }
table.grid thead th { position: sticky; top: 0; z-index: 2; background: #eef1f4;
       font-weight: 600; text-align: left; min-width: 200px; box-shadow: 0 1px 0 #d5dae0; }
table.grid thead th.corner { left: 0; z-index: 3; min-width: 0; }
table.grid thead th span.axis { display: block; white-space: nowrap; }
table.grid th.prompt { position: sticky; left: 0; z-index: 1; background: #fbfcfd; width: 220px;
       min-width: 180px; max-width: 260px; font-weight: normal; text-align: left; }
th.prompt .idx { color: #7a8591; font-size: 12px; display: block; }
th.prompt .text { display: block; max-height: 220px; overflow: auto; white-space: pre-wrap;
       word-break: break-word; }
td.cell { width: 276px; min-width: 200px; }
.images { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; max-width: 260px; }
figure img { display: block; max-width: 256px; max-height: 256px; border-radius: 3px;
       background: #e9ecef; border: 1px solid #d5dae0; }
figcaption { margin-top: 4px; font-size: 12px; color: #47515c; white-space: pre-wrap;
       word-break: break-word; display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical;
       overflow: hidden; }
.images.multi { gap: 6px; }
.images.multi figure { max-width: 126px; }
.images.multi figure img { max-width: 126px; max-height: 126px; }
.images.multi figcaption { -webkit-line-clamp: 2; font-size: 11px; }
.error { background: #fdecec; border: 1px solid #e3a0a0; color: #8a1c1c; border-radius: 4px;
       padding: 6px 8px; max-width: 260px; word-break: break-word; }
.error .code { font-weight: 700; display: block; }
.error .msg { font-size: 12px; white-space: pre-wrap; }
.missing { background: #f1f1f1; border: 1px dashed #aaa; color: #555; border-radius: 4px;
       padding: 6px 8px; font-size: 12px; max-width: 260px; word-break: break-all; }
.empty { color: #98a1ab; font-style: italic; }
"""


def _header_label(label: str) -> str:
    """A sweep point's label, one axis a line; its text is still the label itself."""
    parts = label.split(",")
    return "".join(f'<span class="axis">{e(p)}{"," if i < len(parts) - 1 else ""}</span>'
                   for i, p in enumerate(parts))


def _prompt_order(df) -> list:
    """Row indices in order, each with its prompt text."""
    seen = {}
    for idx, prompt in zip(df["row_index"], df["prompt"]):
        key = None if _missing(idx) else int(idx)
        if key not in seen or seen[key] is None:
            seen[key] = _text(prompt)
    keys = sorted(seen, key=lambda k: (k is None, k if k is not None else 0))
    return [(k, seen[k]) for k in keys]


def _cells(df, rows: set) -> dict:
    """(row_index, label) -> list of result rows (dicts), images in image_index order."""
    cells: dict = {}
    keep = df[[(not _missing(i)) and int(i) in rows for i in df["row_index"]]] if len(df) else df
    for rec in keep.to_dict("records"):
        cells.setdefault((int(rec["row_index"]), rec["sweep_point"]), []).append(rec)
    for recs in cells.values():
        recs.sort(key=lambda r: (r.get("status") != "ok",
                                 0 if _missing(r.get("image_index")) else int(r["image_index"])))
    return cells


def _cell_html(recs: list, thumbnails: Optional[Mapping[str, Optional[str]]]) -> str:
    if not recs:
        return '<span class="empty">no result</span>'
    parts, figures = [], []
    for rec in recs:
        if rec.get("status") == "ok":
            figures.append(_figure_html(rec, thumbnails))
        else:
            code = _text(rec.get("error_code")) or "error"
            message = _text(rec.get("error_message")) or ""
            parts.append(f'<div class="error" title="{e(message)}"><span class="code">{e(code)}</span>'
                         f'<span class="msg">{e(message)}</span></div>')
    if figures:
        cls = "images multi" if len(figures) > 1 else "images"
        parts.insert(0, f'<div class="{cls}">' + "".join(figures) + "</div>")
    return "".join(parts)


def _figure_html(rec: dict, thumbnails) -> str:
    path = _text(rec.get("image_path"))
    rel = _safe_relpath(path)
    revised = _text(rec.get("revised_prompt"))
    caption = f"<figcaption>{e(revised)}</figcaption>" if revised else ""
    if rel is None:
        return f'<figure><div class="missing">no image file{": " + e(path) if path else ""}</div>{caption}</figure>'
    if thumbnails is None:
        src = quote(rel, safe="/")       # no thumbnails made: the image itself, next to the page
    else:
        src = thumbnails.get(path) or thumbnails.get(rel)
        if not src:
            return (f'<figure><div class="missing">image file missing or unreadable: '
                    f'{e(rel)}</div>{caption}</figure>')
    href = quote(rel, safe="/")
    hover = revised or "open the full-size image"
    return (f'<figure><a href="{e(href)}" title="{e(hover)}"><img src="{e(src)}" alt="{e(revised or rel)}" '
            f'loading="lazy"></a>{caption}</figure>')


def _stats_html(stats: list[dict]) -> str:
    head = ("<thead><tr><th>sweep point</th><th>tasks</th><th>ok</th><th>errors</th><th>images</th>"
            "<th>error codes</th><th>p50 latency</th><th>p95 latency</th><th>est. cost</th>"
            "<th>revised prompt, mean length</th></tr></thead>")
    rows = []
    for s in stats:
        codes = ", ".join(f"<span><code>{e(c)}</code> × {n}</span>" for c, n in s["error_codes"]) or "—"
        revised = "—" if s["revised_len"] is None else f"{s['revised_len']:.0f} chars"
        label = "all points" if s["label"] is None else e(s["label"].replace(",", ", "))
        tr = '<tr class="total">' if s["label"] is None else "<tr>"
        rows.append(
            f'{tr}<td class="label">{label}</td>'
            f'<td class="num">{s["tasks"]}</td><td class="num">{s["ok"]}</td>'
            f'<td class="num">{s["errors"]}</td><td class="num">{s["images"]}</td>'
            f'<td class="codes">{codes}</td><td class="num">{_fmt_seconds(s["p50_s"])}</td>'
            f'<td class="num">{_fmt_seconds(s["p95_s"])}</td><td class="num">{e(_fmt_cost(s))}</td>'
            f'<td class="num">{revised}</td></tr>')
    return f'<table class="stats">{head}<tbody>{"".join(rows)}</tbody></table>'


def build_html(df, labels: list[str], thumbnails: Optional[Mapping[str, Optional[str]]] = None, *,
               title: str = "batchgen report", job: Optional[dict] = None,
               max_prompts: int = MAX_PROMPTS, contact_sheet: Optional[str] = None) -> str:
    """The report page as a string.

    `df` is the results table (pandas), `labels` the grid's columns (see column_labels).
    `thumbnails` maps image_path to an embedded thumbnail (a data: URI), or to None when the
    file could not be read; without it (None) each <img> points at the image file itself.
    Only the first `max_prompts` prompts are drawn in the grid; the statistics cover all rows.
    """
    df = _normalised(df)
    stats = point_stats(df, labels)
    prompts = _prompt_order(df)
    shown = prompts[:max_prompts]
    cells = _cells(df, {k for k, _ in shown if k is not None})
    total = stats[-1]

    meta = []
    settings = (job or {}).get("job") or {}
    if settings.get("defaults"):
        meta.append("defaults: " + ", ".join(f"{k}={v}" for k, v in settings["defaults"].items()))
    if settings.get("sweep"):
        meta.append("sweep: " + " × ".join(f"{a} ({', '.join(map(str, v))})" for a, v in settings["sweep"]))
    meta.append(f"{len(prompts)} prompt{'s' if len(prompts) != 1 else ''} × {len(labels)} sweep "
                f"point{'s' if len(labels) != 1 else ''}: {total['tasks']} tasks, {total['ok']} ok, "
                f"{total['errors']} with errors, {total['images']} images, estimated cost {_fmt_cost(total)}")

    made_by, warning = _provenance(df)
    if made_by:
        meta.append(made_by)
    note = f'<p class="note">{e(warning)}</p>' if warning else ""
    if len(prompts) > len(shown):
        note += (f'<p class="note">The grid{" and the contact sheet" if contact_sheet else ""} show the first '
                f"{len(shown)} of {len(prompts)} prompts; the table above counts all of them.</p>")

    head_cells = "".join(f"<th>{_header_label(label)}</th>" for label in labels)
    body_rows = []
    for key, prompt in shown:
        if key is None:
            continue
        row = [f'<th class="prompt" scope="row"><span class="idx">row {key}</span>'
               f'<span class="text">{e(prompt or "")}</span></th>']
        for label in labels:
            row.append(f'<td class="cell">{_cell_html(cells.get((key, label), []), thumbnails)}</td>')
        body_rows.append(f'<tr id="row-{key}">' + "".join(row) + "</tr>")

    sheet_link = (f'<p class="meta">The same grid as one picture: <a href="{e(quote(contact_sheet))}">'
                  f"{e(contact_sheet)}</a>. Click a thumbnail for the full-size image.</p>"
                  if contact_sheet else '<p class="meta">Click a thumbnail for the full-size image.</p>')
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">\n',
        '<meta name="referrer" content="no-referrer">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<h1>{e(title)}</h1>\n",
        "".join(f'<p class="meta">{e(m)}</p>\n' for m in meta), note, "\n",
        "<h2>Per sweep point</h2>\n", _stats_html(stats), "\n",
        "<h2>Gallery</h2>\n", sheet_link, "\n",
        f'<table class="grid"><thead><tr><th class="corner">prompt</th>{head_cells}</tr></thead>\n<tbody>\n',
        "\n".join(body_rows),
        "\n</tbody></table>\n</body>\n</html>\n",
    ])


def _provenance(df) -> tuple:
    """Where the images came from ("made by" line, warning): said at the top, above all when
    a simulator made them."""
    if not {"provider", "endpoint", "mode", "simulated"} <= set(df.columns):
        return None, None
    warning = None
    simulated = df["simulated"].fillna(False).astype(bool)
    if simulated.any():
        share = "All" if simulated.all() else f"{int(simulated.sum())} of {len(df)}"
        warning = (f"Simulated: {share} rows come from batchgen's built-in simulator (--simulate); "
                   "their images are placeholders, not made by a model.")
    sources = df[["provider", "mode", "endpoint"]].drop_duplicates().itertuples(index=False)
    made = "; ".join(f"{p} ({m}) at {u}" for p, m, u in sources if not _missing(p))
    return (f"made by: {made}" if made else None), warning


# ---- thumbnails and the contact sheet ---------------------------------------------------

def _flatten(im):
    """Any Pillow image as RGB, transparency over white."""
    from PIL import Image
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        base = Image.new("RGB", im.size, (255, 255, 255))
        base.paste(im, mask=im.getchannel("A"))
        return base
    return im.convert("RGB")


def make_thumbnails(path: Path):
    """(data: URI of a ~256 px JPEG, ~160 px Pillow image) for an image file, or None."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB_HTML * 2, THUMB_HTML * 2))
            im = _flatten(im)
        im.thumbnail((THUMB_HTML, THUMB_HTML), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82, optimize=True)
        small = im.copy()
        small.thumbnail((THUMB_SHEET, THUMB_SHEET), Image.Resampling.LANCZOS)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), small
    except Exception:  # missing, truncated, not an image, a decompression bomb: shown as missing
        return None


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` px; the last line ends in '...' when text is left over."""
    words = text.split()
    lines: list[str] = []
    line = ""
    i = 0
    while i < len(words) and len(lines) < max_lines:
        word = words[i]
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            i += 1
            continue
        if not line:  # one word longer than the line: cut it
            cut = _fit(draw, word, font, width)
            lines.append(cut)
            words[i] = word[len(cut):]
            continue
        lines.append(line)
        line = ""
    if line and len(lines) < max_lines:
        lines.append(line)
    if i < len(words) and lines:
        lines[-1] = _fit(draw, lines[-1] + "...", font, width, ellipsis=True)
    return lines


def _fit(draw, text: str, font, width: int, ellipsis: bool = False) -> str:
    """The longest prefix of text that fits width (ending in '...' if ellipsis and cut)."""
    if draw.textlength(text, font=font) <= width:
        return text
    tail = "..." if ellipsis else ""
    base = text[:-3] if ellipsis and text.endswith("...") else text
    lo, hi = 0, len(base)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(base[:mid] + tail, font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return (base[:lo] + tail) if lo else base[:1]


def build_contact_sheet(df, labels: list[str], thumbs: Mapping[str, object], *,
                        max_prompts: int = MAX_PROMPTS, thumb: int = THUMB_SHEET):
    """The grid as one Pillow image: a row per prompt, a column per sweep point.

    `thumbs` maps image_path to a small Pillow image (or None when the file was unreadable).
    """
    from PIL import Image, ImageDraw, ImageFont
    df = _normalised(df)
    prompts = [(k, p) for k, p in _prompt_order(df) if k is not None]
    shown = prompts[:max_prompts]
    cells = _cells(df, {k for k, _ in shown})
    try:
        font = ImageFont.load_default(size=12)   # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    box = probe.textbbox((0, 0), "Ag|", font=font)
    line_h = (box[3] - box[1]) + 3
    pad, label_w = 6, 200

    cols = len(labels)
    all_cols = cols
    # Shrink thumbnails to keep the picture a sane size; drop columns only as a last resort.
    fit_w = (SHEET_MAX_W - label_w - pad) // max(cols, 1) - pad
    rows_n = max(len(shown), 1)
    thumb = max(SHEET_MIN_THUMB, min(thumb, fit_w))
    max_cols = max(1, (SHEET_MAX_W - label_w - pad) // (thumb + pad))
    labels = labels[:max_cols]
    cols = len(labels)
    header_lines = max([len([p for p in lab.split(",") if p]) or 1 for lab in labels] + [1])
    header_h = header_lines * line_h + 2 * pad
    footer_h = line_h + 2 * pad if (len(prompts) > len(shown) or cols < all_cols) else 0
    fit_h = (SHEET_MAX_H - header_h - footer_h - pad) // rows_n - pad
    thumb = max(SHEET_MIN_THUMB, min(thumb, fit_h))

    width = label_w + pad + cols * (thumb + pad)
    height = header_h + rows_n * (thumb + pad) + pad + footer_h
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    ink, muted, grey = (30, 35, 41), (110, 118, 128), (200, 203, 207)

    draw.rectangle([0, 0, width, header_h - 1], fill=(238, 241, 244))
    for c, label in enumerate(labels):
        x = label_w + pad + c * (thumb + pad)
        for i, part in enumerate([p for p in label.split(",") if p] or [label]):
            draw.text((x, pad + i * line_h), _fit(draw, part, font, thumb, ellipsis=True), font=font, fill=ink)

    max_lines = max(1, thumb // line_h)
    for r, (key, prompt) in enumerate(shown):
        y = header_h + r * (thumb + pad) + pad // 2
        if r % 2:
            draw.rectangle([0, y - pad // 2, width, y + thumb + pad // 2 - 1], fill=(248, 249, 251))
        text = f"#{key} {' '.join((prompt or '').split())}"
        for i, line in enumerate(_wrap(draw, text, font, label_w - 2 * pad, max_lines)):
            draw.text((pad, y + i * line_h), line, font=font, fill=ink)
        for c, label in enumerate(labels):
            x = label_w + pad + c * (thumb + pad)
            _draw_cell(sheet, draw, font, cells.get((key, label), []), thumbs, x, y, thumb, line_h,
                       muted, grey)

    if footer_h:
        more = []
        if len(prompts) > len(shown):
            more.append(f"first {len(shown)} of {len(prompts)} prompts")
        if cols < all_cols:
            more.append(f"first {cols} sweep points")
        draw.text((pad, height - footer_h + pad), "showing " + ", ".join(more) + " (see report.html)",
                  font=font, fill=muted)
    return sheet


def _draw_cell(sheet, draw, font, recs, thumbs, x, y, size, line_h, muted, grey):
    from PIL import Image
    ok = [r for r in recs if r.get("status") == "ok"]
    if ok:
        k = math.ceil(math.sqrt(len(ok)))
        gap = 2
        sub = max(8, (size - (k - 1) * gap) // k)
        for i, rec in enumerate(ok[:k * k]):
            sx, sy = x + (i % k) * (sub + gap), y + (i // k) * (sub + gap)
            im = thumbs.get(_text(rec.get("image_path")) or "")
            if im is None:
                draw.rectangle([sx, sy, sx + sub - 1, sy + sub - 1], fill=(241, 241, 241), outline=grey)
                draw.text((sx + 4, sy + 4), _fit(draw, "missing", font, sub - 8), font=font, fill=muted)
                continue
            if im.width > sub or im.height > sub:
                im = im.copy()
                im.thumbnail((sub, sub), Image.Resampling.LANCZOS)
            sheet.paste(im, (sx + (sub - im.width) // 2, sy + (sub - im.height) // 2))
        return
    if not recs:
        draw.rectangle([x, y, x + size - 1, y + size - 1], outline=grey)
        return
    code = _text(recs[0].get("error_code")) or "error"
    draw.rectangle([x, y, x + size - 1, y + size - 1], fill=(190, 192, 196))
    lines = _wrap(draw, code.replace("_", "_ "), font, size - 10, max(1, (size - 10) // line_h))
    for i, line in enumerate(lines):
        draw.text((x + 5, y + 5 + i * line_h), line.replace("_ ", "_"), font=font, fill=(120, 20, 20))


# ---- writing ----------------------------------------------------------------------------

def write_report(out, *, max_prompts: int = MAX_PROMPTS) -> Path:
    """Write OUT/report.html and OUT/contact_sheet.png from OUT/results.parquet; returns the page's path."""
    import pandas as pd
    out = Path(out)
    results = out / "results.parquet"
    if not results.is_file():
        raise UsageError(f"{out} has no results.parquet: run `batchgen run ... --out {out}` first, "
                         "then `batchgen report` on that folder")
    try:
        df = pd.read_parquet(results)
    except Exception as exc:  # a damaged or foreign file
        raise UsageError(f"{results} is not readable ({exc}); run `batchgen run` again to rebuild it") from None
    if "in_input" in df.columns:
        # Tasks of an earlier input stay listed in the results, but the report compares this job's.
        df = df[df["in_input"].fillna(True).astype(bool)].reset_index(drop=True)
    try:
        job = read_job(out)
    except UsageError:
        job = None
    labels = column_labels(job, df)
    norm = _normalised(df)
    shown = {k for k, _ in _prompt_order(norm)[:max_prompts] if k is not None}
    paths = []
    for idx, status, path in zip(norm["row_index"], norm["status"], norm["image_path"]):
        if status == "ok" and not _missing(idx) and int(idx) in shown:
            rel = _safe_relpath(path)
            if rel is not None and rel not in paths:
                paths.append(rel)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 1)) as pool:
        made = dict(zip(paths, pool.map(lambda p: make_thumbnails(out / p), paths)))
    uris = {p: (m[0] if m else None) for p, m in made.items()}
    smalls = {p: (m[1] if m else None) for p, m in made.items()}
    # Keys as stored in the table too (they may differ from the cleaned relative path).
    for path in norm["image_path"]:
        rel = _safe_relpath(path)
        if rel is not None and rel in made and path not in uris:
            uris[path], smalls[path] = uris[rel], smalls[rel]

    page = build_html(norm, labels, uris, title=f"batchgen report: {out.resolve().name}", job=job,
                      max_prompts=max_prompts, contact_sheet="contact_sheet.png")
    report = out / "report.html"
    write_atomic(report, page.encode("utf-8"))

    sheet = build_contact_sheet(norm, labels, smalls, max_prompts=max_prompts)
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    write_atomic(out / "contact_sheet.png", buf.getvalue())
    return report
