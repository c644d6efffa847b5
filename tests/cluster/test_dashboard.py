"""The scheduler's HTTP face over a real socket: the link a client is given, the
token it carries (refused without it), a path prefix, and /metrics parsed by the
parser prometheus_client ships.  The scheduler and workers are processes."""

import json
import urllib.error
import urllib.request

import pytest
from helpers import add, fail, inc, local_cluster, processes, wait_for
from prometheus_client.parser import text_string_to_metric_families

import dask_ipy
from dask_ipy.addresses import dashboard_url


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def status_of(url, headers=None):
    try:
        return get(url, headers)[0]
    except urllib.error.HTTPError as e:
        return e.code


def metrics(base):
    _, ctype, text = get(base + "metrics")
    assert ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_page_snapshot_and_metrics_of_real_processes(tmp_path):
    options = {"dashboard_port": 0, "dashboard_prefix": "/proxy/dash"}
    with processes(tmp_path, scheduler_options=options) as (_, c):
        link = c.dashboard_link
        assert link.startswith("http://127.0.0.1:") and "/proxy/dash/?token=" in link
        base, token = link.split("?token=")
        a, b = sorted(c.scheduler_info()["workers"])
        x = c.submit(inc, 1, workers=[a])
        y = c.submit(add, x, 10, workers=[b])
        bad = c.submit(fail, 1)
        assert y.result() == 12
        dask_ipy.wait([bad])

        status, ctype, page = get(link)
        assert status == 200 and ctype.startswith("text/html")
        assert 'data-dask-ipy="dashboard"' in page and "snapshot.json" in page
        # the token is needed for everything but /metrics
        for url in (base, base + "snapshot.json", base + "snapshot.json?token=wrong",
                    base + "?token=" + token[:-1]):
            assert status_of(url) == 403, url
        assert status_of(base + "snapshot.json",
                         {"Authorization": f"token {token}"}) == 200
        assert status_of(link.replace("/proxy/dash/", "/")) == 404

        def snap():
            return json.loads(get(base + "snapshot.json?token=" + token)[2])

        def settled():
            s = snap()["snapshot"]
            return s is not None and s["counts"]["memory"] == 2 and \
                s["counts"]["erred"] == 1
        wait_for(settled, timeout=10, message="the snapshot to show the tasks")
        got = snap()
        assert sorted(w["address"] for w in got["snapshot"]["workers"]) == [a, b]
        assert got["snapshot"]["errors"][-1]["key"] == bad.key
        assert 'data-dask-ipy="task-stream"' in got["stream"]
        assert got["stream"].count('data-dask-ipy="task" data-key=""') >= 3

        # Each worker reports its transfer counters in its own heartbeat: the
        # sender's may come after the receiver's.
        def counted():
            m = metrics(base)
            return m[("dask_ipy_tasks_finished_total", ())] == 2 and \
                m[("dask_ipy_worker_transfer_bytes_total",
                   (("direction", "incoming"), ("worker", b)))] > 0 and \
                m[("dask_ipy_worker_transfer_bytes_total",
                   (("direction", "outgoing"), ("worker", a)))] > 0
        wait_for(counted, timeout=10, message="the metrics to count the tasks")
        m = metrics(base)
        assert m[("dask_ipy_tasks_erred_total", ())] == 1
        assert m[("dask_ipy_tasks", (("state", "memory"),))] == 2
        assert m[("dask_ipy_workers", ())] == 2
        for w in (a, b):
            assert m[("dask_ipy_worker_memory_bytes",
                      (("type", "unmanaged"), ("worker", w)))] > 0
            assert m[("dask_ipy_worker_latency_seconds", (("worker", w),))] >= 0
        assert m[("dask_ipy_worker_memory_bytes",
                  (("type", "managed"), ("worker", a)))] > 0
        assert m[("dask_ipy_scheduler_loop_lag_seconds", ())] >= 0
        assert m[("dask_ipy_task_stream_records_total", ())] == 3


def test_no_dashboard_unless_asked():
    with local_cluster() as (s, _, c):
        assert s.dashboard is None and c.dashboard_link is None
        assert not [t for t in __import__("threading").enumerate()
                    if t.name == "dask-ipy-dashboard"]


def test_the_command_line():
    from dask_ipy.cli import parse_args

    args = parse_args(["scheduler", "--dashboard-port", "0", "--dashboard-prefix", "/p"])
    assert (args.dashboard_port, args.dashboard_prefix) == (0, "/p")
    assert parse_args(["scheduler"]).dashboard_port is None


def test_the_link_and_a_taken_port():
    assert dashboard_url({"host": "::1", "port": 5, "prefix": "", "token": "t"}) == \
        "http://[::1]:5/?token=t"
    with local_cluster(scheduler_options={"dashboard_port": 0}) as (s, _, c):
        port = s.dashboard.port
        assert c.dashboard_link == f"http://127.0.0.1:{port}/?token={s.dashboard.token}"
        from dask_ipy import Scheduler

        with pytest.raises(OSError, match="could not listen"):
            Scheduler(dashboard_port=port)
