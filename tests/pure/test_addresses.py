"""The one parser of TCP addresses, and what it is shipped to engines as."""

import builtins
import types

from dask_ipy.addresses import (advertised_host, host_of, local_ip_towards, route_ip,
                                split_address)
from dask_ipy.security import _split_tcp


def test_split_address():
    assert split_address("tcp://10.0.0.5:1234") == ("tcp", "10.0.0.5", 1234)
    assert split_address("tcp://[::1]:1234") == ("tcp", "::1", 1234)
    assert split_address("tcp://[fe80::1]") == ("tcp", "fe80::1", None)
    assert split_address("tcp://node7") == ("tcp", "node7", None)
    assert split_address("tcp://node7:http") == ("tcp", "node7", None)
    assert split_address("node7:5555") == (None, "node7", 5555)
    assert split_address("ipc:///tmp/x") == ("ipc", "/tmp/x", None)


def test_host_of():
    assert host_of("tcp://127.0.0.1:1234") == "127.0.0.1"
    assert host_of("tcp://[::1]:1234") == "::1"
    assert host_of("tcp://:1234") is None
    assert host_of(None) is None
    assert host_of("") is None


def test_connection_files_match_on_the_same_parse():
    assert _split_tcp("tcp://Node7:5555") == ("node7", 5555)
    assert _split_tcp("tcp://[::1]:5555") == ("::1", 5555)
    for bad in ("ipc:///tmp/x", "tcp://node7", "node7:5555", None, 5555):
        assert _split_tcp(bad) is None


def test_hosts_peers_use():
    assert advertised_host("10.0.0.5") == "10.0.0.5"
    assert advertised_host("0.0.0.0") not in ("0.0.0.0", "")
    assert local_ip_towards("tcp://127.0.0.1:5") == "127.0.0.1"
    assert local_ip_towards("tcp://[::1]:5") == "127.0.0.1"
    assert route_ip(None) is None


def test_the_engine_side_helpers_need_nothing_but_builtins():
    """The bootstrap ships them by value, with builtins as their only globals."""
    def bare(fn):
        return types.FunctionType(fn.__code__, {"__builtins__": builtins})

    assert bare(split_address)("tcp://[::1]:7") == ("tcp", "::1", 7)
    assert bare(route_ip)("127.0.0.1") == "127.0.0.1"
