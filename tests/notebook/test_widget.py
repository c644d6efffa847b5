"""The live Monitor widget and the console progress bar.

Tier 1: rendering is pure (snapshot in, HTML/text out) and is checked literally.
Tier 2: a Monitor on the in-process cluster reads real snapshots; its child widgets'
values are what a front end would show.
Tier 3: a notebook run through a real kernel with nbclient records the widget state."""

import io
import os
import re
import threading
import time

import nbformat
import pytest
from helpers import (Boom, dask_ipy_threads, fail, inc, local_cluster, slow_inc,
                     wait_for)

import dask_ipy
from dask_ipy.notebook import widget as W

SNAP = {
    "op": "monitor-snapshot", "address": "tcp://127.0.0.1:5555", "uptime": 75.0,
    "nclients": 1, "ntasks": 13,
    "workers": [
        {"address": "tcp://10.0.0.2:4001", "name": "engine-1", "host": "node2",
         "pid": 11, "nthreads": 2, "executing": 2, "processing": 5, "keys": 7,
         "nbytes": 2048, "memory": 100 * 2**20, "cpu": 98.0, "last_seen": 0.2},
        {"address": "tcp://10.0.0.1:4000", "name": "tcp://10.0.0.1:4000",
         "host": "node1", "pid": 10, "nthreads": 1, "executing": 0, "processing": 0,
         "keys": 0, "nbytes": 0, "memory": 50 * 2**20, "cpu": 0.0, "last_seen": 7.0},
    ],
    "counts": {"released": 0, "waiting": 2, "queued": 0, "no-worker": 0,
               "processing": 3, "memory": 7, "erred": 1},
    "groups": [
        {"name": "inc", "total": 10, "done": 7, "erred": 0,
         "states": {"memory": 7, "processing": 3}},
        {"name": "boom", "total": 3, "done": 0, "erred": 1,
         "states": {"waiting": 2, "erred": 1}},
    ],
    "errors": [{"key": "boom-1", "group": "boom", "type": "ZeroDivisionError",
                "text": "ZeroDivisionError: division by zero"}],
}


def attrs(html, kind):
    """The data-* attributes of every element marked data-dask-ipy=kind."""
    out = []
    for tag in re.findall(r'<[^>]*data-dask-ipy="%s"[^>]*>' % kind, html):
        out.append(dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag)))
    return out


def chip_counts(html):
    return {s: int(n) for s, n in
            re.findall(r'data-state="([^"]+)" data-count="(\d+)"', html)}


# ---------------------------------------------------------------- pure rendering

def test_formatting():
    assert W.format_bytes(0) == "0 B"
    assert W.format_bytes(1536) == "1.5 KiB"
    assert W.format_bytes(3 * 2**30) == "3.0 GiB"
    assert W.format_duration(3.25) == "3.2 s"
    assert W.format_duration(42) == "42 s"
    assert W.format_duration(75) == "1m 15s"
    assert W.format_duration(2 * 3600 + 4 * 60) == "2h 04m"
    assert W.format_heartbeat(0.4) == "< 1 s"
    assert W.format_heartbeat(7) == "7.0 s ago"
    assert W.worker_label({"address": "tcp://a:1", "name": "engine-3"}) == "engine 3"
    assert W.worker_label({"address": "tcp://a:1", "name": "tcp://a:1"}) == "a:1"
    assert W.worker_label({"address": "tcp://a:1", "name": "w", "engine": 0}) == \
        "engine 0"
    assert W.totals(SNAP) == (2, 3, 150 * 2**20)


def test_totals_count_a_shared_process_once():
    snap = {"workers": [dict(SNAP["workers"][0], host="h", pid=1),
                        dict(SNAP["workers"][1], host="h", pid=1)]}
    assert W.totals(snap) == (2, 3, 50 * 2**20)


def test_header_html():
    h = W.header_html(SNAP)
    assert attrs(h, "header") == [{"dask-ipy": "header", "workers": "2", "threads": "3"}]
    assert "tcp://127.0.0.1:5555" in h and "150.0 MiB" in h and "1m 15s" in h
    assert 'data-dask-ipy="status"' not in h
    assert "closed" in W.header_html(SNAP, status="closed")
    assert "no update for" in W.header_html(SNAP, stale=5.0)
    assert "waiting for the scheduler" in W.header_html(None)


def test_workers_html():
    h = W.workers_html(SNAP)
    rows = attrs(h, "worker")
    # sorted by label: the address-named worker before "engine 1"
    assert [r["address"] for r in rows] == ["tcp://10.0.0.1:4000", "tcp://10.0.0.2:4001"]
    assert rows[1]["executing"] == "2" and rows[1]["keys"] == "7"
    assert ">engine 1<" in h and ">node2<" in h and "2.0 KiB" in h and "98%" in h
    # queued = processing - executing; a late heartbeat is flagged
    assert re.search(r">3</td>", h)
    assert "7.0 s ago" in h and "#e53935" in h
    assert attrs(W.workers_html({"workers": []}), "workers")[0]["count"] == "0"
    many = {"workers": [dict(SNAP["workers"][0], address=f"tcp://h:{i}", name=str(i))
                        for i in range(5)]}
    assert len(attrs(W.workers_html(many, max_rows=3), "worker")) == 3
    assert "2 more" in W.workers_html(many, max_rows=3)


def test_counts_html():
    h = W.counts_html(SNAP)
    assert chip_counts(h) == {"waiting": 2, "processing": 3, "memory": 7, "erred": 1}
    assert attrs(h, "counts")[0]["ntasks"] == "13"
    assert "no tasks" in W.counts_html({"counts": {}})


def test_group_html():
    inc = W.group_html(SNAP["groups"][0])
    assert attrs(inc, "group") == [{"dask-ipy": "group", "group": "inc", "total": "10",
                                    "done": "7", "erred": "0", "processing": "3"}]
    assert "3 processing" in inc and "width:70.00%" in inc and "width:30.00%" in inc
    boom = W.group_html(SNAP["groups"][1])
    assert "1 erred" in boom and "2 waiting" in boom
    assert W.group_html({"name": "<script>", "total": 0, "done": 0, "erred": 0}) \
        .count("<script>") == 0


def test_errors_html():
    h = W.errors_html(SNAP)
    assert attrs(h, "error") == [{"dask-ipy": "error", "key": "boom-1"}]
    assert "ZeroDivisionError" in h and "division by zero" in h
    assert "ZeroDivisionError: division by zero" not in h      # no repeated type
    assert W.errors_html({"errors": []}) == ""


def test_snapshot_text():
    t = W.snapshot_text(SNAP)
    lines = t.splitlines()
    assert lines[0].startswith("dask_ipy scheduler tcp://127.0.0.1:5555  up 1m 15s")
    assert "2 workers, 3 threads" in lines[0]
    assert lines[1].split() == ["worker", "host", "threads", "exec", "queued", "keys",
                                "stored", "memory", "cpu", "heartbeat"]
    assert "engine 1" in t and "tasks: waiting 2, processing 3, memory 7, erred 1" in t
    assert re.search(r"inc  \[#{21} {9}\] 7/10  3 running", t)
    assert re.search(r"boom \[#{0}!{10} {20}\] 0/3  1 erred", t)
    assert "boom-1: ZeroDivisionError: division by zero" in t
    assert "waiting for the scheduler" in W.snapshot_text(None)


def test_progress_line():
    line = W._progress_line(5, 1, 0, 10, 10, 3.0)
    assert line == "[####!     ]  50.0% 5/10 tasks, 1 erred | 3.0 s"
    assert W._progress_line(0, 0, 0, 0, 4, 0) == "[####] 100.0% 0/0 tasks | 0.0 s"


# ---------------------------------------------------------------- widget writes

class FakeClient:
    """Just what a Monitor uses of a Client, to test its writes without a cluster."""

    def __init__(self):
        self.status = "running"
        self.monitor_callbacks = []
        self.last_snapshot = None

    def subscribe_monitor(self, cb):
        self.monitor_callbacks.append(cb)

    def unsubscribe_monitor(self, cb):
        if cb in self.monitor_callbacks:
            self.monitor_callbacks.remove(cb)


def test_monitor_writes_only_what_changed():
    client = FakeClient()
    m = dask_ipy.Monitor(client, interval=0.01)
    try:
        m.stop()                       # drive _apply by hand, on this thread only
        writes = []
        m._apply(SNAP, "running")
        for name, w in [("header", m.header), ("workers", m.worker_table),
                        ("counts", m.task_counts), ("errors", m.errors),
                        *[(n, r) for n, r in m.group_rows.items()]]:
            w.observe(lambda ch, name=name: writes.append(name), "value")
        m.groups.observe(lambda ch: writes.append("children"), "children")
        assert list(m.group_rows) == ["inc", "boom"]
        assert m.errors.layout.display is None

        snap = dict(SNAP)              # the same content again: nothing is sent
        m._apply(snap, "running")
        assert writes == []

        g = dict(SNAP["groups"][0], done=8, states={"memory": 8, "processing": 2})
        m._apply(dict(SNAP, groups=[g, SNAP["groups"][1]]), "running")
        assert writes == ["inc"]

        del writes[:]
        m._apply(dict(SNAP, groups=[g], errors=[]), "running")   # boom trimmed
        assert sorted(writes) == ["children", "errors"]
        assert list(m.group_rows) == ["inc"] and m.errors.layout.display == "none"
    finally:
        m.close()
    assert not client.monitor_callbacks


def test_monitor_keeps_the_latest_groups():
    m = dask_ipy.Monitor(FakeClient(), max_groups=3)
    try:
        m.stop()
        groups = [{"name": f"g{i}", "total": 1, "done": 1, "erred": 0}
                  for i in range(5)]
        m._apply(dict(SNAP, groups=groups), "running")
        assert list(m.group_rows) == ["g2", "g3", "g4"]
        assert list(m.groups.children) == list(m.group_rows.values())
    finally:
        m.close()


# ---------------------------------------------------------------- live, in-process

def group_row(m, name):
    row = m.group_rows.get(name)
    return attrs(row.value, "group")[0] if row is not None else None


def test_monitor_shows_final_counts_soon_after_the_work(cluster):
    s, workers, c = cluster
    m = dask_ipy.Monitor(c)
    try:
        assert m.running and c.monitor_callbacks == [m._on_snapshot]
        wait_for(lambda: attrs(m.header.value, "header")[0].get("workers") == "2",
                 timeout=3, message="workers in the header")
        n = 200
        futures = c.map(slow_inc, range(n), delay=0.02)
        seen_running = []

        def watch():
            row = group_row(m, "slow_inc")
            if row and 0 < int(row["done"]) < n:
                seen_running.append(int(row["done"]))
            return all(f.done() for f in futures)
        wait_for(watch, timeout=30, interval=0.01, message="the map")
        assert c.gather(futures) == list(range(1, n + 1))

        def final():
            row = group_row(m, "slow_inc")
            return (row is not None and row["done"] == str(n) and row["total"] == str(n)
                    and chip_counts(m.task_counts.value).get("memory") == n)
        # The last snapshot is pushed at once (about 0.3 s: one interval); a monitor
        # that only showed it at its next change would never get there.
        wait_for(final, timeout=10.0, interval=0.01, message="final counts in the widget")
        assert seen_running, "the bar never showed work in progress"
        table = attrs(m.worker_table.value, "worker")
        assert {r["address"] for r in table} == {w.address for w in workers}
        assert sum(int(r["keys"]) for r in table) == n
        assert f"slow_inc [{'#' * 30}] {n}/{n}" in m.text()
    finally:
        m.close()
    assert not m.running and not c.monitor_callbacks


def test_monitor_shows_errors(cluster):
    s, workers, c = cluster
    m = dask_ipy.Monitor(c)
    try:
        futures = c.map(fail, range(3))
        for f in futures:
            with pytest.raises(Boom):
                f.result(timeout=10)
        wait_for(lambda: len(attrs(m.errors.value, "error")) == 3, timeout=2,
                 message="errors in the widget")
        assert {e["key"] for e in attrs(m.errors.value, "error")} == \
            {f.key for f in futures}
        assert "Boom" in m.errors.value and "failed on 1" in m.errors.value
        assert m.errors.layout.display is None
        assert group_row(m, "fail")["erred"] == "3"
        assert chip_counts(m.task_counts.value)["erred"] == 3
    finally:
        m.close()


def test_monitor_stops_when_the_client_closes(cluster):
    from dask_ipy import Client

    s, workers, c = cluster
    c2 = Client(s, set_as_default=False)
    m = dask_ipy.Monitor(c2)
    try:
        wait_for(lambda: m.updates > 1, timeout=3, message="a first update")
        c2.close()
        wait_for(lambda: not m.running, timeout=2, message="the updater to stop")
        assert "closed" in m.header.value
    finally:
        m.close()
        c2.close()
    assert not [t for t in dask_ipy_threads() if t.name == "dask-ipy-monitor"]


def test_the_last_word_of_a_monitor_shows_the_work_done_before_a_shutdown():
    # Work that ends just before `%dsched stop`: the widget's final state shows it
    # finished, not a snapshot of up to an interval before.
    with local_cluster() as (s, workers, c):
        m = dask_ipy.Monitor(c)
        try:
            wait_for(lambda: m.updates > 0 and group_row(m, "inc") is None, timeout=5,
                     message="a first snapshot")
            assert c.gather(c.map(inc, range(50))) == list(range(1, 51))
            c.shutdown()
            wait_for(lambda: not m.running, timeout=5, message="the updater to stop")
            assert "stopped" in m.header.value or "closed" in m.header.value
            row = group_row(m, "inc")
            assert row is not None and row["done"] == row["total"] == "50", row
        finally:
            m.close()


def test_two_monitors_share_one_subscription(cluster):
    s, workers, c = cluster
    a, b = dask_ipy.Monitor(c), dask_ipy.Monitor(c)
    try:
        wait_for(lambda: s.state.monitors(), timeout=2, message="subscription")
        a.close()
        assert b.running and len(c.monitor_callbacks) == 1
        c.submit(inc, 1).result(timeout=10)
        wait_for(lambda: group_row(b, "inc") and group_row(b, "inc")["done"] == "1",
                 timeout=2, message="b still updates")
    finally:
        b.close()
    wait_for(lambda: not s.state.monitors(), timeout=2, message="unsubscribe")


def test_client_display_outside_a_kernel(cluster):
    s, workers, c = cluster
    bundle = c._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}          # no kernel, no widget
    assert bundle["text/plain"].startswith(f"<Client {c.address} running: 2 workers")
    assert "dask_ipy Client" in c._repr_html_()
    assert "Workers: 2, Total threads: 2, Total memory: " in c._repr_html_()
    assert not [t for t in threading.enumerate() if t.name == "dask-ipy-monitor"]


def test_progress_futures(cluster):
    s, workers, c = cluster
    futures = c.map(slow_inc, range(40), delay=0.02)
    futures.append(c.submit(fail, 1))
    out = io.StringIO()
    assert dask_ipy.progress(futures, file=out, interval=0.05) is None
    assert all(f.done() for f in futures)
    text = out.getvalue()
    assert text.endswith("\n") and text.startswith("\r[")
    last = text.rstrip("\n").split("\r")[-1]
    assert re.match(r"\[#{39}!\] 100\.0% 41/41 tasks, 1 erred \| ", last)


def test_progress_takes_dask_distributed_keywords(cluster):
    s, workers, c = cluster
    done = c.submit(inc, 1)
    done.result()
    pending = c.map(slow_inc, range(3), delay=0.5)        # not done when it begins
    out = io.StringIO()
    assert dask_ipy.progress([done] + pending, file=out, interval="50ms",
                             notebook=False, multi=True, complete=False,
                             group_by="prefix") is None
    # complete=False: only the work not done when it began
    assert "3/3 tasks" in out.getvalue().split("\r")[-1]
    with pytest.raises(ValueError, match="group_by"):
        dask_ipy.progress(done, file=out, group_by="nothing")


def test_progress_collection(cluster):
    import dask.array as da

    s, workers, c = cluster
    x = da.arange(100, chunks=10) + 1
    out = io.StringIO()
    y = dask_ipy.progress(x, file=out, width=10)
    assert "10/10 tasks" in out.getvalue().split("\r")[-1]
    assert y.compute().tolist() == list(range(1, 101))


# ---------------------------------------------------------------- a real kernel

NOTEBOOK_CELLS = [
    """\
import time
from dask_ipy import Client, Monitor, Scheduler, Worker
s = Scheduler()
workers = [Worker(scheduler=s.address_to_workers) for _ in range(2)]
client = Client(s)
monitor = Monitor(client)
monitor""",
    """\
def inc(x):
    time.sleep(0.005)
    return x + 1

futures = client.map(inc, range(N))
total = sum(client.gather(futures))

def shown_done():
    # The monitor's thread sets the widget's values; each change goes out on the
    # kernel's iopub before this cell ends, so the notebook records the final ones
    # (the cell is run with every capital en replaced by the count).
    row = monitor.group_rows.get("inc")
    return ('data-state="memory" data-count="N"' in monitor.task_counts.value
            and row and 'data-done="N"' in row.value)

deadline = time.monotonic() + 60
while not shown_done() and time.monotonic() < deadline:
    time.sleep(0.01)
total""",
]


def test_notebook_records_widget_state(tmp_path):
    from nbclient import NotebookClient

    n = 300
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CELLS[0]),
                nbformat.v4.new_code_cell(NOTEBOOK_CELLS[1].replace("N", str(n))),
                nbformat.v4.new_code_cell("client"),
                nbformat.v4.new_code_cell("monitor.close(); client.close()\n"
                                          "for w in workers: w.close()\ns.close()")]
    runner = NotebookClient(nb, kernel_name="python3", timeout=90,
                            store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    runner.execute(env=dict(os.environ))

    def result(cell):
        found = [o["data"] for o in cell.outputs if o["output_type"] == "execute_result"]
        assert found, cell.outputs
        return found[0]

    assert result(nb.cells[1])["text/plain"] == str(sum(range(1, n + 1)))
    view = result(nb.cells[0])["application/vnd.jupyter.widget-view+json"]
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert view["model_id"] in state
    values = [m["state"].get("value", "") for m in state.values()
              if m["model_name"] == "HTMLModel"]
    groups = [a for v in values for a in attrs(v, "group")]
    assert {"group": "inc", "total": str(n), "done": str(n)}.items() <= \
        [g for g in groups if g["group"] == "inc"][0].items()
    counts = [chip_counts(v) for v in values if 'data-dask-ipy="counts"' in v]
    assert counts and counts[0].get("memory") == n
    headers = [a for v in values for a in attrs(v, "header")]
    assert headers and headers[0]["workers"] == "2"
    # In a kernel a Client displays as the live widget, with text and HTML fallbacks.
    shown = result(nb.cells[2])
    assert shown["text/plain"].startswith("<Client tcp://127.0.0.1:")
    assert "dask_ipy Client" in shown["text/html"]
    assert shown["application/vnd.jupyter.widget-view+json"]["model_id"] in state


def test_monitor_resubscribes_after_the_scheduler_comes_back():
    from dask_ipy import Client, Scheduler

    s = Scheduler()
    port = int(s.address_to_clients.rsplit(":", 1)[1])
    c = Client(s)
    m = dask_ipy.Monitor(c)
    s2 = None
    try:
        wait_for(lambda: m.updates >= 2, timeout=3, message="first updates")
        s.close()
        wait_for(lambda: c.status == "reconnecting", timeout=5, message="the loss")
        s2 = Scheduler(port_to_clients=port, security=s.security)
        wait_for(lambda: c.status == "running", timeout=10, message="reconnection")
        before = c.last_snapshot
        wait_for(lambda: c.last_snapshot is not before, timeout=3,
                 message="snapshots from the new scheduler")
        wait_for(lambda: "reconnecting" not in m.header.value, timeout=2,
                 message="the widget to recover")
    finally:
        m.close()
        c.close()
        if s2 is not None:
            s2.close()
        s.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")
