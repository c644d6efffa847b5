"""A profile's flame chart written by a cluster of real processes (`Client.profile(
filename=...)`), opened from its file in Debian's chromium with every other request
refused, read back by its data attributes.  A screenshot lands in the test's directory
and at /tmp/profile.png."""

import json
import shutil

import pytest
from helpers import processes, spin, spin_elsewhere
from test_browser import browser, open_offline  # noqa: F401  (the fixture)

pytestmark = pytest.mark.browser

READ_PAGE = """() => {
  const all = s => [...document.querySelectorAll(s)];
  return {
    samples: Number(document.querySelector('[data-dask-ipy="profile"]').dataset.samples),
    frames: all('[data-dask-ipy="flame-frame"]').map(e => ({
      name: e.dataset.name, count: Number(e.dataset.count),
      depth: Number(e.dataset.depth),
      width: e.querySelector('rect').getBoundingClientRect().width})),
    top: all('[data-dask-ipy="profile-top-row"]').map(e => e.dataset.name),
    json: document.getElementById('dask-ipy-profile-data').textContent,
  };
}"""


def test_flame_chart_opens_offline_in_chromium(browser, tmp_path):  # noqa: F811
    html = tmp_path / "profile.html"
    with processes(tmp_path, nthreads=2) as (_, c):
        c.gather([c.submit(spin, 1.5), c.submit(spin_elsewhere, 0.4)])
        state, _ = c.profile(filename=str(html))
    page, outside = open_offline(browser, html)
    got = page.evaluate(READ_PAGE)
    assert outside == []
    assert got["samples"] == state["count"] > 0
    by_name = {f["name"]: f for f in got["frames"]}
    assert by_name["spin"]["count"] > by_name["spin_elsewhere"]["count"] > 0
    assert by_name["spin"]["width"] > by_name["spin_elsewhere"]["width"] > 0
    root = [f for f in got["frames"] if f["depth"] == 0]
    assert len(root) == 1 and root[0]["width"] >= by_name["spin"]["width"]
    assert got["top"][0] == "spin" and "spin_elsewhere" in got["top"]
    assert json.loads(got["json"]) == {"": state}
    page.screenshot(path=str(tmp_path / "profile.png"), full_page=True)
    shutil.copy(tmp_path / "profile.png", "/tmp/profile.png")
