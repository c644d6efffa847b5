"""A performance report written by a cluster of real processes, opened from its file
in Debian's chromium with every request that is not the file itself refused: its
charts and tables are read back by their data attributes, and its JSON saved through
its own link.  A screenshot lands in the test's directory and at /tmp/report.png."""

import json
import shutil

import pytest
from helpers import fail, processes, slow_inc
from test_browser import browser, open_offline  # noqa: F401  (the fixture)

import dask_ipy

pytestmark = pytest.mark.browser

READ_REPORT = """() => {
  const all = s => [...document.querySelectorAll(s)];
  const body = document.querySelector('[data-dask-ipy="report"]');
  const stream = document.querySelector('svg[data-dask-ipy="task-stream"]');
  return {
    tasks: Number(body.dataset.tasks), errors: Number(body.dataset.errors),
    workers: Number(body.dataset.workers),
    lanes: all('[data-dask-ipy="lane"]').map(e => [e.dataset.worker, e.dataset.thread]),
    lanesAttr: Number(stream.dataset.lanes),
    rects: all('rect[data-dask-ipy="task"]').map(e => ({
      key: e.dataset.key, group: e.dataset.group, action: e.dataset.action,
      worker: e.dataset.worker, status: e.dataset.status,
      width: e.getBoundingClientRect().width})),
    groups: Object.fromEntries(all('[data-dask-ipy="groups-row"]').map(
      e => [e.dataset.group, {count: Number(e.dataset.count),
                              errors: Number(e.dataset.errors)}])),
    breakdown: all('[data-dask-ipy="breakdown-row"]').map(e => e.dataset.group),
    memory: all('[data-dask-ipy="memory-line"]').map(
      e => [e.dataset.worker, e.dataset.kind, Number(e.dataset.samples)]),
    transfers: all('[data-dask-ipy="transfer"]').map(
      e => [e.dataset.source, e.dataset.destination, Number(e.dataset.bytes)]),
    json: document.getElementById('dask-ipy-report-data').textContent,
    download: document.querySelector('[data-dask-ipy="download-json"]').href,
  };
}"""


def test_report_opens_offline_in_chromium(browser, tmp_path):  # noqa: F811
    html = tmp_path / "report.html"
    with processes(tmp_path, nthreads=2) as (_, c):
        a, b = sorted(c.scheduler_info()["workers"])
        with dask_ipy.performance_report(str(html), client=c) as report:
            xs = c.map(slow_inc, range(12), delay=0.1, workers=[a])
            assert c.submit(sum, xs, workers=[b]).result() == 78
            bad = c.submit(fail, 0)
            dask_ipy.wait([bad])
    page, outside = open_offline(browser, html)
    got = page.evaluate(READ_REPORT)
    assert outside == []
    assert (got["tasks"], got["errors"], got["workers"]) == (14, 1, 2)
    assert got["lanesAttr"] == len(got["lanes"]) and 2 <= len(got["lanes"]) <= 4
    assert {w for w, _ in got["lanes"]} <= {a, b}
    computes = [r for r in got["rects"] if r["action"] == "compute"]
    assert len(computes) == 14 and all(r["width"] > 0 for r in computes)
    assert {r["worker"] for r in computes if r["group"] == "slow_inc"} == {a}
    assert [r["status"] for r in computes if r["status"] == "error"] == ["error"]
    assert any(r["action"] == "transfer" and r["worker"] == b for r in got["rects"])
    assert got["groups"]["slow_inc"] == {"count": 12, "errors": 0}
    assert got["groups"]["fail"]["errors"] == 1
    assert got["breakdown"][-1] == "idle" and "slow_inc" in got["breakdown"]
    assert {(w, kind) for w, kind, n in got["memory"] if n >= 1} == \
        {(w, kind) for w in (a, b) for kind in ("process", "managed")}
    assert [(s, d) for s, d, n in got["transfers"] if n > 0] == [(a, b)]
    assert json.loads(got["json"])["summary"] == report.data["summary"]
    assert got["download"].startswith("blob:")
    with page.expect_download() as saved:
        page.click('[data-dask-ipy="download-json"]')
    path = tmp_path / "saved.json"
    saved.value.save_as(path)
    assert json.loads(path.read_text())["groups"] == \
        json.loads(json.dumps(report.data["groups"]))
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    shutil.copy(tmp_path / "report.png", "/tmp/report.png")
