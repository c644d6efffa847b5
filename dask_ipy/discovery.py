"""Finding a scheduler: its address (given, or in a connection file) and the key to
talk to it, for the worker and client shells alike."""

from __future__ import annotations

import os

from .addresses import split_address
from .security import find_connection, read_connection_file


class UnknownScheduler(ValueError, OSError):
    """No key is known for a scheduler's address, so nothing there can be reached:
    a ValueError (what is missing is a connection file or ``security=``) that is
    also an OSError, as a connection that fails is."""


def with_scheme(address):
    """``host:port``, as dask.distributed's users write a scheduler's address,
    as ``tcp://host:port``; anything else (an address with its scheme, a file) as
    it is."""
    text = str(address)
    scheme, host, port = split_address(text)
    if scheme is None and host and port is not None and not os.path.exists(text):
        return f"tcp://{text}"
    return address


def resolve_scheduler(address, security, which):
    """An address (``tcp://host:port`` or ``host:port``) or connection file, plus
    the key: explicit, from the file, or found in this user's runtime directory for
    schedulers on this machine."""
    if address is None:
        address = os.environ.get("DASK_IPY_SCHEDULER_FILE")
        if address is None:
            raise ValueError(
                "no scheduler address or connection file given (nor "
                "DASK_IPY_SCHEDULER_FILE): start a scheduler with `%dsched start "
                "--new N` in a notebook, dask_client_from_ipclient("
                "ipyparallel.Client()), LocalCluster() or `dask-ipy scheduler`")
    address = with_scheme(address)
    if os.path.isfile(str(address)):
        info, file_security = read_connection_file(address)
        return info[which], security or file_security
    check_address(address)
    if security is None:
        found = find_connection(address)
        if found is None:
            raise UnknownScheduler(
                f"no key known for {address}: no connection file of a scheduler "
                "at that address is in this user's runtime directory; pass the "
                "scheduler's connection file (written next to it, owner-only) or "
                "security=")
        info, security = found
        # The scheduler's other port (a Worker given the clients' address, as
        # dask.distributed's ``Worker(scheduler.address)``): this role's instead.
        other = info.get(OTHER_ROLE[which])
        if other is not None and info.get(which) and \
                split_address(str(address))[2] == split_address(other)[2]:
            address = info[which]
    return address, security


OTHER_ROLE = {"address_to_workers": "address_to_clients",
              "address_to_clients": "address_to_workers"}


def check_address(address):
    """Raise FileNotFoundError for what names a file that is not there, ValueError
    for what is neither an address (``tcp://host:port``) nor a file."""
    text = str(address)
    scheme, host, port = split_address(text)
    if scheme is None:
        if os.path.isdir(text):
            raise IsADirectoryError(f"{text!r} is a directory, not a connection file")
        if text.endswith(".json") or os.sep in text:
            raise FileNotFoundError(f"no connection file {text!r}: no such file")
        raise ValueError(f"{text!r} is neither an address (tcp://host:port) nor a "
                         "connection file")
    if scheme != "tcp" or not host or port is None or not 0 < port < 65536:
        raise ValueError(f"{text!r} is not an address: expected tcp://host:port")
