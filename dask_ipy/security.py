"""Keys, connection files, and who may talk to a socket at all.

One shared secret per scheduler authenticates every message (protocol.Session). It
reaches the other endpoints in one of three ways:

- a connection file, written by the scheduler next to its addresses, readable only by
  its owner (``runtime_dir()/scheduler-<pid>-<id>.json``)::

      {"address_to_workers": "tcp://h:4444", "address_to_clients": "tcp://h:5555",
       "id": "...", "pid": 1234, "host": "h", "security": {"key": "<hex>",
       "encrypt": false}}

  A file whose scheduler process is gone (killed with SIGKILL) is removed when a
  scheduler starts or a key is looked up (`remove_stale_connection_files`);

- ``find_security(address)``, which lets seed-style calls such as
  ``Client("tcp://h:5555")`` pick the key out of this user's connection files on the
  same machine;
- an explicit ``Security`` (``security=``), e.g. carried over ipyparallel's own channel.

Before any message, ZeroMQ's own handshake keeps out whoever does not hold the key, so
that a stranger cannot make a process hold data at all (ZeroMQ queues every frame of a
multipart message before the application sees any of it):

- by default every socket speaks ZeroMQ's PLAIN mechanism with a password derived from
  the key; the binding side checks it in a ZAP handler (`zap_verdict`).  PLAIN sends
  the password in clear: it does not reveal the key, but whoever can read the traffic
  can reuse it to complete handshakes;
- with ``encrypt=True`` every socket runs ZeroMQ CURVE instead. The server keypair is
  derived from the shared secret, so every holder of the key knows the server's public
  key and nobody else can complete a handshake; clients use throwaway keypairs. CURVE
  adds confidentiality; the per-message MAC still applies on top of it.

The key never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass

import hmac

import blake3
import zmq
from zmq.utils import z85

from .addresses import split_address

__all__ = [
    "Security",
    "runtime_dir",
    "write_connection_file",
    "read_connection_file",
    "find_connection",
    "find_security",
    "remove_connection_file",
]

logger = logging.getLogger(__name__)

_CURVE_CONTEXT = "dask_ipy curve server secret key"
_PLAIN_CONTEXT = "dask_ipy zeromq plain password"
PLAIN_USER = b"dask-ipy"
_FILE_PREFIX = "scheduler-"
_FILE_SUFFIX = ".json"


def _require_curve():
    if not zmq.has("curve"):
        raise RuntimeError(
            "encryption needs ZeroMQ CURVE, but this libzmq "
            f"({zmq.zmq_version()}) was built without it; install a pyzmq wheel "
            "with bundled libsodium or run with encrypt=False on a trusted network"
        )


def _server_keypair(key: bytes) -> tuple[bytes, bytes]:
    """(public, secret), Z85-encoded, the same for every holder of `key`."""
    secret = z85.encode(blake3.blake3(key, derive_key_context=_CURVE_CONTEXT).digest())
    return zmq.curve_public(secret), secret


def _plain_password(key: bytes) -> bytes:
    """The PLAIN password of `key`'s cluster: a one-way derivation, so reading it off
    the wire tells nothing of the key."""
    return blake3.blake3(key, derive_key_context=_PLAIN_CONTEXT).hexdigest().encode()


@dataclass(frozen=True, repr=False)
class Security:
    """The shared secret of one scheduler and whether its sockets use CURVE."""

    key: bytes
    encrypt: bool = False

    def __post_init__(self):
        if isinstance(self.key, (bytearray, memoryview)):
            object.__setattr__(self, "key", bytes(self.key))
        if not isinstance(self.key, bytes) or not self.key:
            raise ValueError("Security key must be non-empty bytes")
        object.__setattr__(self, "encrypt", bool(self.encrypt))
        if self.encrypt:
            _require_curve()

    @classmethod
    def temporary(cls, encrypt: bool = False) -> Security:
        """A fresh random 32-byte key."""
        return cls(key=secrets.token_bytes(32), encrypt=encrypt)

    def __repr__(self):
        return f"Security(key=<hidden>, encrypt={self.encrypt})"

    __str__ = __repr__

    def to_dict(self) -> dict:
        """JSON-able form, the key in hex."""
        return {"key": self.key.hex(), "encrypt": self.encrypt}

    @classmethod
    def from_dict(cls, d) -> Security:
        if isinstance(d, Security):
            return d
        if not isinstance(d, dict) or "key" not in d:
            raise ValueError("security settings need a 'key'")
        key = d["key"]
        if isinstance(key, str):
            try:
                key = bytes.fromhex(key)
            except ValueError:
                raise ValueError("security key is not valid hex") from None
        return cls(key=key, encrypt=bool(d.get("encrypt", False)))

    def configure_server(self, socket) -> None:
        """Make a binding socket a CURVE or PLAIN server (call before bind).  PLAIN
        needs a ZAP handler in the socket's context that applies `zap_verdict`."""
        if not self.encrypt:
            socket.plain_server = True
            return
        public, secret = _server_keypair(self.key)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True

    def configure_client(self, socket) -> None:
        """Give a connecting socket the credentials servers ask for (before connect)."""
        if not self.encrypt:
            socket.plain_username = PLAIN_USER
            socket.plain_password = _plain_password(self.key)
            return
        server_public, _ = _server_keypair(self.key)
        public, secret = zmq.curve_keypair()
        socket.curve_serverkey = server_public
        socket.curve_publickey = public
        socket.curve_secretkey = secret

    def zap_verdict(self, request) -> tuple[bool, str]:
        """(allowed, reason) for a ZAP request's frames: [version, request id, domain,
        address, routing id, mechanism, credentials...].  PLAIN must carry this key's
        password; CURVE got this far only with the server's key, which only key
        holders know; anything else is refused."""
        if len(request) < 6:
            return False, "malformed authentication request"
        mechanism = bytes(request[5])
        if mechanism == b"CURVE" and self.encrypt:
            return True, "OK"
        if mechanism == b"PLAIN" and not self.encrypt and len(request) == 8:
            good = hmac.compare_digest(bytes(request[7]), _plain_password(self.key))
            return (True, "OK") if good else (False, "wrong password")
        return False, f"mechanism {mechanism[:16]!r} not accepted"


def _runtime_path() -> str:
    path = os.environ.get("DASK_IPY_RUNTIME_DIR")
    if path:
        return path
    from jupyter_core.paths import jupyter_runtime_dir

    return os.path.join(jupyter_runtime_dir(), "dask-ipy")


def runtime_dir() -> str:
    """Where connection files live; created private (0700) if missing."""
    path = _runtime_path()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    return path


def _short_id(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(c for c in str(value or "") if c.isalnum())[:8]
    return text or secrets.token_hex(4)


def _json_default(obj):
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(obj).__name__} cannot go in a connection file")


def write_connection_file(info: dict, security: Security, path: str | None = None) -> str:
    """Write `info` plus ``security.to_dict()`` under "security"; returns the path.

    The file is created 0600 and moved into place whole, so it is never readable by
    others and never seen half-written.
    """
    content = dict(info)
    content["security"] = security.to_dict()
    text = json.dumps(content, indent=2, default=_json_default)
    if path is None:
        pid = info.get("pid") or os.getpid()
        name = f"{_FILE_PREFIX}{pid}-{_short_id(info.get('id'))}{_FILE_SUFFIX}"
        path = os.path.join(runtime_dir(), name)
    path = os.path.abspath(path)
    tmp = os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # a strict umask must not leave the owner locked out
        with os.fdopen(fd, "w") as f:
            fd = None
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        remove_connection_file(tmp)
        raise
    return path


def _load(path: str) -> dict:
    with open(path) as f:
        content = json.load(f)
    if not isinstance(content, dict) or not isinstance(content.get("security"), dict):
        raise ValueError(f"{path} is not a dask_ipy connection file")
    return content


def read_connection_file(path: str) -> tuple[dict, Security]:
    """(info without its "security" entry, Security). Raises OSError or ValueError."""
    content = _load(path)
    security = Security.from_dict(content.pop("security"))
    return content, security


def remove_connection_file(path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _split_tcp(address) -> tuple[str, int] | None:
    if not isinstance(address, str):
        return None
    scheme, host, port = split_address(address)
    if scheme != "tcp" or port is None:
        return None
    return host.lower(), port


class _Resolver:
    """Host name -> IP addresses, each name looked up once per search."""

    def __init__(self):
        self._cache: dict[str, frozenset] = {}
        self._local = None

    def ips(self, host: str) -> frozenset:
        if host not in self._cache:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
                self._cache[host] = frozenset(info[4][0] for info in infos)
            except (OSError, UnicodeError):
                self._cache[host] = frozenset()
        return self._cache[host]

    def is_local(self, host: str) -> bool:
        if self._local is None:
            self._local = self.ips(socket.gethostname())
        for ip in self.ips(host):
            try:
                addr = ipaddress.ip_address(ip.split("%")[0])
            except ValueError:
                continue
            if addr.is_loopback or addr.is_unspecified or ip in self._local:
                return True
        return False

    def same_host(self, a: str, b: str) -> bool:
        if a == b or self.ips(a) & self.ips(b):
            return True
        return self.is_local(a) and self.is_local(b)


def _matches(info: dict, address: str, target, resolver: _Resolver) -> bool:
    advertised = [info.get("address_to_workers"), info.get("address_to_clients")]
    if address in advertised:
        return True
    if target is None:
        return False
    host, port = target
    for candidate in map(_split_tcp, advertised):
        if candidate and candidate[1] == port and resolver.same_host(candidate[0], host):
            return True
    return False


def _own_connection_files(directory: str) -> list[str]:
    """This user's connection files, newest first."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(_FILE_SUFFIX) or entry.name.startswith("."):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                continue
            found.append((st.st_mtime_ns, entry.path))
    return [path for _, path in sorted(found, reverse=True)]


def _writer_gone(content: dict, mtime: float) -> bool:
    """Did the scheduler that wrote this file (on this host) exit without removing
    it (killed with SIGKILL, a machine that lost power)?  A file of another host, or
    without the writer's pid and host, is never judged."""
    pid, host = content.get("pid"), content.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    import psutil

    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    # A process started after the file was written is another one with that pid.
    return started > mtime + 1.0


def remove_stale_connection_files(directory: str | None = None) -> list[str]:
    """Remove this user's connection files whose scheduler process is gone; returns
    their paths."""
    directory = directory or _runtime_path()
    try:
        paths = _own_connection_files(directory)
    except OSError:
        return []
    removed = []
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime
            content = _load(path)
            if _writer_gone(content, mtime):
                os.remove(path)
                removed.append(path)
                logger.info("removed %s: its scheduler (pid %s) is gone", path,
                            content.get("pid"))
        except (OSError, ValueError):
            continue
    return removed


def find_security(address: str) -> Security | None:
    """The key of the scheduler at `address`, from this user's connection files
    (see `find_connection`)."""
    found = find_connection(address)
    return None if found is None else found[1]


def find_connection(address: str) -> tuple[dict, Security] | None:
    """The connection file of the scheduler at `address` (its contents) and its key,
    from this user's connection files.

    A file matches when one of its advertised addresses equals `address`, or has the
    same port on a host that resolves to the same machine (127.0.0.1, localhost and
    this machine's hostname are one host). The newest matching file wins; unreadable
    or corrupt files are skipped.
    """
    directory = _runtime_path()
    remove_stale_connection_files(directory)
    try:
        paths = _own_connection_files(directory)
    except OSError:
        return None
    target = _split_tcp(address)
    resolver = _Resolver()
    for path in paths:
        try:
            content = _load(path)
            if not _matches(content, address, target, resolver):
                continue
            security = Security.from_dict(content["security"])
        except (OSError, ValueError) as e:
            logger.debug("skipping connection file %s: %s", path, type(e).__name__)
            continue
        logger.debug("using connection file %s for %s", path, address)
        return content, security
    return None
