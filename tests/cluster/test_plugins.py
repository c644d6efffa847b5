"""Code and set-up on the cluster, with real processes: scheduler plugins (they see
every transition of a graph, workers coming and going), worker plugins (set up now,
on workers that join later and again after a restart; torn down; told of
transitions), and upload_file (.py, .zip, .egg; reloaded; reaching a late joiner)."""

import os
import zipfile

import pytest
from distributed.diagnostics.plugin import WorkerPlugin as DistributedWorkerPlugin

from helpers import (MarkingWorkerPlugin, RecordingSchedulerPlugin, dask_modules, inc,
                     marks, module_value, plugin_events, processes, tree_reduction,
                     wait_for, worker_transitions)
from dask_ipy.plugins import WorkerPlugin

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
        assert ("update_graph", sorted(map(str, [root]))) in events
        seen = chains(events)
        assert set(seen) == set(dsk)
        for key, steps in seen.items():
            assert steps[0][0] == "released", (key, steps)
            assert all(a[1] == b[0] for a, b in zip(steps, steps[1:])), (key, steps)
            assert steps[-1] == ("released", "forgotten"), (key, steps)
            assert steps.count(("processing", "memory")) == 1, (key, steps)
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
        with pytest.raises(ValueError, match="does not exist"):
            c.unregister_scheduler_plugin("recorder")


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
        with pytest.raises(ValueError, match="does not exist"):
            c.unregister_worker_plugin("marker")


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
        with pytest.raises(ValueError):
            c.upload_file(str(tmp_path / "notes.txt"))
        assert os.path.exists(archive)
