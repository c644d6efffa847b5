"""Managing the cluster from a client, with real worker processes: wait_for_workers,
retire_workers (no data lost, nothing recomputed), replicate, rebalance,
restart_workers, processing, run with ``dask_worker``, run_on_scheduler with
``dask_scheduler``, forward_logging."""

import concurrent.futures as cf
import logging
import os

import pytest

from helpers import (MiB, array_sum, block_until_file, dask_modules, hold_memory,
                     hold_to_pause, inc, leaf, log_message, logged_mib, processes, runs,
                     wait_for)
from dask_ipy.errors import WorkerStartTimeoutError

pytestmark = pytest.mark.timeout(90)


def test_wait_for_workers_returns_when_they_come_or_raises(tmp_path):
    with processes(tmp_path, nworkers=1) as (pc, c):
        assert c.wait_for_workers(1, timeout=5) is None
        with pytest.raises(WorkerStartTimeoutError, match="Only 1/2 workers arrived "
                                                          "after 0.3") as e:
            c.wait_for_workers(2, timeout=0.3)
        assert isinstance(e.value, TimeoutError) and e.value.available_workers == 1
        with pytest.raises(TimeoutError, match="after 1 ms"):      # a duration string
            c.wait_for_workers(n_workers=2, timeout="1 ms")
        with cf.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.wait_for_workers, 2, 30)
            pc.workers.append(pc.start_worker())
            assert waiting.result(30) is None
        assert len(c.scheduler_info()["workers"]) == 2
        with pytest.raises(ValueError):
            c.wait_for_workers(0)


def test_retire_moves_data_off_without_recomputing_it(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    with processes(tmp_path, nworkers=3) as (pc, c):
        fs = c.map(leaf, [str(log)] * 30, range(30))
        assert c.gather(fs) == list(range(30))
        assert runs(log, "leaf") == 30
        has = c.has_what()
        target = max(has, key=lambda a: len(has[a]))
        mine = set(has[target])
        assert mine
        proc = next(p for p in pc.workers if p.first_line == target)

        retired = c.retire_workers([target])
        assert list(retired) == [target]
        assert retired[target]["pid"] == proc.pid
        assert proc.wait(20) == 0                       # closed, as asked
        # Every key lives on, elsewhere; nothing ran again.
        who = c.who_has(fs)
        assert all(who[f.key] and target not in who[f.key] for f in fs)
        assert c.gather(fs) == list(range(30))
        assert c.submit(sum, fs).result() == sum(range(30))
        assert runs(log, "leaf") == 30
        assert target not in c.scheduler_info()["workers"]


def test_retire_finishes_running_tasks_there_and_gives_the_others_away(tmp_path):
    gate = tmp_path / "gate"
    log = tmp_path / "log"
    log.mkdir()
    with processes(tmp_path, nworkers=2) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        running = c.submit(block_until_file, str(gate), 42, workers=[a])
        wait_for(lambda: c.processing()[a], message="a task running on a")
        more = c.map(leaf, [str(log)] * 6, range(100, 106), pure=False)
        with cf.ThreadPoolExecutor(1) as pool:
            retiring = pool.submit(c.retire_workers, [a], close_workers=False)
            wait_for(lambda: c.scheduler_info()["workers"][a]["status"]
                     == "closing_gracefully", message="a to retire")
            assert not retiring.done()                # its task still runs there
            assert c.gather(more) == list(range(100, 106))
            gate.touch()
            assert list(retiring.result(30)) == [a]
        assert running.result(10) == 42
        assert c.who_has([running])[running.key] == (b,)
        assert runs(log, "leaf") == 6


def test_retire_with_nowhere_to_go_keeps_the_worker(tmp_path):
    with processes(tmp_path, nworkers=1) as (pc, c):
        f = c.submit(inc, 1)
        assert f.result() == 2
        (a,) = c.scheduler_info()["workers"]
        assert c.retire_workers([a]) == {}
        assert c.scheduler_info()["workers"][a]["status"] == "running"
        assert c.submit(inc, 2).result() == 3


@pytest.mark.timeout(180)
def test_a_paused_worker_is_retired_its_spilled_data_moving_off(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    limit = 600 * MiB
    options = {"memory_limit": limit, "local_directory": str(tmp_path / "spill")}
    with processes(tmp_path, nworkers=2, worker_options=options) as (pc, c):
        workers = c.scheduler_info()["workers"]
        a, b = sorted(workers)
        fs = [c.submit(logged_mib, str(log), i, 5, workers=[a], pure=False)
              for i in range(6)]
        c.gather(fs)
        # Memory held outside any result pauses a, which spills its results (small
        # beside it: what spilling frees leaves a paused).
        c.submit(hold_memory, hold_to_pause(workers[a]["pid"], limit),
                 workers=[a]).result()
        wait_for(lambda: (lambda w: w["paused"] and w["spilled"] > 0)(
            c.scheduler_info()["workers"][a]), timeout=60,
            message="a to pause and spill")
        assert list(c.retire_workers([a])) == [a]
        assert a not in c.scheduler_info()["workers"]
        # Every value went to b (read back from a's disk): nothing ran again.
        assert all(v == (b,) for v in c.who_has(fs).values())
        sums = c.gather([c.submit(array_sum, f, workers=[b]) for f in fs])
        assert sums == [i * 5 * MiB / 8 for i in range(6)]
        assert runs(log, "filled") == 6


def test_replicate_then_fewer_copies(tmp_path):
    with processes(tmp_path, nworkers=3) as (pc, c):
        fs = c.map(inc, range(6))
        c.gather(fs)
        assert c.replicate(fs) is None
        assert all(len(v) == 3 for v in c.who_has(fs).values())
        c.replicate(fs, n=2)
        assert all(len(v) == 2 for v in c.who_has(fs).values())
        some = sorted(c.scheduler_info()["workers"])[:2]
        c.replicate(fs, n=1, workers=some)
        # one copy among those two; a copy elsewhere is left alone
        assert all(len(set(v) & set(some)) == 1 for v in c.who_has(fs).values())
        assert c.gather(fs) == list(range(1, 7))


def test_rebalance_evens_out_the_data(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    with processes(tmp_path, nworkers=2) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        fs = c.map(leaf, [str(log)] * 8, range(8), workers=[a])
        c.gather(fs)
        assert {k: len(v) for k, v in c.has_what().items()} == {a: 8, b: 0}
        assert c.rebalance(fs) is None
        counts = {k: len(v) for k, v in c.has_what().items()}
        assert counts[a] > 0 and counts[b] > 0 and counts[a] + counts[b] == 8
        assert c.gather(fs) == list(range(8))
        assert runs(log, "leaf") == 8
        c.rebalance()                                    # everything: still fine
        assert c.gather(fs) == list(range(8))
        f = c.submit(inc, 1)
        c.cancel([f])
        wait_for(lambda: f.key not in c.who_has(), message="f forgotten")
        with pytest.raises(cf.CancelledError):          # as `futures_of(client=)`
            c.rebalance([f])


def test_restart_workers_in_place(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        pid = c.scheduler_info()["workers"][a]["pid"]
        f = c.submit(inc, 10, workers=[a])
        assert f.result() == 11
        assert c.restart_workers([a]) == {a: "OK"}
        info = c.scheduler_info()["workers"]
        assert info[a]["pid"] == pid                     # the same process
        assert f.result() == 11                          # its data recomputed
        for raise_for_error in (True, False):        # as dask.distributed
            with pytest.raises(KeyError, match="nobody"):
                c.restart_workers([a, "nobody"], raise_for_error=raise_for_error)


def test_processing_names_the_tasks_given_to_each_worker(tmp_path):
    gate = tmp_path / "gate"
    with processes(tmp_path, nworkers=2) as (pc, c):
        a, b = sorted(c.scheduler_info()["workers"])
        f = c.submit(block_until_file, str(gate), 1, workers=[a])
        wait_for(lambda: c.processing()[a] == (f.key,), message="f processing on a")
        assert c.processing(workers=[b]) == {b: ()}
        gate.touch()
        assert f.result() == 1
        assert c.processing() == {a: (), b: ()}


def test_run_passes_the_worker_to_functions_that_ask(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        addresses = c.run(lambda dask_worker: dask_worker.address)
        assert addresses == {a: a for a in c.scheduler_info()["workers"]}
        assert set(c.run(os.getpid).values()) == {p.pid for p in pc.workers}
        assert c.run(os.getpid, wait=False) is None

        def fails(dask_worker=None):
            raise ValueError(dask_worker.address)
        with pytest.raises(ValueError):
            c.run(fails)
        errors = c.run(fails, on_error="return")
        assert all(isinstance(e, ValueError) and str(e) == a for a, e in errors.items())
        assert c.run(fails, on_error="ignore") == {}


def test_run_on_scheduler_runs_in_the_scheduler_which_stays_free_of_dask(tmp_path):
    with processes(tmp_path, nworkers=2) as (pc, c):
        f = c.submit(inc, 1)
        f.result()
        assert c.run_on_scheduler(os.getpid) == pc.scheduler.pid
        keys = c.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.tasks))
        assert keys == [f.key]
        workers = c.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.workers))
        assert workers == sorted(c.scheduler_info()["workers"])

        def boom(dask_scheduler):
            raise KeyError("nothing here")
        with pytest.raises(KeyError, match="nothing here"):
            c.run_on_scheduler(boom)
        assert c.run_on_scheduler(dask_modules) == []


def test_forward_logging_brings_worker_records_here(tmp_path):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("dask_ipy_tests.forwarded")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with processes(tmp_path, nworkers=2) as (pc, c):
            c.forward_logging("dask_ipy_tests.forwarded", level=logging.INFO)
            assert c.submit(log_message, "dask_ipy_tests.forwarded", "hello").result()
            wait_for(lambda: records, message="a forwarded record")
            (r,) = records
            assert r.getMessage() == "hello from a task"
            assert r.levelno == logging.WARNING
            assert r.worker in c.scheduler_info()["workers"]
            assert r.process in {p.pid for p in pc.workers}
            # below the level asked for: not sent
            c.submit(log_message, "dask_ipy_tests.forwarded", "quiet", 10).result()
            c.unforward_logging("dask_ipy_tests.forwarded")
            c.submit(log_message, "dask_ipy_tests.forwarded", "after").result()
            # a run after the tasks has been answered after their records would have
            c.run(os.getpid)
            assert [x.getMessage() for x in records] == ["hello from a task"]
    finally:
        logger.removeHandler(handler)
