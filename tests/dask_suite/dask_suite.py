"""A pytest plugin: dask's own tests, every compute and persist on a cluster.

    pytest -p dask_suite --dask-suite=dask_ipy|distributed --pyargs dask.tests.test_base

Forcing: ``dask.base.get_scheduler`` (and every module's reference to it) answers
the cluster client's ``get`` whatever it is asked (``scheduler=``, ``dask.config``,
a collection's default), so ``dask.compute`` sends its expression to ``client.get``
and ``dask.persist`` calls ``client.persist``.  Both systems are forced the same
way, each on a scheduler and two worker processes of one thread:

- ``dask_ipy``: the process cluster of the project's tests (``helpers.ProcessCluster``);
- ``distributed``: ``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)``.

A dead worker, a closed client or a broken cluster is replaced before the next test,
and a failed test's frames are not kept (pytest keeps the last failure for debugging),
so that its Futures do not hold keys into the next tests: one test cannot fail the
rest.

``--dask-suite-report=PATH`` writes ``{"system", "outcomes": {id: outcome},
"durations": {id: seconds}}`` with ids relative to dask's parent directory
(``dask/tests/test_base.py::test_x``).  ``--dask-suite-gate=LIST`` makes the exit
status that of the gate: 0 if every failed or erred test is in LIST (the tests that
fail under dask.distributed: ``distributed_failures.txt``), else 1, printing the
others.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)

SYSTEMS = ("dask_ipy", "distributed")
FAILING = ("failed", "error")


def pytest_addoption(parser):
    group = parser.getgroup("dask-suite", "dask's tests forced through a cluster")
    group.addoption("--dask-suite", choices=SYSTEMS, default=None,
                    help="send every compute and persist to this system's cluster")
    group.addoption("--dask-suite-report", default=None, metavar="PATH",
                    help="write every test's outcome and duration to PATH (JSON)")
    group.addoption("--dask-suite-gate", default=None, metavar="LIST",
                    help="exit status 0 only if every failure is listed in LIST")


def pytest_configure(config):
    system = config.getoption("dask_suite")
    if system:
        config.pluginmanager.register(Forced(config, system), "dask-suite-forced")


class DaskIpy:
    """A scheduler and two one-thread worker processes (the tests' ProcessCluster)."""

    def __init__(self):
        if TESTS not in sys.path:
            sys.path.insert(0, TESTS)
        from helpers import ProcessCluster

        env = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, env) if p)
        self.directory = tempfile.TemporaryDirectory(prefix="dask-suite-")
        self.cluster = ProcessCluster(self.directory.name, nworkers=2, nthreads=1)
        self.client = None
        try:
            self.client = self.cluster.client()
        except BaseException:
            self.close()
            raise

    def healthy(self):
        """Replace dead workers; False if the scheduler or the client is gone."""
        if self.cluster.scheduler.poll() is not None:
            return False
        dead = [w for w in self.cluster.workers if w.poll() is not None]
        for w in dead:
            self.cluster.workers.remove(w)
            w.stdout.close()
            self.cluster.workers.append(self.cluster.start_worker())
        if self.client.status != "running":
            return False
        deadline = time.monotonic() + 30
        try:
            while dead and len(self.client.scheduler_info()["workers"]) < 2:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        except Exception:
            return False
        return True

    def close(self):
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.cluster.close()
        self.directory.cleanup()


class Distributed:
    """dask.distributed's LocalCluster: two one-thread worker processes (its
    nannies restart a dead worker)."""

    def __init__(self):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=40)
        self.client = Client(self.cluster)

    def healthy(self):
        """False if the client is closed or is no longer dask.distributed's default
        (dask picks its shuffle method from that; a test that runs a cluster of its
        own may unset it)."""
        from distributed import default_client

        try:
            if self.client.status != "running" or default_client() is not self.client:
                return False
            if len(self.client.scheduler_info()["workers"]) < 2:
                self.client.wait_for_workers(2, timeout=60)
            return True
        except Exception:
            return False

    def close(self):
        for close in (self.client.close, self.cluster.close):
            with contextlib.suppress(Exception):
                close()


class Forced:
    def __init__(self, config, system):
        self.config = config
        self.system = system
        self.outcomes = {}
        self.durations = {}
        self.paths = {}
        self.restarts = 0
        self.cluster = self._start()
        self.unforce = force(lambda: self.cluster.client.get)
        import dask

        self.root = os.path.dirname(os.path.dirname(dask.__file__))

    def _start(self):
        return DaskIpy() if self.system == "dask_ipy" else Distributed()

    def pytest_unconfigure(self, config):
        self.unforce()
        self.cluster.close()

    def pytest_report_header(self, config):
        return f"dask-suite: every compute and persist through {self.system}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        """A test that broke the cluster or its client (one that runs a cluster of
        its own may) does not fail the tests after it: they get a new one."""
        if not self.cluster.healthy():
            self.restarts += 1
            self.cluster.close()
            self.cluster = self._start()

    def pytest_collection_modifyitems(self, items):
        self.paths = {item.nodeid: str(item.path) for item in items}

    def _id(self, report):
        """The id of a test relative to dask's parent directory, wherever pytest
        roots its node ids."""
        rest = report.nodeid.partition("::")[2]
        return f"{os.path.relpath(self.paths[report.nodeid], self.root)}::{rest}"

    def pytest_runtest_logreport(self, report):
        if report.failed:
            # pytest keeps the last failure for post-mortem debugging: its frames
            # would hold that test's Futures, and their keys, into the next tests.
            for name in ("last_type", "last_value", "last_traceback", "last_exc"):
                sys.__dict__.pop(name, None)
        tid = self._id(report)
        self.durations[tid] = self.durations.get(tid, 0.0) + report.duration
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.when == "call":
            outcome = report.outcome
        elif report.failed:
            outcome = "error"
        elif report.skipped:
            outcome = "skipped"
        else:
            return
        if self.outcomes.get(tid) not in FAILING:      # a teardown error stays
            self.outcomes[tid] = outcome

    def pytest_sessionfinish(self, session, exitstatus):
        path = self.config.getoption("dask_suite_report")
        if path:
            with open(path, "w") as f:
                json.dump({"system": self.system, "outcomes": self.outcomes,
                           "durations": self.durations, "restarts": self.restarts},
                          f, indent=0, sort_keys=True)
        gate = self.config.getoption("dask_suite_gate")
        if gate and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            allowed = load(gate)
            offenders = sorted(t for t, o in self.outcomes.items()
                               if o in FAILING and t not in allowed)
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            write = tr.write_line if tr else print
            write("")              # end the line of progress dots
            if offenders:
                write(f"dask-suite gate FAILED: {len(offenders)} test(s) fail under "
                      f"{self.system} and are not known to fail under dask.distributed:")
                for t in offenders:
                    write(f"  {t}")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            else:
                write(f"dask-suite gate passed: every failure under {self.system} is "
                      f"one dask.distributed has too")
                session.exitstatus = pytest.ExitCode.OK


def force(current_get):
    """Make dask's scheduler lookup answer ``current_get()``; returns the undo."""
    import dask.base

    original = dask.base.get_scheduler

    def get_scheduler(get=None, scheduler=None, collections=None, cls=None):
        if get:
            raise TypeError(dask.base.get_err_msg)
        return current_get()

    patched = []
    for module in list(sys.modules.values()):
        if getattr(module, "get_scheduler", None) is original:
            module.get_scheduler = get_scheduler
            patched.append(module)

    def undo():
        for module in patched:
            module.get_scheduler = original
    return undo


def load(path):
    """``{test id: reason}`` from a list: ``## reason`` starts a group of ids, one a
    line; other lines starting with ``#`` and blank lines are comments."""
    out = {}
    reason = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("## "):
                reason = line[3:].strip()
            elif line and not line.startswith("#"):
                if reason is None:
                    raise ValueError(f"{path}: {line!r} has no reason (a '## ' line)")
                out[line] = reason
    return out
