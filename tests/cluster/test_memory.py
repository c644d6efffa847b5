"""Memory limits with real processes: workers holding more than their limit, disk
writes that do not stall a worker, a paused worker that resumes, runaway tasks
(interrupted in-process, restarted under `dask-ipy worker`'s supervisor), spill file
modes, and BLAS thread limits in tasks.  Inside ipyparallel engines:
tests/notebook/test_memory_engines.py."""

import contextlib
import os
import stat
import subprocess
import sys
import threading
import warnings

import dask
import numpy as np
import psutil
import pytest

from benchmarks.procs import peak_rss
from helpers import (MarkingWorkerPlugin, MiB, allocate, array_sum, blas_threads,
                     collected, drop_in_a_cycle, filled_mib, grow, hold_memory,
                     hold_to_pause, inc, kill_tree, local_cluster, marks, processes,
                     read_info, release_memory, slow_inc, wait_for)
from dask_ipy import (Client, KilledWorker, MemoryLimitExceeded, PausedWorkerWarning,
                      Worker, wait)
from dask_ipy.worker.monitor import TaskThreadLimits
from dask_ipy.worker.store import SpillFiles, SpillStore

# Memory limits measured in the workers: run without coverage (see pyproject.toml).
pytestmark = [pytest.mark.timeout(180), pytest.mark.uncovered]


@contextlib.contextmanager
def limited_cluster(tmp_path, nworkers=2, **worker_options):
    """(ProcessCluster, Client, {address: pid}) with workers started with
    ``worker_options`` (a memory limit)."""
    worker_options.setdefault("local_directory", str(tmp_path / "spill"))
    with processes(tmp_path, nworkers=nworkers, worker_options=worker_options) as (pc, c):
        yield pc, c, {a: w["pid"] for a, w in c.scheduler_info()["workers"].items()}


# ---------------------------------------------------------------- spill files

def test_spill_files_are_private_and_removed_on_close(tmp_path):
    parent = tmp_path / "not" / "there"
    store = SpillStore(memory_limit=1, directory=str(parent))
    for i in range(3):
        store[i] = np.full(1000, i)
    assert len(store.slow) == 3
    for path in (tmp_path / "not", parent, store.directory):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    files = os.listdir(store.directory)
    assert len(files) == 3
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(store.directory, name)).st_mode) == 0o600
    assert (store[1] == 1).all()
    store.close()
    assert not (tmp_path / "not").exists()          # everything it made is gone


def test_spill_files_under_an_existing_directory_leave_it(tmp_path):
    os.chmod(tmp_path, 0o755)
    old = os.umask(0)                                 # the modes do not depend on it
    try:
        store = SpillStore(memory_limit=1, directory=str(tmp_path))
        store["x"] = b"x" * 100_000
    finally:
        os.umask(old)
    assert os.path.dirname(store.directory) == str(tmp_path)
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    [name] = os.listdir(store.directory)
    assert stat.S_IMODE(os.stat(os.path.join(store.directory, name)).st_mode) == 0o600
    store.close()
    assert os.listdir(tmp_path) == []
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_a_worker_removes_its_spill_directory(tmp_path):
    options = {"memory_limit": "1GiB", "memory_target_fraction": 0.005,
               "local_directory": str(tmp_path)}
    with local_cluster(worker_options=options) as (s, ws, c):
        assert os.listdir(tmp_path) == []               # made on the first spill
        fs = c.map(filled_mib, range(8), pure=False)
        assert c.gather(c.map(array_sum, fs)) == [i * 10 * MiB / 8 for i in range(8)]
        assert all(isinstance(w.data, SpillStore) for w in ws)
        wait_for(lambda: len(os.listdir(tmp_path)) == 2, message="spill directories")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- no stall

class BlockedFiles(SpillFiles):
    """Spill files whose writes wait for `gate`."""

    def __init__(self, directory):
        super().__init__(directory)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def __setitem__(self, key, frames):
        self.writing.set()
        assert self.gate.wait(60)
        super().__setitem__(key, frames)


def test_a_worker_writing_to_disk_keeps_computing_and_serving(tmp_path):
    store = SpillStore(memory_limit=MiB, directory=str(tmp_path))
    store.files = store.buffer.slow.d = BlockedFiles(store.directory)
    with local_cluster() as (s, (other, _), c):
        w = Worker(scheduler=s.address_to_workers, data=store, validate=True)
        try:
            wait_for(lambda: len(s.state.workers) == 3, message="the third worker")
            big = c.submit(filled_mib, 7, 4, workers=[w.address], pure=False)
            big.result()
            wait_for(store.files.writing.is_set, message="a spill to start")
            # The write hangs; the worker runs tasks, answers the client and peers.
            assert c.submit(inc, 1, workers=[w.address]).result(timeout=30) == 2
            assert (c.gather(big, ) == 7).all()
            assert c.submit(array_sum, big, workers=[other.address]).result(
                timeout=30) == 7 * 4 * MiB / 8
            assert not store.files.gate.is_set() and len(store.slow) == 0
            store.files.gate.set()
            wait_for(lambda: len(store.slow) == 1, message="the spill to end")
            # From disk: to the client and to a peer, as written.
            assert (c.gather(big) == 7).all()
            assert c.submit(array_sum, big, workers=[other.address], pure=False).result(
                timeout=30) == 7 * 4 * MiB / 8
        finally:
            store.files.gate.set()
            w.close()
            store.close()


# ---------------------------------------------------------------- more than the limit

def test_workers_hold_more_than_their_limit(tmp_path):
    limit = 400 * MiB
    with limited_cluster(tmp_path, memory_limit=limit) as (pc, c, pids):
        fs = c.map(filled_mib, range(120), pure=False)          # 1.2 GB: 600 MB each
        sums = c.gather(c.map(array_sum, fs))
        assert sums == [i * 10 * MiB / 8 for i in range(120)]
        def settled():           # as the latest heartbeats say, once spills end
            info = c.scheduler_info()["workers"]
            return (sum(w["spilled"] for w in info.values()) >= 600 * MiB
                    and all(w["managed"] <= 0.6 * limit for w in info.values()))
        wait_for(settled, timeout=30, message=lambda: c.scheduler_info()["workers"])
        info = c.scheduler_info()["workers"]
        assert all(w["memory_limit"] == limit for w in info.values())
        # Spilled arrays go to the client and to the other worker from disk.
        a, b = sorted(info)
        held = c.who_has(fs)
        on_a = [f for f in fs if held[f.key] == [a]][:5]
        assert [float(x[0]) for x in c.gather(on_a)] == [float(f.result()[0])
                                                          for f in on_a]
        moved = c.submit(sum, [c.submit(array_sum, f, workers=[b]) for f in on_a])
        assert moved.result() == sum(array_sum(f.result()) for f in on_a)
        for address, pid in pids.items():
            assert peak_rss(pid) <= 1.3 * limit, (address, peak_rss(pid))


def test_moving_spilled_chunks_between_workers_keeps_both_alive(tmp_path):
    """1.15 GB persisted on two workers of 500 MB (`dask-ipy worker`s, which exit
    past 95% for their supervisor to restart them), then summed: idle threads take
    sums of chunks held (and spilled) by the other worker, whose chunks move from
    its disk.  What is asked of a peer at once stays under a tenth of the memory
    limit: asked for all at once, a worker paused at 80% read enough from its disk
    to pass 95%, and was restarted, its data lost (in every run)."""
    import dask.array as da

    from dask_ipy import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=500 * MiB,
                      local_directory=str(tmp_path), dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as c:
        pids = {w.address: w.pid for w in cluster.workers.values()}
        x = da.random.RandomState(1).random_sample((12_000, 12_000),
                                                     chunks=(1_000, 1_000))
        y = c.persist(x)
        wait(y)
        assert np.isclose(c.compute(y.sum()).result(),
                          x.sum().compute(scheduler="sync"))
        info = c.scheduler_info()["workers"]
        assert {a: w["pid"] for a, w in info.items()} == pids    # none restarted
        assert sum(w["spilled"] for w in info.values()) > 0


# ---------------------------------------------------------------- runaway tasks

def test_a_runaway_task_errs_naming_memory_and_the_cluster_computes_on(tmp_path):
    limit = 400 * MiB
    with limited_cluster(tmp_path, memory_limit=limit) as (pc, c, pids):
        big = c.submit(grow, pure=False)
        small = c.map(slow_inc, range(40), delay=0.05, pure=False)
        with pytest.raises(MemoryLimitExceeded) as e:
            big.result(timeout=120)
        assert isinstance(e.value, KilledWorker) and isinstance(e.value, MemoryError)
        text = str(e.value)
        assert big.key in text and "400.00 MiB memory limit" in text
        assert "4 times" in text and "interrupted" in text
        assert any(address in text for address in pids)
        assert c.gather(small) == list(range(1, 41))
        # The processes lived on.
        assert {a: w["pid"] for a, w in c.scheduler_info()["workers"].items()} == pids
        assert c.submit(array_sum, c.submit(filled_mib, 3, pure=False)).result() == \
            3 * 10 * MiB / 8


def start(args, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dask_ipy", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    proc.log = log
    return proc


def stop(proc):
    kill_tree(proc.pid)
    proc.wait(10)
    proc.stdout.close()
    proc.log.close()


def test_a_runaway_task_restarts_a_dask_ipy_worker(tmp_path):
    path = str(tmp_path / "scheduler.json")
    procs = [start(["scheduler", "--connection-file", path, "--idle-timeout", "60"],
                   tmp_path, "scheduler")]
    try:
        read_info(procs[0], "address_to_clients")
        for i in range(2):
            procs.append(start(["worker", path, "--memory-limit", "400MiB"], tmp_path,
                               f"worker{i}"))
        children = [read_info(p, "scheduler") for p in procs[1:]]
        assert all(int(info["memory_limit"]) == 400 * MiB for info in children)
        with Client(path, set_as_default=False) as c:
            wait_for(lambda: len(c.nthreads()) == 2, message="two workers")
            before = {w["pid"] for w in c.scheduler_info()["workers"].values()}
            assert before == {int(info["pid"]) for info in children}
            marks_dir = tmp_path / "marks"
            marks_dir.mkdir()
            c.register_plugin(MarkingWorkerPlugin(str(marks_dir)))
            big = c.submit(allocate, 2048, pure=False)       # one 2 GiB call
            with pytest.raises(MemoryLimitExceeded) as e:
                big.result(timeout=120)
            assert "restarted" in str(e.value) and "400.00 MiB" in str(e.value)
            # Each death was a restart: the supervisors are there, with new workers.
            wait_for(lambda: len(c.nthreads()) == 2, timeout=30, message="restarts")
            after = {w["pid"] for w in c.scheduler_info()["workers"].values()}
            assert not after & before
            # The new processes got the worker plugin as they registered.
            wait_for(lambda: all(marks(marks_dir, "setup", pid) == 1 for pid in after),
                     message="the plugin set up on the restarted workers")
            assert all(p.poll() is None for p in procs[1:])
            assert c.gather(c.map(inc, range(20), pure=False)) == list(range(1, 21))
            c.shutdown()
        for p in procs[1:]:
            assert p.wait(20) == 0                    # a clean close ends the supervisor
    finally:
        for p in procs:
            stop(p)
    # No spill directory is left behind.
    assert not [n for n in os.listdir(tmp_path) if n.startswith("dask-ipy")]


# ---------------------------------------------------------------- pausing

def test_a_paused_worker_serves_data_warns_and_resumes(tmp_path):
    limit = 600 * MiB
    with dask.config.set({"dask-ipy.client.paused-warning": 0.5}), \
            limited_cluster(tmp_path, memory_limit=limit) as (pc, c, pids):
        a, b = sorted(pids)
        kept = c.submit(filled_mib, 5, 1, workers=[a], pure=False)
        kept.result()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c.submit(hold_memory, hold_to_pause(pids[a], limit), workers=[a]).result()
            wait_for(lambda: c.scheduler_info()["workers"][a]["paused"], timeout=30,
                     message="the worker to pause")
            waiting = c.submit(inc, 10, workers=[a])
            # Paused: its data still goes to a peer, other work goes elsewhere.
            assert c.submit(array_sum, kept, workers=[b]).result(timeout=30) == \
                5 * MiB / 8
            assert c.gather(c.map(inc, range(10), pure=False)) == list(range(1, 11))
            wait_for(lambda: any(issubclass(w.category, PausedWorkerWarning)
                                 for w in caught), timeout=30, message="a warning")
            assert not waiting.done()
        [warning] = [w for w in caught if issubclass(w.category, PausedWorkerWarning)]
        assert a in str(warning.message) and "paused" in str(warning.message)
        c.run(release_memory, workers=[a])
        assert waiting.result(timeout=30) == 11
        info = c.scheduler_info()["workers"][a]
        assert not info["paused"] and info["time_paused"] > 0.5


def test_a_worker_over_its_pause_fraction_with_garbage_in_cycles_collects_it(tmp_path):
    limit = 600 * MiB
    with limited_cluster(tmp_path, nworkers=1, memory_limit=limit) as (pc, c, pids):
        [(a, pid)] = pids.items()
        c.submit(drop_in_a_cycle, hold_to_pause(pid, limit)).result()
        # Nothing refers to the garbage, but it counts until a full collection.  The
        # memory watch collects before it pauses for it (or, within a second of its
        # last collection, pauses, collects and resumes), and the worker runs on.
        proc = psutil.Process(pid)
        wait_for(lambda: proc.memory_info().rss < 0.7 * limit, timeout=30,
                 message=lambda: f"the garbage to go: RSS {proc.memory_info().rss / MiB:.0f} MiB")
        assert c.run(collected) == {a: True}
        wait_for(lambda: not c.scheduler_info()["workers"][a]["paused"], timeout=30,
                 message="the worker to run")
        assert c.submit(inc, 1).result(timeout=30) == 2
        said = [line for _, line in c.get_worker_logs()[a]       # newest first
                if "paused" in line or "running again" in line]
        assert not said or "running again" in said[0], said


# ---------------------------------------------------------------- BLAS threads

def test_tasks_get_capped_blas_pools_and_other_code_does_not(tmp_path):
    with limited_cluster(tmp_path, memory_limit=None) as (pc, c, pids):
        outside = c.run(blas_threads)
        inside = c.gather(c.map(blas_threads, range(4), pure=False))
        # Two one-thread workers on this host share its cores.
        expected = max(psutil.cpu_count() // 2, 1)
        assert inside == [[expected]] * 4
        assert c.run(blas_threads) == outside


def test_blas_threads_can_be_left_alone(tmp_path):
    with limited_cluster(tmp_path, memory_limit=None, blas_threads=False) as (pc, c, _):
        outside = list(c.run(blas_threads).values())[0]
        assert c.submit(blas_threads, pure=False).result() == outside


def test_a_stretch_of_tasks_caps_nothing_while_no_pool_is_loaded(monkeypatch):
    import threadpoolctl

    capped = []

    class NoPools:
        def __len__(self):
            return 0

        def limit(self, limits):
            capped.append(limits)

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", NoPools)
    limits = TaskThreadLimits(1)
    limits.enter()
    limits.leave()
    assert capped == [] and limits.busy == 0


# ---------------------------------------------------------------- options

def test_fractions_come_from_dask_config(tmp_path):
    with dask.config.set({"dask-ipy.worker.memory.pause": 0.5,
                          "dask-ipy.worker.memory.spill": False}):
        with local_cluster(worker_options={"memory_limit": "1GiB"}) as (s, ws, c):
            assert ws[0].memory_fractions == {"target": 0.6, "spill": False,
                                              "pause": 0.5, "terminate": 0.95}
            info = c.scheduler_info()["workers"][ws[0].address]
            assert info["memory_fractions"]["pause"] == 0.5
            assert info["memory_limit"] == 2**30
            # dask.distributed's names for the same settings
            mm = ws[0].memory_manager
            assert (mm.memory_limit, mm.memory_target_fraction,
                    mm.memory_spill_fraction, mm.memory_pause_fraction) == \
                (2**30, 0.6, False, 0.5)
            assert mm.data is ws[0].data and mm.memory_monitor_interval > 0
            assert ws[0].state.transfer_limit == int(0.1 * 2**30)
    with dask.config.set({"distributed.worker.memory.transfer": 0.25}):
        with local_cluster(worker_options={"memory_limit": "1GiB"}) as (s, ws, c):
            assert ws[0].state.transfer_limit == int(0.25 * 2**30)
    assert dask.config.get("dask-ipy.worker.memory.target") == 0.6
    w = {"memory_target_fraction": 0.3}
    with local_cluster(worker_options={"memory_limit": "1GiB", **w}) as (s, ws, c):
        assert ws[0].memory_fractions["target"] == 0.3
        assert ws[0].data.memory_limit == 0.3 * 2**30


def test_spill_directories_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"dask-ipy-spill-{dead}-abc"
    stale.mkdir()
    (stale / "00000001").write_bytes(b"x" * 10)
    mine = tmp_path / f"dask-ipy-spill-{os.getpid()}-abc"
    mine.mkdir()
    other = tmp_path / "dask-ipy-spill-notapid"
    other.mkdir()
    store = SpillStore(memory_limit=1, directory=str(tmp_path))
    store["x"] = b"x" * 1000                        # the first spill makes its directory
    assert not stale.exists() and mine.exists() and other.exists()
    assert os.path.basename(store.directory).startswith(f"dask-ipy-spill-{os.getpid()}-")
    store.close()
