"""dask.distributed's names filled in, against scheduler and worker processes:
`Client.nbytes`, `normalize_collection`, `asynchronous`, `register_worker_callbacks`,
`dump_cluster_state`, `benchmark_hardware`; `get_task_metadata`, `local_client`,
`Status`; the plugins `UploadDirectory`, `InstallPlugin`, `PipInstall`; and
`Future.executor`."""

import asyncio
import gzip
import os
import sys
import zipfile
from functools import partial

import dask
import dask.array as da
import dask.dataframe as dd
import msgpack
import pandas as pd
import pytest
import yaml
from dask.sizeof import sizeof

from helpers import (array_of, array_sum, count_lines, fail, inc, module_value,
                     processes, record, wait_for, wait_for_file)
from dask_ipy import (Client, InstallPlugin, PipInstall, Status, UploadDirectory,
                      get_task_metadata, local_client)
from dask_ipy.hardware import DISK_SIZES, MEMORY_SIZES, NETWORK_SIZES
from dask_ipy.worker.system import io_counters

pytestmark = pytest.mark.timeout(90)


def known_to_scheduler(c, futures):
    """Wait until the scheduler has heard of the results (a small one can reach the
    client straight from its worker first)."""
    keys = {f.key for f in futures}
    wait_for(lambda: keys <= set(c.nbytes(summary=False)),
             message="the scheduler to hear of the results")


# ---------------------------------------------------------------- Client methods

def test_nbytes_gives_result_sizes_by_key_or_summed_by_prefix(c, gate):
    values = [1, 2, 10 ** 30]
    fs = c.map(inc, values)
    assert c.gather(fs) == [2, 3, 10 ** 30 + 1]
    known_to_scheduler(c, fs)
    sizes = {f.key: sizeof(v + 1) for f, v in zip(fs, values)}
    assert c.nbytes(summary=False) == sizes
    assert c.nbytes() == {"inc": sum(sizes.values())}
    assert c.nbytes(keys=[fs[2].key], summary=False) == {fs[2].key: sizeof(10 ** 30 + 1)}
    pending = c.submit(wait_for_file, str(gate), pure=False)
    assert c.nbytes(keys=[pending.key], summary=False) == {pending.key: -1}
    assert pending.key not in c.nbytes(summary=False)
    with pytest.raises(KeyError):
        c.nbytes(keys=["no-such-key"])


def test_normalize_collection_puts_held_futures_in_place_of_their_tasks(c, tmp_path):
    log = str(tmp_path / "runs")
    parts = [dask.delayed(record)(log, i, dask_key_name=f"part-{i}") for i in range(3)]
    total = dask.delayed(sum)(parts, dask_key_name="total")
    assert c.normalize_collection(total) is total          # nothing held yet
    held = c.compute(parts[:2])
    assert c.gather(held) == [0, 1]
    assert count_lines(log) == 2
    normal = c.normalize_collection(total)
    graph = dict(normal.__dask_graph__())
    assert graph["part-0"] is not None and type(graph["part-0"]).__name__ == "Future"
    assert graph["part-0"].key == "part-0" and graph["part-1"].key == "part-1"
    assert type(graph["part-2"]).__name__ != "Future"
    assert c.compute(normal).result() == 3
    assert count_lines(log) == 3                # only part-2 ran again

    x = da.arange(20, chunks=5) + 1
    y = x.sum()
    persisted = c.persist(x)
    normal = c.normalize_collection(y)
    graph = dict(normal.__dask_graph__())
    assert len(graph) < len(dict(y.__dask_graph__()))
    assert all(k in graph and type(graph[k]).__name__ == "Future"
               for k in persisted.__dask_keys__())
    assert c.compute(normal).result() == sum(range(1, 21))

    # a dataframe is rebuilt from its lowered expression, under other keys
    df = dd.from_pandas(pd.DataFrame({"x": range(100)}), npartitions=4)
    kept = c.persist(df.x + 1)
    with pytest.raises(TypeError, match="same keys"):
        c.normalize_collection((df.x + 1).sum())
    del kept


def test_asynchronous_says_how_the_client_was_made(pc, c):
    assert c.asynchronous is False
    with pytest.raises(AttributeError):
        c.asynchronous = True

    async def main():
        async with Client(pc.file, asynchronous=True, set_as_default=False) as ac:
            assert ac.asynchronous is True
            f = ac.submit(inc, 1)
            assert await f == 2
            assert f.executor is ac
            for _ in range(500):               # the scheduler hears of it shortly
                sizes = await ac.nbytes(summary=False)
                if f.key in sizes:
                    return sizes[f.key]
                await asyncio.sleep(0.01)
    assert asyncio.run(main()) == sizeof(2)


def test_future_executor_is_its_client(c):
    f = c.submit(inc, 41)
    assert f.executor is c and f.result() == 42


def test_register_worker_callbacks_run_in_order_now_and_on_late_joiners(tmp_path):
    log = tmp_path / "log"
    with processes(tmp_path, nworkers=2) as (pc, c):
        first = c.register_worker_callbacks(partial(record, str(log), "first"))
        assert set(first) == set(c.nthreads()) and all(
            r == {"status": "OK"} for r in first.values())

        def second(dask_worker):
            record(str(log), f"second {dask_worker.address}")
        c.register_worker_callbacks(second)
        lines = log.read_text().split("\n")[:-1]
        assert lines[:2] == ["first", "first"]
        assert sorted(lines[2:]) == sorted(f"second {a}" for a in c.nthreads())
        new = pc.start_worker()
        pc.workers.append(new)
        wait_for(lambda: count_lines(str(log)) == 6, message="the late joiner's setup")
        assert log.read_text().split("\n")[4:6] == ["first", f"second {new.first_line}"]


def _load_dump(path, format):
    if format == "msgpack":
        with gzip.open(path) as f:
            return msgpack.unpack(f)
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("format", ["msgpack", "yaml"])
def test_dump_cluster_state_writes_the_scheduler_and_every_worker(c, tmp_path, gate,
                                                                  format):
    done = c.submit(inc, 1)
    assert done.result() == 2
    running = c.submit(wait_for_file, str(gate), pure=False)
    wait_for(lambda: any(c.processing().values()) and sum(
        w["executing"] for w in c.scheduler_info()["workers"].values()) == 1,
        message="the gated task to run")
    known_to_scheduler(c, [done])
    c.dump_cluster_state(str(tmp_path / "dump"), format=format)
    suffix = ".msgpack.gz" if format == "msgpack" else ".yaml"
    state = _load_dump(tmp_path / f"dump{suffix}", format)
    assert set(state) == {"scheduler", "workers", "versions"}
    scheduler, workers = state["scheduler"], state["workers"]
    assert scheduler["tasks"][done.key]["state"] == "memory"
    assert scheduler["tasks"][running.key]["state"] == "processing"
    holder = scheduler["tasks"][done.key]["who_has"][0]
    runner = scheduler["tasks"][running.key]["processing_on"]
    assert set(scheduler["workers"]) == set(workers) == set(c.nthreads())
    assert done.key in scheduler["workers"][holder]["has_what"]
    assert workers[holder]["tasks"][done.key]["state"] == "memory"
    assert done.key in workers[holder]["data"]
    assert workers[runner]["tasks"][running.key]["state"] == "executing"
    assert workers[runner]["executing"] == [running.key]
    assert set(state["versions"]["workers"]) == set(workers)
    assert state["versions"]["scheduler"]["packages"]["dask_ipy"]

    c.dump_cluster_state(str(tmp_path / f"lean{suffix}"), format=format,
                         exclude=["logs", "who_has"])
    lean = _load_dump(tmp_path / f"lean{suffix}", format)
    assert "logs" not in lean["scheduler"] and "who_has" not in \
        lean["scheduler"]["tasks"][done.key]
    assert all("logs" not in w for w in lean["workers"].values())
    assert not os.path.exists(tmp_path / f"lean{suffix}{suffix}")

    with pytest.raises(ValueError, match="format"):
        c.dump_cluster_state(str(tmp_path / "x"), format="json")
    with pytest.raises(ValueError, match="local file"):
        c.dump_cluster_state("s3://bucket/dump")


def test_benchmark_hardware_measures_every_size_on_the_workers(c):
    result = c.benchmark_hardware()
    assert list(result) == ["disk", "memory", "network"]
    assert list(result["disk"]) == list(DISK_SIZES)
    assert list(result["memory"]) == list(MEMORY_SIZES)
    assert list(result["network"]) == list(NETWORK_SIZES)   # two workers: one pair
    for rates in result.values():
        assert all(isinstance(r, float) and r > 0 for r in rates.values()), rates


def test_scheduler_info_gives_each_workers_own_figures(c):
    """As dask.distributed's worker metrics: its tasks by state, its open files,
    the bandwidth it measured on fetches of a megabyte or more, its transfers and
    the host's network and disk traffic."""
    def metrics(address):
        return c.scheduler_info()["workers"][address]["metrics"]

    a, b = c.scheduler_info()["workers"]
    fetches = metrics(b)["transfer"]["incoming_count_total"]
    serves = metrics(a)["transfer"]["outgoing_count_total"]
    big = c.submit(array_of, 4_000_000, workers=[a])
    total = c.submit(array_sum, big, workers=[b])
    assert total.result() == 4_000_000

    def told():     # a heartbeat of each since the fetch (one before may show a key
        fetched, served = metrics(b), metrics(a)     # of the previous test, not yet
        return (fetched["transfer"]["incoming_count_total"] > fetches   # freed there)
                and served["transfer"]["outgoing_count_total"] > serves
                and fetched["task_counts"] == {"memory": 1}
                and served["task_counts"] == {"memory": 1})
    wait_for(told, message=lambda: f"the figures of {metrics(a)} and {metrics(b)}")
    fetched, served = metrics(b), metrics(a)
    assert fetched["bandwidth"]["total"] > 0
    assert set(fetched["bandwidth"]) == {"total", "workers", "types"}
    assert fetched["transfer"]["incoming_count"] == 0
    assert fetched["transfer"]["incoming_bytes"] == 0
    for m in (fetched, served):
        assert m["num_fds"] > 0
        for name in io_counters():            # those this host counts
            assert set(m[name]) == {"read_bps", "write_bps"}, m
            assert min(m[name].values()) >= 0


# ---------------------------------------------------------------- module names

def test_get_task_metadata_gives_the_final_state_of_keys_asked_for_in_the_block(c):
    before = c.submit(inc, 100)
    assert before.result() == 101
    with get_task_metadata() as tasks:
        ok = c.map(inc, range(3))
        bad = c.submit(fail, 1)
        again = c.submit(inc, 100)                    # in memory already
        c.gather(ok)
        bad.exception()
        assert again.result() == 101
    assert tasks.state == {**{f.key: "memory" for f in ok}, bad.key: "erred"}
    assert tasks.metadata == dict.fromkeys(tasks.state)
    after = c.submit(inc, 200)
    after.result()
    assert after.key not in tasks.state
    # the scheduler keeps no plugin of it afterwards
    assert not c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))


def test_get_task_metadata_with_an_asynchronous_client(pc):
    async def main():
        async with Client(pc.file, asynchronous=True, set_as_default=False) as ac:
            async with get_task_metadata(ac) as tasks:
                f = ac.submit(inc, 7)
                assert await f == 8
            return tasks.state, f.key
    state, key = asyncio.run(main())
    assert state == {key: "memory"}


def launch_with_local_client(x):
    with pytest.warns(UserWarning, match="worker_client"):
        with local_client() as client:
            return client.submit(inc, x).result()


def test_local_client_is_worker_client_under_its_former_name(c):
    assert c.submit(launch_with_local_client, 1).result() == 2


def test_status_members_equal_the_statuses_reported(pc):
    client = pc.client()
    assert client.status == Status.running and Status(client.status) is Status.running
    assert all(Status(w["status"]) is Status.running
               for w in client.scheduler_info()["workers"].values())
    assert str(Status.paused) == "paused"
    client.close()
    assert client.status == Status.closed


# ---------------------------------------------------------------- plugins

def listing(path, dask_worker):
    """The files under ``local_directory/path`` on this worker, relative to it."""
    root = os.path.join(dask_worker.local_directory, path)
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_upload_directory_copies_it_to_every_worker_and_onto_sys_path(tmp_path):
    source = tmp_path / "project"
    (source / "tests").mkdir(parents=True)
    (source / "uploaded_dir_mod.py").write_text("VALUE = 'one'\n")
    (source / "data.txt").write_text("data\n")
    (source / "tests" / "test_x.py").write_text("")
    (source / "stale.pyc").write_bytes(b"")
    with pytest.raises(ValueError, match="nanny"):
        UploadDirectory(str(source), restart_workers=True)
    with pytest.raises(ValueError, match="workers"):
        UploadDirectory(str(source), mode="all")
    local = tmp_path / "workers"
    with processes(tmp_path, nworkers=2,
                   worker_options={"local_directory": str(local)}) as (pc, c):
        result = c.register_plugin(UploadDirectory(str(source), update_path=True))
        assert set(result) == set(c.nthreads())
        assert sorted((local / "project").iterdir()) == [
            local / "project" / "data.txt", local / "project" / "uploaded_dir_mod.py"]
        assert all(files == ["data.txt", "uploaded_dir_mod.py"]
                   for files in c.run(listing, "project").values())
        assert c.gather(c.map(module_value, ["uploaded_dir_mod"] * 4, pure=False)) == \
            ["one"] * 4
        # registered again with new content: replaced in place
        (source / "data.txt").write_text("new\n")
        c.register_plugin(UploadDirectory(str(source)))
        assert (local / "project" / "data.txt").read_text() == "new\n"
    assert not any(p.name.startswith(".") for p in local.iterdir())


def _wheel(directory, name, version="0.1"):
    """A minimal wheel of a package ``name`` whose VALUE is 'installed'."""
    info = f"{name}-{version}.dist-info"
    path = os.path.join(directory, f"{name}-{version}-py3-none-any.whl")
    files = {f"{name}/__init__.py": "VALUE = 'installed'\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
                                 f"Version: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\n"
                              "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def import_from(target, name, dask_worker=None):
    if target not in sys.path:
        sys.path.insert(0, target)
    return module_value(name)


def test_pip_install_installs_on_every_worker_from_a_local_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(str(wheels), "dask_ipy_tiny_pkg")
    target = tmp_path / "target"
    options = ["--no-index", "--find-links", str(wheels), "--target", str(target),
               "--upgrade", "--disable-pip-version-check"]
    with pytest.raises(ValueError, match="nanny"):
        PipInstall(["x"], restart_workers=True)
    with processes(tmp_path, nworkers=2) as (pc, c):
        plugin = PipInstall(["dask_ipy_tiny_pkg"], pip_options=options)
        assert plugin.name.startswith("PipInstall-")
        result = c.register_plugin(plugin)
        assert set(result) == set(c.nthreads())
        assert (target / "dask_ipy_tiny_pkg" / "__init__.py").exists()
        assert set(c.run(import_from, str(target), "dask_ipy_tiny_pkg").values()) == \
            {"installed"}
        # idempotent: registered again under its name, nothing runs again
        (target / "dask_ipy_tiny_pkg" / "__init__.py").write_text("VALUE = 'kept'\n")
        assert c.register_plugin(plugin) == {}
        assert (target / "dask_ipy_tiny_pkg" / "__init__.py").read_text() == \
            "VALUE = 'kept'\n"
        with pytest.raises(RuntimeError, match="pip install failed"):
            c.register_plugin(PipInstall(["dask_ipy_no_such_pkg"], pip_options=options))


def test_install_plugin_runs_its_function_on_each_worker_one_at_a_time(tmp_path):
    log = tmp_path / "log"
    with processes(tmp_path, nworkers=2) as (pc, c):
        c.register_plugin(InstallPlugin(partial(record, str(log), "installed")))
        assert log.read_text() == "installed\ninstalled\n"
