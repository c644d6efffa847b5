"""TCP addresses: the one parser of ``tcp://host:port``, which host a peer uses, and
the port a dashboard takes.

`split_address` and `route_ip` use the standard library only and no module globals:
the bootstrap ships them to ipyparallel engines by value, before those import dask_ipy.
"""

from __future__ import annotations

import socket
import warnings

ANY_HOST = ("", "*", "0.0.0.0")      # hosts that mean "bind every interface"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def split_address(address):
    """``'tcp://10.0.0.5:1234'`` -> ``('tcp', '10.0.0.5', 1234)``.

    The host loses the brackets of an IPv6 literal (``tcp://[::1]:5`` -> ``'::1'``);
    the scheme is None without ``://``, the port None when absent or not a number.
    Self-contained: shipped to engines by value."""
    scheme, sep, rest = str(address).partition("://")
    if not sep:
        scheme, rest = None, scheme
    host, colon, port = rest.rpartition(":")
    if not colon or port.endswith("]"):
        host, port = rest, ""
    try:
        number = int(port)
    except ValueError:
        number = None
    return scheme, host.strip("[]"), number


def host_of(address):
    """The host of ``tcp://host:port``, None if there is none."""
    if not address:
        return None
    return split_address(address)[1] or None


def route_ip(host):
    """The IP of this machine on the route to ``host`` (no packet is sent); None if
    there is no route or ``host`` does not resolve.  Self-contained: shipped to
    engines by value."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            return s.getsockname()[0]
    except (OSError, TypeError, UnicodeError):
        return None


def local_ip_towards(address):
    """The IP of this machine on the route to ``address`` (loopback for a loopback
    address, and when there is no route)."""
    host = host_of(address)
    if host in LOOPBACK:
        return "127.0.0.1"
    return route_ip(host) or "127.0.0.1"


def advertised_host(host):
    """The host name peers should use to reach a socket bound on ``host``."""
    if host in ANY_HOST:
        return socket.gethostname()
    return host


def dashboard_url(info):
    """The link to a scheduler's live page from its {host, port, prefix, token}
    (None without one)."""
    if not info:
        return None
    host = info["host"]
    if ":" in host:                      # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{info['port']}{info['prefix']}/?token={info['token']}"


def dashboard_port(address, host):
    """The port of ``dashboard_address`` (None: no dashboard), served where the
    scheduler listens (``host``); a port in use gives way to a free one, with a
    warning, as in dask.distributed."""
    if address is None or address is False:
        return None
    if isinstance(address, int):
        where, port = "", address
    else:
        where, _, text = str(address).rpartition(":")
        try:
            port = int(text)
        except ValueError:
            raise ValueError(f"dashboard_address must be like ':8787' or "
                             f"'{host}:8787', not {address!r}") from None
        where = where.strip("[]")
        if where in LOOPBACK and host in LOOPBACK:
            where = host
        if where not in ("", host):
            raise ValueError(f"the dashboard listens where the scheduler does "
                             f"(host={host!r}), not on {where!r}")
    if port and not _port_free(host, port):
        warnings.warn(f"port {port} is already in use (another cluster?); the "
                      f"dashboard takes a free port instead", stacklevel=3)
        return 0
    return port


def _port_free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server does
        try:
            s.bind(("" if host in ANY_HOST else host, port))
        except OSError:
            return False
    return True
