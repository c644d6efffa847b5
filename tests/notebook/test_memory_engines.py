"""Memory limits inside real ipyparallel engines (results spilled, a runaway task
interrupted, a paused worker resumed from a %px cell, BLAS pools capped only in
tasks), and the memory options of the `%dsched` magic and the `dask-ipy` command."""

import psutil
import pytest

from benchmarks.procs import peak_rss
from dask_ipy import MemoryLimitExceeded
from helpers import (MiB, array_sum, blas_threads, filled_mib, grow, hold_memory,
                     hold_to_pause, inc, pid, release_memory, wait_for)

# Memory limits measured in the engines: run without coverage (see pyproject.toml).
pytestmark = [pytest.mark.timeout(180), pytest.mark.uncovered]


def test_in_engines_a_runaway_is_interrupted_and_a_paused_worker_resumes(ipcluster):
    from dask_ipy import dask_client_from_ipclient

    _, rc = ipcluster
    rc[:].push({"mine": 42}, block=True)
    pids = rc[:].apply_sync(pid)
    blas_before = rc[:].apply_sync(blas_threads)
    limit = 900 * MiB
    c = dask_client_from_ipclient(rc, memory_limit=limit)
    try:
        info = c.scheduler_info()["workers"]
        assert sorted(w["pid"] for w in info.values()) == sorted(pids)
        assert all(w["memory_limit"] == limit for w in info.values())
        assert c.gather(c.map(blas_threads, range(2), pure=False)) == \
            [[max(psutil.cpu_count() // 2, 1)]] * 2
        assert rc[:].apply_sync(blas_threads) == blas_before      # %px code
        # More than the limit, spilled; the engines stay under it.
        fs = c.map(filled_mib, range(160), pure=False)          # 800 MiB an engine
        assert c.gather(c.map(array_sum, fs)) == [i * 10 * MiB / 8 for i in range(160)]
        wait_for(lambda: sum(w["spilled"] for w in c.scheduler_info()["workers"].values())
                 > 400 * MiB, message="spilled results")
        assert all(peak_rss(p) <= 1.3 * limit for p in pids)
        del fs
        # A runaway task: an error that names memory; the engines live on.
        big = c.submit(grow, pure=False)
        with pytest.raises(MemoryLimitExceeded, match="interrupted"):
            big.result(timeout=120)
        assert rc[:].apply_sync(pid) == pids
        assert rc[:].pull("mine", block=True) == [42, 42]
        assert c.submit(inc, 1).result(timeout=30) == 2
        # Paused by memory the user holds in the engine; freed from a %px cell.
        engine0 = next(a for a, w in c.scheduler_info()["workers"].items()
                       if w["pid"] == pids[0])
        c.submit(hold_memory, hold_to_pause(pids[0], limit), workers=[engine0],
                 pure=False).result()
        wait_for(lambda: c.scheduler_info()["workers"][engine0]["paused"], timeout=30,
                 message=lambda: f"the engine's worker to pause: "
                                 f"{c.scheduler_info()['workers'][engine0]}, RSS "
                                 f"{psutil.Process(pids[0]).memory_info().rss}")
        waiting = c.submit(inc, 41, workers=[engine0])
        assert c.submit(inc, 2).result(timeout=30) == 3       # the other engine
        assert not waiting.done()
        rc[0].apply_sync(release_memory)
        assert waiting.result(timeout=30) == 42
    finally:
        c.shutdown()
    assert rc[:].apply_sync(pid) == pids


# ---------------------------------------------------------------- options

def test_memory_options_of_the_command_and_the_magic():
    from IPython.core.magic_arguments import parse_argstring

    from dask_ipy.cli import parse_args, worker_argv
    from dask_ipy.notebook.magics import DaskMagics

    args = parse_args(["worker", "f.json", "--memory-limit", "2GiB", "--blas-threads",
                       "off", "--local-directory", "/scratch"])
    assert (args.memory_limit, args.blas_threads, args.local_directory) == \
        ("2GiB", "off", "/scratch")
    argv = worker_argv(args)
    assert argv[argv.index("--memory-limit") + 1] == "2GiB"
    assert argv[argv.index("--blas-threads") + 1] == "off"
    assert parse_args(["worker", "f.json"]).memory_limit == "auto"
    magic = parse_argstring(DaskMagics.dsched, "start --memory-limit 0.25")
    assert magic.memory_limit == "0.25"
