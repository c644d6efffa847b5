"""Pictures of what the cluster did, drawn as inline SVG and HTML strings: pure
functions of plain data, shared by the performance report (one file) and the
notebook widget.

Why SVG drawn here rather than a plotting library: the same charts render in a
report file and in a widget's HTML, with nothing to install or load; a report must
open with no network (a library's inline JavaScript weighs a megabyte or
more, where these charts are a few hundred kilobytes at most, bounded by
`taskstream.Breakdown`); and tests read numbers from ``data-*`` attributes of the
very elements drawn, never from prose or pixels.

Colours: a task group keeps one colour everywhere (`color_of`); transfers are red,
(de)serialization grey, reads from disk orange, errors black, as in dask's task
stream.  Text uses JupyterLab's theme variables with fallbacks, so light and dark
themes both read.
"""

from __future__ import annotations

import html
import json
import zlib

from .units import format_bytes as _format_bytes

# Group colours: no reds, greys or oranges, which mark transfers, (de)serialization
# and disk reads.
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#9edae5", "#dbdb8d", "#393b79", "#637939", "#8c6d31",
           "#7b4173", "#3182bd")
ACTION_COLORS = {"transfer": "#d62728", "deserialize": "#999999",
                 "serialize": "#bbbbbb", "disk-read": "#ff7f0e", "idle": "#e0e0e0"}
ERROR_COLOR = "#000000"
FONT = ("font-family:var(--jp-ui-font-family,system-ui,-apple-system,'Segoe UI',"
        "sans-serif);font-size:var(--jp-ui-font-size1,13px);"
        "color:var(--jp-ui-font-color1,currentColor)")
MONO = "font-family:var(--jp-code-font-family,ui-monospace,Menlo,Consolas,monospace)"
TRACK = "rgba(128,128,128,0.18)"
MUTED = "opacity:0.7"


def esc(x):
    return html.escape(str(x), quote=True)


def format_bytes(n):
    return _format_bytes(n, digits=1)


def format_seconds(s):
    s = float(s or 0)
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def color_of(name):
    """One colour per task group name, the same in every process and run."""
    return PALETTE[zlib.crc32(str(name).encode()) % len(PALETTE)]


def short_address(address):
    return str(address).removeprefix("tcp://")


# ---------------------------------------------------------------- task stream

def _ticks(t0, t1, n=6):
    span = max(t1 - t0, 1e-9)
    raw = span / n
    step = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    if raw < 1:
        step = max(raw, 1e-3)
        for unit in (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0):
            if raw <= unit:
                step = unit
                break
    out, x = [], 0.0
    while x <= span + 1e-12:
        out.append(x)
        x += step
    return out


def stream_svg(stream, t0, t1, width=1000, lane_height=14, label_width=170,
               now_label=False):
    """The task stream: one lane per worker thread, time from ``t0`` to ``t1``.
    ``stream`` as in `taskstream.report_data`: {"lanes": [[worker, thread]],
    "binned": bool, "rects": [...]}.  Each rectangle carries its data: a task's
    ``data-key``, ``data-group``, ``data-action``, ``data-worker``, ``data-start``
    and ``data-stop``; a bin (long runs) ``data-label`` and ``data-busy``."""
    lanes = stream.get("lanes") or []
    span = max(t1 - t0, 1e-9)
    plot = width - label_width
    height = max(len(lanes), 1) * lane_height + 24
    scale = plot / span

    def x(t):
        return label_width + (min(max(t, t0), t1) - t0) * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" data-dask-ipy="task-stream" '
             f'data-lanes="{len(lanes)}" data-rects="{len(stream.get("rects") or ())}" '
             f'data-binned="{str(bool(stream.get("binned"))).lower()}" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'style="{FONT};font-size:11px">']
    last_worker = None
    for i, (worker, thread) in enumerate(lanes):
        y = i * lane_height
        if i % 2:
            parts.append(f'<rect x="{label_width}" y="{y}" width="{plot}" '
                         f'height="{lane_height}" fill="{TRACK}" opacity="0.5"/>')
        label = short_address(worker) if worker != last_worker else ""
        last_worker = worker
        parts.append(f'<text data-dask-ipy="lane" data-worker="{esc(worker)}" '
                     f'data-thread="{esc(thread)}" x="{label_width - 4}" '
                     f'y="{y + lane_height - 3}" text-anchor="end" fill="currentColor">'
                     f'{esc(label)}<title>{esc(worker)} thread {esc(thread)}</title>'
                     f'</text>')
    rects = stream.get("rects") or ()
    if stream.get("binned"):
        for lane, a, b, label, busy in rects:
            color = color_of(label) if label not in ACTION_COLORS else \
                ACTION_COLORS[label]
            worker = lanes[lane][0]
            parts.append(
                f'<rect data-dask-ipy="task-bin" data-label="{esc(label)}" '
                f'data-worker="{esc(worker)}" data-busy="{busy}" x="{x(a):.2f}" '
                f'y="{lane * lane_height + 1}" width="{max(x(b) - x(a), 0.5):.2f}" '
                f'height="{lane_height - 2}" fill="{color}" '
                f'fill-opacity="{0.35 + 0.65 * busy:.2f}"><title>{esc(label)}: '
                f'{busy:.0%} busy</title></rect>')
    else:
        for lane, a, b, group, action, key, status in rects:
            if action == "compute":
                color = ERROR_COLOR if status == "error" else color_of(group)
            else:
                color = ACTION_COLORS.get(action, "#999999")
            worker = lanes[lane][0]
            label = group if action == "compute" else f"{action} {group}"
            opacity = "" if action == "compute" else ' fill-opacity="0.6"'
            parts.append(
                f'<rect data-dask-ipy="task" data-key="{esc(key)}" '
                f'data-group="{esc(group)}" data-action="{esc(action)}" '
                f'data-status="{esc(status)}" data-worker="{esc(worker)}" '
                f'data-start="{a!r}" data-stop="{b!r}" x="{x(a):.2f}" '
                f'y="{lane * lane_height + 1}" width="{max(x(b) - x(a), 0.5):.2f}" '
                f'height="{lane_height - 2}" fill="{color}"{opacity}>'
                f'<title>{esc(label)}: {esc(key)} ({format_seconds(b - a)})</title>'
                f'</rect>')
    axis = len(lanes) * lane_height
    parts.append(f'<line x1="{label_width}" y1="{axis}" x2="{width}" y2="{axis}" '
                 f'stroke="currentColor" stroke-opacity="0.4"/>')
    for tick in _ticks(t0, t1):
        tx = label_width + tick * scale
        if now_label:
            ago = span - tick
            text = "now" if ago < span * 1e-6 else ("" if not tick
                                                     else f"-{format_seconds(ago)}")
        else:
            text = format_seconds(tick) if tick else "0"
        parts.append(f'<line x1="{tx:.1f}" y1="{axis}" x2="{tx:.1f}" y2="{axis + 4}" '
                     f'stroke="currentColor" stroke-opacity="0.4"/>'
                     f'<text x="{tx:.1f}" y="{axis + 16}" text-anchor="middle" '
                     f'fill="currentColor" opacity="0.7">{esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def live_stream_svg(rects, now, window, width=720):
    """The task stream of the last ``window`` seconds before ``now``, one lane per
    worker thread that ran something then; ``rects`` as `TaskStream.recent` gives
    them, ``[[worker, thread, start, stop, group, action, status]]``."""
    t0 = now - window
    shown = [r for r in rects if r[3] >= t0]
    lanes = sorted({(r[0], r[1]) for r in shown})
    index = {lane: i for i, lane in enumerate(lanes)}
    stream = {"lanes": [list(lane) for lane in lanes], "binned": False,
              "rects": [(index[(w, t)], a, b, group, action, "", status)
                        for w, t, a, b, group, action, status in shown]}
    return stream_svg(stream, t0, now, width=width, label_width=150, now_label=True)


def legend_html(names):
    """A legend of group colours and actions."""
    items = [(n, color_of(n)) for n in names] + [
        (a, c) for a, c in ACTION_COLORS.items() if a != "idle"] + [("error", ERROR_COLOR)]
    return ('<div data-dask-ipy="legend" style="margin:4px 0">' + "".join(
        f'<span style="display:inline-block;margin-right:12px;white-space:nowrap">'
        f'<span style="display:inline-block;width:10px;height:10px;background:{c};'
        f'margin-right:4px;vertical-align:middle"></span>{esc(n)}</span>'
        for n, c in items) + "</div>")


# ---------------------------------------------------------------- per group

BREAKDOWN = ("compute", "transfer", "deserialize", "serialize", "disk-read")


def breakdown_svg(groups, idle=0.0, width=1000, row=18, label_width=170, max_groups=30):
    """A stacked bar per task group of its seconds (compute, transfer, (de)
    serialization, disk), and one of the threads' idle time, on one scale."""
    groups = list(groups)[:max_groups]
    rows = [(g["name"], [(a, g.get(a, 0.0)) for a in BREAKDOWN], g) for g in groups]
    rows.append(("idle", [("idle", idle)], None))
    biggest = max([sum(v for _, v in parts) for _, parts, _ in rows] + [1e-9])
    plot = width - label_width - 90
    height = len(rows) * row + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" data-dask-ipy="breakdown" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'style="{FONT};font-size:11px">']
    for i, (name, parts, g) in enumerate(rows):
        y = i * row
        total = sum(v for _, v in parts)
        attrs = "".join(f' data-{a}="{v!r}"' for a, v in parts)
        out.append(f'<g data-dask-ipy="breakdown-row" data-group="{esc(name)}"{attrs}'
                   + (f' data-count="{g["count"]}"' if g else "") + ">")
        out.append(f'<text x="{label_width - 4}" y="{y + row - 5}" text-anchor="end" '
                   f'fill="currentColor">{esc(name)}</text>')
        xpos = label_width
        for action, v in parts:
            w = v / biggest * plot
            if w <= 0:
                continue
            color = color_of(name) if action == "compute" else ACTION_COLORS[action]
            out.append(f'<rect x="{xpos:.2f}" y="{y + 2}" width="{max(w, 0.5):.2f}" '
                       f'height="{row - 4}" fill="{color}"><title>{esc(name)} '
                       f'{action}: {format_seconds(v)}</title></rect>')
            xpos += w
        out.append(f'<text x="{xpos + 4:.1f}" y="{y + row - 5}" fill="currentColor" '
                   f'opacity="0.8">{format_seconds(total)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def table_html(name, head, rows, attrs=None):
    """A plain table; ``attrs`` gives each row's data attributes."""
    th = "padding:2px 10px 2px 0;text-align:right;border-bottom:1px solid " \
         "rgba(128,128,128,0.4);white-space:nowrap"
    td = "padding:1px 10px 1px 0;text-align:right;white-space:nowrap"
    body = []
    for i, r in enumerate(rows):
        a = "".join(f' data-{k}="{esc(v)}"' for k, v in (attrs[i] if attrs else {}).items())
        cells = "".join(f'<td style="{td}{";text-align:left" if j == 0 else ""}">{c}</td>'
                        for j, c in enumerate(r))
        body.append(f'<tr data-dask-ipy="{name}-row"{a}>{cells}</tr>')
    heads = "".join(f'<th style="{th}{";text-align:left" if j == 0 else ""}">{esc(h)}</th>'
                    for j, h in enumerate(head))
    return (f'<table data-dask-ipy="{name}" style="border-collapse:collapse;'
            f'margin:4px 0"><thead><tr>{heads}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def groups_table(groups):
    rows, attrs = [], []
    for g in groups:
        mean = g["compute"] / g["count"] if g["count"] else 0.0
        rows.append([f'<span style="{MONO}">{esc(g["name"])}</span>', g["count"],
                     g["errors"], format_seconds(g["compute"]), format_seconds(mean),
                     format_seconds(g["transfer"]),
                     format_seconds(g["deserialize"] + g["serialize"]),
                     format_seconds(g["disk-read"]), format_bytes(g["nbytes"])])
        attrs.append({"group": g["name"], "count": g["count"], "errors": g["errors"],
                      "compute": g["compute"], "transfer": g["transfer"]})
    return table_html("groups", ["group", "tasks", "errors", "compute", "mean",
                                 "transfer", "(de)serialize", "disk", "results"],
                      rows, attrs)


def threads_table(threads):
    rows, attrs = [], []
    for t in threads:
        rows.append([f'<span style="{MONO}">{esc(short_address(t["worker"]))}</span>',
                     esc(t["thread"]), t["tasks"], format_seconds(t["compute"]),
                     format_seconds(t["transfer"]),
                     format_seconds(t["deserialize"] + t["serialize"]),
                     format_seconds(t["idle"])])
        attrs.append({"worker": t["worker"], "thread": t["thread"],
                      "tasks": t["tasks"], "compute": t["compute"], "idle": t["idle"]})
    return table_html("threads", ["worker", "thread", "tasks", "compute", "transfer",
                                  "(de)serialize", "idle"], rows, attrs)


def transfers_html(transfers):
    """Bytes moved from each worker (rows) to each other (columns)."""
    if not transfers:
        return ('<div data-dask-ipy="transfers" data-count="0" style="opacity:0.7">'
                'no data moved between workers</div>')
    sources = sorted({x["source"] for x in transfers})
    dests = sorted({x["destination"] for x in transfers})
    cell = {(x["source"], x["destination"]): x for x in transfers}
    biggest = max(x["nbytes"] for x in transfers) or 1
    head = "".join(f'<th style="padding:2px 8px;{MONO}">to {esc(short_address(d))}</th>'
                   for d in dests)
    rows = []
    for s in sources:
        cells = []
        for d in dests:
            x = cell.get((s, d))
            if x is None:
                cells.append('<td style="padding:2px 8px;opacity:0.4">–</td>')
                continue
            shade = 0.1 + 0.6 * x["nbytes"] / biggest
            cells.append(
                f'<td data-dask-ipy="transfer" data-source="{esc(s)}" '
                f'data-destination="{esc(d)}" data-bytes="{x["nbytes"]}" '
                f'data-count="{x["count"]}" data-seconds="{x["seconds"]!r}" '
                f'style="padding:2px 8px;text-align:right;'
                f'background:rgba(214,39,40,{shade:.2f})">{format_bytes(x["nbytes"])}'
                f'<br><span style="opacity:0.7">{x["count"]} in '
                f'{format_seconds(x["seconds"])}</span></td>')
        rows.append(f'<tr><th style="padding:2px 8px;text-align:left;{MONO}">from '
                    f'{esc(short_address(s))}</th>{"".join(cells)}</tr>')
    return (f'<table data-dask-ipy="transfers" data-count="{len(transfers)}" '
            f'style="border-collapse:collapse;margin:4px 0"><thead><tr><th></th>{head}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


# ---------------------------------------------------------------- memory over time

def memory_svg(memory, t0, t1, width=1000, height=200, left=70):
    """Each worker's process memory (solid) and managed memory (dashed) over time;
    ``memory`` {address: [[time, process, managed, spilled]]}."""
    series = {a: [s for s in v if t0 - 1 <= s[0] <= t1 + 1] for a, v in memory.items()}
    series = {a: v for a, v in series.items() if v}
    top = max([s[1] for v in series.values() for s in v] + [1])
    span = max(t1 - t0, 1e-9)
    plot_w, plot_h = width - left - 10, height - 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" data-dask-ipy="memory-chart" '
           f'data-workers="{len(series)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" style="{FONT};font-size:11px">']
    for frac in (0, 0.5, 1):
        y = plot_h - frac * plot_h + 2
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="currentColor" stroke-opacity="0.15"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" '
                   f'fill="currentColor" opacity="0.7">{format_bytes(top * frac)}</text>')
    for i, (address, samples) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        for kind, column, dash in (("process", 1, ""),
                                   ("managed", 2, ' stroke-dasharray="4 3"')):
            points = " ".join(
                f"{left + (s[0] - t0) / span * plot_w:.1f},"
                f"{plot_h - s[column] / top * plot_h + 2:.1f}" for s in samples)
            peak = max(s[column] for s in samples)
            out.append(f'<polyline data-dask-ipy="memory-line" '
                       f'data-worker="{esc(address)}" data-kind="{kind}" '
                       f'data-samples="{len(samples)}" data-peak="{peak}" fill="none" '
                       f'stroke="{color}" stroke-width="1.5"{dash} '
                       f'points="{points}"><title>{esc(address)} {kind} memory, peak '
                       f'{format_bytes(peak)}</title></polyline>')
    for i, address in enumerate(sorted(series)[:4]):
        out.append(f'<text x="{left + i * 220}" y="{height - 4}" '
                   f'fill="{PALETTE[i % len(PALETTE)]}">■ '
                   f'<tspan fill="currentColor">{esc(short_address(address))}</tspan>'
                   f'</text>')
    out.append(f'<text x="{width - 10}" y="{height - 4}" text-anchor="end" '
               f'fill="currentColor" opacity="0.7">{format_seconds(span)}</text></svg>')
    return "".join(out)


# ---------------------------------------------------------------- profiles

def flame_svg(tree, label="", width=1000, row=17, min_width=0.5):
    """A flame chart of a call tree (`profiling`): the root on top, each function
    below its caller, as wide as its share of the samples; colour by file.  Each
    frame carries ``data-name``, ``data-filename``, ``data-line``, ``data-count`` and
    ``data-depth``; frames narrower than ``min_width`` pixels are left out."""
    from .profiling import flatten

    total = tree["count"]
    rects = flatten(tree, min_width / width) if total else []
    depth = max((r[0] for r in rects), default=0) + 1
    height = depth * row + 4
    scale = width / max(total, 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" data-dask-ipy="flame" '
           f'data-label="{esc(label)}" data-samples="{total}" '
           f'data-frames="{len(rects)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" style="{FONT};font-size:11px">']
    for d, offset, count, node in rects:
        x, w, y = offset * scale, count * scale, d * row
        desc = node["description"]
        if d == 0:
            name, filename, line, text = (f"{label} all" if label else "all"), "", "", ""
            color = "#bdbdbd"
        else:
            name, filename = desc["name"], desc["filename"]
            line, text = desc["line_number"], desc["line"]
            color = color_of(filename)
        share = count / max(total, 1)
        tip = (f"{name} ({filename}:{line})\n{text}\n" if d else f"{name}\n") + \
            f"{count} samples, {share:.1%}"
        out.append(f'<g data-dask-ipy="flame-frame" data-name="{esc(name)}" '
                   f'data-filename="{esc(filename)}" data-line="{esc(line)}" '
                   f'data-count="{count}" data-depth="{d}">'
                   f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.5):.2f}" '
                   f'height="{row - 1}" fill="{color}" fill-opacity="0.85">'
                   f'<title>{esc(tip)}</title></rect>')
        chars = int((w - 6) / 6.5)
        if chars >= 3:
            shown = name if len(name) <= chars else name[:chars - 1] + "…"
            out.append(f'<text x="{x + 3:.2f}" y="{y + row - 5}" fill="#000" '
                       f'pointer-events="none">{esc(shown)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def top_table(rows):
    """The functions that took most samples (`profiling.top`)."""
    return table_html(
        "profile-top", ["function", "own samples", "on the stack", "where"],
        [[f'<span style="{MONO}">{esc(r["name"])}</span>', r["self"], r["total"],
          f'<span style="{MONO};{MUTED}">{esc(r["filename"])}:{r["line_number"]}'
          f'</span>'] for r in rows],
        [{"name": r["name"], "self": r["self"], "total": r["total"]} for r in rows])


def profile_section(trees):
    """The flame charts and top functions of ``trees`` ({label: tree})."""
    from .profiling import merge, top

    merged = merge(*trees.values())
    if not merged["count"]:
        return ('<div data-dask-ipy="profile-empty" style="opacity:0.7">no samples: '
                'no task ran while the workers sampled (or sampling is off)</div>')
    charts = "".join(f'<div class="scroll">{flame_svg(t, label=short_address(w))}'
                     f'</div>' for w, t in trees.items())
    return (f'{charts}<div class="note">the functions with most samples</div>'
            f'{top_table(top(merged))}')


def profile_html(trees, title="dask_ipy profile"):
    """One self-contained HTML page of profiles (``trees``: {label: tree}, one
    chart each), their data inside as JSON."""
    payload = json.dumps(trees, separators=(",", ":"), default=str).replace("</", "<\\/")
    samples = sum(t["count"] for t in trees.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ {FONT}; margin: 24px; background: #fff; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px 0; }}
.note {{ opacity: 0.7; margin: 2px 0 8px 0; }}
.scroll {{ overflow-x: auto; }}
</style></head>
<body data-dask-ipy="profile" data-samples="{samples}">
<h1>{esc(title)}</h1>
<div class="note">{samples} samples of the stacks of the workers' task threads; each
function below its caller, as wide as its share of the samples (hover for the line)
</div>
{profile_section(trees)}
<script type="application/json" id="dask-ipy-profile-data">{payload}</script>
</body></html>
"""


# ---------------------------------------------------------------- the report

def _report_profile(data):
    profile = data.get("profile")
    if profile is None:
        return ""
    return (f'<h2>What the task threads ran</h2><section data-dask-ipy="report-profile">'
            f'<div class="note">stacks sampled on the workers during the report'
            f'</div>{profile_section({"": profile})}</section>')


def report_html(data):
    """One self-contained HTML page of a performance report (see
    `taskstream.report_data`); its data rides along as JSON, and a link saves it."""
    s = data["summary"]
    t0, t1 = data["start"], data["stop"]
    names = [g["name"] for g in data["groups"]][:20]
    facts = [("duration", format_seconds(s["duration"])), ("tasks", s["tasks"]),
             ("errors", s["errors"]), ("workers", len(data["workers"])),
             ("threads", s["threads"]), ("compute", format_seconds(s["compute"])),
             ("transfer", format_seconds(s["transfer"])),
             ("idle", format_seconds(s["idle"])),
             ("moved", format_bytes(s["transfer_bytes"]))]
    summary = "".join(
        f'<div style="display:inline-block;margin:0 22px 6px 0"><div style="{MUTED}">'
        f'{esc(k)}</div><b style="font-size:130%">{esc(v)}</b></div>' for k, v in facts)
    payload = json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")
    binned = " (binned: each bin shows what took most of its time)" \
        if data["stream"]["binned"] else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(data["title"])}</title>
<style>
body {{ {FONT}; margin: 24px; background: #fff; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px 0; }}
h2 {{ font-size: 15px; margin: 26px 0 6px 0; border-bottom: 1px solid #ddd; }}
.note {{ opacity: 0.7; margin: 2px 0 8px 0; }}
.scroll {{ overflow-x: auto; }}
a {{ color: #1565c0; }}
</style></head>
<body data-dask-ipy="report" data-tasks="{s["tasks"]}" data-errors="{s["errors"]}"
 data-workers="{len(data["workers"])}" data-start="{t0!r}" data-stop="{t1!r}">
<h1>{esc(data["title"])}</h1>
<div class="note">scheduler <span style="{MONO}">{esc(data["scheduler"])}</span>
 · from the records of every task the workers ran during the report</div>
<section data-dask-ipy="summary">{summary}</section>
<h2>Task stream</h2>
<div class="note">one lane per worker thread{binned}; red: transfers of inputs,
grey: (de)serialization, orange: reads from disk, black: errors</div>
{legend_html(names)}
<div class="scroll">{stream_svg(data["stream"], t0, t1)}</div>
<h2>Where the time went, per task group</h2>
<div class="note">seconds of the workers' threads; idle: thread time with no task</div>
<div class="scroll">{breakdown_svg(data["groups"], s["idle"])}</div>
{groups_table(data["groups"])}
<h2>Workers' threads</h2>
{threads_table(data["threads"])}
<h2>Workers' memory</h2>
<div class="note">process memory (solid) and results held (managed, dashed)</div>
<div class="scroll">{memory_svg(data["memory"], t0, t1)}</div>
<h2>Transfers between workers</h2>
{transfers_html(data["transfers"])}
{_report_profile(data)}<h2>Data</h2>
<div class="note">everything above as JSON:
<a data-dask-ipy="download-json" href="#" download="report.json">save report.json</a></div>
<script type="application/json" id="dask-ipy-report-data">{payload}</script>
<script>
(function () {{
  var a = document.querySelector('[data-dask-ipy="download-json"]');
  var text = document.getElementById('dask-ipy-report-data').textContent;
  a.href = URL.createObjectURL(new Blob([text], {{type: 'application/json'}}));
}})();
</script>
</body></html>
"""
