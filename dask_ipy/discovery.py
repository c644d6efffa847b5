"""Finding a scheduler: its address (given, or in a connection file) and the key to
talk to it, for the worker and client shells alike."""

from __future__ import annotations

import os

from .security import find_security, read_connection_file


def resolve_scheduler(address, security, which):
    """An address or connection file, plus the key: explicit, from the file, or found
    in this user's runtime directory for schedulers on this machine."""
    if address is None:
        address = os.environ.get("DASK_IPY_SCHEDULER_FILE")
        if address is None:
            raise ValueError("no scheduler address or connection file given")
    if os.path.isfile(str(address)):
        info, file_security = read_connection_file(address)
        return info[which], security or file_security
    if security is None:
        security = find_security(address)
        if security is None:
            raise ValueError(
                f"no key known for {address}: pass security= or the scheduler's "
                "connection file (written next to the scheduler, owner-only)")
    return address, security
