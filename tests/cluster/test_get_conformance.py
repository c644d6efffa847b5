"""dask's own conformance suite for `get` functions, run whole against Client.get."""

import concurrent.futures

import pytest
from dask.utils_test import GetFunctionTestMixin

from helpers import local_cluster, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def conformance_cluster():
    # The suite's 10,000-task chain makes per-transition validation quadratic; the
    # scheduler's invariants are checked after each test instead (see _bind_get).
    with local_cluster({"validate": False}, client_options={"set_as_default": False}) as (
            s, _, c):
        yield s, c
        # Every result was released after it was returned.
        wait_for(lambda: check_on_loop(s, lambda: not s.state.tasks),
                 message="tasks to be forgotten")


_current = []


@pytest.fixture(autouse=True)
def _bind_get(conformance_cluster):
    s, c = conformance_cluster
    _current.append(c)
    yield
    _current.remove(c)
    check_on_loop(s, s.state.validate)


def check_on_loop(s, fn):
    """Run ``fn`` on the scheduler's I/O thread (which owns its state); re-raise."""
    done = concurrent.futures.Future()

    def run():
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)
    s.loop.call_soon(run)
    return done.result(10)


def client_get(dsk, keys, **kwargs):
    # The mixin calls ``self.get`` as a plain function: the bound method of the
    # module's client is wrapped here.
    return _current[-1].get(dsk, keys, **kwargs)


class TestClientGet(GetFunctionTestMixin):
    get = staticmethod(client_get)
