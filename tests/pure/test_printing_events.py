"""`dask_ipy.print` and `dask_ipy.warn` without a cluster: in a task (a stand-in
worker that records what it logs) they print or warn here and log one event of plain
text; outside a task they are the builtins, even in a process running a worker; and a
client's handlers print the events on its streams and issue the warnings."""

import sys
import threading
import warnings

import pytest

from dask_ipy.client.printing import handle_print, handle_warn
from dask_ipy.worker import context
from dask_ipy.worker.printing import print as task_print
from dask_ipy.worker.printing import warn as task_warn


class Recorder:
    """What a task's print and warn use of a worker: `log_event`."""

    def __init__(self):
        self.events = []
        self.closed = threading.Event()

    def log_event(self, topic, msg):
        self.events.append((topic, msg))


class TaskWarning(UserWarning):
    pass


class Shown:
    def __init__(self):
        self.calls = 0

    def __str__(self):
        self.calls += 1
        return "<shown>"


@pytest.fixture
def worker():
    w = Recorder()
    context.enter(w, "key-1")
    try:
        yield w
    finally:
        context.leave()


def test_print_in_a_task_prints_here_and_logs_its_text(worker, capsys):
    shown = Shown()
    task_print("a", 1, shown, sep="-", end="!\n")
    task_print("to stderr", file=sys.stderr, flush=True)
    task_print()
    out, err = capsys.readouterr()
    assert (out, err) == ("a-1-<shown>!\n\n", "to stderr\n")
    assert shown.calls == 1                 # str of each argument, once
    assert worker.events == [
        ("print", {"args": ["a", "1", "<shown>"], "sep": "-", "end": "!\n",
                   "file": "stdout", "flush": False}),
        ("print", {"args": ["to stderr"], "sep": " ", "end": "\n", "file": "stderr",
                   "flush": True}),
        ("print", {"args": [], "sep": " ", "end": "\n", "file": "stdout",
                   "flush": False})]


def test_print_in_a_task_refuses_what_it_cannot_forward_before_printing(worker,
                                                                         capsys,
                                                                         tmp_path):
    with open(tmp_path / "f", "w") as f, pytest.raises(TypeError, match="sys.stdout"):
        task_print("x", file=f)
    assert (tmp_path / "f").read_text() == ""
    with pytest.raises(TypeError):
        task_print("x", sep=1)
    assert capsys.readouterr() == ("", "")
    assert worker.events == []


def test_warn_in_a_task_warns_here_and_logs_its_category_and_place(worker):
    with pytest.warns(TaskWarning, match="careful") as record:
        task_warn("careful", TaskWarning)
        line = sys._getframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]

    def helper():
        task_warn(TaskWarning("from the caller's caller"), stacklevel=2)
    with pytest.warns(TaskWarning):
        helper()
        outer = sys._getframe().f_lineno - 1
    assert worker.events == [
        ("warn", {"message": "careful", "category": f"{__name__}.TaskWarning",
                  "filename": __file__, "lineno": line, "module": __name__,
                  "function": "test_warn_in_a_task_warns_here_and_logs_its_category_"
                              "and_place"}),
        ("warn", {"message": "from the caller's caller",
                  "category": f"{__name__}.TaskWarning", "filename": __file__,
                  "lineno": outer, "module": __name__,
                  "function": "test_warn_in_a_task_warns_here_and_logs_its_category_"
                              "and_place"})]


def test_warn_in_a_task_refuses_a_category_that_is_not_a_warning(worker):
    with pytest.raises(TypeError, match="Warning subclass"):
        task_warn("x", ValueError)
    assert worker.events == []


def test_outside_a_task_they_are_the_builtins_even_beside_a_worker(capsys):
    w = Recorder()
    context.add_worker(w)           # what get_worker() finds outside a task
    try:
        assert context.get_worker() is w
        task_print("plain", 2, sep="+")
        with pytest.warns(TaskWarning, match="plain") as record:
            task_warn("plain", TaskWarning)
            line = sys._getframe().f_lineno - 1
    finally:
        w.closed.set()              # get_worker() no longer finds it
    assert capsys.readouterr().out == "plain+2\n"
    assert [(r.filename, r.lineno) for r in record] == [(__file__, line)]
    assert w.events == []


# ---------------------------------------------------------------- in the clients

def test_the_client_prints_an_event_on_its_stream(capsys):
    handle_print((0.0, {"args": ["a", "b"], "sep": "/", "end": ".", "file": "stdout",
                        "flush": False}))
    handle_print((0.0, {"args": ["e"], "sep": " ", "end": "\n", "file": "stderr",
                        "flush": True}))
    handle_print((0.0, "logged by hand"))
    assert capsys.readouterr() == ("a/b.logged by hand\n", "e\n")


def warn_event(message, category, line=7, **more):
    return (0.0, {"message": message, "category": category, "filename": "/w/task.py",
                  "lineno": line, "module": "task", "function": "f", **more})


def test_the_client_warns_with_the_category_it_can_import_else_a_user_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        handle_warn(warn_event("careful", f"{__name__}.TaskWarning"))
        handle_warn(warn_event("hidden", f"{__name__}.f.<locals>.Hidden"))
        handle_warn(warn_event("nowhere", "no_such_module_here.Thing"))
        handle_warn(warn_event("not one", "builtins.ValueError"))
        handle_warn(warn_event("builtin", "builtins.RuntimeWarning"))
    assert [(w.category, str(w.message), w.filename, w.lineno) for w in record] == [
        (TaskWarning, "careful", "/w/task.py", 7),
        (UserWarning, f"{__name__}.f.<locals>.Hidden: hidden", "/w/task.py", 7),
        (UserWarning, "no_such_module_here.Thing: nowhere", "/w/task.py", 7),
        (UserWarning, "builtins.ValueError: not one", "/w/task.py", 7),
        (RuntimeWarning, "builtin", "/w/task.py", 7)]


def test_the_client_shows_a_warning_once_per_line_under_the_default_filter():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for line in (11, 11, 12):
            handle_warn(warn_event("again", f"{__name__}.TaskWarning", line,
                                   filename="/w/once.py"))
    assert [w.lineno for w in record] == [11, 12]


def sent_by_value():
    return 1


def test_code_the_client_sent_by_value_warns_at_its_own_file():
    line = sent_by_value.__code__.co_firstlineno + 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        handle_warn(warn_event("here", f"{__name__}.TaskWarning", line,
                               filename="<dynamic-code>", module=__name__,
                               function="sent_by_value"))
        handle_warn(warn_event("unknown", f"{__name__}.TaskWarning", line,
                               filename="<dynamic-code>", module=__name__,
                               function="not_here"))
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line),
                                                        ("<dynamic-code>", line)]
