"""Code and set-up on the cluster, with real processes: scheduler plugins (they see
every transition of a graph, workers coming and going), worker plugins (set up now,
on workers that join later and again after a restart; torn down; told of
transitions; a long set-up holds up neither heartbeats nor data, only tasks), and
upload_file (.py, .zip, .egg; reloaded; reaching a late joiner)."""

import os
import threading
import time
import uuid
import zipfile

from unittest.mock import ANY

import dask
import pytest
from distributed.diagnostics.plugin import WorkerPlugin as DistributedWorkerPlugin

from helpers import (Boom, MarkingWorkerPlugin, RecordingSchedulerPlugin, dask_modules,
                     fail, inc, local_cluster, marks, module_value, payload,
                     plugin_events, plugin_graphs, processes, sleep, tree_reduction,
                     wait_for, wait_for_file, worker_transitions)
from dask_ipy import get_worker
from dask_ipy.errors import RemoteError
from dask_ipy.plugins import SchedulerPlugin, WorkerPlugin

pytestmark = pytest.mark.timeout(90)


def chains(events):
    """{key: [(start, finish)]} of the transitions among ``events``."""
    out = {}
    for e in events:
        if e[0] == "transition":
            out.setdefault(e[1], []).append((e[2], e[3]))
    return out


def test_a_scheduler_plugin_sees_every_transition_of_a_graph(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        assert c.register_plugin(RecordingSchedulerPlugin()) is None
        dsk, root, expected, _ = tree_reduction(16, prefix="seen")
        assert c.get(dsk, root) == expected
        wait_for(lambda: not c.who_has(), message="the graph to be forgotten")
        events = c.run_on_scheduler(plugin_events, "recorder")
        assert events[0] == ("start", c.address)
        # told of the graph before any of its tasks moved, with their priorities
        assert events.index(("update_graph", sorted(map(str, [root])))) < min(
            i for i, e in enumerate(events) if e[0] == "transition")
        ((annotations, priority),) = c.run_on_scheduler(plugin_graphs, "recorder")
        assert annotations == {} and set(priority) == set(map(str, dsk))
        assert all(isinstance(p, tuple) for p in priority.values())
        with dask.annotate(priority=13, retries=2):
            urgent = dask.delayed(inc)(1, dask_key_name="urgent")
        f = c.compute(urgent)
        assert f.result() == 2
        # Its value came straight from the worker: let go only once the scheduler
        # knows it is in memory, else it may see processing -> released.
        wait_for(lambda: c.who_has(f).get("urgent"), message="urgent in memory")
        annotations, priority = c.run_on_scheduler(plugin_graphs, "recorder")[1]
        assert annotations == {"priority": {"urgent": 13}, "retries": {"urgent": 2}}
        assert priority["urgent"][0] == -13         # higher runs first, as there
        del urgent, f
        wait_for(lambda: not c.who_has(), message="urgent to be forgotten")
        events = c.run_on_scheduler(plugin_events, "recorder")
        seen = chains(events)
        assert set(seen) == set(dsk) | {"urgent"}
        for key, steps in seen.items():
            assert steps[0][0] == "released", (key, steps)
            assert all(a[1] == b[0] for a, b in zip(steps, steps[1:])), (key, steps)
            # A result forgotten at once, or after its dependents (as "released").
            assert steps[-1] in {("released", "forgotten"), ("memory", "forgotten")}, \
                (key, steps)
            assert steps.count(("processing", "memory")) == 1, (key, steps)
        # where each ended, and what it made, as dask.distributed tells its plugins
        workers = set(c.scheduler_info()["workers"])
        ended = [e[4] for e in events if e[0] == "transition" and e[3] == "memory"]
        assert len(ended) == len(dsk) + 1
        assert all(e["worker"] in workers and e["nbytes"] > 0 and e["typename"] == "int"
                   for e in ended), ended
        for e in ended:         # when it computed, on the worker's clock
            (step,) = e["startstops"]
            assert step["action"] == "compute", e
            assert time.time() - 60 < step["start"] <= step["stop"] <= time.time(), e
        # workers joining and leaving are seen too
        new = pc.start_worker()
        pc.workers.append(new)
        wait_for(lambda: ("add_worker", new.first_line) in
                 c.run_on_scheduler(plugin_events, "recorder"), message="add_worker")
        new.kill()
        new.wait(10)
        wait_for(lambda: ("remove_worker", new.first_line) in
                 c.run_on_scheduler(plugin_events, "recorder"),
                 message="remove_worker")
        # user code ran in the scheduler; the scheduler still has no dask
        assert c.run_on_scheduler(dask_modules) == []
        c.unregister_scheduler_plugin("recorder")
        with pytest.raises(ValueError, match="Could not find plugin 'recorder' among "
                                             "the current scheduler plugins"):
            c.unregister_scheduler_plugin("recorder")


class EventRecorder(SchedulerPlugin):
    name = "event-recorder"

    def __init__(self):
        self.events = []

    def log_event(self, topic, msg):
        self.events.append((topic, msg))


def log_from_task(topic, msg):
    get_worker().log_event(topic, msg)


def test_a_scheduler_plugin_is_told_of_each_event_with_its_message_alone():
    with local_cluster() as (s, workers, c):
        c.register_plugin(EventRecorder())
        c.log_event("compat", {"n": 1})
        c.submit(log_from_task, "compat", {"n": 2}).result(timeout=10)
        c.log_event("compat", "three")
        expected = [("compat", {"n": 1}), ("compat", {"n": 2, "worker": ANY}),
                    ("compat", "three")]
        wait_for(lambda: c.run_on_scheduler(plugin_events, "event-recorder")
                 == expected, message="the events")


@pytest.fixture
def marks_dir(tmp_path):
    """Where MarkingWorkerPlugin leaves a file per setup and teardown."""
    (tmp_path / "marks").mkdir()
    return tmp_path / "marks"


def test_a_worker_plugin_is_set_up_told_of_transitions_and_torn_down(tmp_path,
                                                                      marks_dir):
    with processes(tmp_path, nworkers=2) as (pc, c):
        workers = sorted(c.scheduler_info()["workers"])
        result = c.register_plugin(MarkingWorkerPlugin(str(marks_dir)))
        assert result == {a: {"status": "OK"} for a in workers}
        assert marks(marks_dir, "setup") == 2
        dsk, root, expected, _ = tree_reduction(8, prefix="watched")
        assert c.get(dsk, root) == expected
        seen = c.run(worker_transitions, "marker")
        ran = [t[0] for log in seen.values() for t in log
               if t[1:] == ("executing", "memory")]
        assert sorted(map(str, ran)) == sorted(map(str, dsk))
        c.unregister_worker_plugin("marker")
        assert marks(marks_dir, "teardown") == 2
        with pytest.raises(ValueError, match="The worker plugin marker does not exist"):
            c.unregister_worker_plugin("marker")


def test_a_worker_plugin_sees_the_transitions_dask_distributed_shows(tmp_path,
                                                                     marks_dir):
    with processes(tmp_path, nworkers=1) as (pc, c):
        c.register_plugin(MarkingWorkerPlugin(str(marks_dir)))
        x = c.submit(inc, 1, key="x")
        y = c.submit(inc, x, key="y")
        bad = c.submit(fail, key="bad")
        assert y.result() == 3
        with pytest.raises(Boom):
            bad.result()
        del x, y, bad

        def steps():
            return chains(("transition", *t)
                          for log in c.run(worker_transitions, "marker").values()
                          for t in log)

        wait_for(lambda: all(chain[-1] == ("released", "forgotten")
                             for chain in steps().values()) and len(steps()) == 3,
                 message="every task forgotten")
        ran = [("released", "waiting"), ("waiting", "ready"), ("ready", "executing")]
        forgotten = [("memory", "released"), ("released", "forgotten")]
        assert steps() == {
            "x": ran + [("executing", "memory")] + forgotten,
            "y": ran + [("executing", "memory")] + forgotten,
            "bad": ran + [("executing", "error"), ("error", "released"),
                          ("released", "forgotten")]}


def test_worker_plugins_reach_late_joiners_and_outlive_restarts(tmp_path, marks_dir):
    with processes(tmp_path, nworkers=1) as (pc, c):
        c.register_plugin(MarkingWorkerPlugin(str(marks_dir)))
        late = pc.start_worker()
        pc.workers.append(late)
        wait_for(lambda: marks(marks_dir, "setup", late.pid) == 1,
                 message="the plugin set up on the late worker")
        (a,) = [w for w in c.scheduler_info()["workers"] if w != late.first_line]
        first = pc.workers[0].pid
        assert c.restart_workers([a]) == {a: "OK"}
        assert marks(marks_dir, "teardown", first) == 1
        # set up again as it registered (before any task, messages keep their order)
        wait_for(lambda: marks(marks_dir, "setup", first) == 2,
                 message="the plugin set up again")
        # and it still sees the tasks that run after the restart
        assert c.submit(inc, 1, workers=[a]).result() == 2
        assert any(t[1:] == ("executing", "memory")
                   for t in c.run(worker_transitions, "marker", workers=[a])[a])


class Failing(WorkerPlugin):
    def setup(self, worker):
        raise RuntimeError(f"cannot set up on {worker.address}")


class Counting(DistributedWorkerPlugin):
    """dask.distributed's own base class: user code moves over unchanged."""

    idempotent = True
    name = "counting"

    def setup(self, worker):
        worker.counted = getattr(worker, "counted", 0) + 1


def test_plugin_errors_and_distributed_plugins(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        with pytest.raises(RuntimeError, match="cannot set up on tcp://"):
            c.register_plugin(Failing())
        assert set(c.register_plugin(Counting())) == set(c.scheduler_info()["workers"])
        assert c.register_plugin(Counting()) == {}        # idempotent: not again
        assert set(c.run(lambda dask_worker: dask_worker.counted).values()) == {1}
        with pytest.raises(TypeError):
            c.register_plugin(object())


def write_module(path, value):
    path.write_text(f"VALUE = {value!r}\n")
    return str(path)


def test_upload_file_py_is_imported_reloaded_and_reaches_late_joiners(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with processes(tmp_path, nworkers=2) as (pc, c):
        path = write_module(src / "dask_ipy_uploaded.py", 1)
        result = c.upload_file(path)
        assert set(result) == set(c.scheduler_info()["workers"])
        assert set(c.run(module_value, "dask_ipy_uploaded").values()) == {1}
        assert c.submit(module_value, "dask_ipy_uploaded", pure=False).result() == 1
        # the same name again, new content: reloaded everywhere
        write_module(src / "dask_ipy_uploaded.py", 2)
        c.upload_file(path)
        assert set(c.run(module_value, "dask_ipy_uploaded").values()) == {2}
        late = pc.start_worker()
        pc.workers.append(late)
        c.wait_for_workers(3, timeout=30)
        assert c.run(module_value, "dask_ipy_uploaded", workers=[late.first_line]) == {
            late.first_line: 2}
        assert c.submit(module_value, "dask_ipy_uploaded", workers=[late.first_line],
                        pure=False).result() == 2


def test_upload_file_zip_and_egg(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        archive = tmp_path / "dask_ipy_zipped.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("dask_ipy_zipped/__init__.py", "from .inner import VALUE\n")
            z.writestr("dask_ipy_zipped/inner.py", "VALUE = 'zip'\n")
        c.upload_file(str(archive))
        assert set(c.run(module_value, "dask_ipy_zipped").values()) == {"zip"}
        egg = tmp_path / "dask_ipy_egged-1.0-py3.11.egg"
        with zipfile.ZipFile(egg, "w") as z:
            z.writestr("dask_ipy_egged.py", "VALUE = 'egg'\n")
            z.writestr("EGG-INFO/PKG-INFO", "Name: dask_ipy_egged\n")
        c.upload_file(str(egg))
        assert set(c.run(module_value, "dask_ipy_egged").values()) == {"egg"}
        # a new version of the archive: the package and its submodule reloaded
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("dask_ipy_zipped/__init__.py", "from .inner import VALUE\n")
            z.writestr("dask_ipy_zipped/inner.py", "VALUE = 'zip, again'\n")
        c.upload_file(str(archive))
        assert set(c.run(module_value, "dask_ipy_zipped").values()) == {"zip, again"}
        with pytest.raises(FileNotFoundError):           # no such file
            c.upload_file(str(tmp_path / "notes.txt"))
        assert os.path.exists(archive)


# ---------------------------------------------------------------- long set-ups

class Held(WorkerPlugin):
    """A set-up that marks its start in ``directory``, then holds until the file
    ``release`` appears (at most a minute; only on the workers ``where``, if given),
    then takes ``delay`` seconds more; the worker keeps the order in which its
    set-ups ended (``worker.set_up``).  Its teardown marks its end."""

    def __init__(self, directory, name, release=None, where=None, delay=0.0):
        self.directory = directory
        self.name = name
        self.release = release
        self.where = where
        self.delay = delay

    def _mark(self, what):
        path = os.path.join(self.directory,
                            f"{what}-{os.getpid()}-{self.name}-{uuid.uuid4().hex}")
        with open(path, "w"):
            pass

    def setup(self, worker):
        self._mark("began")
        if self.release is not None and self.where in (None, worker.address):
            wait_for_file(self.release, timeout=60)
        time.sleep(self.delay)
        worker.set_up = getattr(worker, "set_up", []) + [self.name]

    def teardown(self, worker):
        self._mark("teardown")


class HeldWatching(Held):
    """A `Held` that keeps the transitions it is told of."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def transition(self, key, start, finish, **kwargs):
        self.seen.append((key, start, finish))


def seen_by(name, dask_worker):
    return list(dask_worker.plugins[name].seen)


def set_up_so_far(dask_worker):
    return getattr(dask_worker, "set_up", [])


def set_up_here(_=None):
    """In a task: the plugins whose set-up had ended on its worker."""
    from dask_ipy import get_worker

    return list(getattr(get_worker(), "set_up", []))


def in_background(fn, *args):
    """Run ``fn(*args)`` on a thread; a function giving its result (or raising)."""
    out = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout=60):
        t.join(timeout)
        assert not t.is_alive(), f"{fn} did not return in {timeout} s"
        if "error" in out:
            raise out["error"]
        return out["result"]
    result.done = lambda: not t.is_alive()
    return result


def test_a_long_set_up_holds_up_neither_heartbeats_nor_data(tmp_path, marks_dir):
    """A worker setting a plugin up for longer than the scheduler's heartbeat
    timeout stays in the cluster: it serves its data to a peer and to the client,
    and the results of its running task arrive.  (Its set-up used to hold its I/O
    thread: no heartbeat, and the scheduler dropped it as dead.)"""
    release = str(tmp_path / "release")
    with processes(tmp_path, nworkers=2, heartbeat_timeout=2.0) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        ids = {w: info["id"] for w, info in c.scheduler_info()["workers"].items()}
        data = c.submit(payload, 1_000_000, workers=[a], pure=False)
        data.result()
        running = c.submit(sleep, 1.0, "ran", workers=[a], pure=False)
        wait_for(lambda: c.processing()[a], message="the task to start")
        registered = in_background(c.register_plugin,
                                   Held(str(marks_dir), "held", release, where=a))
        wait_for(lambda: marks(marks_dir, "began") == 2, message="the set-ups to begin")
        assert running.result(timeout=10) == "ran"
        # A peer fetches from it, the client gathers from it.
        assert c.submit(len, data, workers=[b]).result(timeout=10) == 1_000_000
        assert len(c.gather(data)) == 1_000_000
        time.sleep(3.0)                       # past the heartbeat timeout
        assert not registered.done()
        workers = c.scheduler_info()["workers"]
        assert {w: info["id"] for w, info in workers.items()} == ids
        open(release, "w").close()
        assert registered() == {a: {"status": "OK"}, b: {"status": "OK"}}
        assert c.run(lambda dask_worker: dask_worker.set_up) == {a: ["held"],
                                                                  b: ["held"]}


def test_tasks_wait_for_the_set_ups_sent_before_them_in_order(tmp_path, marks_dir):
    """Tasks submitted while plugins are being set up run once those set-ups have
    ended, and two plugins registered one after the other are set up in that order;
    a worker that joins later sets them up before its first task.  A plugin is told,
    in order, of the transitions during its set-up, once it has ended."""
    release = str(tmp_path / "release")
    with processes(tmp_path, nworkers=2) as (pc, c):
        workers = sorted(c.scheduler_info()["workers"])
        first = in_background(c.register_plugin,
                              HeldWatching(str(marks_dir), "first", release, delay=0.5))
        wait_for(lambda: marks(marks_dir, "began") == 2, message="the set-ups to begin")
        second = in_background(c.register_plugin, Held(str(marks_dir), "second"))
        placed = [(c.submit(set_up_here, i, workers=[w], pure=False), w)
                  for i in range(2) for w in workers]
        tasks = [t for t, _ in placed]
        ran = in_background(c.run, set_up_so_far)   # functions wait as tasks do
        time.sleep(0.5)
        assert not any(t.done() for t in tasks) and not second.done()
        assert not ran.done()
        open(release, "w").close()
        assert first() == second() == {w: {"status": "OK"} for w in workers}
        assert c.gather(tasks) == [["first", "second"]] * 4
        assert ran() == {w: ["first", "second"] for w in workers}
        for w, seen in c.run(seen_by, "first").items():
            steps = chains(("transition", *t) for t in seen)
            assert sorted(steps) == sorted(t.key for t, at in placed if at == w)
            for key, chain in steps.items():     # arrived during the set-up
                assert chain[:4] == [("released", "waiting"), ("waiting", "ready"),
                                     ("ready", "executing"), ("executing", "memory")]
        late = pc.start_worker()
        pc.workers.append(late)
        c.wait_for_workers(3, timeout=30)
        assert c.submit(set_up_here, workers=[late.first_line],
                        pure=False).result(timeout=30) == ["first", "second"]


def test_a_worker_closing_during_a_set_up_tears_its_plugins_down_after_it(tmp_path,
                                                                        marks_dir):
    """A worker told to close while a set-up runs lets it end, then tears every
    plugin down before it leaves."""
    release = str(tmp_path / "release")
    with processes(tmp_path, nworkers=2) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        (proc_a,) = [p for p in pc.workers if p.first_line == a]
        c.register_plugin(Held(str(marks_dir), "quick"))
        held = in_background(c.register_plugin,
                             Held(str(marks_dir), "held", release, where=a))
        wait_for(lambda: marks(marks_dir, "began") == 4, message="the set-ups to begin")
        assert list(c.retire_workers([a])) == [a]
        time.sleep(0.3)
        assert proc_a.poll() is None and marks(marks_dir, "teardown", proc_a.pid) == 0
        open(release, "w").close()
        assert proc_a.wait(10) == 0
        assert marks(marks_dir, "teardown", proc_a.pid) == 2
        with pytest.raises(RemoteError, match="worker died: retired"):
            held()                 # the worker left before it answered
