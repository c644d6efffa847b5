"""The task stream, performance reports and worker logs of real clusters: a scheduler
and two workers in their own processes (two threads each), and in-process clusters
for the options."""

import asyncio
import json
import time

import dask
import pytest
from helpers import (add, fail, inc, local_cluster, log_message, processes, slow_inc,
                     wait_for)

import dask_ipy
from dask_ipy import Client

PROCESS_CLUSTER = {"nthreads": 2}


def workers_of(c):
    return sorted(c.scheduler_info()["workers"])


def test_a_block_of_work_as_dask_distributed_gives_it(c):
    a, b = workers_of(c)
    with dask_ipy.get_task_stream(c) as ts:
        xs = c.map(inc, range(10), workers=[a])
        y = c.submit(sum, xs, workers=[b])
        bad = c.submit(fail, 1)
        assert y.result() == 55
        dask_ipy.wait([bad])
    by_key = {r["key"]: r for r in ts.data}
    assert set(by_key) == {x.key for x in xs} | {y.key, bad.key}
    for r in ts.data:
        assert set(r) == {"key", "worker", "thread", "status", "nbytes", "typename",
                          "startstops"}
        assert r["worker"] in (a, b) and isinstance(r["thread"], int)
        (compute,) = [s for s in r["startstops"] if s["action"] == "compute"]
        assert compute["start"] <= compute["stop"]
    assert {by_key[x.key]["worker"] for x in xs} == {a}
    assert len({by_key[x.key]["thread"] for x in xs}) <= 2
    assert by_key[bad.key]["status"] == "error"
    assert {by_key[x.key]["status"] for x in xs} == {"OK"}
    assert by_key[xs[0].key]["typename"] == "builtins.int"
    # sum's ten inputs came from the other worker, in one fetch or a few
    fetched = [s for s in by_key[y.key]["startstops"] if s["action"] == "transfer"]
    assert fetched and {s["source"] for s in fetched} == {a}
    assert all(s["start"] <= s["stop"] <= by_key[y.key]["startstops"][-1]["stop"]
               for s in fetched)
    assert sum(s["nbytes"] for s in fetched) > 0
    # the same records, asked for afterwards
    assert [r["key"] for r in c.get_task_stream(count=len(ts.data))] == \
        [r["key"] for r in ts.data]
    assert len(c.get_task_stream(count=3)) == 3
    later = time.time() + 3600
    assert c.get_task_stream(start=later) == ()
    assert len(c.get_task_stream(start="1 hour")) >= len(ts.data)


def test_a_performance_report_from_real_processes(c, tmp_path):
    a, b = workers_of(c)
    html, data_file = tmp_path / "report.html", tmp_path / "report.json"
    with dask_ipy.performance_report(str(html), client=c,
                                     data_filename=str(data_file)) as report:
        xs = c.map(slow_inc, range(8), delay=0.05, workers=[a])
        total = c.submit(sum, xs, workers=[b])
        assert total.result() == 36
    data = report.data
    assert json.loads(data_file.read_text()) == json.loads(json.dumps(data, default=str))
    assert data["summary"]["tasks"] == 9 and data["summary"]["errors"] == 0
    groups = {g["name"]: g for g in data["groups"]}
    assert groups["slow_inc"]["count"] == 8 and groups["slow_inc"]["compute"] >= 0.4
    assert groups["sum"]["transfer"] > 0
    assert [(t["source"], t["destination"]) for t in data["transfers"]] == [(a, b)]
    assert set(data["workers"]) == {a, b}
    assert all(data["workers"][w]["nthreads"] == 2 for w in (a, b))
    page = html.read_text()
    assert page.count('data-dask-ipy="task" ') >= 10      # 9 computes, 1 transfer
    assert 'data-dask-ipy="memory-chart"' in page


def test_a_performance_report_takes_dask_distributed_keywords(c, tmp_path):
    # storage_options: the file is opened by fsspec (here its memory file system)
    import fsspec

    with dask_ipy.performance_report("memory://compat/r.html", stacklevel=2,
                                     mode="inline", storage_options={}):
        assert c.submit(inc, 1).result() == 2
    with fsspec.open("memory://compat/r.html", "r") as f:
        assert "<html" in f.read().lower()


def test_a_report_of_many_tasks_stays_small(c, tmp_path):
    html = tmp_path / "big.html"
    with dask_ipy.performance_report(str(html), client=c) as report:
        assert sum(c.gather(c.map(inc, range(6000)))) == 6000 * 6001 // 2
    data = report.data
    assert data["summary"]["tasks"] == 6000 and data["stream"]["binned"]
    assert sum(g["count"] for g in data["groups"]) == 6000
    page = html.read_text()
    assert 'data-binned="true"' in page and 'data-dask-ipy="task-bin"' in page
    assert len(page) < 1_500_000


def test_worker_logs(c):
    a, b = workers_of(c)
    c.run(log_message, "dask_ipy.tests", "a warning", workers=[a])
    logs = c.get_worker_logs()
    assert set(logs) == {a, b}
    lines = [line for level, line in logs[a] if level == "WARNING"]
    assert any("a warning from a task" in line for line in lines)
    assert not any("a warning from a task" in line for _, line in logs[b])
    assert len(c.get_worker_logs(n=1, workers=[a])[a]) == 1


def test_asynchronous_blocks(pc, tmp_path):
    async def main():
        async with Client(pc.file, asynchronous=True) as ac:
            async with dask_ipy.get_task_stream(ac) as ts:
                assert await ac.submit(inc, 41) == 42
            async with dask_ipy.performance_report(str(tmp_path / "r.html"),
                                                   client=ac) as report:
                assert await ac.submit(add, 1, 2) == 3
            return ts.data, report.data
    data, report = asyncio.run(main())
    assert [r["status"] for r in data] == ["OK"]
    assert report["summary"]["tasks"] == 1


def test_a_block_has_the_records_of_results_that_came_straight(pc):
    """A small result comes straight from its worker, maybe ahead of its record's
    arrival at the scheduler; its Future dropped at once, nothing holds the block's
    question back: the block still has the record."""
    with pc.client() as c:
        for i in range(40):
            with dask_ipy.get_task_stream(c) as ts:
                assert c.submit(inc, i, pure=False).result(timeout=10) == i + 1
            assert len(ts.data) == 1, i


def test_the_scheduler_keeps_a_bounded_stream(tmp_path):
    with processes(tmp_path, scheduler_options={"task_stream_length": 10}) as (_, c):
        futures = c.map(inc, range(35))
        c.gather(futures)
        got = c.get_task_stream()
        assert len(got) == 10
        assert {r["key"] for r in got} <= {f.key for f in futures}


def test_recording_off():
    with local_cluster(worker_options={"task_stream": False}) as (s, _, c):
        with dask_ipy.get_task_stream(c) as ts:
            assert c.submit(inc, 1).result() == 2
        assert ts.data == [] and s.task_stream.total == 0


def test_pages_of_a_long_stream():
    """More records than one answer carries: the client asks again."""
    n = 250_001
    with local_cluster(scheduler_options={"task_stream_length": 2 * n}) as (s, _, c):
        record = ("k", 1.0, 2.0, 1, 0, 8, "int", 0.0, 0.0, None)

        def fill(dask_scheduler):
            address = next(iter(dask_scheduler.state.by_address))
            dask_scheduler.task_stream.add(address, [record] * n)
        c.run_on_scheduler(fill)
        with dask_ipy.get_task_stream(c) as ts:
            c.run_on_scheduler(fill)
        assert len(ts.data) == n
        assert len(c.get_task_stream()) == 2 * n


def story_steps(story, who, key):
    """[(start, finish)] of ``key`` in the lines of ``who`` ("scheduler" or a worker's
    address)."""
    return [(line[2], line[3]) for line in story if line[0] == who and line[1] == key]


def test_the_story_of_a_key_from_the_scheduler_and_the_workers(c):
    a, b = workers_of(c)
    began = time.time()
    x = c.submit(inc, 1, workers=[a], pure=False)     # keys with no past
    y = c.submit(inc, x, workers=[b], pure=False)
    assert y.result() == 3
    story = c.story(x)                          # a Future, or its key
    assert c.story(x.key) == story
    for line in story:
        if line[0] == "scheduler":              # key, start, finish, recs, stimulus, time
            assert len(line) == 7 and isinstance(line[4], dict)
        else:                                   # ... start, asked, reached, recs, ...
            assert line[0] in (a, b) and len(line) == 8 and line[3] == line[4]
        assert isinstance(line[-2], str) and began - 1 < line[-1] < time.time() + 1
    steps = story_steps(story, "scheduler", x.key)
    assert steps[0] == ("released", "waiting") and ("processing", "memory") in steps
    assert story_steps(story, a, x.key)[-2:] == [("ready", "executing"),
                                                 ("executing", "memory")]
    # b fetched it for y, and dropped its copy once y was done.
    assert story_steps(story, b, x.key) == [("released", "fetch"), ("fetch", "flight"),
                                            ("flight", "memory"), ("memory", "released"),
                                            ("released", "forgotten")]
    # x in memory: the task-finished message from a did it.
    [done] = [line for line in story if line[0] == "scheduler"
              and line[1] == x.key and line[3] == "memory"]
    assert done[5].startswith("task-finished-")
    # A stimulus id: what it caused (y placed, if y had come before x was done).
    caused = c.story(done[5])
    assert ("scheduler", *done[1:]) in caused
    assert done[4] in ({}, {y.key: "processing"})
    assert (done[4] != {}) == any(line[1] == y.key for line in caused)

    key = x.key
    del x, y
    wait_for(lambda: story_steps(c.story(key), "scheduler", key)[-1][1] == "forgotten",
             message="x forgotten")
    assert c.story("no-such-key") == [] == c.story("no-such-key", on_error="ignore")
    with pytest.raises(ValueError, match="on_error"):
        c.story(key, on_error="return")


def test_the_story_from_an_asynchronous_client(pc):
    async def main():
        async with Client(pc.file, asynchronous=True) as ac:
            x = ac.submit(inc, 10, pure=False)
            assert await x == 11
            return x.key, await ac.story(x)
    key, story = asyncio.run(main())
    assert ("processing", "memory") in story_steps(story, "scheduler", key)
    assert any(("executing", "memory") in story_steps(story, w, key)
               for w in {line[0] for line in story} - {"scheduler"})


def test_stories_kept_short_or_not_at_all(tmp_path):
    # In-process, the scheduler reads dask.config too.
    with dask.config.set({"dask-ipy.scheduler.transition-log-length": 0,
                          "dask-ipy.worker.transition-log-length": 3}):
        with local_cluster() as (s, workers, c):
            x = c.submit(inc, 1)
            assert x.result() == 2
            story = c.story(x)
            assert s.state.transition_log is None
            assert story and {line[0] for line in story} <= {w.address for w in workers}
            assert all(len(w.state.story_log) <= 3 for w in workers)
    with processes(tmp_path, scheduler_options={"transition_log_length": 2}) as (_, c):
        futures = c.map(inc, range(5))
        c.gather(futures)
        story = c.story(*futures)
        assert len([line for line in story if line[0] == "scheduler"]) == 2


def own_story(key):
    """The story of ``key`` (the running task's own) on its worker."""
    from dask_ipy import get_worker

    return get_worker().story(key)


def test_a_task_asks_its_worker_for_its_own_story():
    with local_cluster() as (_, workers, c):
        f = c.submit(own_story, "me", key="me")
        assert [line[1:3] for line in f.result()][-3:] == [
            ("released", "waiting"), ("waiting", "ready"), ("ready", "executing")]
