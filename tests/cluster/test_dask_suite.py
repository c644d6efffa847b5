"""The gate: dask's own tests, every compute and persist forced through dask_ipy (a
scheduler and two one-thread worker processes), pass wherever they pass under
dask.distributed (tests/dask_suite/).  CI runs the modules of ``run.CI_MODULES``;
the others run with ``pytest -m dask_suite``."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

SUITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "dask_suite")


def _module(name):
    spec = importlib.util.spec_from_file_location(f"dask_suite_{name}",
                                                  os.path.join(SUITE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _module("run")
plugin = _module("dask_suite")


def forced_run(tmp_path, modules, gate=None, timeout=3000):
    """(exit status, output, outcomes) of dask_ipy's forced run of `modules`."""
    report = tmp_path / "report.json"
    cmd = run.command("dask_ipy", modules, str(report), gate=gate)
    proc = subprocess.run(cmd, env=run.environment(), capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path))
    outcomes = json.loads(report.read_text())["outcomes"] if report.exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, outcomes


def check_gate(tmp_path, modules, timeout=3000):
    status, output, outcomes = forced_run(tmp_path, modules, gate=run.FAILURES,
                                          timeout=timeout)
    summary = output[-3000:]
    for module in modules:               # every module ran, none was left out
        assert any(run.module_of(t) == module for t in outcomes), (module, summary)
    allowed = plugin.load(run.FAILURES)
    offenders = sorted(t for t, o in outcomes.items()
                       if o in plugin.FAILING and t not in allowed)
    assert not offenders, ("pass under dask.distributed, fail under dask_ipy:\n"
                           + "\n".join(offenders))
    assert status == 0, summary
    passed = sum(o == "passed" for o in outcomes.values())
    assert passed > len(outcomes) / 2, summary


@pytest.mark.uncovered        # dask's tests on worker processes: timed by CI, not traced
@pytest.mark.timeout(1500)
def test_dask_suite_gate(tmp_path):
    check_gate(tmp_path, run.CI_MODULES)


@pytest.mark.dask_suite
@pytest.mark.timeout(9000)
def test_dask_suite_gate_long(tmp_path):
    check_gate(tmp_path, run.LONG_MODULES, timeout=8400)


FAKE = '''
import os
import dask


def test_forced():
    # "sync" asks for this process: forced, the task runs on a worker process.
    (pid,) = dask.compute(dask.delayed(os.getpid)(), scheduler="sync")
    assert pid != os.getpid()


def test_persist_forced():
    (x,) = dask.persist(dask.delayed(os.getpid)(), scheduler="threads")
    assert "Future" in type(dict(x.__dask_graph__())[x.key]).__name__


def test_fails():
    assert dask.delayed(1)().compute() == 2
'''


@pytest.mark.timeout(120)
def test_the_plugin_forces_and_the_gate_can_fail(tmp_path):
    (tmp_path / "test_fake_suite.py").write_text(FAKE)
    listed = tmp_path / "listed.txt"
    status, output, outcomes = forced_run(tmp_path, ["test_fake_suite"],
                                          gate=tmp_path / "missing.txt")
    assert status != 0       # no list to read: an error, never a pass
    unlisted = tmp_path / "unlisted.txt"
    unlisted.write_text("## another reason\nsome/test.py::test_other\n")
    status, output, outcomes = forced_run(tmp_path, ["test_fake_suite"], gate=unlisted)
    failing = [t for t in outcomes if t.endswith("::test_fails")]
    assert sorted(o for o in outcomes.values()) == ["failed", "passed", "passed"]
    assert len(failing) == 1 and outcomes[failing[0]] == "failed"
    assert status == 1 and "dask-suite gate FAILED" in output and failing[0] in output
    listed.write_text(f"# comment\n## known to fail\n{failing[0]}\n")
    status, output, outcomes = forced_run(tmp_path, ["test_fake_suite"], gate=listed)
    assert status == 0 and "dask-suite gate passed" in output, output[-2000:]


def test_the_list_of_failures_gives_a_reason_for_each(tmp_path):
    allowed = plugin.load(run.FAILURES)
    assert allowed and all(reason for reason in allowed.values())
    assert {run.module_of(t) for t in allowed} <= set(run.MODULES)
    bad = tmp_path / "bad.txt"
    bad.write_text("dask/tests/test_base.py::test_x\n")
    with pytest.raises(ValueError, match="no reason"):
        plugin.load(bad)


HOLDER = '''
import sys
import time
sys.path.insert(0, sys.argv[2])
from helpers import ProcessCluster
pc = ProcessCluster(sys.argv[1], nworkers=1)
print(pc.scheduler.pid, pc.workers[0].pid, flush=True)
sys.stdin.read()
'''


@pytest.mark.timeout(60)
def test_a_cluster_ends_with_the_process_that_started_it_even_if_killed(tmp_path):
    # A killed gate must not leave its scheduler and workers keeping each other
    # alive (and holding the pipes of whoever waits on the gate open).
    tests = os.path.dirname(SUITE)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), tests],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in holder.stdout.readline().split()]
    assert len(pids) == 2
    holder.kill()
    holder.wait(10)
    deadline = time.monotonic() + 20
    try:
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, f"still running: {pids}"
            time.sleep(0.1)
    finally:
        for pid in filter(_alive, pids):
            os.kill(pid, signal.SIGKILL)


def _alive(pid):
    """False for a process that is gone or a zombie (ended, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
