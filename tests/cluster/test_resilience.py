"""Resilience with real processes: workers, clients and the scheduler are killed
(SIGKILL), stopped (SIGSTOP) or fed bad graphs, and every test asserts the exact final
state within bounded time.

Each test runs its own scheduler and workers as subprocesses (tests/helpers.py,
`ProcessCluster`) on loopback with random ports; everything is killed at the end, even
on failure.  Task functions live in tests/helpers.py so that worker processes can
import them.
"""

import concurrent.futures as cf
import contextlib
import signal
import subprocess
import sys
import threading
import time
import traceback

import dask
import psutil
import pytest
from dask._task_spec import Task, TaskRef

import helpers as ops
from helpers import dask_ipy_threads, processes, wait_for
from dask_ipy import (Client, CycleError, KilledWorker, LocalCluster, MissingDependency,
                      SchedulerLost, wait)
from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.supervisor import oom_kills
from dask_ipy.worker.state import Execute, Send, WorkerState

pytestmark = pytest.mark.timeout(120)


def process_at(pc, address):
    (p,) = [p for p in pc.workers if p.first_line == address]
    return p


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def workers_of(c):
    return c.scheduler_info()["workers"]


def assert_no_stale_holders(c):
    """Every replica the scheduler knows of is on a live worker."""
    live = set(workers_of(c))
    for key, holders in c.who_has().items():
        assert set(holders) <= live, (key, holders, live)


# ---------------------------------------------------------------- 1. lost intermediates


def test_sigkill_in_the_middle_of_a_tree_reduction(tmp_path):
    """A worker is killed while a 256-leaf reduction is half done: the keys it held
    are recomputed from their lineage and the result is exact."""
    log = tmp_path / "runs"
    log.mkdir()
    gate = str(tmp_path / "gate")
    dsk, root, expected, first_level = ops.tree_reduction(256, log_dir=str(log),
                                                          gate=gate)
    # Enough threads that the 16 second-level sums waiting at the gate never starve
    # the rest of the graph.
    with processes(tmp_path, nthreads=20) as (pc, c), cf.ThreadPoolExecutor(1) as pool:
        result = pool.submit(c.get, dsk, root)
        # The second-level sums wait for the gate, so the reduction holds here: the
        # 64 first-level sums in memory, the leaves already released.
        wait_for(lambda: sorted(k for keys in c.has_what().values() for k in keys)
                 == sorted(first_level), timeout=60, message="the first level")
        holders = c.has_what()
        victim = max(holders, key=lambda a: len(holders[a]))
        lost = holders[victim]
        assert lost

        kill(process_at(pc, victim))
        pc.workers.append(pc.start_worker())
        wait_for(lambda: victim not in workers_of(c) and len(workers_of(c)) == 2,
                 timeout=10, message="the new worker")
        open(gate, "w").close()

        assert result.result(timeout=60) == expected
        assert_no_stale_holders(c)
    # Each lost first-level sum needed its four leaves again: nothing more, nothing less.
    assert ops.runs(log, "leaf") == 256 + 4 * len(lost)


# ---------------------------------------------------------------- 2. lost results


def test_holder_of_a_result_killed_before_gather_three_times(tmp_path):
    value = b"\x07" * 100_000          # too big to ride along with "task-finished"
    with processes(tmp_path) as (pc, c):
        x = c.submit(ops.payload, len(value), 7)
        wait([x], timeout=30)
        for _ in range(3):
            (holder,) = c.who_has([x])[x.key]
            kill(process_at(pc, holder))
            pc.workers.append(pc.start_worker())
            assert x.result(timeout=30) == value
            (now,) = c.who_has([x])[x.key]
            assert now != holder
        assert_no_stale_holders(c)


# ---------------------------------------------------------------- 3. peer to peer


def test_source_killed_during_a_transfer_the_key_is_recomputed(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with processes(tmp_path) as (pc, c):
        x = c.submit(ops.make_slow_to_send, 41, str(markers), 1.0, key="slow-x")
        wait([x], timeout=30)
        (source,) = c.who_has([x])[x.key]
        (dest,) = [a for a in workers_of(c) if a != source]
        y = c.submit(ops.unwrap, x, workers=[dest], key="unwrap-y")
        src = process_at(pc, source)
        # The source is sending x to dest (it takes a second): kill it now.
        wait_for(lambda: (markers / f"sending-{src.pid}").exists(), timeout=30,
                 message="the transfer to start")
        kill(src)
        pc.workers.append(pc.start_worker())
        assert y.result(timeout=60) == 41
        assert x.result(timeout=30).value == 41
        assert source not in workers_of(c)
        assert_no_stale_holders(c)


def test_source_killed_during_a_transfer_the_other_replica_is_used(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with processes(tmp_path, nworkers=3) as (pc, c):
        first, second, dest = sorted(workers_of(c))
        # Scattered data cannot be recomputed: only the second replica can save it.
        (x,) = c.scatter([ops.SlowToSend(41, str(markers), 1.0)], broadcast=True,
                         workers=[first, second])
        assert sorted(c.who_has([x])[x.key]) == [first, second]
        y = c.submit(ops.unwrap, x, workers=[dest])
        pids = {process_at(pc, a).pid: a for a in (first, second)}

        def sender():
            found = [pid for pid in pids if (markers / f"sending-{pid}").exists()]
            return found[0] if found else None
        wait_for(sender, timeout=30, message="the transfer to start")
        source = pids[sender()]
        kill(process_at(pc, source))

        assert y.result(timeout=60) == 41
        (survivor,) = [a for a in (first, second) if a != source]
        assert c.who_has([x])[x.key] == (survivor,)
        assert_no_stale_holders(c)


# ---------------------------------------------------------------- 4. a frozen worker


def test_stopped_worker_is_removed_rerouted_and_its_late_messages_ignored(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    release = str(tmp_path / "release")
    with processes(tmp_path, heartbeat_timeout=2.0) as (pc, c):
        victim = pc.workers[0]
        address = victim.first_line
        (other,) = [a for a in workers_of(c) if a != address]
        old_id = workers_of(c)[address]["id"]
        # The victim fetches from its peer once, so it holds a connection to it.
        there = c.submit(ops.payload, 100_000, 1, workers=[other])
        assert c.submit(ops.length, there, workers=[address]).result(timeout=30) == 100_000
        futures = c.map(ops.mark_and_wait, [str(markers)] * 4, [release] * 4, range(4))
        wait_for(lambda: ops.markers_of(markers, victim.pid), timeout=30,
                 message="a task running on the victim")
        victim.send_signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            open(release, "w").close()
            wait_for(lambda: address not in workers_of(c), timeout=15,
                     message="the stopped worker to be removed")
            assert time.monotonic() - stopped > 1.0     # by its silence, not a disconnect
            # Its work went elsewhere and is done while it is still frozen.
            assert c.gather(futures, timeout=30) == [0, 1, 2, 3]
            assert psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED
        finally:
            victim.send_signal(signal.SIGCONT)

        # Awake, it finishes its old task and reports it under its old identity: the
        # scheduler ignores that and it registers again, as a new worker.
        wait_for(lambda: workers_of(c).get(address, {}).get("id", old_id) != old_id,
                 timeout=15, message="the worker to register again")
        assert len(workers_of(c)) == 2
        assert c.gather(futures, timeout=30) == [0, 1, 2, 3]
        for key, holders in c.who_has(futures).items():
            assert address not in holders, key
        assert c.submit(ops.inc, 1, workers=[address]).result(timeout=30) == 2
        # Under its new identity it still fetches from its peer (well within the 30 s
        # a stale connection would cost before timing out).
        there = c.submit(ops.payload, 100_001, 1, workers=[other])
        assert c.submit(ops.length, there, workers=[address]).result(timeout=10) == 100_001
        assert_no_stale_holders(c)


# ---------------------------------------------------------------- 5. a task that kills


@contextlib.contextmanager
def supervisor(pc):
    """Start a new worker whenever one exits; yields a function counting the exits."""
    stop = threading.Event()
    replaced = set()

    def run():
        while not stop.is_set():
            for p in list(pc.workers):
                if p.poll() is not None and p.pid not in replaced:
                    replaced.add(p.pid)
                    if not stop.is_set():
                        pc.workers.append(pc.start_worker())
            stop.wait(0.02)
    t = threading.Thread(target=run, name="test-supervisor", daemon=True)
    t.start()
    try:
        yield lambda: sum(p.poll() is not None for p in pc.workers)
    finally:
        stop.set()
        t.join(30)


def test_task_that_kills_its_worker_raises_killed_worker_after_four_deaths(tmp_path):
    with processes(tmp_path) as (pc, c), supervisor(pc) as deaths:
        killer = c.submit(ops.die, key="killer")
        others = c.map(ops.slow_inc, range(20), delay=0.02)
        done, not_done = wait([killer] + others, timeout=60)
        assert not not_done
        with pytest.raises(KilledWorker, match="killer"):
            killer.result()
        assert "on 4 different workers, but all those workers died" in \
            str(killer.exception())
        # Workers without a supervisor: nobody says more.
        assert str(killer.exception()).endswith(": connection lost.")
        # The tasks queued behind it on the same workers were not blamed.
        assert c.gather(others) == list(range(1, 21))
        wait_for(lambda: deaths() >= 4, timeout=10, message="four deaths")
        assert deaths() == 4
        wait_for(lambda: len(workers_of(c)) == 2, timeout=10, message="replacements")
        assert c.submit(ops.inc, 41).result(timeout=30) == 42


@pytest.mark.parametrize("task, ending", [
    (ops.exit_with, "its process exited with code 3."),
    (ops.segfault, "its process was killed by SIGSEGV."),
    # Sent by the task, not the kernel (whose out-of-memory kills Linux counts).
    (ops.sigkill, "its process was killed by SIGKILL." if oom_kills() is not None
     else "its process was killed by SIGKILL (the system may have run out of memory)."),
], ids=["exit", "segfault", "sigkill"])
def test_killed_worker_says_how_a_supervised_workers_process_ended(task, ending):
    """LocalCluster's workers run under supervisors, which tell the scheduler how a
    worker's process ended; the first death ends the task (allowed-failures 0)."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as c:
        doomed = c.submit(task, 3, pure=False)
        with pytest.raises(KilledWorker) as info:
            doomed.result(timeout=60)
        text = str(info.value)
        assert text.startswith(
            f"Attempted to run task {doomed.key!r} on 1 different workers, but all "
            "those workers died while running it. The last worker that attempted to "
            "run the task was tcp://127.0.0.1:"), text
        assert text.endswith(": " + ending), text
        assert info.value.reason == ending[:-1]
        # The scheduler's events say it too, as dask.distributed's name them.
        died = [e for _, e in c.get_events("all") if e["action"] == "worker-died"]
        address = info.value.last_worker.address
        assert died == [{"action": "worker-died", "worker": address,
                         "reason": ending[:-1]}]
        c.wait_for_workers(1, timeout=30)          # its supervisor started another
        actions = [e["action"] for _, e in c.get_events(address)]
        assert actions in (["add-worker", "remove-worker", "worker-died"],
                           ["add-worker", "worker-died", "remove-worker"])
        assert c.submit(ops.inc, 1).result(timeout=30) == 2


def test_a_task_that_killed_a_worker_starts_only_when_the_scheduler_knows(tmp_path):
    """Pure state machines: after a death, a suspect task waits for the scheduler's
    "go" after "task-started", so a second death is blamed on it for sure, even
    when the worker dies before its messages leave."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", "tcp://10.0.0.1:1")
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.take_messages()
    s.remove_worker("w1", reason="killed")       # nothing reported: every task a suspect
    assert s.tasks["x"].suspicious == 1
    s.add_worker("w2", "tcp://10.0.0.2:1")
    (compute,) = [m for kind, _, m in s.take_messages() if m["op"] == "compute-task"]
    assert compute["confirm"] is True

    ws = WorkerState("tcp://10.0.0.2:1", validating=True)
    kw = {k: v for k, v in compute.items() if k != "op"}
    assert ws.handle("compute-task", **kw) == [
        Send({"op": "task-started", "key": "x", "confirm": True,
              "run_id": compute["run_id"]})]
    assert ws.handle("go", key="x") == [Execute("x", "spec-x", {}, True)]

    s.handle_worker_message("w2", {"op": "task-started", "key": "x", "confirm": True})
    assert s.take_messages() == [("worker", "w2", {"op": "go", "key": "x"})]
    s.remove_worker("w2", reason="killed")
    assert s.tasks["x"].suspicious == 2

    # Its inputs are taken when it starts: freed before the "go", they are still there.
    ws = WorkerState("tcp://10.0.0.4:1", validating=True)
    ws.handle("compute-task", key="dep", run_spec="spec-dep")
    ws.handle("execute-success", key="dep", value=10, nbytes=8)
    ws.handle("compute-task", key="y", run_spec="spec-y", who_has={"dep": []},
              confirm=True)
    ws.handle("free-keys", keys=["dep"])
    assert ws.handle("go", key="y") == [Execute("y", "spec-y", {"dep": 10}, False)]

    # Restarted (its scheduler forgot it) before the "go": nothing is left running.
    ws = WorkerState("tcp://10.0.0.3:1", validating=True)
    ws.handle("compute-task", **kw)
    # The scheduler counts a thread for it until it hears that it is over.
    assert ws.handle("restart") == [Send({"op": "task-dropped", "key": "x"})]
    assert ws.executing == set() and ws.tasks == {}
    assert ws.handle("go", key="x") == []


# ---------------------------------------------------------------- 6. task errors


def test_task_errors_keep_their_type_and_remote_traceback(tmp_path):
    with processes(tmp_path) as (pc, c):
        bad = c.submit(ops.fail, 3)
        dependent = c.submit(ops.inc, bad)
        grand = c.submit(ops.add, dependent, 1)
        for f in (bad, dependent, grand):
            with pytest.raises(ops.Boom, match="failed on 3") as info:
                f.result(timeout=30)
            tb = "".join(traceback.format_tb(info.value.__traceback__))
            assert "helpers.py" in tb
            assert 'raise Boom(f"failed on {x!r}")' in tb
        assert type(bad.exception()) is ops.Boom
        assert bad.traceback() is not None

        # A 10 MB message comes back cut short, still as the original type.
        huge = c.submit(ops.fail_huge, 10_000_000)
        with pytest.raises(ops.Boom) as info:
            huge.result(timeout=30)
        assert len(str(info.value)) < 20_000
        assert str(info.value).endswith("(truncated)")

        # The cluster is unharmed.
        assert c.gather(c.map(ops.inc, range(50))) == list(range(1, 51))
        assert len(workers_of(c)) == 2


# ---------------------------------------------------------------- 7. a client dies


CLIENT_SCRIPT = """
import sys, time
from dask_ipy import Client
import helpers as ops
c = Client(sys.argv[1])
slow = c.map(ops.slow_inc, range(200), delay=0.05)
held = c.submit(ops.payload, 1_000_000, 3)
while sum(f.done() for f in slow) < 5 or not held.done():
    time.sleep(0.01)
print("running", flush=True)
time.sleep(600)
"""


def test_killed_client_releases_its_keys_and_workers_go_idle(tmp_path):
    with processes(tmp_path) as (pc, c):
        other = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, pc.file],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 text=True)
        try:
            assert other.stdout.readline().strip() == "running"
            assert c.scheduler_info()["nclients"] == 2
            assert c.scheduler_info()["ntasks"] > 0
            assert any(c.has_what().values())
            kill(other)
        finally:
            if other.poll() is None:
                other.kill()
            other.wait(10)
            other.stdout.close()

        wait_for(lambda: c.scheduler_info()["ntasks"] == 0, timeout=10,
                 message="the dead client's tasks to be forgotten")
        assert c.scheduler_info()["nclients"] == 1
        assert c.has_what() == {a: () for a in workers_of(c)}

        def idle():
            stats = [s for per in c.run(ops.worker_stats).values() for s in per]
            return len(stats) == 2 and all(
                s == {"data": 0, "tasks": 0, "executing": 0} for s in stats)
        wait_for(idle, timeout=10, message="workers to drop everything")
        assert c.submit(ops.inc, 1).result(timeout=30) == 2


# ---------------------------------------------------------------- 8. the scheduler dies


RESTART_SCRIPT = """
import sys
from dask_ipy import Scheduler, Security
from dask_ipy.security import read_connection_file
info, security = read_connection_file(sys.argv[1])
port = lambda address: int(address.rsplit(":", 1)[1])
s = Scheduler(port_to_workers=port(info["address_to_workers"]),
              port_to_clients=port(info["address_to_clients"]),
              security=security, connection_file=sys.argv[1], idle_timeout=60)
print("ready", flush=True)
s.wait()
"""


def test_scheduler_killed_futures_fail_fast_then_a_new_one_takes_over(tmp_path):
    release = str(tmp_path / "release")
    with processes(tmp_path) as (pc, c):
        assert c.submit(ops.inc, 1).result(timeout=30) == 2
        pending = c.submit(ops.block_until_file, release, 5)
        with cf.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(pending.result)
            kill(pc.scheduler)
            killed = time.monotonic()
            with pytest.raises(SchedulerLost):
                waiting.result(timeout=10)
            # Told by the connection closing, well before the 10 s the result waits.
            assert time.monotonic() - killed < 5.0
        assert pending.status == "lost"
        with pytest.raises(SchedulerLost, match="scheduler"):
            pending.result(timeout=10)

        # The task goes on running in its worker's thread, which no scheduler can
        # interrupt: let it end, so that the thread is free for the new scheduler.
        open(release, "w").close()

        # A new scheduler on the same ports with the same key: the client and the
        # workers find it by themselves.
        pc.scheduler.stdout.close()
        pc.scheduler = pc._spawn(RESTART_SCRIPT, pc.file)

        def reconnected():
            try:
                return len(workers_of(c)) == 2
            except SchedulerLost:
                return False
        wait_for(reconnected, timeout=30, interval=0.1, message="the new scheduler")
        assert c.submit(ops.inc, 41).result(timeout=30) == 42
        assert c.get({"a": 1, "b": (ops.add, "a", 10)}, "b") == 11


# ---------------------------------------------------------------- 9. bad input


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """Workers in processes; the scheduler accepts messages of up to 256 MiB."""
    with processes(tmp_path_factory.mktemp("capped"),
                   scheduler_options={"max_message_bytes": 256 * 2**20}) as (pc, c):
        yield pc, c


def assert_still_serving(c):
    assert c.gather(c.map(ops.inc, range(10))) == list(range(1, 11))


def test_cycle_is_refused_before_anything_runs(capped):
    pc, c = capped
    before = c.scheduler_info()["ntasks"]
    with pytest.raises(CycleError) as info:
        c.get({"a": (ops.inc, "b"), "b": (ops.inc, "c"), "c": (ops.inc, "a"),
               "d": (ops.inc, 1)}, ["a", "d"])
    assert {"a", "b", "c"} <= set(info.value.cycle)
    assert "'a'" in str(info.value) and "'b'" in str(info.value)
    assert c.scheduler_info()["ntasks"] == before
    assert_still_serving(c)


def test_missing_dependency_is_named(capped):
    pc, c = capped
    with pytest.raises(MissingDependency, match="absent-key"):
        c.get({"a": Task("a", ops.inc, TaskRef("absent-key"))}, "a")
    assert_still_serving(c)


def test_unpicklable_argument_is_a_type_error_naming_the_key(capped):
    pc, c = capped
    with pytest.raises(TypeError, match="locked-key"):
        c.submit(ops.inc, threading.Lock(), key="locked-key")
    with pytest.raises(TypeError, match="graph-key"):
        c.get({"graph-key": (ops.inc, threading.Lock())}, "graph-key")
    assert_still_serving(c)


def test_unpicklable_result_is_a_type_error_naming_the_key(capped):
    pc, c = capped
    lock = c.submit(ops.make_lock, key="returns-a-lock")
    fine = c.submit(ops.inc, 1)
    with pytest.raises(TypeError, match="returns-a-lock"):
        lock.result(timeout=30)
    with pytest.raises(TypeError, match="returns-a-lock"):
        c.gather([fine, lock], timeout=30)
    assert fine.result(timeout=30) == 2
    assert lock.status == "finished"             # on its worker, as in dask.distributed
    assert_still_serving(c)


def test_one_gigabyte_result_works_on_the_cluster_and_arrives_at_the_client(capped):
    """1 GiB moves between workers and comes back to the client, although this
    scheduler takes messages of 256 MiB at most: large values stream through its
    relay and never pass through its sockets."""
    pc, c = capped
    a, b = sorted(workers_of(c))
    big = c.submit(ops.big_array, 2**30, workers=[a], key="one-gigabyte")
    summary = c.submit(ops.array_summary, big, workers=[b])
    small = c.submit(ops.payload, 1000, 2)
    assert summary.result(timeout=60) == (2**30, 1, 7)
    assert ops.array_summary(big.result(timeout=60)) == (2**30, 1, 7)
    value, tiny = c.gather([big, small], timeout=60)
    assert ops.array_summary(value) == (2**30, 1, 7) and tiny == b"\x02" * 1000
    del big, summary, value
    wait_for(lambda: all("one-gigabyte" not in keys for keys in c.has_what().values()),
             timeout=10, message="the big result to be released")
    assert_still_serving(c)


# ---------------------------------------------------------------- 12. fast detection


def test_killed_worker_is_noticed_at_once_not_by_heartbeats(tmp_path):
    with processes(tmp_path) as (pc, c):
        for _ in range(3):
            p = pc.workers[0]
            address = p.first_line
            assert address in workers_of(c)
            p.send_signal(signal.SIGKILL)
            start = time.monotonic()
            wait_for(lambda: address not in workers_of(c), timeout=15,
                     interval=0.005, message="the worker to be removed")
            # By its closed connection (about 0.1 s), not by missing heartbeats
            # (10 s): a wide margin for a busy machine.
            assert time.monotonic() - start < 5.0
            p.wait(10)
            pc.workers.remove(p)
            p.stdout.close()
            pc.workers.append(pc.start_worker())
            wait_for(lambda: len(workers_of(c)) == 2, timeout=10, message="a new worker")


# ---------------------------------------------------------------- closing a client


def test_closing_a_client_wakes_a_thread_waiting_in_get(tmp_path):
    from dask_ipy import Client, Scheduler, Worker

    threads = set(dask_ipy_threads())
    never = str(tmp_path / "never")
    s = Scheduler(validate=True)
    w = Worker(scheduler=s.address_to_workers, validate=True)
    c = Client(s.address_to_clients)
    try:
        with cf.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.get, {"x": (ops.block_until_file, never, 1, 30)}, "x")
            wait_for(lambda: "x" in s.state.tasks, message="the graph to arrive")
            c.close()
            with pytest.raises(RuntimeError, match="closed"):
                waiting.result(timeout=10)
    finally:
        open(never, "w").close()          # lets the worker's thread finish
        c.close()
        w.close()
        s.close()
    wait_for(lambda: set(dask_ipy_threads()) <= threads, timeout=5,
             message="threads to stop")
