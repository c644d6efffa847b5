"""What runs where: the versions of Python and of the packages a cluster's processes
share, for `Client.get_versions`.  Reads package metadata only: nothing is imported,
so a scheduler process, which never imports dask, stays as it is."""

from __future__ import annotations

import importlib.metadata
import platform
import struct
import sys

#: Packages whose versions must agree between processes: they share pickles and messages.
REQUIRED = ("dask_ipy", "dask", "cloudpickle", "msgpack", "pyzmq")
#: Packages also reported, which may differ.
OPTIONAL = ("numpy", "pandas", "zict", "tblib", "psutil", "ipyparallel", "lz4", "toolz")


def _version(name):
    try:
        return importlib.metadata.version(name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages=()):
    """{"host": {...}, "packages": {name: version or None}} of this process."""
    host = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python-bits": struct.calcsize("P") * 8,
        "OS": platform.system(),
        "OS-release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "byteorder": sys.byteorder,
    }
    names = dict.fromkeys([*REQUIRED, *OPTIONAL, *packages])
    found = {"python": host["python"], **{name: _version(name) for name in names}}
    return {"host": host, "packages": found}


def mismatches(report, packages=()):
    """{package: {where: version}} of the required packages (and ``packages``) whose
    versions differ between the client, the scheduler and the workers of ``report``
    (`Client.get_versions`'s answer)."""
    where = {"client": report["client"], "scheduler": report["scheduler"],
             **report["workers"]}
    out = {}
    for name in ("python", *REQUIRED, *packages):
        seen = {place: v["packages"].get(name) for place, v in where.items()}
        if len(set(seen.values())) > 1:
            out[name] = seen
    return out
