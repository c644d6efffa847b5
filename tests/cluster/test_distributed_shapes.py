"""What dask.distributed users read back, in its shapes: the holders of keys as
tuples, the Worker's current task, a client's ``cluster``, events logged from a task,
``refcount`` of keys not held."""

import pytest

from helpers import inc, wait_for, wait_for_file

pytestmark = pytest.mark.timeout(60)


def test_who_has_has_what_and_processing_give_tuples(c, gate):
    f = c.submit(inc, 1)
    f.result(timeout=10)
    (holder,) = c.who_has([f])[f.key]
    assert c.who_has([f]) == {f.key: (holder,)}
    assert c.has_what([holder]) == {holder: (f.key,)}
    running = c.submit(wait_for_file, str(gate), workers=[holder])
    wait_for(lambda: c.processing()[holder], message="the task to run")
    assert c.processing([holder]) == {holder: (running.key,)}


def current_task():
    from dask_ipy import get_worker

    return get_worker().get_current_task()


def test_get_current_task_is_the_running_tasks_key(c):
    assert c.submit(current_task, key="which-task").result(timeout=10) == "which-task"
    assert c.submit(current_task, key=("tuple-task", 1)).result(timeout=10) == \
        ("tuple-task", 1)


def test_a_client_of_an_address_has_no_cluster(c):
    assert c.cluster is None


def test_refcount_of_a_key_not_held_is_zero(c):
    f = c.submit(inc, 2)
    assert c.refcount[f.key] == 1 and c.refcount["never-held"] == 0


def log_from_task(topic, msg):
    from dask_ipy import get_worker

    try:
        get_worker().log_event(topic, msg)
    except TypeError as e:
        return f"TypeError: {e}"
    return get_worker().address


def test_events_logged_by_a_task_name_their_worker(c):
    address = c.submit(log_from_task, ["shapes-a", "shapes-b"], {"n": 1}).result(timeout=10)
    for topic in ("shapes-a", "shapes-b"):
        wait_for(lambda: c.get_events(topic), message=f"the event of {topic}")
        ((_, msg),) = c.get_events(topic)
        assert msg == {"n": 1, "worker": address}


def test_an_event_that_is_not_msgpack_data_is_refused_in_the_task(c):
    out = c.submit(log_from_task, "shapes-c", object(), pure=False).result(timeout=10)
    assert out.startswith("TypeError: an event must be msgpack-able data")
    # the workers run on
    assert c.gather(c.map(inc, range(4), pure=False), direct=False) == [1, 2, 3, 4]


def test_a_future_shows_itself_as_in_dask_distributed(c):
    f = c.submit(inc, 1, key="shown")
    f.result(timeout=10)
    assert repr(f) == str(f) == "<Future: finished, type: int, key: shown>"
    g = c.submit(inc, 1, key=("shown", 1))
    g.result(timeout=10)
    assert repr(g) == "<Future: finished, type: int, key: ('shown', 1)>"
    assert repr(c).startswith(f"<Client: {c.address!r} processes=")
    assert c.scheduler.address == c.address
