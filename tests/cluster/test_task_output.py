"""`dask_ipy.print` and `dask_ipy.warn` in tasks on real worker processes: printed
(warned) there, and by the clients on their own stdout/stderr (warned with the
category they can import); every ordinary client gets them, a worker's own client
(`get_client` in a task) does not; outside a task they are the builtins."""

import os
import sys

import pytest

import dask_ipy
from helpers import processes, wait_for

pytestmark = pytest.mark.timeout(90)


class TaskWarning(UserWarning):
    """A category the client imports (this module)."""


def prints(text):
    dask_ipy.print(text, 1, [2], sep="-", end="!\n", flush=True)
    dask_ipy.print("to stderr", text, file=sys.stderr)
    return os.getpid()


def warns(text):
    dask_ipy.warn(text, TaskWarning)
    return sys._getframe().f_lineno - 1


def warns_hidden(text):
    class HiddenWarning(UserWarning):
        """A category the client cannot import: made in a task."""
    dask_ipy.warn(text, HiddenWarning)


def its_client_id():
    return dask_ipy.get_client().id


class Captured:
    """What capsys has captured so far, kept across reads."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.out = self.err = ""

    def read(self):
        out, err = self.capsys.readouterr()
        self.out += out
        self.err += err
        return self


def test_print_in_a_task_shows_in_the_worker_and_on_the_clients_streams(tmp_path,
                                                                          capsys):
    with processes(tmp_path, nworkers=1) as (pc, c):
        pid = c.submit(prints, "hello").result()
        seen = Captured(capsys)
        wait_for(lambda: "to stderr hello\n" in seen.read().err,
                 message="the print on stderr")
        wait_for(lambda: "hello-1-[2]!\n" in seen.read().out,
                 message="the print on stdout")
        assert (seen.out, seen.err) == ("hello-1-[2]!\n", "to stderr hello\n")
        (worker,) = pc.workers
        assert worker.pid == pid
        # printed in the worker's process too (flushed there before the task ended)
        assert worker.stdout.readline() == "hello-1-[2]!\n"


def test_warn_in_a_task_warns_on_the_client_with_its_category(tmp_path):
    with processes(tmp_path, nworkers=1) as (pc, c):
        with pytest.warns(Warning) as record:
            line = c.submit(warns, "careful").result()
            wait_for(lambda: any("careful" in str(w.message) for w in record),
                     message="the warning")
            c.submit(warns_hidden, "hidden").result()
            wait_for(lambda: any("hidden" in str(w.message) for w in record),
                     message="the warning of a category unknown here")
        known, hidden = [w for w in record
                         if str(w.message).endswith(("careful", "hidden"))]
        assert (known.category, str(known.message)) == (TaskWarning, "careful")
        assert (known.filename, known.lineno) == (__file__, line)
        assert hidden.category is UserWarning
        assert str(hidden.message) == (f"{__name__}.warns_hidden.<locals>."
                                       f"HiddenWarning: hidden")


def test_a_tasks_output_reaches_every_client(tmp_path, capsys):
    with processes(tmp_path, nworkers=2) as (pc, c):
        with pc.client() as other:
            c.submit(prints, "both").result()
            seen = Captured(capsys)
            wait_for(lambda: seen.read().out.count("both-1-[2]!\n") == 2,
                     message="the print in both clients")
            wait_for(lambda: seen.read().err.count("to stderr both\n") == 2,
                     message="the print on stderr in both clients")


def test_a_workers_own_client_does_not_subscribe(cluster):
    s, workers, c = cluster
    task_client = c.submit(its_client_id).result()
    assert task_client.encode() in s.state.clients
    # Subscriptions go before a client's registration: both clients are running.
    assert s.state.subscribers["print"] == s.state.subscribers["warn"] == {c.id.encode()}


def test_outside_a_task_they_are_the_builtins(cluster, capsys):
    """Even in a process running workers (as in an ipyparallel engine), where
    get_worker() finds one: nothing is sent."""
    s, workers, c = cluster
    dask_ipy.print("outside", 1, sep="+")
    with pytest.warns(TaskWarning, match="outside") as record:
        dask_ipy.warn("outside", TaskWarning)
        line = sys._getframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]
    # A worker's events reach the scheduler in order: once its marker is there, any
    # print or warning it would have sent before is too.
    for w in workers:
        w.log_event("marker", w.address)
    wait_for(lambda: len(c.get_events("marker")) == 2, message="the markers")
    assert c.get_events("print") == () and c.get_events("warn") == ()
    assert capsys.readouterr().out == "outside+1\n"
