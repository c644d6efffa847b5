"""Memory in the widget and the text view: bars of managed and unmanaged memory with
the limit's thresholds marked, spilled bytes, paused workers, and the loud line for
a worker paused too long.  Rendering is pure; one Monitor runs on a real cluster."""

import re

import pytest
from helpers import MiB, local_cluster, wait_for

from dask_ipy.notebook import widget as W
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)

F = {"target": 0.6, "spill": 0.7, "pause": 0.8, "terminate": 0.95}


def attrs(html, kind):
    out = []
    for tag in re.findall(r'<[^>]*data-dask-ipy="%s"[^>]*>' % kind, html):
        out.append(dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag)))
    return out


def snapshot():
    """A snapshot from a scheduler state: one worker paused for 90 s."""
    s = SchedulerState(validate=True)
    s.add_worker("w1", "tcp://10.0.0.1:1", name="engine-0", memory_limit=1000 * MiB,
                 memory_fractions=F)
    s.add_worker("w2", "tcp://10.0.0.2:1", name="engine-1", memory_limit=1000 * MiB,
                 memory_fractions=F)
    s.handle_worker_message("w1", {"op": "heartbeat", "metrics": {
        "memory": 850 * MiB, "managed": 500 * MiB, "spilled": 2000 * MiB,
        "memory_limit": 1000 * MiB, "status": "paused"}}, now=10.0)
    s.handle_worker_message("w2", {"op": "heartbeat", "metrics": {
        "memory": 300 * MiB, "managed": 100 * MiB, "spilled": 0,
        "memory_limit": 1000 * MiB, "status": "running"}}, now=10.0)
    return s.snapshot(now=100.0)


def test_memory_bars_show_managed_unmanaged_and_the_thresholds():
    h = W.workers_html(snapshot())
    bars = {b["memory"]: b for b in attrs(h, "memory")}
    paused, running = bars[str(850 * MiB)], bars[str(300 * MiB)]
    assert (paused["managed"], paused["unmanaged"], paused["spilled"], paused["limit"],
            paused["paused"]) == (str(500 * MiB), str(350 * MiB), str(2000 * MiB),
                                  str(1000 * MiB), "true")
    assert running["paused"] == "false" and running["unmanaged"] == str(200 * MiB)
    assert sorted(set(re.findall(r'data-mark="(\w+)"', h))) == \
        ["pause", "spill", "target", "terminate"]
    assert "850.0 MiB / 1000.0 MiB" in h and "2.0 GiB" in h        # spilled column
    rows = {r["address"]: r for r in attrs(h, "worker")}
    assert rows["tcp://10.0.0.1:1"]["status"] == "paused"
    [badge] = attrs(h, "paused")
    assert badge["seconds"] == "90.0"
    assert "1 paused" in W.header_html(snapshot())


def test_a_worker_paused_too_long_gets_a_loud_line():
    snap = snapshot()
    assert W.paused_alerts_html(snap, warn_after=120) == ""
    assert W.paused_alerts_html(snap, warn_after=None) == ""
    h = W.paused_alerts_html(snap, warn_after=60)
    assert [a["address"] for a in attrs(h, "paused-alert")] == ["tcp://10.0.0.1:1"]
    assert "engine 0 has been paused for 1m 30s" in h and "past 80%" in h
    assert "#e53935" in W.workers_html(snap, warn_after=60).split("paused 1m 30s")[0][-200:]


def test_no_limit_shows_plain_memory():
    w = {"address": "a", "memory": 5 * MiB}
    assert attrs(W.memory_html(w), "memory")[0]["limit"] == "0"
    assert "5.0 MiB" in W.memory_html(w) and "data-mark" not in W.memory_html(w)


def test_text_view_has_memory_lines():
    t = W.snapshot_text(snapshot())
    assert ("engine 0 memory 850.0 MiB of 1000.0 MiB: managed 500.0 MiB, unmanaged "
            "350.0 MiB, spilled 2.0 GiB  PAUSED 1m 30s") in t
    assert "engine 1 memory 300.0 MiB of 1000.0 MiB" in t


def test_a_monitor_shows_each_workers_memory_and_limit():
    import dask_ipy

    with local_cluster(worker_options={"memory_limit": "2GiB"}) as (s, workers, c):
        m = dask_ipy.Monitor(c, paused_warning=30)
        try:
            def shown():
                bars = attrs(m.worker_table.value, "memory")
                return len(bars) == 2 and all(
                    b["limit"] == str(2 * 2**30) and int(b["memory"]) > 0 for b in bars)
            wait_for(shown, timeout=10, message="memory bars")
            assert m.alerts.layout.display == "none"
        finally:
            m.close()
