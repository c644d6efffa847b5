"""When `dask-ipy worker`'s supervisor starts a new worker after one exited with an
error, and when it gives up (`dask_ipy.supervisor.restart_delay`)."""

from dask_ipy.supervisor import restart_delay


def test_a_worker_that_was_up_is_always_started_again_waiting_more_while_it_dies_fast():
    # (restarts in the last minute) -> seconds to wait
    assert [restart_delay(True, recent, 0) for recent in range(8)] == \
        [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert restart_delay(True, 1000, 0) == 10.0


def test_a_worker_that_never_registered_is_tried_three_more_times():
    assert [restart_delay(False, 0, failed) for failed in (1, 2, 3, 4)] == \
        [1.0, 2.0, 4.0, None]
    # Its tries count in a row, whatever restarts went before.
    assert restart_delay(False, 9, 1) == 1.0
    assert restart_delay(False, 0, 5) is None
