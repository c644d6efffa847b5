"""The ``dask-ipy`` command: scheduler and worker processes, the demo, bench."""

import json
import operator
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

import psutil
import pytest

from helpers import ROOT, die, kill_tree, reaped, read_info, wait_for
from dask_ipy import Client, KilledWorker
from dask_ipy.plugins import WorkerPlugin
from dask_ipy.cli import log_path, parse_args, ready_lines
from dask_ipy.bootstrap import scheduler_argv, spawn_scheduler
from dask_ipy.security import Security
from dask_ipy.worker.system import SWITCH_INTERVAL



def command():
    """The installed console script if there is one, else ``python -m dask_ipy``."""
    script = os.path.join(os.path.dirname(sys.executable), "dask-ipy")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dask_ipy"]


@contextmanager
def running(*args, **kw):
    """A ``dask-ipy`` process whose ``name: value`` start-up lines are parsed into
    ``proc.info``; killed with its children if still running at the end."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(command() + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)
    try:
        proc.info = read_info(proc, last=kw.pop("last", None))
        yield proc
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(10)
        proc.stdout.close()


def test_parser():
    args = parse_args(["worker", "f.json", "--nthreads", "3"])
    assert (args.command, args.scheduler, args.nthreads) == ("worker", "f.json", 3)
    assert parse_args(["bench", "--quick", "--only", "a"]).args == ["--quick", "--only", "a"]
    assert parse_args(["bench"]).args == []
    assert parse_args(["scheduler"]).transition_log_length is None     # the default
    off = parse_args(["scheduler", "--transition-log-length", "0"])
    assert off.transition_log_length == 0
    with pytest.raises(SystemExit):
        parse_args(["worker", "f.json", "--bogus"])
    assert ready_lines(1, "f", "tcp://a:1", "tcp://a:2")[-1] == \
        "address_to_clients: tcp://a:2"
    assert log_path("auto", "/r/scheduler-1-x.json") == "/r/scheduler-1-x.log"
    assert log_path("/tmp/l", "/r/s.json") == "/tmp/l"


def process_settings():
    import gc
    import sys

    from dask_ipy.worker.system import reuse_heap

    # reuse_heap acts only in a process given the worker's heap settings.
    return sys.getswitchinterval(), gc.get_threshold(), reuse_heap(True)


def test_scheduler_and_worker_commands(tmp_path):
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path, "--idle-timeout", "60") as s:
        assert s.info["connection_file"] == path
        with running("worker", path, "--nthreads", "2", "--name", "w1") as w:
            with Client(path, set_as_default=False) as c:
                wait_for(lambda: len(c.nthreads()) == 1, message="the worker")
                assert c.nthreads() == {w.info["address"]: 2}
                assert c.get({"x": 1, "y": (operator.add, "x", 2)}, "y") == 3
                assert c.submit(pow, 2, 10).result(timeout=10) == 1024
                # The worker process's own interpreter settings (see cmd_worker).
                assert c.run(process_settings) == {w.info["address"]: (
                    SWITCH_INTERVAL, (10_000, 10, 10), True)}
                c.shutdown()
            assert w.wait(10) == 0                      # closed by the scheduler
        assert s.wait(10) == 0
    assert not os.path.exists(path)


def test_worker_resources_and_threads_from_the_command_line(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["worker", "f.json", "--nthreads", "0"])
    with pytest.raises(SystemExit):
        parse_args(["worker", "f.json", "--resources", "GPU=lots"])
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path, "--idle-timeout", "60"):
        with running("worker", path, "--resources", "GPU=2,MEM=10e9") as w, \
                running("worker", path, "--no-supervisor") as plain:
            assert json.loads(w.info["resources"]) == {"GPU": 2, "MEM": 10_000_000_000}
            with Client(path, set_as_default=False) as c:
                wait_for(lambda: len(c.nthreads()) == 2, message="the workers")
                fs = c.map(operator.neg, range(6), resources={"GPU": 1})
                assert c.gather(fs) == [-x for x in range(6)]
                assert {a for f in fs for a in c.who_has([f])[f.key]} == \
                    {w.info["address"]}
                assert plain.info["address"] in c.nthreads()
                # A worker without a supervisor sets its process up the same way.
                assert c.run(process_settings) == {
                    a: (SWITCH_INTERVAL, (10_000, 10, 10), True)
                    for a in (w.info["address"], plain.info["address"])}
                c.shutdown()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_close_cleanly(tmp_path, sig):
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path) as s:
        with running("worker", path) as w:
            with Client(path, set_as_default=False) as c:
                wait_for(lambda: len(c.nthreads()) == 1, message="the worker")
                w.send_signal(sig)
                assert w.wait(10) == 0
                wait_for(lambda: not c.nthreads(), message="the worker to leave")
        s.send_signal(sig)
        assert s.wait(10) == 0
    assert not os.path.exists(path)


def test_a_lifeline_stops_the_process_when_its_stdin_closes(tmp_path):
    """``--lifeline``: the parent holds the other end of stdin; its closing (or the
    parent's death) stops the scheduler, and a worker with its supervisor, cleanly."""
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path, "--lifeline",
                 stdin=subprocess.PIPE) as s:
        with running("worker", path, "--lifeline", stdin=subprocess.PIPE) as w:
            with Client(path, set_as_default=False) as c:
                wait_for(lambda: len(c.nthreads()) == 1, message="the worker")
                worker = psutil.Process(int(w.info["pid"]))
                w.stdin.close()
                assert w.wait(10) == 0
                worker.wait(10)
                wait_for(lambda: not c.nthreads(), message="the worker to leave")
        s.stdin.close()
        assert s.wait(10) == 0
    assert not os.path.exists(path)


@pytest.mark.timeout(180)
def test_a_task_that_kills_dask_ipy_workers_ends_in_killed_worker(tmp_path):
    """Each worker it lands on dies at once (os._exit), however young: its supervisor
    starts a new one; allowed_failures (3) deaths are retried, the fourth is the
    task's KilledWorker, which says how that worker's process ended, and the cluster
    is whole again."""
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path, "--idle-timeout", "60"), \
            running("worker", path) as w1, running("worker", path) as w2:
        with Client(path, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
            before = {w["pid"] for w in c.scheduler_info()["workers"].values()}
            killer = c.submit(die, key="killer")
            with pytest.raises(KilledWorker, match="killer"):
                killer.result(timeout=120)
            assert "on 4 different workers, but all those workers died" in \
            str(killer.exception())
            # Its supervisor told the scheduler how the last one ended (helpers.die).
            assert str(killer.exception()).endswith(": its process exited with code 1.")
            c.wait_for_workers(2, timeout=60)
            wait_for(lambda: len(c.nthreads()) == 2, timeout=60,
                     message="exactly two workers")
            after = {w["pid"] for w in c.scheduler_info()["workers"].values()}
            assert after != before
            assert c.submit(operator.add, 1, 2).result(timeout=30) == 3
            c.shutdown()
        assert w1.wait(20) == 0 and w2.wait(20) == 0     # the supervisors end cleanly
        said = w1.stdout.read() + w2.stdout.read()
    # Three deaths, three restarts: the task did not run a fourth time.
    assert said.count("supervisor: worker exited") == 4, said
    assert "giving up" not in said


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_start_is_given_up_on_with_its_error(tmp_path):
    missing = str(tmp_path / "none.json")
    r = subprocess.run(command() + ["worker", missing], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 1
    assert r.stderr.count("before registering); starting a new one in") == 3
    *_, last = r.stderr.rstrip().split("supervisor: ")
    assert last.startswith("worker exited (error, code 1) before registering with its "
                           "scheduler, 4 times in a row; giving up; its last lines "
                           "on stderr:\n")
    assert f"no connection file {missing!r}" in last


class KillsItsWorker(WorkerPlugin):
    """A broken plugin: every worker that sets it up dies soon after (once the
    scheduler has welcomed it)."""

    name = "kills-its-worker"

    def setup(self, worker):
        def kill():
            print(f"plugin kills worker {os.getpid()}", file=sys.stderr, flush=True)
            os._exit(3)
        threading.Timer(0.5, kill).start()


@pytest.mark.timeout(120)
def test_a_worker_that_keeps_dying_soon_after_registering_is_given_up_on(tmp_path):
    path = str(tmp_path / "scheduler.json")
    with running("scheduler", "--connection-file", path, "--idle-timeout", "60"):
        with Client(path, set_as_default=False) as c:
            c.register_plugin(KillsItsWorker())
            r = subprocess.run(command() + ["worker", path], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=100)
            c.shutdown()
    assert r.returncode == 3
    # A single death is restarted at once; the next ones after 0.5, 1 and 2 s.
    assert r.stderr.count("supervisor: worker exited (error, code 3); starting a new "
                          "one") == 4
    *_, last = r.stderr.rstrip().split("supervisor: ")
    assert last.startswith("worker exited (error, code 3) within 30 s of registering "
                           "with its scheduler, 5 times in 300 s; giving up; its last "
                           "lines on stderr:\n"), last
    assert "plugin kills worker" in last


def test_spawned_scheduler_takes_key_from_stdin_and_logs_to_a_file(tmp_path):
    security = Security.temporary()
    info = spawn_scheduler(scheduler_argv("127.0.0.1", 30, 10),
                           json.dumps(security.to_dict()), timeout=60)
    proc = psutil.Process(info["pid"])
    try:
        assert security.key.hex() not in " ".join(proc.cmdline())
        log = log_path("auto", info["connection_file"])
        assert os.path.exists(log)
        assert oct(os.stat(log).st_mode & 0o777) == "0o600"
        with Client(info["address_to_clients"], security=security,
                    set_as_default=False) as c:
            assert c.scheduler_info()["workers"] == {}
            c.shutdown()
        proc.wait(10)
        # A clean exit leaves no empty log and no connection file behind.
        assert not os.path.exists(log)
        assert not os.path.exists(info["connection_file"])
    finally:
        if proc.is_running():
            proc.kill()


def test_spawn_failure_reports_the_output():
    with pytest.raises(RuntimeError, match="did not start") as e:
        spawn_scheduler(["scheduler", "--no-such-option"], "{}", timeout=60)
    assert "--no-such-option" in str(e.value)


def test_demo_end_to_end():
    # The ipcluster's processes are the demo's children, or orphans of init once
    # ipyparallel's launcher killed a controller that outlived its SIGTERM: reaped
    # finds them all, even when the test fails or times out.
    with reaped():
        proc = subprocess.Popen(command() + ["demo"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            out, _ = proc.communicate(timeout=100)     # within the test's timeout
        finally:
            if proc.poll() is None:                    # timed out, or the test did
                kill_tree(proc.pid)
                proc.communicate()
    assert proc.returncode == 0, out
    assert "y = 3" in out
    assert "dask_client_from_ipclient:" in out
    assert "engine-0" in out and "engine-1" in out
    assert "all results correct" in out
    # With the complete extra (which the tests install) nothing is skipped.
    assert "skipped" not in out, out
    assert "dask.array: arange(1e6, chunks=1e5).sum() = 499999500000" in out
    assert "dask.dataframe: groupby('k').v.sum() = {0: 135, 1: 145, 2: 155}" in out


def test_bench_outside_a_checkout(tmp_path):
    r = subprocess.run(command() + ["bench", "--quick"], cwd=tmp_path, timeout=60,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "no benchmarks package here" in r.stderr


def test_bench_runs_the_benchmarks_package():
    r = subprocess.run(command() + ["bench", "--help"], cwd=ROOT, timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "python -m benchmarks" in r.stdout
