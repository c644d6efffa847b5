"""The widget in a real browser: JupyterLab in a subprocess, Debian's chromium driven
by Playwright, notebooks run with Run > Run All Cells as a reader would: the widget
demo (live changes read from the DOM twice, screenshots) and the quickstart.

Everything is isolated: Jupyter and IPython directories and the browser profile live
in the test's temporary directory; JupyterLab listens on 127.0.0.1 with a random token.
The labextension of ipywidgets still comes from the environment's share/jupyter.
A missing chromium fails the test (CI installs it); no browser is ever downloaded.

Screenshots land in the test's directory; one is copied to /tmp/widget.png (light
theme, work in progress) and /tmp/widget-dark.png (dark theme, finished)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import MARKER, ROOT, kill_marked, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = os.path.join(ROOT, "notebooks", "widget_demo.ipynb")
QUICKSTART = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
GROUP = "slow_inc"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

READ_WIDGET = """() => {
  const num = (e, k) => Number(e.dataset[k]);
  const groups = {};
  for (const e of document.querySelectorAll('[data-dask-ipy="group"]'))
    groups[e.dataset.group] = {done: num(e, 'done'), total: num(e, 'total'),
                               erred: num(e, 'erred'), processing: num(e, 'processing')};
  const header = document.querySelector('[data-dask-ipy="header"]');
  return {
    header: header ? header.textContent : null,
    workers: [...document.querySelectorAll('[data-dask-ipy="worker"]')]
               .map(e => e.textContent),
    groups: groups,
    errors: [...document.querySelectorAll('[data-dask-ipy="error"]')]
              .map(e => e.textContent),
  };
}"""

CELL_PROMPTS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
  .map(e => e.textContent.trim())"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(config_dir, plugin, name, values):
    d = os.path.join(config_dir, "lab", "user-settings", plugin)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.jupyterlab-settings"), "w") as f:
        json.dump(values, f)


class Lab:
    """A JupyterLab server in its own directories; `stop` leaves no process behind."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "work"
        self.root.mkdir(parents=True)
        home = tmp_path / "jupyter"
        env = dict(os.environ)
        env.update(JUPYTER_CONFIG_DIR=str(home / "config"),
                   JUPYTER_DATA_DIR=str(home / "data"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   IPYTHONDIR=str(home / "ipython"),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
        # Kernels, ipcluster processes, the scheduler: found by this at the end, even
        # the orphans of a killed kernel or controller.
        self.marker = env[MARKER] = secrets.token_hex(16)
        # No news, no update checks: the server and page stay on loopback.
        write_settings(env["JUPYTER_CONFIG_DIR"], "@jupyterlab/apputils-extension",
                       "notification", {"fetchNews": "false", "checkForUpdates": False})
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log_path = tmp_path / "jupyterlab.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout=60):
        def up():
            assert self.proc.poll() is None, f"JupyterLab exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(
                        f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(up, timeout=timeout, interval=0.2, message="JupyterLab to answer")

    def log_tail(self, n=4000):
        self.log.flush()
        return self.log_path.read_text()[-n:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()          # shuts its kernels down first
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        kill_marked(self.marker, grace=5)
        self.log.close()


def open_offline(browser, path):
    """Open the file at ``path`` in a page that may load nothing else (only file: and
    blob: URLs); the page, and the list of every other URL it tried (refused)."""
    page = browser.pages[0] if browser.pages else browser.new_page()
    outside = []

    def only_the_file(route):
        if route.request.url.startswith(("file://", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    page.route("**/*", only_the_file)
    page.goto(path.as_uri())
    return page, outside


@pytest.fixture
def lab(tmp_path):
    for attempt in range(3):
        server = Lab(tmp_path / f"lab{attempt}")
        try:
            server.wait_ready()
            break
        except AssertionError:
            exited = server.proc.poll() is not None     # e.g. the port was taken
            server.stop()
            if attempt == 2 or not exited:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "chromium is not installed (apt-get install -y chromium)"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        try:
            yield context
        finally:
            context.close()


class Notebook:
    """A notebook open in JupyterLab, run with the Run menu, read through the DOM."""

    def __init__(self, lab, browser, path):
        self.lab = lab
        self.page = browser.pages[0] if browser.pages else browser.new_page()
        self.page.set_default_timeout(30_000)
        self.console = []
        self.page.on("console", lambda m: self.console.append(m.text)
                     if m.type == "error" else None)
        self.page.goto(f"{lab.url}/lab/tree/{path}?token={lab.token}")
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        self.page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)

    def read(self):
        return self.page.evaluate(READ_WIDGET)

    def prompts(self):
        return self.page.evaluate(CELL_PROMPTS)

    def diagnose(self):
        return (f"\nwidget: {self.read()}\nprompts: {self.prompts()}"
                f"\nconsole errors: {self.console[-10:]}"
                f"\nserver log:\n{self.lab.log_tail()}")

    def menu(self, *path):
        self.page.locator(".lm-MenuBar-itemLabel", has_text=path[0]).first.click()
        for label in path[1:-1]:
            self.page.locator(".lm-Menu-itemLabel", has_text=label).first.hover()
        self.page.locator(".lm-Menu-itemLabel", has_text=path[-1]).first.click()

    def run_all(self):
        for attempt in range(3):
            # A kernel whose websocket is still settling may drop the request:
            # nothing has run then, so asking again is safe.
            self.menu("Run", "Run All Cells")
            try:
                wait_for(lambda: any(p != "[ ]:" for p in self.prompts()), timeout=10,
                         interval=0.1, message="Run All Cells")
                return
            except AssertionError:
                pass
        raise AssertionError(f"Run All Cells did nothing{self.diagnose()}")

    def poll(self, predicate, timeout, message):
        """The widget's state once ``predicate(state)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.read()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {message}{self.diagnose()}")
            self.page.wait_for_timeout(100)

    def wait_all_done(self, timeout=60):
        def done():
            prompts = self.prompts()
            return "[*]:" not in prompts and prompts[-1].strip("[]:").isdigit()
        try:
            wait_for(done, timeout=timeout, interval=0.2, message="every cell to run")
        except AssertionError as e:
            raise AssertionError(f"{e}{self.diagnose()}") from None

    def widget(self):
        return self.page.locator(".jp-OutputArea-output", has=self.page.locator(
            '[data-dask-ipy="header"]')).first


def test_widget_updates_live_in_jupyterlab(lab, browser, tmp_path):
    shutil.copy(NOTEBOOK, lab.root / "demo.ipynb")
    nb = Notebook(lab, browser, "demo.ipynb")
    nb.run_all()

    def in_progress(s):
        g = s["groups"].get(GROUP)
        return len(s["workers"]) == 2 and g is not None and 0 < g["done"] < g["total"]

    first = nb.poll(in_progress, 90, "the work to start")
    second = nb.poll(lambda s: in_progress(s) and
                     s["groups"][GROUP]["done"] > first["groups"][GROUP]["done"] and
                     s["workers"] != first["workers"], 15, "the widget to change")
    assert "2 workers" in second["header"], second["header"]
    assert all(row.startswith("engine ") for row in second["workers"]), second
    nb.widget().scroll_into_view_if_needed()
    running_png = tmp_path / "widget-running.png"
    nb.page.screenshot(path=str(running_png))

    final = nb.poll(lambda s: s["groups"].get(GROUP, {}).get("done") == 60
                    and s["errors"], 30, "the work to finish")
    assert final["groups"][GROUP] == {"done": 60, "total": 60, "erred": 0,
                                      "processing": 0}
    assert final["groups"]["invert"]["erred"] == 1
    assert "ZeroDivisionError" in final["errors"][0]
    # The notebook ends by stopping the monitor and the cluster; wait for that.
    nb.wait_all_done()
    outputs = nb.page.locator(".jp-OutputArea-output").all_inner_texts()
    assert any(o.strip() == "1830" for o in outputs), outputs
    stopped = nb.read()                                 # the stopped widget stays
    assert stopped["groups"][GROUP]["done"] == 60 and "stopped" in stopped["header"]
    nb.widget().screenshot(path=str(tmp_path / "widget-final.png"))

    nb.menu("Settings", "Theme", "JupyterLab Dark")
    nb.page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
    # The flag comes before the theme's stylesheet applies: wait for the widget's
    # own text to turn light (its colours follow the theme's variables).
    header = nb.widget().locator('[data-dask-ipy="header"]').first.element_handle()
    nb.page.wait_for_function("""el => {
        const rgb = getComputedStyle(el).color.match(/\\d+/g).map(Number);
        return rgb[0] + rgb[1] + rgb[2] > 3 * 128;
    }""", arg=header, timeout=30_000)
    nb.widget().screenshot(path=str(tmp_path / "widget-final-dark.png"))

    for name in ("widget-running.png", "widget-final.png", "widget-final-dark.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    try:
        shutil.copy(running_png, "/tmp/widget.png")
        shutil.copy(tmp_path / "widget-final-dark.png", "/tmp/widget-dark.png")
    except OSError:
        pass


def test_quickstart_widget_in_jupyterlab(lab, browser, tmp_path):
    """The quickstart as a reader runs it: Run All Cells, the widget of `%dsched`
    comes up with a row per engine and moves while work runs."""
    shutil.copy(QUICKSTART, lab.root / "quickstart.ipynb")
    nb = Notebook(lab, browser, "quickstart.ipynb")
    nb.run_all()
    first = nb.poll(lambda s: len(s["workers"]) == 2, 90, "the widget's workers")
    assert all(row.startswith("engine ") for row in first["workers"]), first
    # Snapshots keep coming while the notebook runs: the widget changes.
    later = nb.poll(lambda s: s["header"] != first["header"] and s["groups"], 30,
                    "the widget to change")
    assert later != first
    nb.wait_all_done(timeout=90)
    final = nb.read()
    unfinished = {name: g for name, g in final["groups"].items()
                  if not g["done"] + g["erred"] == g["total"] > 0}
    assert final["groups"] and not unfinished, (unfinished, final["header"])
    assert "stopped" in final["header"] or "closed" in final["header"], final["header"]
    nb.widget().scroll_into_view_if_needed()
    nb.widget().screenshot(path=str(tmp_path / "quickstart-widget.png"))
    assert (tmp_path / "quickstart-widget.png").stat().st_size > 10_000
