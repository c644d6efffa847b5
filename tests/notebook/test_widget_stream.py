"""The widget's task stream: the tasks of the last seconds, one lane per worker
thread, from the records snapshots carry (in-process cluster, real snapshots)."""

import re

from helpers import fail, slow_inc, wait_for

import dask_ipy
from dask_ipy import charts


def rects(html):
    return [dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
            for tag in re.findall(r'<rect[^>]*data-dask-ipy="task"[^>]*>', html)]


def test_live_stream_svg_keeps_the_window():
    a, b = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    svg = charts.live_stream_svg([
        [a, 1, 80.0, 81.0, "old", "compute", "OK"],          # before the window
        [a, 1, 95.0, 96.0, "inc", "compute", "OK"],
        [b, 2, 96.0, 97.0, "add", "transfer", "OK"],
        [b, 2, 97.0, 99.0, "add", "compute", "error"]], now=100.0, window=10.0)
    assert 'data-lanes="2"' in svg
    assert [(r["group"], r["action"], r["status"], r["worker"]) for r in rects(svg)] == [
        ("inc", "compute", "OK", a), ("add", "transfer", "OK", b),
        ("add", "compute", "error", b)]


def test_monitor_draws_the_last_seconds(cluster):
    s, workers, c = cluster
    m = dask_ipy.Monitor(c, stream_window=30)
    try:
        futures = c.map(slow_inc, range(6), delay=0.05)
        bad = c.submit(fail, 1)
        dask_ipy.wait(futures + [bad])

        def shown():
            drawn = rects(m.task_stream.value)
            groups = [r["group"] for r in drawn if r["action"] == "compute"]
            return groups.count("slow_inc") == 6 and groups.count("fail") == 1
        wait_for(shown, timeout=5, message="the tasks in the widget's stream")
        drawn = rects(m.task_stream.value)
        assert {r["worker"] for r in drawn} <= {w.address for w in workers}
        assert [r["status"] for r in drawn if r["group"] == "fail"] == ["error"]
        assert m.task_stream.layout.display is None
    finally:
        m.close()
