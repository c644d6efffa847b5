"""`Client.profile`: the workers' sampled stacks of real processes (a scheduler and two
workers of two threads), by group, worker, time; per worker; asynchronous; written as
a flame chart; in a performance report; and the options of in-process clusters."""

import asyncio
import html.parser
import inspect
import json
import threading
import time

import dask
import pytest
from helpers import local_cluster, slow_inc, spin, spin_elsewhere

import dask_ipy
from dask_ipy import Client

PROCESS_CLUSTER = {"nthreads": 2}
pytestmark = pytest.mark.timeout(120)


def workers_of(c):
    return sorted(c.scheduler_info()["workers"])


def functions(tree):
    """{function name: samples on the stack there} over the whole tree."""
    out = {}
    todo = list(tree["children"].values())
    while todo:
        node = todo.pop()
        name = node["description"]["name"]
        out[name] = out.get(name, 0) + node["count"]
        todo.extend(node["children"].values())
    return out


def test_a_spinning_task_shows_in_its_groups_profile_only(c):
    began = time.time()
    busy = c.submit(spin, 1.0)
    sleepy = c.submit(slow_inc, 1, delay=1.0)
    c.gather([busy, sleepy])
    whole = c.profile(start=began)
    assert set(whole) == {"identifier", "description", "count", "children"}
    assert whole["identifier"] == "root" and whole["count"] >= 4
    seen = functions(whole)
    assert seen["spin"] >= 2 and seen["slow_inc"] >= 2
    # the worker's own frames below the task are left out: the tree starts at the task
    assert "_run_job" not in seen and "_pool_thread" not in seen
    (node,) = [n for n in _walk(whole) if n["description"]["name"] == "spin"]
    d = node["description"]
    assert d["filename"].endswith("helpers.py") and d["line_number"] > 0
    assert node["identifier"] == f"spin;{d['filename']};{spin.__code__.co_firstlineno}"
    assert d["line"] and d["line"] in inspect.getsource(spin)

    mine = functions(c.profile(key=busy.key, start=began))
    assert mine["spin"] >= 2 and "slow_inc" not in mine
    assert functions(c.profile(key="spin", start=began)) == mine
    others = functions(c.profile(key="slow_inc", start=began))
    assert others["slow_inc"] >= 2 and "spin" not in others
    assert c.profile(key="no_such_group")["count"] == 0
    # nothing from a span before any of it ran
    assert "spin" not in functions(c.profile(stop=began - 2, start=began - 3))
    assert c.profile(start=time.time() + 3600)["count"] == 0


def _walk(tree):
    todo = list(tree["children"].values())
    while todo:
        node = todo.pop()
        yield node
        todo.extend(node["children"].values())


def test_workers_filter_and_per_worker_trees(c):
    a, b = workers_of(c)
    began = time.time()
    c.submit(spin_elsewhere, 1.0, workers=[a]).result()
    on_a = functions(c.profile(workers=[a], start=began))
    assert on_a["spin_elsewhere"] >= 2
    assert "spin_elsewhere" not in functions(c.profile(workers=[b], start=began))
    per = c.profile(merge_workers=False, start=began)
    assert set(per) == {a, b}
    assert functions(per[a])["spin_elsewhere"] >= 2
    assert "spin_elsewhere" not in functions(per[b])
    assert c.profile(workers=["tcp://127.0.0.1:1"])["count"] == 0


def test_the_flame_chart_file(c, tmp_path):
    began = time.time()
    c.submit(spin, 0.6).result()
    path = tmp_path / "profile.html"
    state, chart = c.profile(start=began, filename=str(path))
    assert functions(state)["spin"] >= 2
    page = path.read_text()
    assert page == chart.html and "<svg" in chart._repr_html_()
    frames = FlameFrames()
    frames.feed(page)
    assert frames.samples == state["count"]
    spun = [f for f in frames.frames if f["data-name"] == "spin"]
    assert spun and spun[0]["data-filename"].endswith("helpers.py")
    assert int(spun[0]["data-count"]) == functions(state)["spin"]
    assert json.loads(frames.data) == {"": state}
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    state2, _ = c.profile(start=began, plot=True)          # no file, a chart
    assert functions(state2)["spin"] >= 2


class FlameFrames(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.frames, self.samples, self.data, self._in_data = [], None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("data-dask-ipy") == "flame-frame":
            self.frames.append(attrs)
        elif attrs.get("data-dask-ipy") == "profile":
            self.samples = int(attrs["data-samples"])
        self._in_data = attrs.get("id") == "dask-ipy-profile-data"

    def handle_data(self, data):
        if self._in_data:
            self.data = data
            self._in_data = False


def test_a_performance_report_shows_the_top_functions(c, tmp_path):
    html = tmp_path / "report.html"
    with dask_ipy.performance_report(str(html), client=c) as report:
        c.submit(spin, 0.6).result()
    assert functions(report.data["profile"])["spin"] >= 2
    page = html.read_text()
    assert 'data-dask-ipy="report-profile"' in page
    assert 'data-dask-ipy="profile-top-row" data-name="spin"' in page


def test_the_asynchronous_client(pc):
    async def main():
        async with Client(pc.file, asynchronous=True) as ac:
            began = time.time()
            assert await ac.submit(spin, 0.6, 7) == 7
            return await ac.profile(key="spin", start=began)
    assert functions(asyncio.run(main()))["spin"] >= 2


def test_sampling_off_and_a_worker_that_does_not_answer():
    with dask.config.set({"dask-ipy.worker.profile.enabled": False}):
        with local_cluster() as (s, workers, c):
            assert all(w.sampler is None for w in workers)
            c.submit(spin, 0.3).result()
            assert c.profile()["count"] == 0
            assert c.profile(merge_workers=False) == {}
    with local_cluster() as (s, (w1, w2), c):
        c.submit(spin, 0.5, workers=[w1.address]).result()
        # w2 hears the question and never answers: the scheduler answers without it
        w2.from_scheduler["get-profile"] = lambda msg: None
        began = time.monotonic()
        per = c.run_op(c._profile_op(merge_workers=False, timeout=0.5))
        assert set(per) == {w1.address}
        assert functions(per[w1.address])["spin"] >= 2
        assert time.monotonic() - began >= 0.5


def test_a_worker_that_leaves_while_asked_is_not_waited_for():
    with local_cluster() as (s, (w1, w2), c):
        c.submit(spin, 0.5, workers=[w1.address]).result()
        # w2 leaves instead of answering: the answer comes without it, long before
        # the timeout
        w2.from_scheduler["get-profile"] = lambda msg: threading.Thread(target=w2.close).start()
        began = time.monotonic()
        per = c.run_op(c._profile_op(merge_workers=False, timeout=60))
        assert time.monotonic() - began < 20
        assert set(per) == {w1.address}
        assert functions(per[w1.address])["spin"] >= 2


def test_the_sampler_keeps_cycles_with_samples_in_a_bounded_ring():
    """The shell's sampler driven by hand on this thread (its clock given): a cycle
    ends after ``cycle`` seconds, only cycles with samples are kept, at most
    ``history`` of them, and an idle look counts nothing."""
    from dask_ipy.worker.monitor import RunningTasks
    from dask_ipy.worker.sampler import Sampler

    running = RunningTasks()
    sampler = Sampler(running, interval=0.01, cycle=1.0, history=2,
                      stop=(test_the_sampler_keeps_cycles_with_samples_in_a_bounded_ring
                            .__code__,))
    t0 = sampler.current["start"]

    def task_frame(now):           # the "task": what the sampler sees above the test
        sampler.sample(now)

    running.start("spin-0123456789abcdef0123456789abcdef")
    task_frame(t0 + 0.1)
    task_frame(t0 + 0.2)
    running.end()
    task_frame(t0 + 0.3)                                   # idle: nothing counted
    assert sampler.samples == 2 and not sampler.history
    sampler.sample(t0 + 1.5)                               # the cycle ends
    assert [c["stop"] for c in sampler.history] == [t0 + 1.5]
    sampler.sample(t0 + 3.0)                               # an empty cycle: not kept
    assert len(sampler.history) == 1
    for i in range(3):
        running.start(f"inc-{i:032x}")
        task_frame(t0 + 3.1 + 1.5 * i)
        running.end()
        sampler.sample(t0 + 4.0 + 1.5 * i)
    assert len(sampler.history) == 2                       # the ring
    assert set(sampler.history[-1]["trees"]) == {"inc"}
    tree = sampler.select(key="inc")
    assert tree["count"] == 2
    assert [n["description"]["name"] for n in tree["children"].values()] == \
        ["task_frame"]
    assert sampler.select(key="spin")["count"] == 0       # gone with its cycle
