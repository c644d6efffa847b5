"""How a supervised worker's death reaches KilledWorker's text: its supervisor's word
("worker-died", `SchedulerState.worker_died`), before or after the scheduler saw the
connection go; a task it would end waits for that word (`lost`), and only that task;
without a word (`death_unexplained`), or without a supervisor, "connection lost"."""

import pytest

from dask_ipy.scheduler.state import MAX_DEATH_TEXT, SchedulerState
from dask_ipy.supervisor import fate, oom_kills

pytestmark = pytest.mark.timeout(60)

A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"
START = "Attempted to run task 'x' on 1 different workers, but all those workers " \
        "died while running it. The last worker that attempted to run the task was "


def make(supervised=True):
    """A client 'c' and one-thread workers 'w1' (A, pid 11, supervisor token 't1')
    and 'w2' (B, pid 12, 't2'); no death is allowed: the first errs."""
    s = SchedulerState(allowed_failures=0, validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1, pid=11, supervised="t1" if supervised else None)
    s.add_worker("w2", B, nthreads=1, pid=12, supervised="t2" if supervised else None)
    s.take_messages()
    return s


def running_x(s):
    """Task 'x' started on w1."""
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    assert [wid for _, wid, _ in s.take_messages()] == ["w1"]
    s.handle_worker_message("w1", {"op": "task-started", "key": "x"})
    s.take_messages()


def erred(s):
    return [(ident, msg["type"], msg["text"]) for kind, ident, msg in s.take_messages()
            if msg["op"] == "task-erred"]


def test_a_lost_supervised_worker_holds_the_task_it_would_end_for_its_supervisor():
    s = make()
    running_x(s)
    s.remove_worker("w1", reason="connection lost", lost=True)
    assert s.tasks["x"].state == "released" and s.lost == {
        "t1": (A, 11, "connection lost", "", ["x"])}
    assert s.take_messages() == [("worker", "w2",
                                  {"op": "worker-removed", "address": A})]
    assert s.worker_died("t1", 11, "its process was killed by SIGSEGV") == A
    assert erred(s) == [("c", "KilledWorker", START + A + ": its process was killed "
                                                        "by SIGSEGV.")]
    assert s.tasks["x"].state == "erred" and s.lost == {}
    assert s.tasks["x"].error["args"] == ["x", A, 0, "its process was killed by SIGSEGV"]
    # Logged after the removal, as events of the worker's address and of "all".
    assert [e["action"] for _, e in s.events[A]] == [
        "add-worker", "remove-worker", "worker-died"]
    assert s.events["all"][-1][1] == {"action": "worker-died", "worker": A,
                                      "reason": "its process was killed by SIGSEGV"}


def test_a_word_before_the_lost_connection_is_logged_before_the_removal():
    s = make()
    s.worker_died("t1", 11, "its process exited with code 3")
    assert [e for _, e in s.events[A]][1:] == [
        {"action": "worker-died", "reason": "its process exited with code 3"},
        {"action": "remove-worker", "processing-tasks": [], "lost-computed-tasks": [],
         "lost-scattered-tasks": [], "expected": False,
         "reason": "its process exited with code 3"}]


def test_a_word_before_the_lost_connection_removes_the_worker_with_it():
    s = make()
    running_x(s)
    assert s.worker_died("t1", 11, "its process exited with code 3") == A
    assert "w1" not in s.workers and s.lost == {}
    assert erred(s) == [("c", "KilledWorker",
                         START + A + ": its process exited with code 3.")]
    # The connection's loss, seen next, finds nothing left to do.
    assert s.remove_worker("w1", reason="connection lost", lost=True) is None


def test_without_a_word_the_wait_ends_in_connection_lost():
    s = make()
    running_x(s)
    s.remove_worker("w1", reason="connection lost", lost=True)
    s.take_messages()
    s.death_unexplained("t1")
    assert erred(s) == [("c", "KilledWorker", START + A + ": connection lost.")]
    s.worker_died("t1", 11, "its process exited with code 3")   # too late: ignored
    assert s.take_messages() == [] and s.tasks["x"].state == "erred"


def test_recovery_does_not_wait_for_the_word():
    """A task queued behind the one that killed the worker runs elsewhere at once."""
    s = SchedulerState(allowed_failures=0, validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1, pid=11, supervised="t1")
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", [])}, ["x", "y"],
                   {"x": 0, "y": 1})
    s.handle_worker_message("w1", {"op": "task-started", "key": "x"})
    s.add_worker("w2", B, nthreads=1, pid=12, supervised="t2")
    s.take_messages()
    assert s.tasks["y"].processing_on.id == "w1"
    s.remove_worker("w1", reason="connection lost", lost=True)
    assert [(wid, msg["key"]) for _, wid, msg in s.take_messages()
            if msg["op"] == "compute-task"] == [("w2", "y")]
    assert s.tasks["x"].state == "released" and s.tasks["y"].state == "processing"


def test_a_task_let_go_during_the_wait_is_forgotten_at_once():
    s = make()
    running_x(s)
    s.remove_worker("w1", reason="connection lost", lost=True)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert "x" not in s.tasks
    s.worker_died("t1", 11, "its process exited with code 3")
    assert "x" not in s.tasks and erred(s) == [] and s.lost == {}


def test_an_unsupervised_worker_ends_the_task_at_once():
    s = make(supervised=False)
    running_x(s)
    s.remove_worker("w1", reason="connection lost", lost=True)
    assert s.lost == {} and erred(s) == [("c", "KilledWorker",
                                          START + A + ": connection lost.")]
    # Nor does a word remove such a worker.
    running_x(s2 := make(supervised=False))
    assert s2.worker_died(None, 11, "its process exited with code 3") is None
    assert "w1" in s2.workers


def test_a_word_about_another_process_or_worker_changes_nothing():
    s = make()
    running_x(s)
    assert s.worker_died("t1", 99, "its process exited with code 3") is None  # not its pid
    assert s.worker_died("t9", 11, "its process exited with code 3") is None
    assert set(s.workers) == {"w1", "w2"} and s.tasks["x"].state == "processing"
    s.remove_worker("w1", reason="connection lost", lost=True)
    assert s.worker_died("t1", 99, "its process exited with code 3") is None
    assert s.tasks["x"].state == "released" and "t1" in s.lost


def test_the_word_is_bounded_and_the_memory_note_stays():
    s = make()
    running_x(s)
    s.workers["w1"].memory_limit = 1000
    s.workers["w1"].metrics = {"memory": 950}
    s.remove_worker("w1", reason="connection lost", lost=True)
    s.worker_died("t1", 11, "x" * 10_000)
    [(_, _, text)] = erred(s)
    assert text == (START + A + ": " + "x" * MAX_DEATH_TEXT + "; its memory at its "
                    "last heartbeat: 950 B of its 1000 B limit.")


def test_fate_says_how_the_process_ended():
    assert fate(3, "error") == "its process exited with code 3"
    assert fate(-11, "killed by SIGSEGV") == "its process was killed by SIGSEGV"
    # SIGKILL: the kernel's out-of-memory killer ran meanwhile, or not, or unknown.
    assert fate(-9, "killed by SIGKILL", oom=True) == "its process was killed by " \
        "SIGKILL (the kernel's out-of-memory killer ended a process meanwhile)"
    assert fate(-9, "killed by SIGKILL", oom=False) == \
        "its process was killed by SIGKILL"
    assert fate(-9, "killed by SIGKILL") == \
        "its process was killed by SIGKILL (the system may have run out of memory)"
    assert fate(-9, "memory") == \
        "its process was killed by its supervisor for exceeding its memory limit"
    assert fate(-200, "killed") == "its process was killed by signal 200"
    # A clean exit, or one for memory the worker told the scheduler of itself.
    assert fate(0, "error") is None and fate(75, "memory") is None


def test_the_kernels_out_of_memory_kills_are_read_from_vmstat(tmp_path):
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\noom_kill 7\npgfault 3\n")
    assert oom_kills(vmstat) == 7
    vmstat.write_text("nr_free_pages 1000\n")       # a kernel before 4.13
    assert oom_kills(vmstat) is None
    vmstat.write_text("oom_kill many\n")
    assert oom_kills(vmstat) is None
    assert oom_kills(tmp_path / "none") is None       # not Linux
