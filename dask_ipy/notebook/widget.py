"""A live view of the cluster for the notebook, and a progress bar for the console.

    scheduler ──monitor-snapshot, every 0.5 s──▶ Client I/O thread
                                                   │ Monitor._on_snapshot: keep the
                                                   ▼ latest snapshot, set an Event
    child widgets ◀── only changed values ── Monitor updater thread (one per Monitor)
                                              render: snapshot ─▶ HTML strings (pure)

The scheduler builds snapshots only while someone subscribes, so a cluster nobody
watches pays nothing.  After construction only the updater thread writes the
Monitor's widgets: ipykernel sends comm messages from any thread, and one writer per
widget keeps every widget's state in order.  It writes at most ``1 / interval`` times
a second and skips values that did not change: a quiet cluster costs a couple of
small messages per snapshot (uptime, process memory and CPU still move).

Rendering is a set of pure functions of a snapshot (see `SchedulerState.snapshot`)::

    {"address", "uptime", "nclients", "ntasks",
     "workers": [{address, name, host, pid, nthreads, executing, processing, keys,
                  nbytes, memory, cpu, last_seen, managed, unmanaged, spilled,
                  memory_limit, memory_fractions, status, paused, paused_for,
                  time_paused}],
     "counts":  {state: n},
     "groups":  [{name, total, done, erred, states: {state: n}}],
     "errors":  [{key, group, type, text}],
     "now":     the scheduler's time,
     "stream":  [[worker, thread, start, stop, group, action, status]]}  the tasks
                that ended since the last snapshot (kept for ``stream_window`` s)

The HTML carries ``data-*`` attributes (``data-dask-ipy="group"``, ``data-done``...)
so tests and browsers read numbers, not prose.  Colours are mid-tones on transparent
backgrounds and text uses JupyterLab's theme variables, so light and dark themes both
read well.
"""

from __future__ import annotations

import html
import re
import sys
import threading
import time
from collections import deque

import ipywidgets as widgets

from .. import charts, units
from ..client.default import default_client
from ..client.futures import Waiter, futures_of

STATE_ORDER = ("waiting", "queued", "no-worker", "processing", "memory", "erred",
               "released")
COLORS = {
    "waiting": "#9e9e9e", "queued": "#78909c", "no-worker": "#ef6c00",
    "processing": "#1e88e5", "memory": "#43a047", "erred": "#e53935",
    "released": "#bdbdbd",
}
ENGINE_NAME = re.compile(r"^engine[-_ ]?(\d+)$")
# Memory bars: results held (managed), the rest of the process (unmanaged), and the
# thresholds of the worker's limit as marks.
MEMORY_COLORS = {"managed": "#43a047", "unmanaged": "#90a4ae", "paused": "#ef6c00",
                 "over": "#e53935"}
MARK_COLORS = {"target": "rgba(128,128,128,0.7)", "spill": "rgba(128,128,128,0.9)",
               "pause": "#ef6c00", "terminate": "#e53935"}

# Theme-aware styling: JupyterLab variables with fallbacks for other front ends.
FONT = ("font-family:var(--jp-ui-font-family,system-ui,-apple-system,'Segoe UI',"
        "sans-serif);font-size:var(--jp-ui-font-size1,13px);"
        "color:var(--jp-ui-font-color1,currentColor);line-height:1.45;"
        "background:transparent")
MONO = "font-family:var(--jp-code-font-family,ui-monospace,Menlo,Consolas,monospace)"
MUTED = "opacity:0.7"
RULE = "var(--jp-border-color2,rgba(128,128,128,0.35))"
TRACK = "rgba(128,128,128,0.18)"
DOT = " \u00b7 "


# ---------------------------------------------------------------- formatting

def format_bytes(n):
    """``1536 -> '1.5 KiB'``."""
    return units.format_bytes(n, digits=1)


def format_duration(seconds):
    """``75 -> '1m 15s'``; short spans keep a decimal."""
    s = max(float(seconds or 0), 0.0)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600):02d}h"


def format_heartbeat(seconds):
    """Coarse on purpose: healthy workers read the same from one snapshot to the
    next, so a quiet worker table is not sent again and again."""
    s = float(seconds or 0)
    return "< 1 s" if s < 1 else format_duration(s) + " ago"


def worker_label(w):
    """What a person calls a worker: its engine id, its name, or its address."""
    if w.get("engine") is not None:
        return f"engine {w['engine']}"
    name = w.get("name")
    m = ENGINE_NAME.match(str(name or ""))
    if m:
        return f"engine {m.group(1)}"
    if name in (None, "", w.get("address")):
        return str(w.get("address", "")).removeprefix("tcp://")
    return str(name)


def totals(snap):
    """(workers, threads, process memory) of a snapshot; workers sharing a process
    count its memory once."""
    workers = snap.get("workers") or ()
    threads = sum(w.get("nthreads", 0) for w in workers)
    memory = {}
    for w in workers:
        memory[(w.get("host"), w.get("pid") or w.get("address"))] = w.get("memory", 0)
    return len(workers), threads, sum(memory.values())


def _esc(x):
    return html.escape(str(x), quote=True)


def _error_text(e):
    """An error's message without a repeated ``Type:`` prefix."""
    text, kind = str(e.get("text", "")), str(e.get("type", ""))
    if kind and text.startswith(kind + ":"):
        text = text[len(kind) + 1:].lstrip()
    return text


def _group_numbers(g):
    states = g.get("states") or {}
    total = max(int(g.get("total", 0)), 0)
    done = int(g.get("done", 0))
    erred = int(g.get("erred", 0))
    processing = int(states.get("processing", 0))
    waiting = sum(int(states.get(s, 0)) for s in ("waiting", "queued", "no-worker"))
    return total, done, erred, processing, waiting


# ---------------------------------------------------------------- HTML (pure)

def _badge(text, color):
    return (f' <span data-dask-ipy="status" style="color:#fff;background:{color};'
            f'border-radius:3px;padding:0 6px;font-size:90%">{_esc(text)}</span>')


def header_html(snap, status="running", stale=None):
    if not snap:
        note = (f'<span style="{MUTED}">waiting for the scheduler\u2026</span>'
                if status == "running" else _badge(status, "#757575"))
        return f'<div data-dask-ipy="header" style="{FONT}"><b>dask_ipy</b> {note}</div>'

    nworkers, threads, memory = totals(snap)
    nclients = snap.get("nclients", 0)
    npaused = sum(1 for w in snap.get("workers") or () if w.get("paused"))
    parts = [
        f"<b>{nworkers}</b> worker{'s' if nworkers != 1 else ''}"
        + (f' (<b style="color:{MEMORY_COLORS["paused"]}">{npaused} paused</b>)'
           if npaused else ""),
        f"<b>{threads}</b> thread{'s' if threads != 1 else ''}",
        f"<b>{format_bytes(memory)}</b> memory",
        f"up <b>{format_duration(snap.get('uptime', 0))}</b>",
        f"{nclients} client{'s' if nclients != 1 else ''}",
    ]
    badge = ""
    if status != "running":
        color = {"stopped": "#757575", "reconnecting": "#ef6c00"}.get(status, "#e53935")
        badge = _badge(status, color)
    elif stale:
        badge = _badge(f"no update for {format_duration(stale)}", "#ef6c00")
    sep = f' <span style="{MUTED}">\u00b7</span> '
    return (f'<div data-dask-ipy="header" data-workers="{nworkers}" '
            f'data-threads="{threads}" style="{FONT};padding:2px 0 6px 0;'
            f'border-bottom:1px solid {RULE}">'
            f'<b style="font-size:110%">dask_ipy</b> '
            f'<span style="{MUTED}">scheduler</span> '
            f'<span style="{MONO}">{_esc(snap.get("address", ""))}</span>{badge}<br>'
            f'{sep.join(parts)}</div>')


WORKER_COLUMNS = ("worker", "host", "threads", "executing", "queued", "keys", "stored",
                  "memory", "spilled", "cpu", "heartbeat")


def memory_html(w):
    """A worker's memory: a bar of its limit (managed, then unmanaged memory), marks
    at its target, spill, pause and terminate fractions, and the figures."""
    rss = int(w.get("memory", 0) or 0)
    limit = int(w.get("memory_limit") or 0)
    managed = min(int(w.get("managed", 0) or 0), rss)
    unmanaged = max(rss - managed, 0)
    spilled = int(w.get("spilled", 0) or 0)
    fractions = w.get("memory_fractions") or {}
    paused = bool(w.get("paused"))
    data = (f'data-dask-ipy="memory" data-memory="{rss}" data-managed="{managed}" '
            f'data-unmanaged="{unmanaged}" data-spilled="{spilled}" '
            f'data-limit="{limit}" data-paused="{str(paused).lower()}"')
    if not limit:
        return f'<span {data}>{format_bytes(rss)}</span>'
    scale = max(limit, rss)
    terminate = fractions.get("terminate")
    color = MEMORY_COLORS["managed"]
    if paused:
        color = MEMORY_COLORS["paused"]
    if terminate and rss > terminate * limit or rss > limit:
        color = MEMORY_COLORS["over"]
    segments = (
        f'<span style="position:absolute;left:0;top:0;bottom:0;'
        f'width:{managed / scale * 100:.1f}%;background:{color}"></span>'
        f'<span style="position:absolute;left:{managed / scale * 100:.1f}%;top:0;'
        f'bottom:0;width:{unmanaged / scale * 100:.1f}%;'
        f'background:{MEMORY_COLORS["unmanaged"]}"></span>')
    marks = "".join(
        f'<span data-mark="{name}" style="position:absolute;top:-2px;bottom:-2px;'
        f'left:{f * limit / scale * 100:.1f}%;width:1px;background:{MARK_COLORS[name]}">'
        f'</span>' for name, f in fractions.items() if f and name in MARK_COLORS)
    tip = (f"process {format_bytes(rss)} of its {format_bytes(limit)} limit: "
           f"{format_bytes(managed)} of results (managed), {format_bytes(unmanaged)} "
           f"other (unmanaged); {format_bytes(spilled)} spilled to disk. Marks: "
           + ", ".join(f"{name} {f:.0%}" for name, f in fractions.items() if f))
    return (f'<span {data} title="{_esc(tip)}" style="white-space:nowrap">'
            f'<span style="display:inline-block;position:relative;width:90px;'
            f'height:8px;margin-right:6px;border-radius:2px;background:{TRACK};'
            f'vertical-align:middle">{segments}{marks}</span>'
            f'{format_bytes(rss)} / {format_bytes(limit)}</span>')


def paused_badge(w, warn_after=None):
    """'paused 1m 03s' beside a paused worker; red once past ``warn_after``."""
    if not w.get("paused"):
        return ""
    seconds = float(w.get("paused_for", 0) or 0)
    late = warn_after is not None and seconds >= warn_after
    color = "#e53935" if late else MEMORY_COLORS["paused"]
    return (f' <span data-dask-ipy="paused" data-seconds="{seconds:.1f}" '
            f'style="color:#fff;background:{color};border-radius:3px;padding:0 5px;'
            f'font-size:85%">paused {format_duration(seconds)}</span>')


def paused_alerts_html(snap, warn_after):
    """A loud line for each worker paused for ``warn_after`` seconds or more."""
    if warn_after is None:
        return ""
    rows = []
    for w in (snap or {}).get("workers") or ():
        seconds = float(w.get("paused_for", 0) or 0)
        if not w.get("paused") or seconds < warn_after:
            continue
        limit = w.get("memory_limit")
        pause = (w.get("memory_fractions") or {}).get("pause")
        past = (f" is past {pause:.0%} of its {format_bytes(limit)} limit"
                if limit and pause else "")
        rows.append(
            f'<div data-dask-ipy="paused-alert" data-address="{_esc(w.get("address"))}" '
            f'style="padding:3px 8px;margin:2px 0;border-radius:3px;'
            f'border-left:4px solid #e53935;background:rgba(229,57,53,0.12)">'
            f'<b>\u26a0 {_esc(worker_label(w))} has been paused for '
            f'{format_duration(seconds)}</b>: its memory '
            f'{format_bytes(w.get("memory", 0))}{past} '
            f'({format_bytes(w.get("managed", 0))} of results, '
            f'{format_bytes(w.get("spilled", 0))} spilled). It starts no task until '
            f'its memory falls: release results you no longer need, persist less at '
            f'once, or give workers more memory.</div>')
    if not rows:
        return ""
    return f'<div data-dask-ipy="paused-alerts" style="{FONT}">{"".join(rows)}</div>'


def workers_html(snap, max_rows=64, warn_after=None):
    workers = list((snap or {}).get("workers") or ())
    if not workers:
        return (f'<div data-dask-ipy="workers" data-count="0" style="{FONT};{MUTED};'
                f'padding:4px 0">no workers yet</div>')
    workers.sort(key=lambda w: (worker_label(w), w.get("address", "")))
    th = (f"padding:2px 10px 2px 0;text-align:right;font-weight:600;"
          f"border-bottom:1px solid {RULE};white-space:nowrap")
    head = "".join(
        f'<th style="{th}{";text-align:left" if c in ("worker", "host") else ""}">{c}</th>'
        for c in WORKER_COLUMNS)
    td = "padding:1px 10px 1px 0;text-align:right;white-space:nowrap"
    rows = []
    for w in workers[:max_rows]:
        executing = int(w.get("executing", 0))
        queued = max(int(w.get("processing", 0)) - executing, 0)
        nthreads = int(w.get("nthreads", 0))
        busy = min(executing / nthreads, 1.0) if nthreads else 0.0
        late = w.get("last_seen", 0) > 5
        beat = format_heartbeat(w.get("last_seen", 0))
        cells = [
            f'<td style="{td};text-align:left;{MONO}" title="{_esc(w.get("address"))}">'
            f'{_esc(worker_label(w))}{paused_badge(w, warn_after)}</td>',
            f'<td style="{td};text-align:left">{_esc(w.get("host", ""))}</td>',
            f'<td style="{td}">{nthreads}</td>',
            f'<td style="{td}"><span style="display:inline-block;width:36px;height:7px;'
            f'margin-right:6px;border-radius:2px;background:{TRACK};overflow:hidden;'
            f'vertical-align:middle"><span style="display:block;height:100%;'
            f'width:{busy * 100:.0f}%;background:{COLORS["processing"]}"></span></span>'
            f'{executing}</td>',
            f'<td style="{td}">{queued}</td>',
            f'<td style="{td}">{int(w.get("keys", 0))}</td>',
            f'<td style="{td}">{format_bytes(w.get("nbytes", 0))}</td>',
            f'<td style="{td}">{memory_html(w)}</td>',
            f'<td style="{td}">{format_bytes(w.get("spilled", 0))}</td>',
            f'<td style="{td}">{float(w.get("cpu", 0)):.0f}%</td>',
            f'<td style="{td}{";color:#e53935;font-weight:600" if late else ""}">'
            f'{beat}</td>',
        ]
        rows.append(f'<tr data-dask-ipy="worker" data-address="{_esc(w.get("address"))}" '
                    f'data-executing="{executing}" data-keys="{int(w.get("keys", 0))}" '
                    f'data-status="{_esc(w.get("status", "running"))}">'
                    f'{"".join(cells)}</tr>')
    more = ""
    if len(workers) > max_rows:
        more = (f'<div style="{MUTED}">\u2026 and {len(workers) - max_rows} more '
                f'workers</div>')
    return (f'<div data-dask-ipy="workers" data-count="{len(workers)}" '
            f'style="{FONT};padding:4px 0;overflow-x:auto">'
            f'<table style="border-collapse:collapse;background:transparent;'
            f'color:inherit;font-size:inherit;margin:0">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'{more}</div>')


def _chip(state, n):
    return (f'<span data-state="{_esc(state)}" data-count="{n}" '
            f'style="display:inline-block;margin-right:14px;white-space:nowrap">'
            f'<span style="display:inline-block;width:9px;height:9px;border-radius:50%;'
            f'margin-right:5px;background:{COLORS.get(state, "#9e9e9e")}"></span>'
            f'{_esc(state)} <b>{n}</b></span>')


def counts_html(snap):
    counts = (snap or {}).get("counts") or {}
    states = [s for s in STATE_ORDER if counts.get(s)]
    states += sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    ntasks = (snap or {}).get("ntasks", sum(counts.values()))
    body = "".join(_chip(s, counts[s]) for s in states) or \
        f'<span style="{MUTED}">no tasks</span>'
    return (f'<div data-dask-ipy="counts" data-ntasks="{ntasks}" '
            f'style="{FONT};padding:4px 0 2px 0">'
            f'<span style="{MUTED};margin-right:10px">tasks</span>{body}</div>')


def group_html(g):
    """One task group: name, a stacked bar (done, running, erred) and the numbers."""
    total, done, erred, processing, waiting = _group_numbers(g)
    denom = max(total, done + erred, 1)
    widths = [(done, COLORS["memory"]), (processing, COLORS["processing"]),
              (erred, COLORS["erred"])]
    segments = "".join(
        f'<span style="display:block;height:100%;width:{n / denom * 100:.2f}%;'
        f'background:{color}"></span>' for n, color in widths if n)
    stats = [f"<b>{done}</b> / {total}"]
    if processing:
        stats.append(f"{processing} processing")
    if waiting:
        stats.append(f'<span style="{MUTED}">{waiting} waiting</span>')
    if erred:
        stats.append(f'<span style="color:#e53935;font-weight:600">{erred} erred</span>')
    name = str(g.get("name", ""))
    return (f'<div data-dask-ipy="group" data-group="{_esc(name)}" data-total="{total}" '
            f'data-done="{done}" data-erred="{erred}" data-processing="{processing}" '
            f'style="{FONT};display:flex;align-items:center;gap:10px;padding:1px 0">'
            f'<span title="{_esc(name)}" style="{MONO};flex:0 0 11em;overflow:hidden;'
            f'text-overflow:ellipsis;white-space:nowrap">{_esc(name)}</span>'
            f'<span style="flex:1 1 auto;min-width:80px;height:12px;border-radius:3px;'
            f'background:{TRACK};overflow:hidden;display:flex">{segments}</span>'
            f'<span style="flex:0 0 17em;white-space:nowrap">'
            f'{DOT.join(stats)}</span></div>')


def errors_html(snap, limit=5):
    errors = list((snap or {}).get("errors") or ())[-limit:]
    if not errors:
        return ""
    rows = []
    for e in reversed(errors):
        text = _error_text(e)
        if len(text) > 300:
            text = text[:300] + "\u2026"
        rows.append(
            f'<div data-dask-ipy="error" data-key="{_esc(e.get("key"))}" '
            f'style="padding:1px 0;white-space:nowrap;overflow:hidden;'
            f'text-overflow:ellipsis"><span style="{MONO}">{_esc(e.get("key"))}</span> '
            f'<span style="color:#e53935;font-weight:600">{_esc(e.get("type", ""))}'
            f'</span> <span style="{MUTED}">{_esc(text)}</span></div>')
    return (f'<div data-dask-ipy="errors" data-count="{len(errors)}" '
            f'style="{FONT};padding:4px 0;border-top:1px solid {RULE}">'
            f'<div style="font-weight:600;margin-bottom:2px">latest errors</div>'
            f'{"".join(rows)}</div>')


# ---------------------------------------------------------------- text (pure)

def _text_bar(done, erred, total, width):
    if total <= 0:
        return " " * width
    n_done = min(int(width * done / total), width)
    n_err = min(int(round(width * erred / total)), width - n_done)
    if erred and not n_err and n_done < width:
        n_err = 1
    return "#" * n_done + "!" * n_err + " " * (width - n_done - n_err)


def snapshot_text(snap, status="running", max_groups=20, max_workers=64):
    """A plain-text rendering of a snapshot, for terminals and logs."""
    if not snap:
        return f"dask_ipy monitor: waiting for the scheduler ({status})"
    nworkers, threads, memory = totals(snap)
    lines = [f"dask_ipy scheduler {snap.get('address', '')}  up "
             f"{format_duration(snap.get('uptime', 0))}  {nworkers} workers, {threads} "
             f"threads, {format_bytes(memory)}, {snap.get('nclients', 0)} clients"
             + ("" if status == "running" else f"  [{status}]")]
    workers = sorted(snap.get("workers") or (), key=lambda w: worker_label(w))
    if workers:
        rows = [("worker", "host", "threads", "exec", "queued", "keys", "stored",
                 "memory", "cpu", "heartbeat")]
        for w in workers[:max_workers]:
            ex = int(w.get("executing", 0))
            rows.append((worker_label(w), str(w.get("host", "")),
                         str(w.get("nthreads", 0)), str(ex),
                         str(max(int(w.get("processing", 0)) - ex, 0)),
                         str(w.get("keys", 0)), format_bytes(w.get("nbytes", 0)),
                         format_bytes(w.get("memory", 0)),
                         f"{float(w.get('cpu', 0)):.0f}%",
                         format_heartbeat(w.get("last_seen", 0))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                     for i, c in enumerate(r)]
            lines.append("  " + "  ".join(cells).rstrip())
        if len(workers) > max_workers:
            lines.append(f"  ... and {len(workers) - max_workers} more workers")
        for w in workers[:max_workers]:
            if w.get("memory_limit") or w.get("paused"):
                lines.append("  " + memory_text(w))
    else:
        lines.append("  no workers yet")
    counts = snap.get("counts") or {}
    shown = [f"{s} {counts[s]}" for s in STATE_ORDER if counts.get(s)]
    lines.append("tasks: " + (", ".join(shown) if shown else "none"))
    groups = list(snap.get("groups") or ())[-max_groups:]
    if groups:
        width = max(len(str(g.get("name", ""))) for g in groups)
        for g in groups:
            total, done, erred, processing, _ = _group_numbers(g)
            extra = (f"  {processing} running" if processing else "") + \
                (f"  {erred} erred" if erred else "")
            lines.append(f"  {str(g.get('name', '')).ljust(width)} "
                         f"[{_text_bar(done, erred, total, 30)}] {done}/{total}{extra}")
    errors = list(snap.get("errors") or ())[-5:]
    if errors:
        lines.append("latest errors:")
        for e in reversed(errors):
            lines.append(f"  {e.get('key')}: {e.get('type', '')}: {_error_text(e)[:200]}")
    return "\n".join(lines)


def memory_text(w):
    """One line of a worker's memory, for terminals."""
    limit = w.get("memory_limit")
    line = (f"{worker_label(w)} memory {format_bytes(w.get('memory', 0))}"
            + (f" of {format_bytes(limit)}" if limit else "")
            + f": managed {format_bytes(w.get('managed', 0))}, unmanaged "
            f"{format_bytes(w.get('unmanaged', 0))}, spilled "
            f"{format_bytes(w.get('spilled', 0))}")
    if w.get("paused"):
        line += f"  PAUSED {format_duration(w.get('paused_for', 0))}"
    return line


# ---------------------------------------------------------------- the widget

class Monitor(widgets.VBox):
    """A live widget of a cluster's workers and tasks.

    >>> m = Monitor(client)          # display it: the last expression of a cell
    >>> m.close()                    # or close the client: updates stop either way

    Children: ``header``, ``worker_table``, ``task_stream`` (the tasks of the last
    ``stream_window`` seconds, one lane per worker thread), ``task_counts`` (HTML),
    ``groups`` (a VBox of one HTML row per task group, in ``group_rows``: the latest
    ``max_groups``) and ``errors`` (HTML).  ``interval``: the least time between two
    rounds of writes.
    `stop()` ends the updates and keeps the widget shown; `close()` also removes it.
    """

    def __init__(self, client=None, *, interval=0.25, max_groups=12, max_workers=64,
                 paused_warning=None, stream_window=10.0, **kwargs):
        self.client = client if client is not None else default_client()
        self.interval = interval
        # Seconds a worker may stay paused before a loud line (dask-ipy.client.
        # paused-warning by default)
        self.paused_warning = (paused_warning if paused_warning is not None
                               else getattr(self.client, "paused_warning", None))
        self.alerts = widgets.HTML(layout=widgets.Layout(display="none"))
        self.max_groups = max_groups
        self.max_workers = max_workers
        self.header = widgets.HTML()
        self.worker_table = widgets.HTML()
        self.stream_window = stream_window
        # What snapshots brought of the task stream (the I/O thread appends, the
        # updater reads): bounded, and cut to the window when drawn.
        self._stream = deque(maxlen=5000)
        self.task_stream = widgets.HTML(layout=widgets.Layout(display="none"))
        self.task_counts = widgets.HTML()
        self.groups = widgets.VBox(layout=widgets.Layout(padding="2px 0"))
        self.errors = widgets.HTML(layout=widgets.Layout(display="none"))
        self.group_rows = {}            # {group name: HTML}
        kwargs.setdefault("layout", widgets.Layout(padding="4px 2px", width="100%"))
        super().__init__(children=[self.header, self.alerts, self.worker_table,
                                   self.task_stream, self.task_counts, self.groups,
                                   self.errors], **kwargs)
        self._latest = self.client.last_snapshot if self.client.monitor_callbacks \
            else None
        self._received = time.monotonic()
        self._shown = (None, None)      # (snapshot, status) last written
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.updates = 0                # renders that wrote at least one widget
        self._apply(self._latest, self.client.status)
        self.client.subscribe_monitor(self._on_snapshot)
        self._thread = threading.Thread(target=self._run, name="dask-ipy-monitor",
                                        daemon=True)
        self._thread.start()

    # -- client I/O thread: no widget writes here

    def _on_snapshot(self, snap):
        self._stream.extend(snap.get("stream") or ())
        self._latest = snap
        self._received = time.monotonic()
        self._wake.set()

    # -- updater thread: the only writer of the widgets

    def _run(self):
        last = 0.0
        try:
            while True:
                woke = self._wake.wait(max(self.interval, 0.5))
                if self._stopping.is_set():
                    status = "stopped"
                    break
                status = self.client.status
                if status == "closed":
                    break
                pause = last + self.interval - time.monotonic()
                if woke and pause > 0 and self._stopping.wait(pause):
                    status = "stopped"
                    break
                self._wake.clear()
                self._apply(self._latest, status)
                last = time.monotonic()
            self._apply(self._latest, status)       # the last word: why it stopped
        finally:
            self._unsubscribe()

    def _unsubscribe(self):
        try:
            self.client.unsubscribe_monitor(self._on_snapshot)
        except Exception:       # a closed client may refuse; nothing to undo then
            pass

    def _apply(self, snap, status):
        stale = time.monotonic() - self._received if snap else None
        stale = stale if stale and stale > 2.5 else None
        if snap is self._shown[0] and status == self._shown[1] and stale is None:
            return
        self._shown = (snap, status)
        wrote = False

        def put(w, value):
            nonlocal wrote
            if w.value != value:
                w.value = value
                wrote = True

        put(self.header, header_html(snap, status, stale))
        alerts = paused_alerts_html(snap, self.paused_warning)
        put(self.alerts, alerts)
        if self.alerts.layout.display != (None if alerts else "none"):
            self.alerts.layout.display = None if alerts else "none"
        put(self.worker_table, workers_html(snap, self.max_workers, self.paused_warning))
        stream = self._stream_html(snap)
        put(self.task_stream, stream)
        if self.task_stream.layout.display != (None if stream else "none"):
            self.task_stream.layout.display = None if stream else "none"
        put(self.task_counts, counts_html(snap))
        groups = list((snap or {}).get("groups") or ())[-self.max_groups:]
        rows = {}
        for g in groups:
            name = str(g.get("name", ""))
            row = self.group_rows.get(name) or rows.get(name)
            if row is None:
                row = widgets.HTML()
            put(row, group_html(g))
            rows[name] = row
        if list(rows) != list(self.group_rows):
            for name, row in self.group_rows.items():
                if name not in rows:
                    row.close()
            self.group_rows = rows
            self.groups.children = tuple(rows.values())
            wrote = True
        text = errors_html(snap)
        put(self.errors, text)
        display = None if text else "none"
        if self.errors.layout.display != display:
            self.errors.layout.display = display
        if wrote:
            self.updates += 1

    def _stream_html(self, snap):
        """The task stream of the last ``stream_window`` seconds ("" if nothing
        ran then)."""
        if not snap or "now" not in snap:
            return ""
        t0 = snap["now"] - self.stream_window
        stream = self._stream
        while stream and stream[0][3] < t0:
            stream.popleft()
        if not stream:
            return ""
        return (f'<div style="{FONT};overflow-x:auto"><div style="{MUTED}">task stream, '
                f'last {self.stream_window:g} s</div>'
                + charts.live_stream_svg(list(stream), snap["now"], self.stream_window)
                + "</div>")

    # -- control

    @property
    def running(self):
        return self._thread.is_alive()

    def stop(self, timeout=5):
        """Stop updating (the widget keeps showing its last state)."""
        self._stopping.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._unsubscribe()

    def close(self):
        """Stop updating and close the widget and its children."""
        try:
            self.stop()
        except Exception:
            pass
        for w in (self.header, self.alerts, self.worker_table, self.task_stream,
                  self.task_counts, self.errors, *self.group_rows.values(), self.groups):
            w.close()
        super().close()

    def text(self):
        return snapshot_text(self._latest, self.client.status, self.max_groups,
                             self.max_workers)

    def __repr__(self):
        return self.text()

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        if data:
            data["text/plain"] = self.text()
        return data


# ---------------------------------------------------------------- Client display

def _kernel():
    """True inside a Jupyter kernel, where a front end may render widgets."""
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def client_summary(client, timeout=2.0):
    """(text, html) describing a client and its cluster, from one short request (for
    an asynchronous client, whose requests are awaited, from its latest monitor
    snapshot, if any)."""
    workers = {}
    if client.status == "running" and not client.asynchronous:
        try:
            info = client.scheduler_info(timeout=timeout)
            workers = info.get("workers") or {}
        except Exception:
            workers = {}
    elif client.status == "running" and client.last_snapshot:
        workers = {w["address"]: w for w in client.last_snapshot.get("workers", ())}
    known = bool(workers) or not client.asynchronous
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    counts = f"{len(workers)} workers, {threads} threads" if known else "asynchronous"
    if client.status == "closed":
        counts = "No scheduler connected."          # dask.distributed's words
    lines = [f"<Client {client.address} {client.status}: {counts}>"]
    rows = []
    for address, w in sorted(workers.items(), key=lambda kv: worker_label(
            {"address": kv[0], **kv[1]})):
        label = worker_label({"address": address, **w})
        lines.append(f"  {label}  {w.get('host', '')}  threads {w.get('nthreads', 0)}")
        rows.append(f'<li><span style="{MONO}">{_esc(label)}</span> '
                    f'<span style="{MUTED}">{_esc(w.get("host", ""))}, '
                    f'{w.get("nthreads", 0)} threads</span></li>')
    if known and client.status != "closed":     # dask.distributed's words
        memory = sum(int(w.get("memory_limit") or 0) for w in workers.values())
        counts = (f"Workers: {len(workers)}, Total threads: {threads}, "
                  f"Total memory: {format_bytes(memory)}")
    page = (f'<div style="{FONT}"><b>dask_ipy Client</b> '
            f'<span style="{MONO}">{_esc(client.address)}</span> '
            f'<span style="{MUTED}">({_esc(client.status)})</span><br>'
            f'{_esc(counts)}'
            f'<ul style="margin:2px 0 0 0">{"".join(rows)}</ul></div>')
    return "\n".join(lines), page


def client_mimebundle(client, monitor=None):
    """How a Client displays itself: (bundle, monitor).  The live Monitor where a
    kernel can show widgets (``monitor``, the one shown before, is shown again while it
    runs), text elsewhere."""
    text, page = client_summary(client)
    if not _kernel() or client.status == "closed":
        return {"text/plain": text, "text/html": page}, monitor
    if monitor is None or not monitor.running or monitor.comm is None:
        monitor = Monitor(client)
    bundle = dict(monitor._repr_mimebundle_() or {})
    bundle["text/plain"] = text
    bundle["text/html"] = page
    return bundle, monitor


# ---------------------------------------------------------------- console progress

def progress(*objs, client=None, file=None, width=40, interval=0.2, notebook=None,
             multi=True, complete=True, group_by="prefix"):
    """Show a text progress bar until the given work is done (for the console).

    ``objs`` are Futures (possibly in lists/dicts) or dask collections; collections
    are persisted first.  Returns None for Futures, and the persisted collection(s)
    for collections, so ``x = progress(x)`` keeps the results on the cluster.
    The bar rewrites one line in place (``\\r``) and ends with a newline.

    dask.distributed's keywords: ``complete=False`` counts only the work not done
    yet; ``group_by`` is checked ("prefix", "spans" or a callable); ``notebook``
    and ``multi`` are taken, but the bar is this one text bar of all the work
    everywhere (``%dsched`` shows a live bar per task group in a notebook).
    ``interval``: seconds, or a duration string ("100ms").
    """
    from dask.base import is_dask_collection
    from dask.utils import parse_timedelta

    if group_by not in ("spans", "prefix") and not callable(group_by):
        raise ValueError("group_by must be 'spans', 'prefix' or a callable, not "
                         f"{group_by!r}")
    interval = parse_timedelta(interval, "s")
    file = sys.stdout if file is None else file
    persisted = []
    for obj in objs:
        if is_dask_collection(obj):
            c = client if client is not None else default_client()
            persisted.append(c.persist(obj))
    by_key = {}                 # a key counts once, however many Futures of it
    for f in futures_of([o for o in objs if not is_dask_collection(o)] + persisted):
        by_key.setdefault(f.key, f)
    unique = list(by_key.values())
    if not complete:
        unique = [f for f in unique if not f.done()]
    total = len(unique)
    waiter = Waiter(unique)
    start = time.monotonic()
    shown = None
    while True:
        over = not waiter.wait(interval).not_done
        done = sum(1 for f in unique if f.done())
        erred = sum(1 for f in unique if f.status in ("error", "lost"))
        cancelled = sum(1 for f in unique if f.status == "cancelled")
        line = _progress_line(done, erred, cancelled, total, width,
                              time.monotonic() - start)
        if line != shown:
            file.write("\r" + line)
            file.flush()
            shown = line
        if over and done >= total:
            break
    file.write("\n")
    file.flush()
    if not persisted:
        return None
    return persisted[0] if len(persisted) == 1 and len(objs) == 1 else persisted


def _progress_line(done, erred, cancelled, total, width, elapsed):
    pct = 100.0 * done / total if total else 100.0
    bar = _text_bar(done - erred - cancelled, erred + cancelled, total, width) \
        if total else "#" * width
    extra = (f", {erred} erred" if erred else "") + \
        (f", {cancelled} cancelled" if cancelled else "")
    return (f"[{bar}] {pct:5.1f}% {done}/{total} tasks{extra} "
            f"| {format_duration(elapsed)}")
