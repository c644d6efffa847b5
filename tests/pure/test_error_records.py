"""What a task's error carries back: the user's frames first, without this package's
or dask's task calling; the exception as its own type, even one pickle cannot rebuild."""

import copyreg
import os
import sys
import traceback
import types

import pytest
from dask._task_spec import Task

from helpers import KeywordOnly, NeedsTwo, SlotsOnly
from dask_ipy.errors import (MAX_CHAIN, MAX_TRACEBACK_FRAMES, RemoteError, error_payload,
                             rebuild_error, without_machinery)
from dask_ipy.graph import execute

pytestmark = pytest.mark.timeout(30)


def explode(x):
    raise ValueError(f"exploded on {x}")


def test_a_graph_tasks_error_starts_at_the_users_function():
    try:
        execute(Task("k", explode, 1), {})
    except ValueError as e:
        # As in the worker, from this package's call of the graph node on.
        record = error_payload(e, e.__traceback__.tb_next)
    exc, tb = rebuild_error(record)
    names = [f.name for f in traceback.extract_tb(tb)]
    assert names == ["explode"]
    assert "_task_spec" not in record["traceback_text"]
    assert "dask_ipy" + os.sep not in record["traceback_text"]


def test_without_machinery_keeps_only_the_users_frames():
    try:
        execute(Task("k", explode, 2), {})
    except ValueError as e:
        tb = e.__traceback__
    assert [f.name for f in traceback.extract_tb(tb)][-1] == "explode"
    kept = [f.name for f in traceback.extract_tb(without_machinery(tb))]
    assert kept == ["test_without_machinery_keeps_only_the_users_frames", "explode"]


# ---------------------------------------------------------------- exceptions pickle cannot rebuild

def record_of(exc):
    try:
        raise exc
    except BaseException as e:
        return error_payload(e, e.__traceback__)


@pytest.mark.parametrize("exc, text, attributes", [
    (NeedsTwo(1, 2), "1 and 2", {"total": 3}),
    (KeywordOnly(code=3), "code 3", {"code": 3}),
    (SlotsOnly("kept"), "detail is kept", {"detail": "kept"})])
def test_an_exception_pickle_cannot_rebuild_keeps_its_type_and_attributes(
        exc, text, attributes):
    exc.add_note("a note")
    back, tb = rebuild_error(record_of(exc))
    assert type(back) is type(exc) and str(back) == text
    assert back.args == exc.args and back.__notes__ == ["a note"]
    assert {name: getattr(back, name) for name in attributes} == attributes
    assert [f.name for f in traceback.extract_tb(tb)] == ["record_of"]


def test_an_exception_class_sent_by_value_keeps_its_type():
    class Local(Exception):         # not importable: cloudpickle sends it by value
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    back, _ = rebuild_error(record_of(Local(1, 2)))
    assert type(back) is Local and str(back) == "1 and 2"


def test_a_too_long_message_is_cut_and_keeps_the_type():
    back, _ = rebuild_error(record_of(KeywordOnly(code="x" * 1_000_000)))
    assert type(back) is KeywordOnly
    assert str(back).endswith("... (truncated)") and len(str(back)) < 20_000


def test_a_class_the_client_cannot_import_is_a_remote_error_naming_it(monkeypatch):
    module = types.ModuleType("gone_module")
    exec("class Gone(Exception):\n"
         "    def __init__(self, a, b):\n"
         "        super().__init__(f'{a} and {b}')\n", vars(module))
    monkeypatch.setitem(sys.modules, "gone_module", module)
    record = record_of(module.Gone(1, 2))
    monkeypatch.delitem(sys.modules, "gone_module")
    back, _ = rebuild_error(record)
    assert type(back) is RemoteError
    assert str(back).startswith("Gone: 1 and 2\n\nRemote traceback:")


# ---------------------------------------------------------------- chained exceptions

def caused():
    raise ValueError("a") from KeyError("b")


def in_handler():
    try:
        {}["b"]
    except KeyError:
        raise ValueError("a")


def from_none():
    try:
        {}["b"]
    except KeyError:
        raise ValueError("a") from None


def rebuilt_chain(fn):
    try:
        fn()
    except ValueError as e:
        back, _ = rebuild_error(error_payload(e, e.__traceback__))
    return ((type(back.__cause__), str(back.__cause__)),
            (type(back.__context__), str(back.__context__)), back.__suppress_context__)


@pytest.fixture(params=["plain", "tblib"])
def pickling(request, monkeypatch):
    """Exceptions pickle as pickle does them, or as tblib's pickling does (which
    dask.multiprocessing installs: it carries the chain, where it works)."""
    reducer = None
    if request.param == "tblib":
        reducer = pytest.importorskip("tblib.pickling_support").pickle_exception
    for cls in (ValueError, KeyError, NeedsTwo, KeywordOnly):
        if reducer is None:
            monkeypatch.delitem(copyreg.dispatch_table, cls, raising=False)
        else:
            monkeypatch.setitem(copyreg.dispatch_table, cls, reducer)


@pytest.mark.usefixtures("pickling")
def test_an_exception_keeps_its_cause_and_context():
    no = (type(None), "None")
    assert rebuilt_chain(caused) == ((KeyError, "'b'"), no, True)
    assert rebuilt_chain(in_handler) == (no, (KeyError, "'b'"), False)
    assert rebuilt_chain(from_none) == (no, (KeyError, "'b'"), True)


@pytest.mark.usefixtures("pickling")
def test_a_chain_pickle_cannot_rebuild_keeps_its_types_and_shared_links():
    try:
        try:
            raise KeywordOnly(code=1)
        except KeywordOnly as inner:
            raise NeedsTwo(3, 4) from inner
    except NeedsTwo as e:
        back, _ = rebuild_error(record_of(e))
    assert (type(back), str(back), back.total) == (NeedsTwo, "3 and 4", 7)
    assert (type(back.__cause__), back.__cause__.code) == (KeywordOnly, 1)
    assert back.__context__ is back.__cause__


def test_a_chain_that_loops_or_runs_long_is_cut():
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    back, _ = rebuild_error(record_of(a))
    assert str(back.__context__) == "'b'" and back.__context__.__context__ is back
    chain = ValueError(100)
    for n in reversed(range(100)):
        link = ValueError(n)
        link.__cause__, chain = chain, link
    back, _ = rebuild_error(record_of(chain))
    texts = []
    while back is not None:
        texts.append(str(back))
        back = back.__cause__
    assert texts == [str(n) for n in range(MAX_CHAIN + 1)]


@pytest.mark.usefixtures("pickling")
def test_a_chained_exception_the_client_cannot_import_is_a_remote_error(monkeypatch):
    module = types.ModuleType("gone_module")
    exec("class Gone(Exception):\n    pass\n", vars(module))
    monkeypatch.setitem(sys.modules, "gone_module", module)
    try:
        raise ValueError("a") from module.Gone("b")
    except ValueError as e:
        record = error_payload(e, e.__traceback__)
    monkeypatch.delitem(sys.modules, "gone_module")
    back, _ = rebuild_error(record)
    assert type(back) is ValueError
    assert (type(back.__cause__), str(back.__cause__)) == (RemoteError, "Gone: b")


def recurse(n):
    return recurse(n + 1)


@pytest.mark.parametrize("tblib_installed", [False, True])
def test_a_runaway_recursion_comes_back_as_recursion_error(monkeypatch, tblib_installed):
    if tblib_installed:     # as dask.multiprocessing does: tracebacks pickle too
        pickling_support = pytest.importorskip("tblib.pickling_support")
        monkeypatch.setitem(copyreg.dispatch_table, RecursionError,
                            pickling_support.pickle_exception)
        monkeypatch.setitem(copyreg.dispatch_table, types.TracebackType,
                            pickling_support.pickle_traceback)
    try:
        recurse(0)
    except RecursionError as e:
        record = error_payload(e, e.__traceback__)
    back, tb = rebuild_error(record)
    assert type(back) is RecursionError
    names = [f.name for f in traceback.extract_tb(tb)]
    assert names[0] == "test_a_runaway_recursion_comes_back_as_recursion_error"
    assert names[-1] == "recurse" and len(names) == MAX_TRACEBACK_FRAMES
    assert "Previous line repeated" in record["traceback_text"]
