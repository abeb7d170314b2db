"""The sweep comparison report: OUT/report.html (and report-2.html, ...) and OUT/contact_sheet.png.

    write_report(out, ...)       reads OUT/results.parquet and OUT/job.json, writes the pages and the sheet
    Tally                        the figures of the whole table, counted a batch of rows at a time
    sweep_points(job, df)        each sweep point's label and its value on each axis, in sweep order
    make_layout(points, ...)     which axes run across (grouped column headers) and which split the rows
    point_stats(df, labels)      per sweep point: counts, error codes, latency, cost, revised length
    differing_words(texts)       the words some of a grid row's revised prompts hold and others lack
    build_html(df, layout, ...)  one page as a string, from data only (no files)
    build_contact_sheet(...)     the first page's grid as one Pillow image, from data and thumbnails

Each page is one self-contained file: thumbnails are embedded as data: URIs, each linking to the
full-size image next to it (OUT/images/...); no network, no script (a revised prompt opens with
<details>). Every piece of text that comes from the data (prompts, revised prompts, error
messages, labels, paths) goes through html.escape, and a Content-Security-Policy meta tag
forbids scripts as a second line of defence.

An SVG is shown only through `<img>` (a browser runs no script of an image so loaded), never
inline, through <object>/<embed>/<iframe>, nor as a link: opened as a page of its own, its
scripts would run. The contact sheet draws it as a labelled placeholder (no SVG rasteriser is
installed); a GIF is shown by its first frame, its frame count under it.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union, cast
from urllib.parse import quote

from batchgen.exceptions import UsageError
from batchgen.keeping.outdir import StrPath, read_job, safe_image_path, write_atomic

PER_PAGE = 50             # prompts per page (the contact sheet shows the first page's)
THUMB_HTML = 256          # long side of a thumbnail on the page, px (--thumb)
THUMB_MIN, THUMB_MAX = 64, 2048
THUMB_SHEET = 160         # long side of a contact-sheet thumbnail, px
SHEET_MAX_W = 4000        # the contact sheet never grows past this (thumbnails shrink instead)
SHEET_MAX_H = 10000
SHEET_MIN_THUMB = 32
FIRST_PAGE = "report.html"
_LATER_PAGE = re.compile(r"report-([0-9]+)\.html")

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
    from batchgen.planning.settings import point_label
    return point_label(point)


def sweep_points(job: Optional[dict], df) -> dict:
    """{label: {axis: value}} for the job's sweep points in sweep order, then any other point the
    results hold. A label that does not read as axis=value pairs maps to None."""
    points: dict = {}
    for point in (job or {}).get("sweep_points") or []:
        if isinstance(point, dict):
            points.setdefault(_label(point), {str(k): "" if _missing(v) else str(v) for k, v in point.items()})
    if "sweep_point" in df.columns:
        for label in df["sweep_point"].unique():
            label = _text(label) or "all"
            if label not in points:
                points[label] = _parse_label(label)
    return points or {"all": {}}


def not_offered(job: Optional[dict]) -> dict:
    """{label: why} of the sweep points the plan left out: their model does not offer them."""
    found = (job or {}).get("not_offered")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def column_labels(job: Optional[dict], df) -> list[str]:
    """The sweep points' labels in the job's sweep order, then any others the results hold."""
    return list(sweep_points(job, df))


def _parse_label(label: str) -> Optional[dict]:
    if label == "all":
        return {}
    point = {}
    for part in label.split(","):
        axis, eq, value = part.partition("=")
        if not eq or not axis or axis in point:
            return None
        point[axis] = value
    return point


# ---- the grid's layout: which sweep axes run across, which split the rows ------------------

@dataclass(frozen=True)
class Axis:
    name: Optional[str]      # None: the sweep points themselves, when they share no axes
    values: tuple

    def caption(self, value: str) -> str:
        return value if self.name is None else f"{self.name}={value}"


@dataclass
class Layout:
    cols: list               # Axis per header row, the top one first; the last changes fastest
    rows: list               # Axis splitting each prompt's row into sub-rows, outermost first
    col_keys: list           # the grid's columns: a value per column axis
    row_keys: list           # a prompt's sub-rows: a value per row axis ([()] when none)
    label_at: dict           # (col_key, row_key) -> the label of that sweep point
    not_offered: dict = field(default_factory=dict)   # label -> why its model does not offer it

    @property
    def labels(self) -> list[str]:
        """The sweep points in grid order: along the columns, then down the sub-rows."""
        return [self.label_at[(c, r)] for r in self.row_keys for c in self.col_keys
                if (c, r) in self.label_at]


def make_layout(points: Mapping[str, Optional[dict]],
                cols: Union[str, Sequence[str], None] = None,
                rows: Union[str, Sequence[str], None] = None) -> Layout:
    """Place the sweep axes: `cols` side by side (the first named is the top header row),
    `rows` splitting each prompt's row. By default every axis is a column and the axis with the
    fewest values changes fastest (ties: the earlier sweep axis), so that standard and hd of
    one style sit next to each other. Axes named in neither option go to the columns when only
    --rows is given, otherwise to the rows. A bad name is a UsageError."""
    shapes = {None if p is None else frozenset(p) for p in points.values()}
    if len(shapes) == 1 and None not in shapes:
        full = cast("Mapping[str, dict]", points)    # one shape, not None: every point is a dict
        names = list(next(iter(full.values())))
        axes = [Axis(n, tuple(dict.fromkeys(p[n] for p in full.values()))) for n in names]
        keys = {label: tuple(p[n] for n in names) for label, p in full.items()}
    else:   # points of different axes (an edited sweep, a foreign table): one column each
        names = [None]
        axes = [Axis(None, tuple(points))]
        keys = {label: (label,) for label in points}
    by_name = dict(zip(names, axes))
    want_cols, want_rows = _axis_names(cols, "--cols", by_name), _axis_names(rows, "--rows", by_name)
    both = [n for n in want_cols if n in want_rows]
    if both:
        raise UsageError(f"--cols and --rows both name {both[0]!r}: put each axis in one of them")
    order = sorted(axes, key=lambda a: (len(a.values), axes.index(a)), reverse=True)  # outermost first
    rest = [a for a in order if a.name not in want_cols and a.name not in want_rows]
    col_axes = [by_name[n] for n in want_cols]
    row_axes = [by_name[n] for n in want_rows]
    if want_cols:
        row_axes += rest
    else:
        col_axes = rest
    col_pos = [names.index(a.name) for a in col_axes]
    row_pos = [names.index(a.name) for a in row_axes]
    label_at = {}
    for label, key in keys.items():
        label_at[(tuple(key[i] for i in col_pos), tuple(key[i] for i in row_pos))] = label
    used_cols = {c for c, _ in label_at}
    used_rows = {r for _, r in label_at}
    col_keys = [k for k in itertools.product(*(a.values for a in col_axes)) if k in used_cols]
    row_keys = [k for k in itertools.product(*(a.values for a in row_axes)) if k in used_rows]
    return Layout(col_axes, row_axes, col_keys, row_keys, label_at)


def _axis_names(value, option: str, by_name: dict) -> list[str]:
    """The axis names an option gives ("a,b" or a list), checked against the run's axes."""
    if value is None:
        return []
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    known = [n for n in by_name if n is not None]
    for n in names:
        if n not in known:
            have = (f"its axes are {', '.join(known)}" if known else
                    "it has no sweep axes (run with --sweep AXIS=V1,V2 to compare)")
            raise UsageError(f"{option}: {n!r} is not a sweep axis of this run; {have}")
    if len(set(names)) != len(names):
        raise UsageError(f"{option} names an axis twice: {', '.join(names)}")
    return names


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

    tasks / ok / errors count tasks (a task with n images is one task; its first row says
    whether it is ok); images counts images; error_codes is [(code, count)] most frequent
    first; p50_s / p95_s are latencies of the tasks that succeeded; cost_usd sums est_cost_usd
    (None when every image's cost is unknown) and cost_unknown counts images whose cost is
    unknown; revised_len is the mean length in characters of the revised prompts (None when
    there are none).
    """
    tally = Tally()
    tally.add(_normalised(df))
    return tally.point_stats(labels)


# Task keys: a batchgen task id (16 hex digits, job.task_id) is kept as the 64-bit number it
# writes; any other key (a foreign table's id, or row and sweep point when there is none) is
# numbered in a dict, apart from the ids.
_TASK_ID = re.compile(r"[0-9a-f]{16}")


class Tally:
    """The report's figures (point_stats, the overview's lines) counted a batch of results
    rows at a time, in the table's order, so that the table is never held whole.

    Counts, sums and the sweep points seen are a few numbers each. Two things need every task:
    a task's rows count once (its first row decides ok or error), and the p50 / p95 latencies
    are exact. For those it keeps one entry per task and sweep point, as numpy arrays of a few
    dozen bytes (the task key, the point, the outcome and the latency); a batchgen table holds a
    task's rows together, so a batch makes one entry per task, and the tasks seen twice (a task
    split between two batches, or a foreign table's) are counted once at the end.
    """

    def __init__(self):
        self.labels: dict = {}        # sweep point label -> its number, in order of first appearance
        self.rows = 0
        self.simulated = 0            # rows the simulator made
        self.sources: dict = {}       # (provider, mode, endpoint), missing values as None -> as read
        self._rows_of: list = []      # per label: images, costs summed in the table's order, ...
        self._total = _PointRows()
        self._codes: dict = {}        # error code -> its number
        self._foreign: dict = {}      # a task key that is not a batchgen id -> its number
        self._entries: list = []      # per batch: (key, foreign, point, code, latency) arrays
        self._prompts: list = []      # per batch: the row indices it holds, distinct
        self._prompt_keys = None

    def add(self, df) -> None:
        """Count a batch of rows (_normalised)."""
        import numpy as np
        if not len(df):
            return
        self.rows += len(df)
        labels = df["sweep_point"]
        for label in labels.unique():
            if label not in self.labels:
                self.labels[label] = len(self.labels)
                self._rows_of.append(_PointRows())
        ok_rows = df[df["status"] == "ok"]
        self._total.add(ok_rows)
        if len(ok_rows):
            for label, sub in ok_rows.groupby("sweep_point", sort=False):
                self._rows_of[self.labels[label]].add(sub)
        if "simulated" in df.columns:
            self.simulated += int(df["simulated"].fillna(False).astype(bool).sum())
        if {"provider", "mode", "endpoint"} <= set(df.columns):
            for source in df[["provider", "mode", "endpoint"]].drop_duplicates().itertuples(index=False):
                self.sources.setdefault(tuple(None if _missing(v) else v for v in source), tuple(source))
        rows = df["row_index"]
        present = rows.notna().to_numpy(bool)
        if present.any():
            self._prompts.append(np.unique(rows[present].astype("int64").to_numpy("int64")))

        # One entry per (task, sweep point): its first row in this batch.
        first = df.drop_duplicates(["_task", "sweep_point"])
        keys = np.empty(len(first), np.uint64)
        foreign = np.zeros(len(first), bool)
        for i, (task_id, row, label) in enumerate(zip(first["task_id"], first["row_index"], first["sweep_point"])):
            text = _text(task_id)
            if text and _TASK_ID.fullmatch(text):
                keys[i] = int(text, 16)
                continue
            key = text or (None if _missing(row) else int(row), label)
            keys[i] = self._foreign.setdefault(key, len(self._foreign))
            foreign[i] = True
        ok = (first["status"] == "ok").fillna(False).to_numpy(bool)
        codes = np.array([-1 if good else self._codes.setdefault(_text(c) or "unknown", len(self._codes))
                          for good, c in zip(ok, first["error_code"])], np.int32)
        latency = np.array([np.nan if _missing(v) else float(v) for v in first["latency_s"]], np.float64)
        point = np.array([self.labels[label] for label in first["sweep_point"]], np.int32)
        self._entries.append((keys, foreign, point, codes, latency))

    @property
    def prompt_keys(self):
        """The row indices of the rows counted, distinct and sorted (a numpy array)."""
        import numpy as np
        if self._prompt_keys is None:
            self._prompt_keys = np.unique(np.concatenate(self._prompts)) if self._prompts else np.empty(0, np.int64)
            self._prompts = [self._prompt_keys]
        return self._prompt_keys

    def point_stats(self, labels: list[str]) -> list[dict]:
        """As point_stats() says, for the rows counted so far."""
        import numpy as np
        keys, foreign, point, codes, latency = (
            np.concatenate([e[i] for e in self._entries]) if self._entries else np.empty(0, t)
            for i, t in enumerate((np.uint64, bool, np.int32, np.int32, np.float64)))
        self._entries = [(keys, foreign, point, codes, latency)] if len(keys) else []
        names = list(self._codes)
        # The first entry of each task at each point, and of each task over all points: a
        # stable sort keeps the entries of one key in the table's order.
        per_point = _first_of_each(foreign, keys, point)
        per_task = _first_of_each(foreign, keys)
        out = []
        for label in labels:
            number = self.labels.get(label)
            picked = per_point[point[per_point] == number] if number is not None else per_point[:0]
            rows = self._rows_of[number] if number is not None else _PointRows()
            out.append(rows.stats(label, codes[picked], latency[picked], names))
        out.append(self._total.stats(None, codes[per_task], latency[per_task], names))
        return out

    def provenance(self, columns) -> tuple:
        """Where the images came from ("made by" line, warning): said at the top, above all when
        a simulator made them. `columns`: those of the table."""
        if not {"provider", "endpoint", "mode", "simulated"} <= set(columns):
            return None, None
        warning = None
        if self.simulated:
            share = "All" if self.simulated == self.rows else f"{self.simulated} of {self.rows}"
            warning = (f"Simulated: {share} rows come from batchgen's built-in simulator (--simulate); "
                       "their images are placeholders, not made by a model.")
        made = "; ".join(f"{p} ({m}) at {u}" for p, m, u in self.sources.values() if not _missing(p))
        return (f"made by: {made}" if made else None), warning


def _first_of_each(*columns):
    """Positions of the first entry of each distinct combination of `columns` (numpy arrays,
    the first named sorts first), in no particular order."""
    import numpy as np
    if not len(columns[0]):
        return np.empty(0, np.int64)
    order = np.lexsort(columns[::-1])      # stable: equal keys stay in the table's order
    new = np.ones(len(order), bool)
    for column in columns:
        ordered = column[order]
        new[1:] &= ordered[1:] == ordered[:-1]
    new[1:] = ~new[1:]
    return order[new]


class _PointRows:
    """What a sweep point's ok rows (images) add up to, batch by batch: costs are summed in the
    table's order, as one sum() over them all would."""

    def __init__(self):
        self.images = 0
        self.cost: float = 0
        self.cost_unknown = 0
        self.revised_chars = 0
        self.revised = 0

    def add(self, ok_rows) -> None:
        costs = [None if _missing(v) else float(v) for v in ok_rows["est_cost_usd"]]
        known = [c for c in costs if c is not None]
        self.images += len(costs)
        self.cost = sum(known, self.cost)
        self.cost_unknown += len(costs) - len(known)
        revised = [len(t) for t in (_text(v) for v in ok_rows["revised_prompt"]) if t]
        self.revised_chars += sum(revised)
        self.revised += len(revised)

    def stats(self, label, codes, latency, code_names: list) -> dict:
        """The point's figures, from its rows and its tasks' entries (error code numbers, -1
        for ok, and latencies)."""
        import numpy as np
        ok = codes < 0
        errors = Counter(code_names[c] for c in codes[~ok].tolist())
        latencies = latency[ok]
        latencies = latencies[~np.isnan(latencies)].tolist()
        return {
            "label": label,
            "tasks": len(codes),
            "ok": int(ok.sum()),
            "errors": int((~ok).sum()),
            "images": self.images,
            "error_codes": sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])),
            "p50_s": _percentile(latencies, 50),
            "p95_s": _percentile(latencies, 95),
            "cost_usd": (None if self.images and self.images == self.cost_unknown else self.cost),
            "cost_unknown": self.cost_unknown,
            "revised_len": (self.revised_chars / self.revised) if self.revised else None,
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
body { margin: 0; padding: 16px 16px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2329; background: #f6f7f9; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
p.meta { margin: 2px 0; color: #56606b; }
p.note { margin: 8px 0; padding: 6px 10px; background: #fff7d6; border: 1px solid #ecd27a;
         border-radius: 4px; display: inline-block; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav.pages { margin: 10px 0; display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
nav.pages a, nav.pages span { padding: 2px 8px; border-radius: 4px; }
nav.pages a { border: 1px solid #c9d0d8; background: #fff; text-decoration: none; }
nav.pages span.current { background: #1d2329; color: #fff; font-weight: 600; }
nav.pages span.gap { color: #7a8591; }
table { border-collapse: separate; border-spacing: 0; background: #fff; }
table.stats { border: 1px solid #d5dae0; border-radius: 6px; overflow: hidden; }
table.stats th, table.stats td { padding: 4px 10px; border-bottom: 1px solid #e6e9ed;
       text-align: left; vertical-align: top; }
table.stats td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.stats thead th { background: #eef1f4; font-weight: 600; }
table.stats td.label { white-space: nowrap; }
table.stats td.codes span { white-space: nowrap; }
table.stats tr.total td { font-weight: 600; background: #f7f9fa; }
table.stats td.codes { font-size: 12px; }
table.grid { border: 1px solid #d5dae0; }
table.grid th, table.grid td { border-right: 1px solid #e1e5ea; border-bottom: 1px solid #e1e5ea;
       vertical-align: top; padding: 6px; }
table.grid thead { position: sticky; top: 0; z-index: 2; }
table.grid thead th { background: #eef1f4; font-weight: 600; text-align: center;
       white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 0; }
table.grid thead th.corner { position: sticky; left: 0; z-index: 3; text-align: left; max-width: none;
       vertical-align: bottom; }
table.grid thead th .k { font-weight: normal; color: #56606b; }
table.grid thead tr.leaf th { border-bottom: 2px solid #c9d0d8; }
table.grid th.prompt { position: sticky; left: 0; z-index: 1; background: #fbfcfd; width: 190px;
       min-width: 150px; max-width: 190px; font-weight: normal; text-align: left; }
th.prompt .idx { color: #7a8591; font-size: 12px; display: block; }
th.prompt .inputs { margin-top: 6px; }
th.prompt .inputs img { display: block; margin-top: 4px; max-width: 100%; height: auto; border: 1px solid #d5dbe1; }
th.prompt .text { display: block; max-height: 240px; overflow: auto; white-space: pre-wrap;
       overflow-wrap: anywhere; }
table.grid th.point { font-weight: normal; text-align: left; white-space: nowrap; background: #fbfcfd;
       color: #47515c; font-size: 12px; }
td.cell { width: calc(var(--thumb) + 13px); min-width: calc(var(--thumb) + 13px); }
td.cell.none { background: #f3f4f6; }
table.stats td.na { color: #6b7280; font-style: italic; }
.images { display: flex; flex-direction: column; gap: 8px; }
figure { margin: 0; max-width: var(--thumb); }
figure img { display: block; max-width: var(--thumb); max-height: var(--thumb); border-radius: 3px;
       background: #e9ecef; outline: 1px solid #d5dae0; outline-offset: -1px; }
details.rp { margin-top: 4px; font-size: 12px; color: #47515c; }
details.rp summary { cursor: pointer; white-space: pre-wrap; overflow-wrap: anywhere;
       display: -webkit-box; -webkit-line-clamp: 4; -webkit-box-orient: vertical; overflow: hidden; }
details.rp[open] summary { display: block; }
details.rp summary:hover { color: #1d2329; }
mark { background: #ffe38a; color: inherit; padding: 0 1px; border-radius: 2px; }
.error { background: #fdecec; border: 1px solid #e3a0a0; color: #8a1c1c; border-radius: 4px;
       padding: 6px 8px; max-width: var(--thumb); overflow-wrap: anywhere; }
.error .code { font-weight: 700; display: block; }
.error .msg { font-size: 12px; white-space: pre-wrap; }
.missing { background: #f1f1f1; border: 1px dashed #aaa; color: #555; border-radius: 4px;
       padding: 6px 8px; font-size: 12px; max-width: var(--thumb); word-break: break-all; }
.empty { color: #98a1ab; font-style: italic; }
.fmt { font-size: 11px; color: #56606b; margin-top: 2px; }
"""


@dataclass(frozen=True)
class Thumb:
    """An embedded thumbnail: its data: URI and the size it is shown at (CSS px)."""
    uri: str          # "" for an SVG too big to embed: the page points at the file (still an <img>)
    width: int
    height: int


SVG_EMBED_BYTES = 256 * 1024    # an SVG up to this size is embedded in the page as it is


@dataclass(frozen=True)
class Page:
    number: int              # 1 for report.html
    count: int               # pages in all
    first: int               # the position (from 0) of its first prompt among all prompts
    prompts: int             # prompts in all


@dataclass
class Overview:
    """What every page says above its grid; computed once from the whole table."""
    title: str
    meta: list               # lines under the title
    warning: Optional[str]   # the simulator's note
    stats: list              # point_stats(), shown on the first page


def page_file(number: int) -> str:
    return FIRST_PAGE if number == 1 else f"report-{number}.html"


def fit_box(width: Any, height: Any, box: int) -> tuple[int, int]:
    """(w, h) scaled so the long side is `box`, keeping the shape; (box, box) when unknown."""
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        return box, box
    if width <= 0 or height <= 0:
        return box, box
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _prompt_order(df) -> list:
    """Row indices in order, each with its prompt text."""
    seen: dict[Optional[int], Optional[str]] = {}
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


# ---- the words that differ between a row's revised prompts ------------------------------

_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")
_SPACE = re.compile(r"(\s+)")


def _word_key(word: str) -> str:
    return _EDGE_PUNCT.sub("", word).casefold()


def differing_words(texts: Sequence[str]) -> set[str]:
    """The words (case and edge punctuation aside) that some of `texts` hold and others lack;
    none when there are fewer than two texts."""
    sets = [{_word_key(w) for w in text.split()} - {""} for text in texts]
    if len(sets) < 2:
        return set()
    return set().union(*sets) - sets[0].intersection(*sets[1:])


def _marked(text: str, differ: set) -> str:
    """Text for HTML with each word of `differ` in a <mark>."""
    if not differ:
        return e(text)
    return "".join(f"<mark>{e(part)}</mark>" if part.strip() and _word_key(part) in differ else e(part)
                   for part in _SPACE.split(text))


# ---- cells ------------------------------------------------------------------------------

def _cell_html(recs: list, thumbnails: Optional[Mapping[str, Optional[Thumb]]], differ: set,
               thumb: int) -> str:
    """One grid cell: a sweep point's images (each with its revised prompt) and errors."""
    if not recs:
        return '<span class="empty">no result</span>'
    parts, figures = [], []
    for rec in recs:
        if rec.get("status") == "ok":
            figures.append(_figure_html(rec, thumbnails, differ, thumb))
        else:
            code = _text(rec.get("error_code")) or "error"
            message = _text(rec.get("error_message")) or ""
            parts.append(f'<div class="error" title="{e(message)}"><span class="code">{e(code)}</span>'
                         f'<span class="msg">{e(message)}</span></div>')
    if figures:
        parts.insert(0, '<div class="images">' + "".join(figures) + "</div>")
    return "".join(parts)


def _figure_html(rec: dict, thumbnails, differ: set, thumb: int) -> str:
    path = _text(rec.get("image_path"))
    rel = _safe_relpath(path)
    revised = _text(rec.get("revised_prompt"))
    caption = (f'<details class="rp"><summary title="the whole revised prompt: click">'
               f"{_marked(revised, differ)}</summary></details>" if revised else "")
    if rel is None:
        return f'<figure><div class="missing">no image file{": " + e(path) if path else ""}</div>{caption}</figure>'
    svg = rel.lower().endswith(".svg")
    if thumbnails is None:
        # No thumbnails made: the image itself, next to the page, at the size the table records.
        src = quote(rel, safe="/")
        width, height = fit_box(rec.get("width"), rec.get("height"), thumb)
        size = (f' width="{width}" height="{height}"'
                if not (_missing(rec.get("width")) or _missing(rec.get("height"))) else "")
    else:
        made = thumbnails.get(path) or thumbnails.get(rel)
        if not made:
            return (f'<figure><div class="missing">image file missing or unreadable: '
                    f'{e(rel)}</div>{caption}</figure>')
        src, size = made.uri or quote(rel, safe="/"), f' width="{made.width}" height="{made.height}"'
    img = f'<img src="{e(src)}"{size} alt="{e(revised or rel)}" loading="lazy">'
    frames = 0 if _missing(rec.get("frames")) else int(rec["frames"])
    if svg:
        # Not a link: an SVG opened as a page runs its scripts; as an <img> it never does.
        return (f'<figure title="{e(revised or rel)}">{img}<div class="fmt">SVG: {e(rel)}</div>'
                f'{caption}</figure>')
    note = f'<div class="fmt">animated GIF, {frames} frames</div>' if frames > 1 else ""
    href = quote(rel, safe="/")
    hover = revised or "open the full-size image"
    return f'<figure><a href="{e(href)}" title="{e(hover)}">{img}</a>{note}{caption}</figure>'


def _stats_html(stats: list[dict], not_offered: Optional[Mapping[str, str]] = None) -> str:
    """The per-point table; a point the sweep left out (its model does not offer it) says so
    instead of a row of zeros."""
    not_offered = not_offered or {}
    head = ("<thead><tr><th>sweep point</th><th>tasks</th><th>ok</th><th>errors</th><th>images</th>"
            "<th>error codes</th><th>p50 latency</th><th>p95 latency</th><th>est. cost</th>"
            "<th>revised prompt, mean length</th></tr></thead>")
    rows = []
    for s in stats:
        codes = ", ".join(f"<span><code>{e(c)}</code> × {n}</span>" for c, n in s["error_codes"]) or "—"
        revised = "—" if s["revised_len"] is None else f"{s['revised_len']:.0f} chars"
        label = "all points" if s["label"] is None else e(s["label"].replace(",", ", "))
        tr = '<tr class="total">' if s["label"] is None else "<tr>"
        if s["label"] in not_offered and not s["tasks"]:
            rows.append(f'{tr}<td class="label">{label}</td><td colspan="9" class="na" '
                        f'title="{e(not_offered[s["label"]])}">not offered by this model</td></tr>')
            continue
        rows.append(
            f'{tr}<td class="label">{label}</td>'
            f'<td class="num">{s["tasks"]}</td><td class="num">{s["ok"]}</td>'
            f'<td class="num">{s["errors"]}</td><td class="num">{s["images"]}</td>'
            f'<td class="codes">{codes}</td><td class="num">{_fmt_seconds(s["p50_s"])}</td>'
            f'<td class="num">{_fmt_seconds(s["p95_s"])}</td><td class="num">{e(_fmt_cost(s))}</td>'
            f'<td class="num">{revised}</td></tr>')
    return f'<table class="stats">{head}<tbody>{"".join(rows)}</tbody></table>'


def make_overview(df, layout: Layout, job: Optional[dict] = None, title: str = "batchgen report") -> Overview:
    """The lines above the grid and the per-point statistics, from the whole results table."""
    df = _normalised(df)
    tally = Tally()
    tally.add(df)
    return tally_overview(tally, df.columns, layout, job, title)


def tally_overview(tally: "Tally", columns, layout: Layout, job: Optional[dict] = None,
                   title: str = "batchgen report") -> Overview:
    """make_overview() from the figures of a Tally of the whole table (`columns`: its columns)."""
    labels = layout.labels
    stats = tally.point_stats(labels)
    total = stats[-1]
    prompts = len(tally.prompt_keys)
    meta = []
    settings = (job or {}).get("job") or {}
    if settings.get("defaults"):
        meta.append("defaults: " + ", ".join(f"{k}={v}" for k, v in settings["defaults"].items()))
    if settings.get("sweep"):
        meta.append("sweep: " + " × ".join(f"{a} ({', '.join(map(str, v))})" for a, v in settings["sweep"]))
    meta.append(f"{prompts} prompt{'s' if prompts != 1 else ''} × {len(labels)} sweep "
                f"point{'s' if len(labels) != 1 else ''}: {total['tasks']} tasks, {total['ok']} ok, "
                f"{total['errors']} with errors, {total['images']} images, estimated cost {_fmt_cost(total)}")
    made_by, warning = tally.provenance(columns)
    if made_by:
        meta.append(made_by)
    return Overview(title, meta, warning, stats)


def build_html(df, layout: Layout, thumbnails: Optional[Mapping[str, Optional[Thumb]]] = None, *,
               overview: Optional[Overview] = None, page: Optional[Page] = None,
               thumb: int = THUMB_HTML, contact_sheet: Optional[str] = None, job: Optional[dict] = None,
               title: str = "batchgen report", inputs: Optional[Mapping[int, list]] = None) -> str:
    """One page as a string: the grid of the prompts in `df` (the results rows of this page's
    prompts), laid out by `layout` (see make_layout).

    `thumbnails` maps image_path to a Thumb, or to None when the file could not be read; without
    it (None) each <img> points at the image file itself. `overview` is what the page says above
    the grid (computed from `df` when not given); `page` says where this page sits among all
    (default: the only page); the statistics are on the first page only. `inputs`: for an edits
    job, each row's input images as (what was sent, Thumb or None), shown beside its prompt.
    """
    df = _normalised(df)
    if overview is None:
        overview = make_overview(df, layout, job, title)
    prompts = [(k, p) for k, p in _prompt_order(df) if k is not None]
    if page is None:
        page = Page(1, 1, 0, len(prompts))
    cells = _cells(df, {k for k, _ in prompts})

    notes = f'<p class="note">{e(overview.warning)}</p>\n' if overview.warning else ""
    nav = _nav_html(page)
    parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
             f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">\n',
             '<meta name="referrer" content="no-referrer">\n',
             '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
             f"<title>{e(overview.title)}"
             f"{'' if page.count == 1 else f' (page {page.number} of {page.count})'}</title>\n",
             f"<style>:root {{ --thumb: {int(thumb)}px; }}{_CSS}</style>\n</head>\n<body>\n",
             f"<h1>{e(overview.title)}</h1>\n",
             "".join(f'<p class="meta">{e(m)}</p>\n' for m in overview.meta), notes, nav]
    if page.number == 1:
        parts += ["<h2>Per sweep point</h2>\n", _stats_html(overview.stats, layout.not_offered), "\n"]
    else:
        parts.append(f'<p class="meta">The statistics of every sweep point are on the first page, '
                     f'<a href="{e(quote(FIRST_PAGE))}">{e(FIRST_PAGE)}</a>.</p>\n')
    shown = ("" if page.count == 1 else
             f"prompt {page.first + 1} of {page.prompts}" if len(prompts) == 1 else
             f"prompts {page.first + 1}–{page.first + len(prompts)} of {page.prompts}")
    parts.append(f"<h2>Gallery{': ' + shown if shown else ''}</h2>\n")
    sheet = (f'The first page\'s grid as one picture: <a href="{e(quote(contact_sheet))}">{e(contact_sheet)}</a>. '
             if contact_sheet and page.number == 1 else "")
    parts.append(f'<p class="meta">{sheet}Click a thumbnail for the full-size image, a revised prompt to read '
                 "all of it; highlighted words are those the other revised prompts of its row lack.</p>\n")
    parts += ['<table class="grid">', _thead_html(layout), "\n<tbody>\n",
              "\n".join(_prompt_rows_html(key, prompt, layout, cells, thumbnails, thumb,
                                           (inputs or {}).get(key))
                        for key, prompt in prompts),
              "\n</tbody></table>\n", nav, "</body>\n</html>\n"]
    return "".join(parts)


def _thead_html(layout: Layout) -> str:
    """Grouped column headers: one header row per column axis, each value spanning the columns
    it holds; the sub-row axes' header sits beside the prompt's."""
    levels = max(1, len(layout.cols))
    corner = (f'<th class="corner" rowspan="{levels}" colspan="{2 if layout.rows else 1}">prompt'
              + (f' <span class="k">/ {e(", ".join(a.name for a in layout.rows))}</span>' if layout.rows else "")
              + "</th>")
    rows = []
    if not layout.cols:
        only = layout.labels[0] if not layout.rows else "image"
        rows.append(f'<tr class="leaf">{corner}<th>{e(only)}</th></tr>')
    for level, axis in enumerate(layout.cols):
        ths = []
        for value_key, run in itertools.groupby(layout.col_keys, key=lambda k: k[:level + 1]):
            span = len(list(run))
            text = _axis_caption_html(axis, value_key[-1])
            ths.append(f'<th scope="colgroup" colspan="{span}" title="{e(axis.caption(value_key[-1]))}">{text}</th>'
                       if span > 1 else
                       f'<th scope="col" title="{e(axis.caption(value_key[-1]))}">{text}</th>')
        leaf = ' class="leaf"' if level == len(layout.cols) - 1 else ""
        rows.append(f"<tr{leaf}>{corner if level == 0 else ''}{''.join(ths)}</tr>")
    return "<thead>" + "".join(rows) + "</thead>"


def _axis_caption_html(axis: Axis, value: str) -> str:
    if axis.name is None:
        return e(value)
    return f'<span class="k">{e(axis.name)}=</span>{e(value)}'


def _prompt_rows_html(key: int, prompt: Optional[str], layout: Layout, cells: dict, thumbnails,
                      thumb: int, inputs: Optional[list] = None) -> str:
    """A prompt's <tr>s: one per sub-row, a cell per column; words that differ between the
    revised prompts of one <tr> are marked."""
    out = []
    for j, row_key in enumerate(layout.row_keys):
        head = ""
        if j == 0:
            span = f' rowspan="{len(layout.row_keys)}"' if len(layout.row_keys) > 1 else ""
            head = (f'<th class="prompt" scope="row"{span}><span class="idx">row {key}</span>'
                    f'<span class="text">{e(prompt or "")}</span>{_inputs_html(inputs)}</th>')
        if layout.rows:
            head += ('<th class="point" scope="row">'
                     + "<br>".join(_axis_caption_html(a, v) for a, v in zip(layout.rows, row_key)) + "</th>")
        labels = [layout.label_at.get((col_key, row_key)) for col_key in layout.col_keys]
        recs = [cells.get((key, label), []) if label is not None else None for label in labels]
        differ = differing_words([t for rs in recs if rs for r in rs if r.get("status") == "ok"
                                  for t in [_text(r.get("revised_prompt"))] if t])
        tds = ['<td class="cell none"><span class="empty">not a sweep point</span></td>' if rs is None else
               f'<td class="cell none not-offered" data-point="{e(label)}"><span class="empty" '
               f'title="{e(layout.not_offered[label])}">not offered by this model</span></td>'
               if label in layout.not_offered and not rs else
               f'<td class="cell" data-point="{e(label)}">{_cell_html(rs, thumbnails, differ, thumb)}</td>'
               for label, rs in zip(labels, recs)]
        row_id = f"row-{key}" if j == 0 else f"row-{key}-{j}"
        out.append(f'<tr id="{row_id}">{head}{"".join(tds)}</tr>')
    return "\n".join(out)


def _inputs_html(inputs: Optional[list]) -> str:
    """An edit's input images (and its markup image), under its prompt."""
    if not inputs:
        return ""
    shown = []
    for ref, made, *kind in inputs:
        what = kind[0] if kind else "input"
        if made is None:
            shown.append(f'<span class="missing" title="{e(ref)}">{what}: {e(ref)}</span>')
        else:
            shown.append(f'<img src="{e(made.uri)}" width="{made.width}" height="{made.height}" '
                         f'alt="{what} image {e(ref)}" title="{what}: {e(ref)}">')
    return '<div class="inputs"><span class="idx">edit of</span>' + "".join(shown) + "</div>"


def input_thumbnails(part, thumb: int, base: Optional[Path] = None) -> dict:
    """row_index -> [(input image as the table named it, Thumb or None, "input" or "markup")]
    for the rows of an edits job (a URL is named, not fetched: the page makes no request). A
    relative path is found from `base`, the input table's folder."""
    if "input_image" not in part.columns:
        return {}
    made: dict = {}
    out: dict = {}
    markups = part["markup_image"] if "markup_image" in part.columns else [None] * len(part)
    for row, refs, markup in zip(part["row_index"], part["input_image"], markups):
        if _missing(row) or not isinstance(refs, str) or int(row) in out:
            continue
        shown = []
        named = [(ref, "input") for ref in filter(None, refs.split("|"))]
        if isinstance(markup, str) and markup:
            named.append((markup, "markup"))
        for ref, what in named:
            if ref not in made:
                local = not ref.startswith(("http://", "https://"))
                path = Path(ref) if base is None else base / ref
                made[ref] = (make_thumbnails(path, thumb) or (None,))[0] if local else None
            shown.append((ref, made[ref], what))
        out[int(row)] = shown
    return out


def _nav_html(page: Page) -> str:
    """Links to the other pages: all of them from the first, the nearby ones from the others."""
    if page.count <= 1:
        return ""
    numbers = (range(1, page.count + 1) if page.number == 1 else
               sorted({1, page.count, *range(max(1, page.number - 3), min(page.count, page.number + 3) + 1)}))
    parts, last = ["<span>pages:</span>"], 0
    if page.number > 1:
        parts.append(f'<a href="{page_file(page.number - 1)}" rel="prev">← previous</a>')
    for n in numbers:
        if n > last + 1:
            parts.append('<span class="gap">…</span>')
        parts.append(f'<span class="current">{n}</span>' if n == page.number else
                     f'<a href="{page_file(n)}">{n}</a>')
        last = n
    if page.number < page.count:
        parts.append(f'<a href="{page_file(page.number + 1)}" rel="next">next →</a>')
    return '<nav class="pages">' + "".join(parts) + "</nav>\n"


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


def make_thumbnails(path: Path, thumb: int = THUMB_HTML) -> Optional[tuple[Thumb, Any]]:
    """(Thumb: a JPEG of `thumb` px on the long side at most, shown at `thumb` px keeping the
    image's shape; a ~160 px Pillow image for the contact sheet) for an image file (PNG, JPEG,
    WebP, a GIF's first frame; an SVG embedded as it is, with a placeholder for the sheet), or
    None when it cannot be read."""
    from PIL import Image
    if path.suffix.lower() == ".svg":
        return _svg_thumbnails(path, thumb)
    try:
        with Image.open(path) as im:
            size: tuple[int, int] = im.size
            im.draft("RGB", (thumb * 2, thumb * 2))
            im = _flatten(im)
        im.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82, optimize=True)
        small = im.copy()
        small.thumbnail((THUMB_SHEET, THUMB_SHEET), Image.Resampling.LANCZOS)
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return Thumb(uri, *fit_box(*size, thumb)), small
    except Exception:  # missing, truncated, not an image, a decompression bomb: shown as missing
        return None


def _svg_thumbnails(path: Path, thumb: int) -> Optional[tuple[Thumb, Any]]:
    """An SVG checked again as it is kept (the file may have changed since): embedded when
    small, else pointed at; a labelled placeholder for the contact sheet."""
    from batchgen.exceptions import BadResponse
    from batchgen.keeping.imagecheck import MAX_SVG_BYTES, svg_size
    try:
        if path.stat().st_size > MAX_SVG_BYTES:
            return None
        data = path.read_bytes()
        width, height = svg_size(data)
    except (OSError, BadResponse):
        return None
    uri = ("data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")
           if len(data) <= SVG_EMBED_BYTES else "")
    return Thumb(uri, *fit_box(width, height, thumb)), placeholder("SVG", *fit_box(width, height, THUMB_SHEET))


def placeholder(label: str, width: int = THUMB_SHEET, height: int = THUMB_SHEET):
    """A grey tile with a label in the middle, for an image the sheet cannot draw."""
    from PIL import Image, ImageDraw, ImageFont
    im = Image.new("RGB", (max(8, width), max(8, height)), (226, 230, 235))
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, im.width - 1, im.height - 1], outline=(150, 158, 168))
    font = ImageFont.load_default()
    box = draw.textbbox((0, 0), label, font=font)
    draw.text(((im.width - (box[2] - box[0])) // 2, (im.height - (box[3] - box[1])) // 2), label,
              font=font, fill=(70, 78, 88))
    return im


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
                        max_prompts: int = PER_PAGE, thumb: int = THUMB_SHEET,
                        total_prompts: Optional[int] = None):
    """The grid as one Pillow image: a row per prompt, a column per sweep point (in `labels` order).

    `thumbs` maps image_path to a small Pillow image (or None when the file was unreadable);
    `total_prompts` is how many prompts the whole report holds (default: those in `df`).
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
    line_h = int(box[3] - box[1]) + 3      # Pillow types the box as floats; its fonts give whole pixels
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
    total = len(prompts) if total_prompts is None else max(total_prompts, len(prompts))
    footer_h = line_h + 2 * pad if (total > len(shown) or cols < all_cols) else 0
    fit_h = (SHEET_MAX_H - header_h - footer_h - pad) // rows_n - pad
    thumb = max(SHEET_MIN_THUMB, min(thumb, fit_h))

    width = label_w + pad + cols * (thumb + pad)
    height = header_h + rows_n * (thumb + pad) + pad + footer_h
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    ink, muted, grey = (30, 35, 41), (110, 118, 128), (200, 203, 207)

    draw.rectangle([0, 0, width, header_h - 1], fill=(238, 241, 244))
    if "simulated" in df.columns and df["simulated"].fillna(False).astype(bool).any():
        # The picture travels without its page: it says itself that it shows no model's work.
        for i, line in enumerate(_wrap(draw, "SIMULATED: placeholder images, not made by a model", font,
                                       label_w - 2 * pad, header_lines)):
            draw.text((pad, pad + i * line_h), line, font=font, fill=(170, 60, 0))
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
        if total > len(shown):
            more.append(f"first {len(shown)} of {total} prompts")
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

def write_report(out: StrPath, *, cols: Union[str, Sequence[str], None] = None,
                 rows: Union[str, Sequence[str], None] = None, per_page: Optional[int] = None,
                 thumb: Optional[int] = None, current_job: bool = False) -> Path:
    """Write OUT/report.html (then report-2.html, ... for `per_page` prompts each) and
    OUT/contact_sheet.png from OUT/results.parquet; returns the first page's path.

    `cols` / `rows`: the sweep axes side by side and those splitting each prompt's row (see
    make_layout); `thumb`: the long side of a thumbnail, px. Every point the folder holds is
    compared, earlier jobs' included; `current_job`: only the tasks the last run's job asked for.

    The table is read twice, a batch of rows at a time, and never held whole: once for the
    figures every page shows (a Tally), then for the pages, each written once all its rows
    have been read (see _page_parts).
    """
    per_page = PER_PAGE if per_page is None else per_page
    thumb = THUMB_HTML if thumb is None else thumb
    if not isinstance(per_page, int) or per_page < 1:
        raise UsageError(f"--per-page {per_page}: give a whole number of prompts, 1 or more (default {PER_PAGE})")
    if not isinstance(thumb, int) or not THUMB_MIN <= thumb <= THUMB_MAX:
        raise UsageError(f"--thumb {thumb}: give the thumbnails' long side in pixels, "
                         f"{THUMB_MIN} to {THUMB_MAX} (default {THUMB_HTML})")
    out = Path(out)
    with ResultsBatches(out / "results.parquet", out, current_job) as results:
        count = _write_pages(out, results, cols, rows, per_page, thumb)
    for stale in out.iterdir():   # pages of an earlier report with more of them
        match = _LATER_PAGE.fullmatch(stale.name)
        if match and int(match.group(1)) > count:
            stale.unlink(missing_ok=True)
    return out / FIRST_PAGE


def _write_pages(out: Path, results: "ResultsBatches", cols, rows, per_page: int, thumb: int) -> int:
    """The pages and the contact sheet (see write_report); returns the number of pages."""
    import pandas as pd
    tally, lowest = first_reading(results)
    try:
        job = read_job(out)
    except UsageError:
        job = None
    layout = make_layout(sweep_points(job, pd.DataFrame({"sweep_point": list(tally.labels)})), cols, rows)
    layout.not_offered = not_offered(job)
    overview = tally_overview(tally, results.columns, layout, job, f"batchgen report: {out.resolve().name}")

    keys = tally.prompt_keys
    count = max(1, math.ceil(len(keys) / per_page))
    for number, part in _page_parts(results, keys, per_page, lowest):
        made = _page_thumbnails(out, part, thumb)
        page = build_html(part, layout, {p: (m[0] if m else None) for p, m in made.items()},
                          overview=overview, page=Page(number, count, (number - 1) * per_page, len(keys)),
                          thumb=thumb, contact_sheet="contact_sheet.png",
                          inputs=input_thumbnails(part, max(THUMB_MIN, thumb // 2), _input_folder(job)))
        write_atomic(out / page_file(number), page.encode("utf-8"))
        if number == 1:
            sheet = build_contact_sheet(part, [lb for lb in layout.labels if lb not in layout.not_offered],
                                        {p: (m[1] if m else None) for p, m in made.items()},
                                        max_prompts=per_page, total_prompts=len(keys))
            buf = io.BytesIO()
            sheet.save(buf, "PNG")
            write_atomic(out / "contact_sheet.png", buf.getvalue())
    return count


def _input_folder(job: Optional[dict]) -> Optional[Path]:
    """The folder of the job's input table, which an edit's relative input paths start from."""
    settings = (job or {}).get("job")
    source = settings.get("source") if isinstance(settings, dict) else None
    return Path(source).parent if isinstance(source, str) and source else None


# Rows read at a time: a run writes results.parquet in row groups of 10,000 rows (results._CHUNK).
BATCH_ROWS = 10_000
# What each reading takes of the table: the figures, then the pages (the columns a page shows).
_STATS_COLUMNS = ("task_id", "row_index", "status", "error_code", "latency_s", "est_cost_usd",
                  "revised_prompt", "sweep_point", "in_input", "in_job", "provider", "endpoint", "mode",
                  "simulated")
_PAGE_COLUMNS = ("task_id", "row_index", "prompt", "status", "revised_prompt", "image_path",
                 "image_index", "error_code", "error_message", "latency_s", "est_cost_usd", "width",
                 "height", "sweep_point", "in_input", "in_job", "input_image", "simulated", "provider",
                 "endpoint", "mode", "frames", "markup_image")


class ResultsBatches:
    """OUT/results.parquet read a record batch at a time; UsageError when there is none, or it
    cannot be read."""

    def __init__(self, path: Path, out: Path, current_job: bool = False):
        import pyarrow.parquet as pq
        self.path = path
        self.current_job = current_job
        if not path.is_file():
            raise UsageError(f"{out} has no results.parquet: run `batchgen run ... --out {out}` first, "
                             "then `batchgen report` on that folder")
        try:
            self.file = pq.ParquetFile(path)
            self.columns = list(self.file.schema_arrow.names)
        except Exception as exc:  # a damaged or foreign file
            raise self._unreadable(exc) from None

    def __enter__(self) -> "ResultsBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _unreadable(self, exc) -> UsageError:
        return UsageError(f"{self.path} is not readable ({exc}); run `batchgen run` again to rebuild it")

    def batches(self, wanted: Sequence[str]):
        """(rows, read) per batch, in the table's order: the batch's rows (_normalised, a
        DataFrame of the `wanted` columns the table has; with `current_job`, those of the
        current job only), and how many rows of the table have been read with it."""
        columns = [c for c in wanted if c in self.columns]
        try:
            batches = self.file.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        except Exception as exc:
            raise self._unreadable(exc) from None
        read = 0
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                df = batch.to_pandas()
            except Exception as exc:  # damaged further on
                raise self._unreadable(exc) from None
            read += batch.num_rows
            flag = next((c for c in ("in_job", "in_input") if c in df.columns), None)
            if self.current_job and flag is not None:
                df = df[df[flag].fillna(True).astype(bool)].reset_index(drop=True)
            yield _normalised(df), read


def first_reading(results: ResultsBatches) -> tuple:
    """(Tally of the whole table, each batch's smallest row index with the rows of the table
    read up to its end, for _page_parts)."""
    tally = Tally()
    lowest = []
    for df, read in results.batches(_STATS_COLUMNS):
        tally.add(df)
        present = df["row_index"].dropna()
        lowest.append((read, int(present.min()) if len(present) else math.inf))
    return tally, lowest


def _page_parts(results: ResultsBatches, keys, per_page: int, lowest: list):
    """(page number, its rows sorted by row index) for each page, in order, read a batch at a
    time: a page's rows are held until no row of it can be still to come, then handed on.

    `keys` are the prompts' row indices, sorted; `lowest`, from the first reading, each batch's
    smallest row index with the rows read up to its end. A page is complete once the rows not
    yet read hold no row index up to its last: in a run's table, sorted by row index, that is
    as soon as the next page's rows begin, so a batch and a page are held; a table in another
    order holds more until its pages complete (all of it, shuffled), and comes out the same.
    """
    import bisect

    import pandas as pd
    ends = [read for read, _ in lowest]
    below = [math.inf] * (len(lowest) + 1)     # the smallest row index from each batch on
    for i in range(len(lowest) - 1, -1, -1):
        below[i] = min(lowest[i][1], below[i + 1])
    pages = [(keys[i], keys[min(i + per_page, len(keys)) - 1]) for i in range(0, len(keys), per_page)]
    held: list = []                  # rows read and not yet on a page, in the table's order
    number = 1

    def complete(up_to):
        nonlocal held, number
        ready = []
        while number <= len(pages) and pages[number - 1][1] < up_to:
            ready.append(number)
            number += 1
        if not ready:
            return
        if not held:     # only if the table changed between the readings: the page is empty
            held = [_no_rows()]
        rows = pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]
        rows = rows.sort_values("_row", kind="stable")        # stable: the table's order within a row
        starts = rows["_row"].to_numpy()
        hi = 0
        for n in ready:
            first, last = pages[n - 1]
            lo, hi = starts.searchsorted(first, "left"), starts.searchsorted(last, "right")
            yield n, rows.iloc[lo:hi]
        held = [rows.iloc[hi:]] if hi < len(rows) else []

    for df, read in results.batches(_PAGE_COLUMNS):
        drawn = df[df["row_index"].notna()]
        if len(drawn):
            held.append(drawn.assign(_row=drawn["row_index"].astype("int64")))
        # Rows of a batch not wholly read yet may still come (the batches need not end where
        # the first reading's did).
        yield from complete(below[bisect.bisect_right(ends, read)])
    yield from complete(math.inf)
    if not pages:      # no prompts: one page, and its grid is empty
        yield 1, _no_rows()


def _no_rows():
    import pandas as pd
    return _normalised(pd.DataFrame({"row_index": pd.Series([], dtype="Int64")})).assign(_row=[])


def _page_thumbnails(out: Path, part, thumb: int) -> dict:
    """image_path (as the table holds it, and cleaned) -> make_thumbnails() for a page's ok rows."""
    paths: dict[str, set] = {}
    for status, path in zip(part["status"], part["image_path"]):
        rel = _safe_relpath(path) if status == "ok" else None
        if rel is not None:
            paths.setdefault(rel, set()).add(path)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 1)) as pool:
        made = dict(zip(paths, pool.map(lambda p: make_thumbnails(out / p, thumb), paths)))
    for rel, stored in paths.items():
        for path in stored:
            made.setdefault(path, made[rel])
    return made
