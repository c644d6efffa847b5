"""When `dask-ipy worker`'s supervisor starts a new worker after one exited with an
error, and when it gives up (`dask_ipy.supervisor.restart_delay`)."""

from dask_ipy.supervisor import restart_delay


def test_a_worker_that_was_up_is_started_again_waiting_more_while_it_dies_fast():
    # (restarts in the last minute) -> seconds to wait
    assert [restart_delay(True, recent, 0, 0) for recent in range(8)] == \
        [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert restart_delay(True, 1000, 0, 0) == 10.0


def test_a_worker_that_dies_soon_after_registering_is_given_up_on_the_fifth_time():
    # (restarts in the last minute, quick deaths in the last 5 minutes, this one
    # included) -> seconds to wait
    assert [restart_delay(True, n - 1, 0, n) for n in range(1, 7)] == \
        [0.0, 0.5, 1.0, 2.0, None, None]
    # One quick death is restarted at once, however many slow ones went before.
    assert restart_delay(True, 0, 0, 1) == 0.0
    assert restart_delay(True, 9, 0, 4) == 10.0


def test_a_worker_that_never_registered_is_tried_three_more_times():
    assert [restart_delay(False, 0, failed, 0) for failed in (1, 2, 3, 4)] == \
        [1.0, 2.0, 4.0, None]
    # Its tries count in a row, whatever restarts went before.
    assert restart_delay(False, 9, 1, 0) == 1.0
    assert restart_delay(False, 0, 5, 0) is None
