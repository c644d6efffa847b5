"""The scheduler's live page in Debian's chromium, through a real HTTP server: opened
by its link under a path prefix, and through a proxy that strips a prefix as
jupyter-server-proxy does; without its token it is refused.  The page is read by its
data attributes while a cluster of real processes works."""

import http.server
import shutil
import threading
import urllib.error
import urllib.request

import pytest
from helpers import fail, processes, slow_inc
from test_browser import browser  # noqa: F401  (the fixture)

import dask_ipy

pytestmark = pytest.mark.browser

READ_PAGE = """() => {
  const all = s => [...document.querySelectorAll(s)];
  return {
    updates: Number(document.body.dataset.updates), status: document.body.dataset.status,
    workers: all('[data-dask-ipy="worker"]').map(e => e.dataset.address),
    memory: all('[data-dask-ipy="memory"]').map(e => Number(e.dataset.memory)),
    groups: Object.fromEntries(all('[data-dask-ipy="group"]').map(
      e => [e.dataset.group, [Number(e.dataset.done), Number(e.dataset.total),
                              Number(e.dataset.erred)]])),
    errors: all('[data-dask-ipy="error"]').map(e => e.dataset.key),
    stream: all('svg[data-dask-ipy="task-stream"] rect[data-dask-ipy="task"]').map(
      e => [e.dataset.group, e.dataset.worker]),
  };
}"""


class StrippingProxy:
    """Forwards ``/user/me/proxy/PORT/<rest>`` to ``http://127.0.0.1:PORT/<rest>``,
    as jupyter-server-proxy does by default."""

    def __init__(self, port):
        prefix = f"/user/me/proxy/{port}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404)
                    return
                url = f"http://127.0.0.1:{port}{self.path[len(prefix):]}"
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        status, ctype, body = r.status, r.headers["Content-Type"], r.read()
                except urllib.error.HTTPError as e:
                    status, ctype, body = e.code, "text/plain", e.read()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def wait_page(page, predicate, message, timeout=30_000):
    page.wait_for_function(f"() => ({READ_PAGE})() && ({predicate})(({READ_PAGE})())",
                           timeout=timeout)
    return page.evaluate(READ_PAGE)


def test_live_page_under_a_prefix_and_behind_a_proxy(browser, tmp_path):  # noqa: F811
    options = {"dashboard_port": 0, "dashboard_prefix": "/proxy/dash"}
    with processes(tmp_path, scheduler_options=options) as (_, c):
        a, b = sorted(c.scheduler_info()["workers"])
        link = c.dashboard_link
        page = browser.pages[0] if browser.pages else browser.new_page()
        refused = page.goto(link.split("?")[0])
        assert refused.status == 403
        assert page.goto(link).status == 200
        got = wait_page(page, "g => g.updates >= 2 && g.workers.length == 2", "workers")
        assert sorted(got["workers"]) == [a, b] and got["status"] == "ok"
        assert all(m > 0 for m in got["memory"])

        futures = c.map(slow_inc, range(20), delay=0.1)
        bad = c.submit(fail, 1)
        got = wait_page(page, "g => g.groups.slow_inc && g.groups.slow_inc[0] > 0 "
                              "&& g.groups.slow_inc[0] < 20", "work in progress")
        assert got["groups"]["slow_inc"][1] == 20
        dask_ipy.wait(futures + [bad])
        got = wait_page(page, "g => g.groups.slow_inc && g.groups.slow_inc[0] == 20 "
                              "&& g.errors.length == 1 && g.stream.length >= 21",
                        "the work done")
        assert got["errors"] == [bad.key]
        assert got["groups"]["fail"] == [0, 1, 1]
        assert {w for _, w in got["stream"]} <= {a, b}
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        shutil.copy(tmp_path / "dashboard.png", "/tmp/dashboard.png")


def test_behind_a_proxy_that_strips_its_prefix(browser):  # noqa: F811
    """jupyter-server-proxy style: the page is served at "/", the proxy in front
    strips its own prefix; the page's requests are relative, so they go through it."""
    from dask_ipy import Scheduler, Worker

    s = Scheduler(dashboard_port=0)
    w = Worker(scheduler=s.address_to_workers)
    proxy = StrippingProxy(s.dashboard.port)
    try:
        page = browser.pages[0] if browser.pages else browser.new_page()
        assert page.goto(proxy.base).status == 403
        assert page.goto(f"{proxy.base}?token={s.dashboard.token}").status == 200
        got = wait_page(page, "g => g.updates >= 2 && g.workers.length == 1",
                        "updates through the proxy")
        assert got["status"] == "ok" and got["workers"] == [w.address]
    finally:
        proxy.close()
        w.close()
        s.close()
