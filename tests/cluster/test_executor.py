"""Client.get_executor() as a concurrent.futures.Executor, tested the way the standard
library tests its own executors: unittest classes, one concern per method, the
standard `wait` and `as_completed` applied to the futures it returns.

The cluster (a scheduler and two one-thread workers, each its own process: the `pc`
fixture) is shared by the whole module; every test gets a fresh Client and executor."""

import concurrent.futures as cf
import os
import threading
import time
import unittest

import pytest

from helpers import Boom, add, fail, fail_until, identity, sleep, wait_for, wait_for_file

pytestmark = pytest.mark.timeout(60)

_cluster = None      # the module's process cluster (the `pc` fixture)
_tmp = None          # a directory for the files tasks wait on


@pytest.fixture(scope="module", autouse=True)
def module_cluster(pc, tmp_path_factory):
    """The unittest classes below reach the module's cluster through these globals."""
    global _cluster, _tmp
    _cluster, _tmp = pc, str(tmp_path_factory.mktemp("executor"))
    try:
        yield
    finally:
        _cluster = _tmp = None


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_raise(t):
    time.sleep(t)
    raise Boom("this is an exception")


class ExecutorTestCase(unittest.TestCase):
    executor_kwargs = {}

    def setUp(self):
        self.client = _cluster.client()
        self.executor = self.client.get_executor(**self.executor_kwargs)
        self.gates = []

    def tearDown(self):
        for path in self.gates:
            open(path, "a").close()
        try:
            self.executor.shutdown(wait=True)
        finally:
            self.client.close()

    def gate(self):
        """A file path; `wait_for_file` tasks on it finish once it exists (at the
        latest when the test ends)."""
        path = os.path.join(_tmp, f"gate-{time.monotonic_ns()}")
        self.gates.append(path)
        return path

    def open_gate(self, path):
        open(path, "a").close()


class ExecutorTest(ExecutorTestCase):
    def test_submit(self):
        future = self.executor.submit(pow, 2, 8)
        self.assertIsInstance(future, cf.Future)
        self.assertEqual(256, future.result(timeout=10))

    def test_submit_keyword(self):
        future = self.executor.submit(mul, 2, y=8)
        self.assertEqual(16, future.result(timeout=10))
        future = self.executor.submit(capture, 1, self=2, fn=3)
        self.assertEqual(future.result(timeout=10), ((1,), {"self": 2, "fn": 3}))
        # Keywords the cluster's own submit uses belong to the function here.
        future = self.executor.submit(capture, key="k", workers=1, pure=2, retries=3)
        self.assertEqual(future.result(timeout=10),
                         ((), {"key": "k", "workers": 1, "pure": 2, "retries": 3}))
        with self.assertRaises(TypeError):
            self.executor.submit(fn=capture, arg=1)

    def test_submit_is_not_memoized(self):
        path = self.gate()
        futures = [self.executor.submit(wait_for_file, path, value=i) for i in range(3)]
        self.open_gate(path)
        self.assertEqual([f.result(timeout=10) for f in futures], [0, 1, 2])

    def test_map(self):
        self.assertEqual(list(self.executor.map(pow, range(10), range(10))),
                         list(map(pow, range(10), range(10))))
        self.assertEqual(list(self.executor.map(pow, range(10), range(10), chunksize=3)),
                         list(map(pow, range(10), range(10))))

    def test_map_exception(self):
        i = self.executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
        self.assertEqual(next(i), (0, 1))
        self.assertEqual(next(i), (0, 1))
        with self.assertRaises(ZeroDivisionError):
            next(i)

    def test_map_timeout(self):
        results = []
        path = self.gate()
        with self.assertRaises(TimeoutError):
            for value in self.executor.map(wait_for_file, [path, path], timeout=0.5):
                results.append(value)
        self.assertEqual([], results)

    def test_map_timeout_after_some_results(self):
        path = self.gate()
        results = []
        started = time.monotonic()
        with self.assertRaises(cf.TimeoutError):
            for value in self.executor.map(
                    lambda p: identity(0) if p is None else wait_for_file(p, value=1),
                    [None, None, path], timeout=3):
                results.append(value)
        self.assertEqual([0, 0], results)
        # Without the timeout the map would wait for the gate until the task gives
        # up (30 s): 20 s is a wide margin over the 3 s asked for on a busy machine.
        self.assertLess(time.monotonic() - started, 20)

    def test_exception_is_raised_with_its_type(self):
        future = self.executor.submit(sleep_and_raise, 0.01)
        exc = future.exception(timeout=10)
        self.assertIsInstance(exc, Boom)
        # The remote traceback comes along (assertRaises would clear it).
        self.assertIsNotNone(exc.__traceback__)
        with self.assertRaises(Boom) as cm:
            future.result(timeout=10)
        self.assertEqual(str(cm.exception), "this is an exception")

    def test_done_callback_with_result(self):
        callback_result = None
        done = threading.Event()

        def fn(callback_future):
            nonlocal callback_result
            callback_result = callback_future.result()
            done.set()

        f = self.executor.submit(mul, 6, 7)
        f.add_done_callback(fn)
        self.assertTrue(done.wait(10))
        self.assertEqual(42, callback_result)

    def test_done_callback_with_exception(self):
        callback_exception = None
        done = threading.Event()

        def fn(callback_future):
            nonlocal callback_exception
            callback_exception = callback_future.exception()
            done.set()

        f = self.executor.submit(fail, 3)
        f.add_done_callback(fn)
        self.assertTrue(done.wait(10))
        self.assertIsInstance(callback_exception, Boom)

    def test_free_reference_to_results(self):
        # Results are not kept alive by the executor once collected.
        futures = [self.executor.submit(add, i, 1) for i in range(5)]
        self.assertEqual([f.result(timeout=10) for f in futures], [1, 2, 3, 4, 5])
        del futures
        wait_for(lambda: self.client.scheduler_info()["ntasks"] == 0,
                 message="remote results to be released")

    def test_futures_are_the_standard_library_type(self):
        f = self.executor.submit(add, 1, 2)
        self.assertIs(type(f), cf.Future)
        self.assertEqual(f.result(timeout=10), 3)
        self.assertTrue(f.done())
        self.assertFalse(f.cancelled())
        self.assertFalse(f.running())


class WaitTest(ExecutorTestCase):
    def test_first_completed(self):
        path = self.gate()
        future1 = self.executor.submit(mul, 21, 2)
        future2 = self.executor.submit(wait_for_file, path)
        done, not_done = cf.wait([future1, future2], return_when=cf.FIRST_COMPLETED,
                                 timeout=10)
        self.assertEqual({future1}, done)
        self.assertEqual({future2}, not_done)

    def test_first_exception(self):
        path = self.gate()
        future1 = self.executor.submit(mul, 2, 21)
        future2 = self.executor.submit(sleep_and_raise, 0.1)
        future3 = self.executor.submit(wait_for_file, path)
        finished, pending = cf.wait([future1, future2, future3],
                                    return_when=cf.FIRST_EXCEPTION, timeout=10)
        self.assertEqual({future1, future2}, finished)
        self.assertEqual({future3}, pending)

    def test_all_completed(self):
        future1 = self.executor.submit(divmod, 2, 0)
        future2 = self.executor.submit(mul, 2, 21)
        finished, pending = cf.wait([future1, future2], return_when=cf.ALL_COMPLETED,
                                    timeout=10)
        self.assertEqual({future1, future2}, finished)
        self.assertEqual(set(), pending)

    def test_timeout(self):
        path = self.gate()
        future1 = self.executor.submit(mul, 6, 7)
        future2 = self.executor.submit(wait_for_file, path)
        future1.result(timeout=10)
        finished, pending = cf.wait([future1, future2], timeout=0.3,
                                    return_when=cf.ALL_COMPLETED)
        self.assertEqual({future1}, finished)
        self.assertEqual({future2}, pending)


class AsCompletedTest(ExecutorTestCase):
    def test_no_timeout(self):
        future1 = self.executor.submit(mul, 2, 21)
        future2 = self.executor.submit(mul, 7, 6)
        completed = set(cf.as_completed([future1, future2], timeout=10))
        self.assertEqual({future1, future2}, completed)

    def test_zero_timeout(self):
        path = self.gate()
        future1 = self.executor.submit(wait_for_file, path)
        future2 = self.executor.submit(mul, 2, 3)
        future2.result(timeout=10)
        completed = set()
        with self.assertRaises(cf.TimeoutError):
            for future in cf.as_completed([future1, future2], timeout=0):
                completed.add(future)
        self.assertEqual({future2}, completed)

    def test_duplicate_futures(self):
        future1 = self.executor.submit(sleep, 0.1, "x")
        completed = list(cf.as_completed([future1, future1], timeout=10))
        self.assertEqual(len(completed), 1)

    def test_order_follows_completion(self):
        path = self.gate()
        slow = self.executor.submit(wait_for_file, path, value="slow")
        fast = self.executor.submit(identity, "fast")
        it = cf.as_completed([slow, fast], timeout=10)
        self.assertIs(next(it), fast)
        self.open_gate(path)
        self.assertIs(next(it), slow)


class CancelTest(ExecutorTestCase):
    def test_cancel_stops_the_task_even_while_it_runs(self):
        # A future is pending until its task's outcome comes (as a queued call of
        # the standard executors), so cancel() stops the task wherever it is.
        path = self.gate()
        f = self.executor.submit(wait_for_file, path, value=1)
        remote = f._dask_ipy_remote
        wait_for(lambda: any(remote.key in keys
                             for keys in self.client.processing().values()),
                 message="the task to run")
        self.assertFalse(f.running())
        self.assertTrue(f.cancel())
        self.assertTrue(f.cancelled())
        with self.assertRaises(cf.CancelledError):
            f.result(timeout=10)
        wait_for(lambda: remote.status == "cancelled", message="the task cancelled")
        wait_for(lambda: not any(self.client.processing().values()),
                 message="the worker to let the task go")

    def test_a_finished_future_cannot_be_cancelled(self):
        f = self.executor.submit(mul, 6, 7)
        self.assertEqual(f.result(timeout=10), 42)
        self.assertFalse(f.cancel())
        self.assertEqual(f.result(), 42)

    def test_wait_and_as_completed_count_cancelled_futures(self):
        path = self.gate()
        fs = [self.executor.submit(wait_for_file, path, value=i) for i in range(6)]
        self.assertTrue(fs[3].cancel())
        done, not_done = cf.wait(fs, return_when=cf.FIRST_COMPLETED, timeout=10)
        self.assertIn(fs[3], done)
        self.assertTrue(fs[4].cancel())
        self.open_gate(path)
        out = list(cf.as_completed(fs, timeout=10))
        self.assertEqual(sum(f.cancelled() for f in out), 2)
        self.assertEqual(sorted(f.result() for f in out if not f.cancelled()),
                         [0, 1, 2, 5])

    def test_cancelled_remote_work_cancels_the_future(self):
        path = self.gate()
        f = self.executor.submit(wait_for_file, path)
        remote = f._dask_ipy_remote
        self.client.cancel([remote])
        with self.assertRaises(cf.CancelledError):
            f.result(timeout=10)
        self.assertTrue(f.cancelled())
        self.assertTrue(f.done())


class OptionsTest(ExecutorTestCase):
    def test_unknown_options_are_refused(self):
        with self.assertRaisesRegex(TypeError, "'bar', 'foo'"):
            self.client.get_executor(foo=1, bar=2)


class ShutdownTest(ExecutorTestCase):
    def test_run_after_shutdown(self):
        self.executor.shutdown()
        with self.assertRaises(RuntimeError):
            self.executor.submit(pow, 2, 5)

    def test_shutdown_waits_for_pending_work(self):
        path = self.gate()
        fs = [self.executor.submit(wait_for_file, path, value=i) for i in range(3)]
        timer = threading.Timer(0.3, self.open_gate, (path,))
        timer.start()
        try:
            self.executor.shutdown(wait=True)
        finally:
            timer.join()
        self.assertTrue(all(f.done() for f in fs))
        self.assertEqual([f.result() for f in fs], [0, 1, 2])

    def test_shutdown_no_wait(self):
        path = self.gate()
        f = self.executor.submit(wait_for_file, path, value=7)
        self.executor.shutdown(wait=False)
        self.assertFalse(f.done())
        self.open_gate(path)
        self.assertEqual(f.result(timeout=10), 7)

    def test_cancel_futures(self):
        path = self.gate()
        fs = [self.executor.submit(wait_for_file, path) for _ in range(10)]
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.assertTrue(all(f.done() for f in fs))
        self.assertTrue(all(f.cancelled() for f in fs))
        with self.assertRaises(cf.CancelledError):
            fs[0].result()
        self.open_gate(path)
        wait_for(lambda: self.client.scheduler_info()["ntasks"] == 0,
                 message="cancelled work to be forgotten")

    def test_context_manager_shutdown(self):
        with self.client.get_executor() as e:
            self.assertEqual(list(e.map(abs, range(-5, 5))),
                             [5, 4, 3, 2, 1, 0, 1, 2, 3, 4])
        with self.assertRaises(RuntimeError):
            e.submit(abs, -1)

    def test_context_manager_waits(self):
        path = self.gate()
        with self.client.get_executor() as e:
            f = e.submit(wait_for_file, path, value=3)
            threading.Timer(0.2, self.open_gate, (path,)).start()
        self.assertTrue(f.done())
        self.assertEqual(f.result(), 3)


class SubmitOptionsTest(ExecutorTestCase):
    def test_submit_kwargs_apply_to_every_task(self):
        info = self.client.scheduler_info()["workers"]
        address = sorted(info)[0]
        with self.client.get_executor(workers=[address]) as e:
            pids = list(e.map(lambda _: os.getpid(), range(6)))
        self.assertEqual(set(pids), {info[address]["pid"]})

    def test_retries(self):
        path = os.path.join(_tmp, f"attempts-{time.monotonic_ns()}")
        with self.client.get_executor(retries=2) as e:
            self.assertEqual(e.submit(fail_until, path, 3).result(timeout=10), 3)
