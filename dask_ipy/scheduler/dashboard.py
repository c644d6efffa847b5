"""The scheduler's optional HTTP face: a live page, its JSON snapshot, Prometheus text.

    scheduler I/O thread, every 0.5 s ── `Dashboard.publish(snapshot, stream, metrics)`
                                           (plain data, swapped in under a lock)
    HTTP thread (tornado, its own asyncio loop) reads only what was published:
        {prefix}/               the page: fetches snapshot.json every second and
                                draws workers, memory bars, progress, errors
        {prefix}/snapshot.json  the snapshot, and the task stream as SVG
        {prefix}/metrics        Prometheus text (prometheus_client), no token

HTTP never runs on the scheduler's I/O thread and never touches its state.  The page
and its snapshot need the token carried in the link (``?token=``, or an
``Authorization: token ...`` header), compared in constant time, as Jupyter's server
does; the page's own requests use relative URLs, so it works behind a proxy that
strips a path prefix (jupyter-server-proxy) as well as under ``prefix`` itself.
`/metrics` is left open for scrapers: it tells counts and sizes, never keys.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
from collections import deque

import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import charts
from ..log import logger

STREAM_WINDOW = 20.0      # seconds of task stream on the page


def normalize_prefix(prefix):
    """"" or "/a/b" (one leading slash, none trailing)."""
    prefix = "/".join(p for p in str(prefix or "").split("/") if p)
    return f"/{prefix}" if prefix else ""


class Dashboard:
    """Serve on ``hostname``:``port`` (0: any free port) under ``prefix``; the link
    uses ``advertised`` as its host.  ``info``: {host, port, prefix, token}."""

    def __init__(self, hostname, advertised, port=0, prefix="", token=None):
        self.token = token or secrets.token_urlsafe(24)
        self.prefix = normalize_prefix(prefix)
        self._lock = threading.Lock()
        self._snapshot = None
        self._metrics = None
        self._stream = deque(maxlen=20_000)
        self._loop = None
        self._server = None
        self._error = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(hostname, port, ready),
                                        name="dask-ipy-dashboard", daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._error is not None or self._server is None:
            self.close()
            raise OSError(f"the dashboard could not listen on {hostname}:{port}: "
                          f"{self._error}")
        self.info = {"host": advertised, "port": self.port, "prefix": self.prefix,
                     "token": self.token}

    # -- scheduler I/O thread

    def publish(self, snapshot, stream, metrics):
        with self._lock:
            self._snapshot = snapshot
            self._metrics = metrics
            self._stream.extend(stream)

    # -- HTTP thread

    def _serve(self, hostname, port, ready):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            p = self.prefix
            app = tornado.web.Application([
                (p + "/", PageHandler, {"dashboard": self}),
                (p + "/snapshot.json", SnapshotHandler, {"dashboard": self}),
                (p + "/metrics", MetricsHandler, {"dashboard": self}),
                *([(p, tornado.web.RedirectHandler, {"url": p + "/"})] if p else []),
            ], compress_response=True, log_function=_log_request)
            sockets = tornado.netutil.bind_sockets(port, address=hostname)
            self.port = sockets[0].getsockname()[1]
            self._server = tornado.httpserver.HTTPServer(app)
            self._server.add_sockets(sockets)
            self._loop = loop
        except Exception as e:               # reported by the constructor
            self._error = e
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.stop()
            loop.run_until_complete(self._server.close_all_connections())
            loop.close()

    def authorized(self, handler):
        given = handler.get_argument("token", "")
        header = handler.request.headers.get("Authorization", "")
        if not given and header.lower().startswith("token "):
            given = header[6:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def snapshot_json(self):
        with self._lock:
            snap = self._snapshot
            if snap is None:
                return {"snapshot": None, "stream": ""}
            now = snap["now"]
            while self._stream and self._stream[0][3] < now - STREAM_WINDOW:
                self._stream.popleft()
            stream = list(self._stream)
        snap = {k: v for k, v in snap.items() if k not in ("stream", "op")}
        return {"snapshot": snap,
                "stream": charts.live_stream_svg(stream, now, STREAM_WINDOW, width=1100)
                if stream else ""}

    def metrics(self):
        with self._lock:
            return self._metrics

    def close(self):
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:             # closed already
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(10)


def _log_request(handler):
    # Requests are routine, a refused one is worth a line at debug level only: a
    # scraper or a stale bookmark must not fill the scheduler's log.
    logger.debug("dashboard: %d %s %s", handler.get_status(),
                 handler.request.method, handler.request.path)


class _Handler(tornado.web.RequestHandler):
    def initialize(self, dashboard):
        self.dashboard = dashboard

    def prepare(self):
        if not self.dashboard.authorized(self):
            raise tornado.web.HTTPError(403, reason="a token is needed (the link has it)")

    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")


class PageHandler(_Handler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; "
                        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        self.write(PAGE.replace("__TOKEN__", json.dumps(self.dashboard.token))
                   .replace("__FONT__", charts.FONT))


class SnapshotHandler(_Handler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.dashboard.snapshot_json(), default=str))


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, dashboard):
        self.dashboard = dashboard

    def get(self):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.dashboard.metrics()))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(registry))


class _Collector:
    """The metrics the scheduler published last (see `Scheduler._metrics`)."""

    def __init__(self, m):
        self.m = m

    def collect(self):
        m = self.m
        if m is None:
            return
        tasks = GaugeMetricFamily("dask_ipy_tasks", "Tasks by state", labels=["state"])
        for state, n in sorted(m["tasks"].items()):
            tasks.add_metric([state], n)
        yield tasks
        yield CounterMetricFamily("dask_ipy_tasks_finished",
                                  "Tasks that reached memory, ever",
                                  value=m["finished"])
        yield CounterMetricFamily("dask_ipy_tasks_erred", "Tasks that erred, ever",
                                  value=m["erred"])
        yield GaugeMetricFamily("dask_ipy_workers", "Workers connected",
                                value=m["workers"])
        yield GaugeMetricFamily("dask_ipy_clients", "Clients connected",
                                value=m["clients"])
        memory = GaugeMetricFamily(
            "dask_ipy_worker_memory_bytes",
            "Worker memory: managed (results held), unmanaged (the rest of the "
            "process), spilled (on disk)", labels=["worker", "type"])
        moved = CounterMetricFamily("dask_ipy_worker_transfer_bytes",
                                    "Bytes a worker fetched from peers (incoming) or "
                                    "served to them (outgoing)",
                                    labels=["worker", "direction"])
        latency = GaugeMetricFamily(
            "dask_ipy_worker_latency_seconds",
            "Time from a worker's heartbeat leaving to its handling (clocks of two "
            "hosts: skewed by their difference)", labels=["worker"])
        for address, w in sorted(m["per_worker"].items()):
            for kind in ("managed", "unmanaged", "spilled"):
                memory.add_metric([address, kind], w[kind])
            moved.add_metric([address, "incoming"], w["transfer_in"])
            moved.add_metric([address, "outgoing"], w["transfer_out"])
            if w["latency"] is not None:
                latency.add_metric([address], w["latency"])
        yield memory
        yield moved
        yield latency
        yield GaugeMetricFamily("dask_ipy_scheduler_loop_lag_seconds",
                                "How late the scheduler's last timer ran (a busy "
                                "event loop)", value=m["loop_lag"])
        yield CounterMetricFamily("dask_ipy_task_stream_records",
                                  "Task records received from workers, ever",
                                  value=m["records"])


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dask_ipy dashboard</title>
<style>
body { __FONT__; margin: 18px; background: #fff; color: #222; }
h2 { font-size: 14px; margin: 18px 0 4px 0; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; }
td, th { padding: 1px 10px 1px 0; text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
.bar { display: inline-block; position: relative; width: 120px; height: 9px;
       background: rgba(128,128,128,0.18); vertical-align: middle; margin-right: 6px; }
.bar span { position: absolute; top: 0; bottom: 0; }
.muted { opacity: 0.7; }
.err { color: #e53935; font-weight: 600; }
</style></head>
<body data-dask-ipy="dashboard" data-updates="0">
<div data-dask-ipy="header"></div>
<h2>Workers</h2><div data-dask-ipy="workers"></div>
<h2>Task stream</h2><div data-dask-ipy="stream-box"></div>
<h2>Progress</h2><div data-dask-ipy="progress"></div>
<h2>Recent errors</h2><div data-dask-ipy="errors"></div>
<script>
(function () {
  const token = __TOKEN__;
  const $ = name => document.querySelector('[data-dask-ipy="' + name + '"]');
  const esc = s => String(s).replace(/[&<>"']/g,
    c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  const bytes = n => { const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0;
    n = Number(n) || 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + ' ' + u[i]; };
  function memory(w) {
    const rss = w.memory || 0, limit = w.memory_limit || 0;
    const managed = Math.min(w.managed || 0, rss), scale = Math.max(limit, rss, 1);
    const pct = x => (100 * x / scale).toFixed(1) + '%';
    const color = w.paused ? '#ef6c00' : (limit && rss > limit ? '#e53935' : '#43a047');
    return '<span data-dask-ipy="memory" data-memory="' + rss + '" data-managed="' +
      managed + '" data-unmanaged="' + (rss - managed) + '" data-spilled="' +
      (w.spilled || 0) + '" data-limit="' + limit + '"><span class="bar">' +
      '<span style="left:0;width:' + pct(managed) + ';background:' + color + '"></span>' +
      '<span style="left:' + pct(managed) + ';width:' + pct(rss - managed) +
      ';background:#90a4ae"></span></span>' + bytes(rss) +
      (limit ? ' / ' + bytes(limit) : '') + '</span>';
  }
  function draw(d) {
    const s = d.snapshot;
    if (!s) return;
    const counts = s.counts || {};
    $('header').innerHTML = '<b>' + esc(s.address) + '</b> <span class="muted">' +
      s.workers.length + ' workers, ' + s.ntasks + ' tasks, ' + s.nclients +
      ' clients, up ' + Math.round(s.uptime) + ' s</span> ' +
      Object.keys(counts).filter(k => counts[k]).map(k =>
        '<span data-state="' + esc(k) + '" data-count="' + counts[k] + '">' + esc(k) +
        ' <b>' + counts[k] + '</b></span>').join(' · ');
    $('workers').innerHTML = '<table><tr><th>worker</th><th>threads</th>' +
      '<th>executing</th><th>keys</th><th>memory</th><th>spilled</th><th>cpu</th></tr>' +
      s.workers.map(w => '<tr data-dask-ipy="worker" data-address="' + esc(w.address) +
        '" data-keys="' + w.keys + '"><td>' + esc(w.name || w.address) + '</td><td>' +
        w.nthreads + '</td><td>' + w.executing + '</td><td>' + w.keys + '</td><td>' +
        memory(w) + '</td><td>' + bytes(w.spilled || 0) + '</td><td>' +
        Math.round(w.cpu || 0) + '%</td></tr>').join('') + '</table>';
    $('stream-box').innerHTML = d.stream ||
      '<span class="muted">no task in the last seconds</span>';
    $('progress').innerHTML = (s.groups || []).slice(-20).map(g => {
      const total = Math.max(g.total, g.done + g.erred, 1);
      return '<div data-dask-ipy="group" data-group="' + esc(g.name) + '" data-done="' +
        g.done + '" data-total="' + g.total + '" data-erred="' + g.erred + '">' +
        '<span class="bar"><span style="left:0;width:' + (100 * g.done / total) +
        '%;background:#43a047"></span><span style="left:' + (100 * g.done / total) +
        '%;width:' + (100 * g.erred / total) + '%;background:#e53935"></span></span>' +
        esc(g.name) + ' <b>' + g.done + '</b> / ' + g.total +
        (g.erred ? ' <span class="err">' + g.erred + ' erred</span>' : '') + '</div>';
    }).join('') || '<span class="muted">no tasks</span>';
    $('errors').innerHTML = (s.errors || []).slice(-10).reverse().map(e =>
      '<div data-dask-ipy="error" data-key="' + esc(e.key) + '"><span class="err">' +
      esc(e.type || '') + '</span> ' + esc(e.key) + ' <span class="muted">' +
      esc(e.text || '') + '</span></div>').join('') ||
      '<span class="muted">none</span>';
    document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
  }
  async function tick() {
    try {
      const r = await fetch('snapshot.json?token=' + encodeURIComponent(token),
                            {cache: 'no-store'});
      if (r.ok) draw(await r.json());
      document.body.dataset.status = r.ok ? 'ok' : 'http ' + r.status;
    } catch (e) {
      document.body.dataset.status = 'unreachable';
    }
    setTimeout(tick, 1000);
  }
  tick();
})();
</script>
</body></html>
"""
