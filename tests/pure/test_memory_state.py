"""Memory decisions, pure and literal: `worker.limits` (a sample in, instructions
out), the worker's state machine pausing and stopping tasks, the scheduler's state
with paused workers and tasks stopped for memory, and the host facts read from
cgroup files (fake ones here) and from psutil's counters."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker import limits as L
from dask_ipy.worker.state import Execute, GatherDep, Send, WorkerState
from dask_ipy.worker.system import (cgroup_cpu_limit, cgroup_memory_limit, host_memory,
                                    io_counters, io_rates, open_files)

pytestmark = pytest.mark.timeout(60)

GiB = 2**30
F = {"target": 0.6, "spill": 0.7, "pause": 0.8, "terminate": 0.95}
ME, A, B = "tcp://10.0.0.9:1", "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


# ---------------------------------------------------------------- limits.decide

def decide(rss, managed=0, paused=False, limit=100, fractions=F):
    return L.decide(rss, managed, limit, fractions, paused)


def test_below_every_threshold_nothing_happens():
    assert decide(50, managed=40) == []
    assert decide(70, managed=40) == []             # at spill, not past it


def test_past_spill_moves_enough_to_get_back_under_target():
    assert decide(75, managed=40) == [L.Spill(15)]
    # Never more than what is in memory: the rest is not results.
    assert decide(79, managed=5) == [L.Spill(5)]
    assert decide(79, managed=0) == []


def test_past_pause_pauses_and_spills():
    assert decide(85, managed=50) == [L.Pause(), L.Spill(25)]
    assert decide(85, managed=50, paused=True) == [L.Spill(25)]


def test_resumes_only_once_well_under_pause():
    assert decide(78, paused=True) == []             # within the margin: stays
    assert decide(74, managed=0, paused=True) == [L.Resume()]
    assert decide(74, managed=10, paused=True) == [L.Resume(), L.Spill(10)]
    assert decide(50, paused=True) == [L.Resume()]


def test_past_terminate_stops_tasks_and_pauses():
    assert decide(96, managed=10) == [L.Terminate(96, 100), L.Pause(), L.Spill(10)]
    assert decide(96, managed=0, paused=True) == [L.Terminate(96, 100)]


def test_steps_turned_off():
    off = {"target": False, "spill": False, "pause": False, "terminate": False}
    assert decide(99, managed=50, fractions=off) == []
    assert decide(99, paused=True, fractions=off) == [L.Resume()]
    only_pause = dict(off, pause=0.8)
    assert decide(90, managed=50, fractions=only_pause) == [L.Pause()]
    # With no target, spilling brings memory back under the spill fraction itself.
    assert decide(90, managed=50, fractions=dict(off, spill=0.7)) == [L.Spill(20)]


def test_no_limit_means_no_decision_but_a_paused_worker_resumes():
    assert decide(10**12, managed=10**11, limit=None) == []
    assert decide(10**12, limit=None, paused=True) == [L.Resume()]


# ---------------------------------------------------------------- limits: parsing

@pytest.mark.parametrize("value, expected", [
    ("auto", 16 * GiB), ("2GiB", 2 * GiB), ("500 MB", 500_000_000),
    (3 * GiB, 3 * GiB), (0.25, 4 * GiB), ("0.5", 8 * GiB), (1, 16 * GiB),
    ("64GiB", 16 * GiB),                       # above the host: the host's
    (None, None), (0, None), ("0", None), (False, None), ("none", None),
])
def test_memory_limit_values(value, expected):
    assert L.memory_limit_bytes(value, 16 * GiB) == expected


def test_auto_shares_the_host_among_its_workers():
    assert L.memory_limit_bytes("auto", 24 * GiB, nworkers=3) == 8 * GiB
    assert L.memory_limit_bytes("auto", 24 * GiB, nworkers=0) == 24 * GiB


def test_bad_memory_limits():
    with pytest.raises(ValueError):
        L.memory_limit_bytes(-1, GiB)
    with pytest.raises(ValueError):
        L.memory_limit_bytes("lots", GiB)


def test_blas_threads():
    assert L.blas_threads("auto", cores=8, nthreads=2) == 4
    assert L.blas_threads("auto", cores=2, nthreads=4) == 1
    assert L.blas_threads(3, cores=8, nthreads=2) == 3
    assert L.blas_threads(False, cores=8, nthreads=2) is None
    assert L.blas_threads(None, cores=8, nthreads=2) is None


def test_thresholds():
    assert L.thresholds(1000, F) == {"target": 600, "spill": 700, "pause": 800,
                                     "terminate": 950}
    assert L.thresholds(None, F)["pause"] is None


# ---------------------------------------------------------------- host facts

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_lowest_up_the_tree(tmp_path):
    write(tmp_path / "proc", "0::/user.slice/job-1\n")
    write(tmp_path / "fs/user.slice/job-1/memory.max", "max\n")
    write(tmp_path / "fs/user.slice/job-1/memory.high", "3221225472\n")
    write(tmp_path / "fs/user.slice/memory.max", "4294967296\n")
    write(tmp_path / "fs/user.slice/job-1/cpu.max", "150000 100000\n")
    root, proc = str(tmp_path / "fs"), str(tmp_path / "proc")
    assert cgroup_memory_limit(root, proc) == 3 * GiB
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert host_memory(root, proc) <= 3 * GiB


def test_cgroup_v1_limit(tmp_path):
    write(tmp_path / "proc", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "fs/memory/docker/abc/memory.limit_in_bytes", str(2 * GiB))
    write(tmp_path / "fs/memory/memory.limit_in_bytes", "9223372036854771712")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000")
    root, proc = str(tmp_path / "fs"), str(tmp_path / "proc")
    assert cgroup_memory_limit(root, proc) == 2 * GiB
    assert cgroup_cpu_limit(root, proc) == 2.0


def test_no_cgroup_files(tmp_path):
    assert cgroup_memory_limit(str(tmp_path), str(tmp_path / "none")) is None
    assert cgroup_cpu_limit(str(tmp_path), str(tmp_path / "none")) is None


# ---------------------------------------------------------------- the worker's state

@pytest.fixture
def ws():
    return WorkerState(ME, nthreads=1, validating=True)


def started(key, spec, inputs):
    return [Send({"op": "task-started", "key": key}), Execute(key, spec, inputs)]


def test_a_paused_worker_starts_nothing_and_fetches_nothing(ws):
    assert ws.handle("pause") == []
    assert ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0)) == []
    assert ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0, 1, 1),
                     who_has={"d": [A]}, nbytes={"d": 10}) == []
    assert {k: t.state for k, t in ws.tasks.items()} == {
        "x": "ready", "y": "waiting", "d": "fetch"}
    out = ws.handle("resume")
    assert out == started("x", "spec-x", {}) + [GatherDep(A, ["d"])]


def test_a_paused_worker_still_serves_its_data_and_finishes_what_runs(ws):
    assert ws.handle("compute-task", key="x", run_spec="spec-x",
                     priority=(0, 1, 0)) == started("x", "spec-x", {})
    ws.handle("pause")
    assert ws.handle("execute-success", key="x", value=41, nbytes=8, type="int",
                     start=1.0, stop=2.0) == [
        Send({"op": "task-finished", "key": "x", "nbytes": 8, "type": "int",
              "duration": 1.0, "start": 1.0})]
    assert ws.get_data(["x", "nope"]) == ({"x": 41}, ["nope"])
    assert ws.managed == 8


def test_a_task_stopped_for_memory_is_dropped(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0))
    assert ws.handle("memory-exceeded", keys=["x", "gone"], rss=96, limit=100,
                     action="interrupt") == [
        Send({"op": "memory-exceeded", "keys": ["x"], "rss": 96, "limit": 100,
              "action": "interrupt"})]
    # Its run ends with the TaskMemoryError: dropped, and its thread is free again.
    assert ws.handle("execute-failure", key="x", error={"type": "TaskMemoryError"}) == [
        Send({"op": "task-dropped", "key": "x"})]
    assert ws.tasks == {} and ws.executing == set()


def test_a_task_stopped_for_memory_and_asked_for_again_runs_again(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0, 1, 0),
              who_has={"d": [A]}, nbytes={"d": 8})
    ws.handle("gather-done", peer=A, data={"d": 1}, sizes={"d": 8})
    ws.handle("memory-exceeded", keys=["y"], rss=96, limit=100, action="interrupt")
    # The scheduler releases it and sends it back here before the stop lands.
    assert ws.handle("free-keys", keys=["y"]) == []
    assert ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0, 2, 0),
                     who_has={"d": [A]}, nbytes={"d": 8}) == []
    # The stopped run's end (even a success) frees its thread; the task runs anew.
    out = ws.handle("execute-success", key="y", value=5, nbytes=8, type="int")
    assert out[0] == Send({"op": "task-dropped", "key": "y"})
    assert out[1:] == [GatherDep(A, ["d"])] or out[1:] == started("y", "spec-y", {"d": 1})
    assert ws.tasks["y"].state in ("waiting", "executing")


def test_restart_forgets_managed_bytes(ws):
    ws.handle("put-data", data={"a": b"x" * 100}, sizes={"a": (100, "bytes")})
    assert ws.managed == 100
    ws.handle("restart")
    assert ws.managed == 0


# ---------------------------------------------------------------- the scheduler's state

def take(s):
    return [(kind, ident, {k: v for k, v in msg.items()
                           if k not in ("duration", "want_data", "confirm", "clients",
                                        "run_id")})
            for kind, ident, msg in s.take_messages()]


def heartbeat(s, wid, status, now, **metrics):
    assert s.handle_worker_message(wid, {"op": "heartbeat", "metrics": {
        "status": status, "memory": 90, "managed": 30, "spilled": 5,
        "memory_limit": 100, **metrics}}, now=now)


@pytest.fixture
def s():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1, memory_limit=100,
                 memory_fractions=F, now=1.0)
    s.add_worker("w2", B, nthreads=1, memory_limit=100, memory_fractions=F, now=1.0)
    take(s)
    return s


def test_nothing_new_goes_to_a_paused_worker(s):
    heartbeat(s, "w1", "paused", now=2.0)
    assert s.workers["w1"].status == "paused"
    s.update_graph("c", {f"x{i}": (f"spec-x{i}", []) for i in range(3)},
                   [f"x{i}" for i in range(3)])
    placed = {msg["key"]: ident for _, ident, msg in take(s)
              if msg["op"] == "compute-task"}
    assert set(placed.values()) == {"w2"}
    # Everything paused: root tasks queue; tasks with inputs have no worker.
    heartbeat(s, "w2", "paused", now=2.5)
    s.update_graph("c", {"y": ("spec-y", ["x0"])}, ["y"])
    assert take(s) == []
    info = s.info()["workers"][A]
    assert (info["paused"], info["status"], info["memory"], info["managed"],
            info["unmanaged"], info["spilled"], info["memory_limit"]) == \
        (True, "paused", 90, 30, 60, 5, 100)


def test_a_resumed_worker_gets_work_again_and_its_time_paused_adds_up(s):
    heartbeat(s, "w1", "paused", now=2.0)
    heartbeat(s, "w2", "paused", now=2.0)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    assert take(s) == []
    assert s.paused_for(s.workers["w1"], now=5.0) == (3.0, 3.0)
    heartbeat(s, "w1", "running", now=6.0)
    assert take(s) == [("worker", "w1", {"op": "compute-task", "key": "x",
                                         "run_spec": "spec-x", "priority": (0, 1, 0)})]
    ws = s.workers["w1"]
    assert (ws.status, ws.paused_since, ws.time_paused) == ("running", None, 4.0)
    assert s.paused_for(ws, now=7.0) == (0.0, 4.0)


def test_idle_workers_take_the_queue_of_a_worker_that_pauses():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.update_graph("c", {"a-0": ("spec", [])}, ["a-0"])
    s.handle_worker_message("w1", {"op": "task-finished", "key": "a-0", "nbytes": 8,
                                   "duration": 0.001})
    keys = [f"a-{i}" for i in range(1, 5)]
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys)
    assert all(s.tasks[k].processing_on.id == "w1" for k in keys)
    s.handle_worker_message("w1", {"op": "task-started", "key": "a-1"})
    # Tasks this short are not worth a steal from a worker that runs...
    s.add_worker("w2", B, nthreads=1)
    assert [m for m in take(s) if m[2]["op"] == "steal-request"] == []
    # ...but from a paused one they would wait for its memory to fall.
    heartbeat(s, "w1", "paused", now=2.0)
    steals = [(ident, msg["key"]) for _, ident, msg in take(s)
              if msg["op"] == "steal-request"]
    # Tiny ones go as a batch for the idle thread; never the one that runs.
    assert sorted(steals) == [("w1", "a-2"), ("w1", "a-3"), ("w1", "a-4")]
    for _, key in steals:
        s.handle_worker_message("w1", {"op": "steal-response", "key": key,
                                       "released": True, "state": "ready"})
        assert s.tasks[key].processing_on.id == "w2"


def test_tasks_stopped_for_memory_are_retried_then_err_naming_memory(s):
    s.update_graph("c", {"big": ("spec-big", [])}, ["big"])
    seen = []
    for attempt in range(4):        # allowed_failures (3) retries, then it errs
        ws = s.tasks["big"].processing_on
        take(s)
        s.handle_worker_message(ws.id, {"op": "task-started", "key": "big"})
        s.handle_worker_message(ws.id, {"op": "memory-exceeded", "keys": ["big"],
                                        "rss": 99 * GiB // 100, "limit": GiB,
                                        "action": "interrupt"})
        # Its thread stays busy there until the worker says the stop landed.
        assert "big" in ws.stale
        out = take(s)
        seen += out
        assert ("worker", ws.id, {"op": "free-keys", "keys": ["big"]}) in out \
            or s.tasks["big"].state == "erred"
        s.handle_worker_message(ws.id, {"op": "task-dropped", "key": "big"})
        assert "big" not in ws.stale
    ts = s.tasks["big"]
    assert ts.state == "erred"
    assert ts.error["type"] == "MemoryLimitExceeded"
    text = ts.error["text"]
    assert "'big'" in text and "4 times" in text and "1.00 GiB" in text
    assert "1013.76 MiB" in text and ("tcp://10.0.0" in text) and "interrupted" in text
    [(_, _, msg)] = [m for m in seen + take(s) if m[2]["op"] == "task-erred"]
    assert msg["type"] == "MemoryLimitExceeded"


def test_a_worker_that_exits_for_memory_is_gone_and_its_task_blamed(s):
    s.update_graph("c", {"big": ("spec-big", [])}, ["big"])
    ws = s.tasks["big"].processing_on
    s.handle_worker_message(ws.id, {"op": "task-started", "key": "big"})
    take(s)
    s.handle_worker_message(ws.id, {"op": "memory-exceeded", "keys": ["big"],
                                    "rss": 960, "limit": 1000, "action": "exit"})
    assert ws.id not in s.workers
    assert s.tasks["big"].suspicious == 1
    assert "restarted" in s.memory_failures["big"]
    # It runs elsewhere now.
    assert s.tasks["big"].state == "processing"
    assert s.tasks["big"].processing_on is not ws


def test_a_worker_dying_with_high_memory_says_so():
    s = SchedulerState(validate=True, allowed_failures=0)
    s.add_client("c")
    s.add_worker("w1", A, memory_limit=1000, memory_fractions=F)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.handle_worker_message("w1", {"op": "task-started", "key": "x"})
    s.handle_worker_message("w1", {"op": "heartbeat", "metrics": {"memory": 900}})
    s.remove_worker("w1", reason="connection lost")
    err = s.tasks["x"].error
    assert err["type"] == "KilledWorker"
    assert "900 B of its 1000 B limit" in err["text"]


def test_clients_hear_of_workers_paused_too_long_once_each(s):
    s.add_client("d")
    s.handle_client_message("c", {"op": "client-options", "paused_warning": 10.0})
    take(s)
    heartbeat(s, "w1", "paused", now=100.0)
    s.check_heartbeats(105.0, timeout=1000)
    assert take(s) == []
    s.check_heartbeats(111.0, timeout=1000)
    assert take(s) == [("client", "c", {
        "op": "worker-paused-long", "address": A, "name": A, "seconds": 11.0,
        "memory": 90, "managed": 30, "spilled": 5, "memory_limit": 100})]
    s.check_heartbeats(120.0, timeout=1000)
    assert take(s) == []                        # once per pause
    heartbeat(s, "w1", "running", now=121.0)
    heartbeat(s, "w1", "paused", now=122.0)
    s.check_heartbeats(133.0, timeout=1000)
    assert [m[1] for m in take(s)] == ["c"]    # a new pause, a new warning


def test_workers_with_an_auto_limit_learn_how_many_share_their_host():
    s = SchedulerState(validate=True)
    s.add_worker("w1", A, host="h", shares_host=True)
    assert take(s) == [("worker", "w1", {"op": "registered"}),
                       ("worker", "w1", {"op": "host-workers", "n": 1})]
    s.add_worker("w2", B, host="h")
    s.add_worker("w3", "tcp://10.0.0.3:1", host="other", shares_host=True)
    assert [m for m in take(s) if m[2]["op"] == "host-workers"] == [
        ("worker", "w1", {"op": "host-workers", "n": 2}),
        ("worker", "w3", {"op": "host-workers", "n": 1})]
    s.remove_worker("w2")
    assert [m for m in take(s) if m[2]["op"] == "host-workers"] == [
        ("worker", "w1", {"op": "host-workers", "n": 1})]


def test_client_run_reaches_paused_workers(s):
    heartbeat(s, "w1", "paused", now=2.0)
    s.handle_client_message("c", {"op": "run", "function": "fn", "request_id": 1})
    assert sorted(ident for _, ident, msg in take(s) if msg["op"] == "run") == \
        ["w1", "w2"]


def test_a_later_death_not_for_memory_errs_as_killed_worker():
    s = SchedulerState(validate=True, allowed_failures=1)
    s.add_client("c")
    s.add_worker("w1", A, memory_limit=1000, memory_fractions=F)
    s.add_worker("w2", B, memory_limit=1000, memory_fractions=F)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    ws = s.tasks["x"].processing_on
    s.handle_worker_message(ws.id, {"op": "task-started", "key": "x"})
    s.handle_worker_message(ws.id, {"op": "memory-exceeded", "keys": ["x"], "rss": 960,
                                    "limit": 1000, "action": "interrupt"})
    ws = s.tasks["x"].processing_on
    s.handle_worker_message(ws.id, {"op": "task-started", "key": "x"})
    s.remove_worker(ws.id, reason="connection lost")
    assert s.tasks["x"].error["type"] == "KilledWorker"


def test_heap_settings_are_set_in_process_unless_the_user_set_them(monkeypatch):
    import os
    import subprocess
    import sys

    from dask_ipy.supervisor import HEAP_ENV
    from dask_ipy.worker.system import apply_heap_settings

    for name in HEAP_ENV:
        monkeypatch.setenv(name, "1000000")
    assert apply_heap_settings() == []
    # In a process of its own (mallopt cannot be undone here): glibc accepts both,
    # or the one the user did not set.
    code = ("from dask_ipy.worker.system import apply_heap_settings as f; "
            "print(' '.join(f()))")
    linux = sys.platform.startswith("linux")
    env = {k: v for k, v in os.environ.items() if k not in HEAP_ENV}
    for user, expected in [({}, " ".join(HEAP_ENV)),
                           ({"MALLOC_TRIM_THRESHOLD_": "1"}, "MALLOC_MMAP_THRESHOLD_")]:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **user},
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == (expected if linux else "")


def test_a_worker_process_gets_the_heap_settings_unless_the_user_set_them(tmp_path):
    from dask_ipy.supervisor import HEAP_ENV, Supervisor

    assert HEAP_ENV == {"MALLOC_TRIM_THRESHOLD_": "65536",
                        "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
    assert {k: Supervisor([], tmp_path, env={}).env[k] for k in HEAP_ENV} == HEAP_ENV
    env = Supervisor([], tmp_path, env={"MALLOC_MMAP_THRESHOLD_": "4096"}).env
    assert env["MALLOC_MMAP_THRESHOLD_"] == "4096"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_the_memory_watch_gives_back_free_heap_memory_before_acting_on_it(monkeypatch):
    from types import SimpleNamespace

    from dask_ipy.worker import monitor, system

    rss, trims, spills, calls = [900], [], [], []

    def trim():
        trims.append(rss[0])
        rss[0] -= 600 if len(trims) == 1 else 0     # the first trim frees 600 bytes
        return True

    monkeypatch.setattr(system, "malloc_trim", trim)
    data = SimpleNamespace(memory=500, spill=lambda n, after: spills.append(n) or True)
    worker = SimpleNamespace(data=data, address="w", memory_paused=None,
                             state=SimpleNamespace(executing={"x"}, ready=[]),
                             loop=SimpleNamespace(call_soon=lambda *a: calls.append(a[1:])))
    m = monitor.MemoryMonitor(worker, 1000, {"target": 0.6, "spill": 0.7, "pause": 0.8,
                                             "terminate": 0.95},
                              sample=lambda: SimpleNamespace(rss=rss[0]))
    collected = []
    m.collector = SimpleNamespace(collect=lambda: collected.append(rss[0]))
    m.check()             # 900 of 1000 bytes, 600 of them free heap: nothing to do
    assert (trims, spills, calls, m.rss, m.paused) == ([900], [], [], 300, False)
    rss[0] = 900          # held now; the next trim waits for `TRIM` seconds
    m.check()
    assert (trims, spills, calls, m.paused) == ([900], [300], [(True, 900)], True)
    m.spilling = False                              # the spill is done
    m._trimmed -= 2 * monitor.TRIM                  # still paused: it trims again, once
    m.check()
    m.check()
    assert trims == collected == [900, 900]       # the collector runs before each trim


def test_an_idle_worker_gives_back_the_heap_its_computation_freed(monkeypatch):
    from types import SimpleNamespace

    from dask_ipy.worker import monitor, system

    MB = 2**20
    rss, trims = [100 * MB], []

    def trim():
        trims.append(rss[0] // MB)
        rss[0] = 110 * MB
        return True

    monkeypatch.setattr(system, "malloc_trim", trim)
    state = SimpleNamespace(executing=set(), ready=[], managed=10 * MB)
    worker = SimpleNamespace(data={}, state=state, address="w", memory_paused=None,
                             loop=SimpleNamespace(call_soon=lambda *a: None))
    m = monitor.MemoryMonitor(worker, 10**12, {"target": 0.6, "spill": 0.7,
                                               "pause": 0.8, "terminate": 0.95},
                              sample=lambda: SimpleNamespace(rss=rss[0]))
    m.collector = SimpleNamespace(collect=lambda: trims.append("collected"))
    m.check()                     # idle at 90 MB other than results: the floor
    state.executing = {"x"}
    rss[0] = 500 * MB             # busy: the heap keeps what the task frees
    m.check()
    state.executing = set()
    rss[0] = 100 * MB + monitor.HEAP_SLACK + 1     # past the slack, but idle just now
    m.check()
    m._busy -= 2 * monitor.TRIM                    # idle for a while, within the slack
    rss[0] -= 1
    m.check()
    assert trims == []
    rss[0] += 1
    m.check()                     # past it: trimmed, without the collector; and
                                  # 100 MB is the new floor
    assert (trims, m.rss) == ([132], 110 * MB)
    m._trimmed -= 2 * monitor.TRIM
    rss[0] = 110 * MB + monitor.HEAP_SLACK
    m.check()
    assert trims == [132]
    # Idle and paused too: the pause's trim runs the collector, as it must (what
    # holds the worker paused may be garbage in cycles).
    m.paused = True
    rss[0] += 1
    m.check()
    assert trims == [132, "collected", 142]


def test_a_worker_process_switches_threads_sooner_and_keeps_a_shorter_interval():
    import sys

    from dask_ipy.worker.system import SWITCH_INTERVAL, shorten_switch_interval

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        shorten_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        sys.setswitchinterval(0.0001)            # set shorter by the user: kept
        shorten_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    finally:
        sys.setswitchinterval(before)


def test_distributed_memory_settings_count_where_dask_ipy_keeps_its_default():
    import dask

    from dask_ipy import config

    with dask.config.set({"distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": 0.5}):
        assert config.memory_fractions() == {
            "target": 0.6, "spill": False, "pause": 0.5, "terminate": 0.95}
        with dask.config.set({"dask-ipy.worker.memory.pause": 0.7}):
            assert config.memory_fractions()["pause"] == 0.7      # its own wins
        assert config.memory_fractions(pause=0.9)["pause"] == 0.9  # and an argument


def test_host_traffic_is_bytes_per_second_between_two_readings():
    before = {"host_net_io": (100, 1000), "host_disk_io": (0, 50)}
    after = {"host_net_io": (300, 1000), "host_disk_io": (0, 40), "new": (5, 5)}
    # A counter that went back (reset) counts as no traffic; one not read before
    # gives no rate yet.
    assert io_rates(before, after, 2.0) == {
        "host_net_io": {"read_bps": 100.0, "write_bps": 0.0},
        "host_disk_io": {"read_bps": 0.0, "write_bps": 0.0}}
    for name, (read, written) in io_counters().items():
        assert name in ("host_net_io", "host_disk_io") and read >= 0 and written >= 0


def test_open_files_counts_this_process_or_says_none():
    import psutil

    n = open_files(psutil.Process())
    assert n is None or n > 0
    assert open_files(object()) is None


def test_the_collector_for_memory_takes_at_most_its_share_of_the_time():
    from dask_ipy.worker.monitor import ThrottledCollector

    ticks = iter([100.0, 100.5,     # the first collection runs, and takes 0.5 s
                  101.0,            # 0.5 of the 1 s since it started: skipped
                  109.0,            # 0.5 of 9 s, more than 5%: skipped
                  110.5, 110.6])    # 0.5 of 10.5 s: runs (0.1 s)
    collector = ThrottledCollector(share=0.05, clock=ticks.__next__)
    assert collector.collect()
    assert collector.took == 0.5
    assert not collector.collect()
    assert not collector.collect()
    assert collector.collect()
    assert collector.took == pytest.approx(0.1)


def test_freed_blocks_go_back_at_once_past_target_until_margin_under_it():
    f = {"target": 0.6, "spill": 0.7, "pause": 0.8, "terminate": 0.95}
    assert [L.lean_heap(rss, 1000, f, lean) for rss, lean in
            [(600, False), (601, False), (600, True), (551, True), (549, True)]] == \
        [False, True, True, True, False]
    no_target = dict(f, target=False)                              # spill instead
    assert [L.lean_heap(rss, 1000, no_target, False) for rss in (651, 701)] == [False, True]
    assert not L.lean_heap(10**9, 1000, dict(f, target=False, spill=False), True)
    assert not L.lean_heap(10**9, None, f, True)                   # no limit


def test_a_worker_past_its_target_gives_freed_blocks_back_at_once(monkeypatch):
    from types import SimpleNamespace

    from dask_ipy.worker import monitor, system

    rss, heap = [0], []
    monkeypatch.setattr(system, "reuse_heap", heap.append)
    state = SimpleNamespace(executing={"x"}, ready=[], managed=0)
    m = monitor.MemoryMonitor(SimpleNamespace(data={}, state=state, address="w"), 1000,
                              {"target": 0.6, "spill": False, "pause": False,
                               "terminate": False},
                              sample=lambda: SimpleNamespace(rss=rss[0]))
    for rss[0] in (500, 600, 601, 700, 560, 549, 600, 650):
        m.check()
    assert heap == [False, True, False]   # past 600; 50 (the margin) under it; past it
    m.fractions["target"] = False         # no target or spill fraction: reused again
    rss[0] = 990
    m.check()
    assert heap == [False, True, False, True]


def test_the_heap_is_switched_only_in_a_process_given_the_heap_settings(monkeypatch):
    from types import SimpleNamespace

    from dask_ipy.supervisor import HEAP_ENV
    from dask_ipy.worker import system

    calls = []
    monkeypatch.setattr(system, "_glibc", lambda: SimpleNamespace(
        mallopt=lambda *a: calls.append(a) or 1))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert system.reuse_heap(False) is False and calls == []
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", HEAP_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert system.reuse_heap(False) and system.reuse_heap(True)
    assert calls == [(-3, 128 * 1024), (-3, 32 * 2**20)]

