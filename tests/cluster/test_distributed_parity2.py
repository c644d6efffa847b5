"""More of dask.distributed's behaviour, against scheduler and worker processes:
`async def` tasks, Futures inside namedtuple arguments, `Future(key)` made by hand,
`wait` given Futures as separate arguments, `recreate_task_locally`, metadata paths
through plain values, `unsubscribe_topic`, `upload_file` of a data file,
`write_scheduler_file` twice, a closed client's repr, what `Client` refuses, and
how some error messages begin."""

import asyncio
import collections
import functools
import os

import dask
import pytest

from helpers import inc, wait_for
from dask_ipy import Client, Future, LocalCluster, default_client, wait

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- async def tasks

async def add_later(x, y=1):
    await asyncio.sleep(0.01)
    return x + y


def test_an_async_def_task_gives_its_value_not_its_coroutine(c):
    assert c.submit(add_later, 1).result() == 2
    assert c.submit(functools.partial(add_later, 10), y=5).result() == 15
    assert c.gather(c.map(add_later, [1, 2, 3])) == [2, 3, 4]
    assert dask.delayed(add_later)(41).compute() == 42


async def fail_later(x):
    await asyncio.sleep(0.01)
    raise ValueError(f"no {x}")


def test_an_async_def_task_recreated_here_runs_to_its_error(c):
    f = c.submit(fail_later, 3)
    with pytest.raises(ValueError, match="no 3"):
        c.recreate_error_locally(f)        # not a coroutine handed back unawaited


def records(n):
    return (i for i in range(n))


def test_a_task_returning_a_generator_gives_the_generator(c):
    """Only a coroutine is run to its value: a generator (a bag's lazy partition) is
    the task's value, as under dask's own schedulers."""
    import dask.bag as db

    a = sorted(c.scheduler_info()["workers"])[0]       # a generator cannot move
    with dask.annotate(workers=[a]):
        total = dask.delayed(sum)(dask.delayed(records)(4))
        bag = db.from_delayed([dask.delayed(records, pure=False)(3) for _ in range(3)])
        assert dask.compute(total, scheduler=c.get, optimize_graph=False) == (6,)
        assert dask.compute(bag.count(), bag.sum(), scheduler=c.get) == (9, 9)


# ---------------------------------------------------------------- namedtuples

Point = collections.namedtuple("Point", "x y")


class Span(collections.namedtuple("Span", "label width")):
    """Made from two parts of its label: its own __new__ and __getnewargs__."""

    def __new__(cls, first, second, width):
        return super().__new__(cls, f"{first}/{second}", width)

    def __getnewargs__(self):
        return *self.label.split("/"), self.width


class Tagged(collections.namedtuple("Tagged", "name value keys values")):
    """Keyword arguments of its own: __getnewargs_ex__."""

    def __new__(cls, name, value, **extra):
        return super().__new__(cls, name, value, tuple(extra), tuple(extra.values()))

    def __getnewargs_ex__(self):
        return (self.name, self.value), dict(zip(self.keys, self.values))


def same(x):
    return x


def test_futures_inside_namedtuple_arguments_arrive_as_their_values(c):
    one, two = c.submit(inc, 0), c.submit(inc, 1)
    assert c.submit(same, Point(one, 5)).result() == Point(1, 5)
    assert c.submit(same, [Point(x=one, y=two)]).result() == [Point(1, 2)]
    assert c.submit(same, Span("a", "b", two)).result() == Span("a", "b", 2)
    assert c.submit(same, Tagged("t", one, extra=two)).result() == \
        Tagged("t", 1, extra=2)
    assert c.submit(same, x=Point(two, two)).result() == Point(2, 2)
    # without Futures a namedtuple goes as it is
    assert c.submit(same, Point(3, 4)).result() == Point(3, 4)


# ---------------------------------------------------------------- Future(key)

def test_a_future_made_from_a_key_learns_its_status(c, pc):
    x = c.submit(inc, 1)
    assert x.result() == 2
    other = pc.client(set_as_default=False)
    try:
        f = Future(x.key, other)
        assert f.client is other
        wait_for(lambda: f.status == "finished", message="the key's status")
        done, not_done = wait([f], timeout=10)
        assert done == {f} and not not_done
        assert f.result() == 2
    finally:
        other.close()


def test_a_future_made_from_a_key_alone_is_of_the_default_client(c):
    x = c.submit(inc, 2)
    x.result()
    f = Future(x.key)
    assert f.client is default_client()
    assert f.result() == 3


# ---------------------------------------------------------------- refusals

def test_wait_given_futures_as_separate_arguments_says_to_list_them(c):
    x, y = c.submit(inc, 1), c.submit(inc, 2)
    with pytest.raises(TypeError, match=r"timeout.*wait\(\[x, y\]\)"):
        wait(x, y)
    assert wait([x, y], timeout="10s").not_done == set()


def test_a_cluster_class_is_no_scheduler_address():
    with pytest.raises(TypeError, match="must be a string or a Cluster instance"):
        Client(LocalCluster)


# ---------------------------------------------------------------- Client methods

def divide(x, y):
    return x / y


def test_recreate_task_locally_runs_the_task_here_with_its_inputs(c):
    a, b = c.submit(inc, 5), c.submit(inc, 1)
    total = c.submit(divide, a, b)
    assert c.recreate_task_locally(total) == 3.0
    assert c.recreate_task_locally([c.submit(add_later, 1, 3)]) == 4
    with pytest.raises(ZeroDivisionError):
        c.recreate_task_locally(c.submit(divide, a, 0))


def test_metadata_path_through_a_value_that_is_no_dict_raises_type_error(c):
    c.set_metadata("runs", 7)
    with pytest.raises(TypeError):
        c.get_metadata(["runs", "first"])
    with pytest.raises(TypeError):
        c.get_metadata(["runs", "first"], None)
    c.set_metadata(["runs2", "first"], 1)
    assert c.get_metadata(["runs2", "second"], None) is None
    with pytest.raises(KeyError):
        c.get_metadata(["nothing", "here"])


def test_unsubscribe_topic_of_no_handler_raises_value_error(c):
    with pytest.raises(ValueError, match="No event handler known for topic nope"):
        c.unsubscribe_topic("nope")
    c.subscribe_topic("some-topic", print)
    c.unsubscribe_topic("some-topic")
    with pytest.raises(ValueError):
        c.unsubscribe_topic("some-topic")


def read_upload(name):
    """The content of the uploaded file ``name`` on this worker, or None."""
    from dask_ipy.plugins import upload_directory

    for folder, _, files in os.walk(upload_directory()):
        if name in files:
            with open(os.path.join(folder, name)) as f:
                return f.read()
    return None


def test_upload_file_of_a_file_python_cannot_import_only_ships_it(c, tmp_path):
    data = tmp_path / "settings-parity2.txt"
    data.write_text("answer = 42\n")
    replies = c.upload_file(str(data))
    assert replies and all(r == {"status": "OK"} for r in replies.values())
    assert set(c.run(read_upload, data.name).values()) == {"answer = 42\n"}


def test_write_scheduler_file_a_second_time_raises_value_error(c, tmp_path):
    path = tmp_path / "scheduler.json"
    c.write_scheduler_file(str(path))
    with pytest.raises(ValueError, match="Scheduler file already set"):
        c.write_scheduler_file(str(tmp_path / "again.json"))
    with Client(scheduler_file=str(path), set_as_default=False) as other:
        assert other.scheduler_file == str(path)
        with pytest.raises(ValueError):
            other.write_scheduler_file(str(tmp_path / "third.json"))


def test_a_closed_client_says_no_scheduler_is_connected(pc):
    client = pc.client(set_as_default=False, direct_to_workers=True)
    assert client.direct_to_workers is True
    client.close()
    assert repr(client) == str(client) == "<Client: No scheduler connected>"
    assert "No scheduler connected." in client._repr_html_()


# ---------------------------------------------------------------- messages

def test_without_a_client_the_errors_begin_as_dask_distributed_s():
    from dask_ipy import get_client

    with pytest.raises(ValueError, match="^No clients found"):
        default_client()
    with pytest.raises(ValueError, match="^No clients found"):
        Client.current()
    with pytest.raises(ValueError, match="^No global client found and no address "
                                         "provided$"):
        get_client()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not this one")


def test_errors_of_client_calls_begin_as_dask_distributed_s(c, tmp_path):
    with pytest.raises(ValueError, match="^No errored futures passed"):
        c.recreate_error_locally(c.submit(inc, 1))
    with pytest.raises(ValueError, match="^Unsupported format 'json'"):
        c.dump_cluster_state(str(tmp_path / "dump"), format="json")
    with pytest.raises(TypeError, match="^Could not serialize"):
        c.submit(same, Unpicklable())


def test_get_executor_names_the_arguments_it_does_not_take(c):
    with pytest.raises(TypeError, match=r"^unsupported arguments to ClientExecutor: "
                                        r"\['bar', 'foo'\]"):
        c.get_executor(workers=None, foo=1, bar=2)


def scheduler_seen_by_worker():
    from dask_ipy import get_worker
    return get_worker().scheduler.address


def test_a_worker_names_the_scheduler_s_address_as_clients_know_it(c):
    assert c.submit(scheduler_seen_by_worker, pure=False).result() == \
        c.scheduler.address
    assert set(c.run(scheduler_seen_by_worker).values()) == {c.scheduler.address}


def test_a_graph_of_large_pickled_tasks_warns_as_dask_distributed_does(c):
    with pytest.warns(UserWarning, match="^Sending large graph of size 9.5"):
        big = c.submit(len, b"0" * 10_000_000)
    assert big.result() == 10_000_000
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "20MB"}):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert c.submit(len, b"1" * 10_000_000).result() == 10_000_000


def test_gather_refuses_futures_of_another_client(c, pc):
    other = pc.client(set_as_default=False)
    try:
        mine, theirs = c.submit(inc, 10), other.submit(inc, 5)
        with pytest.raises(ValueError, match="Futures created by another client"):
            c.gather([mine, theirs])
        with pytest.raises(ValueError, match="Futures created by another client"):
            c.gather({"a": [theirs]})
        assert other.gather(theirs) == 6 and c.gather([mine]) == [11]
        assert theirs.result() == 6
    finally:
        other.close()


def test_rebalance_of_a_key_the_scheduler_lacks_raises_key_error(c):
    ghost = Future("never-computed-parity2", c, state="memory")    # a foreign state
    with pytest.raises(KeyError, match="^.Could not rebalance keys:"):
        c.rebalance(futures=[ghost])


def test_metadata_set_under_a_task_s_key_goes_when_the_task_is_forgotten(c):
    f = c.submit(inc, 41)
    key = f.key
    f.result()
    c.set_metadata(key, "note")
    c.set_metadata("not-a-task-parity2", "kept")
    assert c.get_metadata(key) == "note"
    del f
    wait_for(lambda: c.get_metadata(key, None) is None, message="the metadata to go")
    with pytest.raises(KeyError):
        c.get_metadata(key)
    assert c.get_metadata("not-a-task-parity2") == "kept"
