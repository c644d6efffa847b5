"""TCP addresses: the one parser of ``tcp://host:port``, and which host a peer uses.

`split_address` and `route_ip` use the standard library only and no module globals:
the bootstrap ships them to ipyparallel engines by value, before those import dask_ipy.
"""

from __future__ import annotations

import socket

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
