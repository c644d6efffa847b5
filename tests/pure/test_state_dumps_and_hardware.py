"""The pure parts of `Client.nbytes`, `dump_cluster_state`, `benchmark_hardware` and
`UploadDirectory`, without sockets: sizes from a scheduler state, entries dropped
from a dump, the files written, rates from task-stream records, pairs of workers,
the archive of a directory, and `Status`."""

import gzip
import io
import zipfile
from types import SimpleNamespace

import msgpack
import pytest
import yaml

from dask_ipy import Status
from dask_ipy.dump import drop_names, task_sizes, write
from dask_ipy.hardware import mean_of, pairs, transfer_rates
from dask_ipy.plugins import zip_directory

A, B, C, D = (f"tcp://127.0.0.1:{i}" for i in range(1, 5))


def test_task_sizes_by_key_and_by_prefix():
    tasks = {"inc-aaaaa1": 28, "inc-bbbbb2": 32, ("sum-ccccc3", 0): 100,
             "pending-ddddd4": -1}
    scheduler = SimpleNamespace(tasks={k: SimpleNamespace(nbytes=n)
                                       for k, n in tasks.items()})
    assert task_sizes(None, False, dask_scheduler=scheduler) == {
        "inc-aaaaa1": 28, "inc-bbbbb2": 32, ("sum-ccccc3", 0): 100}
    assert task_sizes(None, True, dask_scheduler=scheduler) == {"inc": 60, "sum": 100}
    assert task_sizes(["pending-ddddd4"], False, dask_scheduler=scheduler) == {
        "pending-ddddd4": -1}
    with pytest.raises(KeyError):
        task_sizes(["nope"], True, dask_scheduler=scheduler)


def test_drop_names_at_any_depth():
    state = {"scheduler": {"logs": [1], "tasks": {"x": {"who_has": [A], "state": "m"}}},
             "workers": {A: {"logs": [], "tasks": [{"logs": 1, "k": 2}]}}}
    assert drop_names(state, {"logs", "who_has"}) == {
        "scheduler": {"tasks": {"x": {"state": "m"}}},
        "workers": {A: {"tasks": [{"k": 2}]}}}


def test_write_adds_the_suffix_once_and_reads_back(tmp_path):
    state = {"scheduler": {"tasks": {"x": {"priority": [0, 1]}}}, "workers": {}}
    path = write(state, tmp_path / "dump")
    assert path == str(tmp_path / "dump.msgpack.gz")
    with gzip.open(path) as f:
        assert msgpack.unpack(f) == state
    assert write(state, str(tmp_path / "d.yaml"), "yaml") == str(tmp_path / "d.yaml")
    assert yaml.safe_load((tmp_path / "d.yaml").read_text()) == state
    with pytest.raises(ValueError, match="format"):
        write(state, tmp_path / "x", "json")


def record(key, worker, *transfers):
    return {"key": key, "worker": worker, "startstops": [
        {"action": "transfer", "start": a, "stop": b, "source": src, "nbytes": n}
        for src, a, b, n in transfers] + [{"action": "compute", "start": 0, "stop": 9}]}


def test_transfer_rates_sum_per_pair_then_average_over_pairs():
    records = [record("t1", B, (A, 0.0, 1.0, 100)),        # pair A→B: 300 B in 2 s
               record("t2", B, (A, 5.0, 6.0, 200)),
               record("t3", D, (C, 0.0, 0.5, 100)),        # pair C→D: 100 B in 0.5 s
               record("t4", D, (C, 0.0, 1.0, 10 ** 6)),
               record("other", B, (A, 0.0, 1.0, 5))]       # not a benchmark task
    labels = {"t1": "small", "t2": "small", "t3": "small", "t4": "big", "t9": "none"}
    assert transfer_rates(records, labels) == {"small": (150 + 200) / 2,
                                               "big": 10 ** 6}


def test_pairs_and_means():
    assert pairs([A, B, C, D]) == [(A, B), (C, D)]
    assert pairs([A, B, C]) == [(A, B)]
    assert pairs([A]) == []
    assert mean_of([{"1 kiB": 2.0, "1 MiB": 10.0}, {"1 kiB": 4.0}]) == {
        "1 kiB": 3.0, "1 MiB": 10.0}


def test_zip_directory_skips_words_and_predicates(tmp_path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / ".git").mkdir()
    for name in ("pkg/a.py", "pkg/a.pyc", "pkg/tests/t.py", "pkg/.git/HEAD", "b.txt"):
        (tmp_path / name).write_text(name)
    data = zip_directory(str(tmp_path), (".git", "tests"),
                          (lambda fn: fn.endswith(".pyc"),))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(z.namelist()) == ["b.txt", "pkg/a.py"]
        assert z.read("pkg/a.py") == b"pkg/a.py"


def test_status_members_are_the_strings_reported():
    assert Status.running == "running" and Status("paused") is Status.paused
    assert [s.value for s in Status] == ["created", "connecting", "running",
                                         "reconnecting", "paused",
                                         "closing_gracefully", "closing", "closed"]
    assert f"{Status.closed}" == "closed"
